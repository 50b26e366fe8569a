"""Logging: JSON lines when stderr is not a terminal (or `[log] format = "json"`), readable text otherwise.

Every line goes through one writer thread that drains a queue in batches, so the event loop never waits on
stderr (a full pipe to a container log driver would otherwise stall every request). The per-request access log
skips the `logging` machinery altogether: the loop renders one JSON line with the C encoder and queues it.
Extra fields passed as `logging` extras (`extra={"fields": {...}}`) become JSON members; secrets are never
passed (tokens, keys and Authorization headers are not logged anywhere).
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO-8601 UTC with milliseconds; the formatted second is reused (strftime is costly per line)."""
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(created * 1000) % 1000:03d}Z"


_dumps = json.JSONEncoder().encode
_escape: Callable[[str], str] = json.encoder.encode_basestring_ascii  # (C) quoted and escaped
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic


class LineWriter:
    """Writes lines to a stream from a background thread, in batches."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="moorage-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, line: str) -> None:
        self._lines.put(line)

    def _run(self) -> None:
        while True:
            line = self._lines.get()
            batch = []
            while line is not None:
                batch.append(line)
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    for chunk in _chunks(batch):
                        self._stream.write(chunk)
                        self._stream.flush()
                except (OSError, ValueError):  # stderr closed: nothing sensible left to do with the lines
                    pass
            if line is None:
                return

    def close(self) -> None:
        if self._thread.is_alive():
            self._lines.put(None)
            self._thread.join(timeout=5)


def _chunks(lines: list[str]) -> Iterator[str]:
    """Whole lines, joined into writes of at most PIPE_BUF bytes where they fit: several workers share one
    stderr, and a pipe keeps a write that small in one piece, so lines from different processes never mix."""
    out: list[str] = []
    size = 0
    for line in lines:
        n = len(line) + 1
        if out and size + n > PIPE_BUF:
            yield "\n".join(out) + "\n"
            out, size = [], 0
        out.append(line)
        size += n
    if out:
        yield "\n".join(out) + "\n"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
        return text


class _WriterHandler(logging.Handler):
    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record))
        except Exception:
            self.handleError(record)


def _json_string(value: str | None) -> str:
    return "null" if value is None else _escape(value)


class AccessLog:
    """One line per request, rendered on the loop and written by the writer thread. The JSON line is one
    f-string (the strings escaped by the json module's C function): a dict and the generic encoder cost a small
    request twice as much."""

    def __init__(self, writer: LineWriter, use_json: bool) -> None:
        self.writer = writer
        self.use_json = use_json

    def request(
        self,
        request_id: str,
        method: str,
        path: str,
        route: str | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        seconds: float,
        principal: str | None,
        repository: str | None,
        action: str | None,
        remote: str | None,
        user_agent: str,
        worker: int | None,
    ) -> None:
        now = time.time()
        if not self.use_json:
            self(
                f"{method} {path} {status}",
                {
                    "request_id": request_id,
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "duration_ms": round(seconds * 1000, 3),
                    "principal": principal,
                    "repository": repository,
                    "action": action,
                    "remote": remote,
                    "user_agent": user_agent,
                    "worker": worker,
                },
            )
            return
        esc = _escape
        self.writer.write(
            f'{{"ts": "{_timestamp(now)}", "level": "info", "logger": "moorage.access", '
            f'"msg": {esc(f"{method} {path} {status}")}, "request_id": {esc(request_id)}, "method": {esc(method)}, '
            f'"path": {esc(path)}, "route": {_json_string(route)}, "status": {int(status)}, '
            f'"bytes_in": {int(bytes_in)}, "bytes_out": {int(bytes_out)}, "duration_ms": {round(seconds * 1000, 3)!r}, '
            f'"principal": {_json_string(principal)}, "repository": {_json_string(repository)}, '
            f'"action": {_json_string(action)}, "remote": {_json_string(remote)}, "user_agent": {esc(user_agent)}'
            + (f', "worker": {int(worker)}}}' if worker is not None else "}")
        )

    def __call__(self, message: str, fields: dict[str, Any]) -> None:
        now = time.time()
        if self.use_json:
            self.writer.write(
                # Plain values only, so the encoder is the C one, built once.
                _dumps({"ts": _timestamp(now), "level": "info", "logger": "moorage.access", "msg": message, **fields})
            )
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
            self.writer.write(f"{stamp} INFO moorage.access: {message} {extra}")


_access: AccessLog | None = None


def setup(level: str, fmt: str = "auto") -> None:
    global _access
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    writer = LineWriter(sys.stderr)
    handler = _WriterHandler(writer)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # we write our own access log
    _access = AccessLog(writer, use_json)


def access_logger() -> AccessLog | None:
    """The access log set up by `setup` (None when logging was not set up, e.g. in-process tests)."""
    return _access
