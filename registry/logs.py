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
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

_second: tuple[int, str] = (-1, "")
_millisecond: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO-8601 UTC with milliseconds; the formatted second and millisecond are reused (strftime is costly per
    line, and a busy server writes many lines per millisecond)."""
    global _second, _millisecond
    ms = int(created * 1000)
    if _millisecond[0] == ms:
        return _millisecond[1]
    whole = ms // 1000
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    text = f"{_second[1]}.{ms % 1000:03d}Z"
    _millisecond = (ms, text)
    return text


_dumps = json.JSONEncoder().encode
_escape: Callable[[str], str] = json.encoder.encode_basestring_ascii  # (C) quoted and escaped
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic


BATCH_INTERVAL = 0.02  # seconds between the writer's batches while lines keep coming
IDLE_AFTER = 5  # empty batches before the writer sleeps until a line wakes it
IDLE_RECHECK = 1.0  # seconds a sleeping writer waits at most before looking again


class LineWriter:
    """Writes lines to a stream from a background thread, in batches.

    `write` appends to a list and returns: no lock and no wake-up per line (waking the thread for each request's
    line, and handing it the GIL, cost more than rendering the line). While lines keep coming the thread takes
    the list every BATCH_INTERVAL and writes it; after IDLE_AFTER empty rounds it sleeps until the next `write`
    wakes it, so an idle server does not poll."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._idle = False
        self._closing = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moorage-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, line: str) -> None:
        self._lines.append(line)  # (atomic under the GIL, from any thread)
        if self._idle:
            self._idle = False
            self._wake.set()

    def _run(self) -> None:
        quiet = 0
        while True:
            # Swapped, not copied: a line appended meanwhile lands in the list taken, which is written next.
            lines, self._lines = self._lines, []
            wait = BATCH_INTERVAL
            if lines:
                self._flush(lines)
                quiet = 0
            elif self._closing:
                return
            else:
                quiet += 1
                if quiet >= IDLE_AFTER:
                    # Idle first, then look once more: a `write` either lands before that look, or sees the flag
                    # and wakes us.
                    self._idle = True
                    if self._lines or self._closing:
                        self._idle = False
                        continue
                    wait = IDLE_RECHECK
            self._wake.wait(wait)
            self._wake.clear()
            if self._idle:
                self._idle = False
                quiet = 0

    def _flush(self, lines: list[str]) -> None:
        try:
            for chunk in _chunks(lines):
                self._stream.write(chunk)
                self._stream.flush()
        except (OSError, ValueError):  # stderr closed: nothing sensible left to do with the lines
            pass

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        if self._thread.is_alive():
            self._closing = True
            self._wake.set()
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


TEMPLATES = 4096  # access-log line templates kept (see AccessLog)


def _template(
    method: str,
    path: str,
    route: str | None,
    status: int,
    principal: str | None,
    repository: str | None,
    action: str | None,
    remote: str | None,
    user_agent: str,
    worker: int | None,
) -> tuple[str, str]:
    """An access-log line's fixed members: those before `request_id`, and those after `duration_ms` to the end."""
    esc = _escape
    return (
        f'"msg": {esc(f"{method} {path} {status}")}, "method": {esc(method)}, "path": {esc(path)}, '
        f'"route": {_json_string(route)}, "status": {int(status)}, ',
        f', "principal": {_json_string(principal)}, "repository": {_json_string(repository)}, '
        f'"action": {_json_string(action)}, "remote": {_json_string(remote)}, "user_agent": {esc(user_agent)}'
        + (f', "worker": {int(worker)}}}' if worker is not None else "}"),
    )


class AccessLog:
    """One line per request, rendered on the loop and written by the writer thread.

    The JSON line is one f-string (the strings escaped by the json module's C function): a dict and the generic
    encoder cost a small request twice as much. Most of a line repeats from one request to the next (the method,
    path, route, status, principal, repository, action, client address and user agent of a client pulling the
    same manifest), so those parts are rendered once and kept by what they say (TEMPLATES of them; all dropped
    when full); only the time, request id, byte counts and duration are rendered per line."""

    def __init__(self, writer: LineWriter, use_json: bool) -> None:
        self.writer = writer
        self.use_json = use_json
        self._templates: dict[tuple[Any, ...], tuple[str, str]] = {}

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
        key = (method, path, route, status, principal, repository, action, remote, user_agent, worker)
        parts = self._templates.get(key)
        if parts is None:
            parts = _template(*key)
            if len(self._templates) >= TEMPLATES:
                self._templates.clear()
            self._templates[key] = parts
        self.writer.write(
            f'{{"ts": "{_timestamp(now)}", "level": "info", "logger": "moorage.access", {parts[0]}'
            f'"request_id": {_escape(request_id)}, "bytes_in": {int(bytes_in)}, "bytes_out": {int(bytes_out)}, '
            f'"duration_ms": {seconds * 1000:.3f}{parts[1]}'
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
