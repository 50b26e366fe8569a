"""How far a transfer has got: blobs and bytes done, redrawn on one line of a terminal."""

from __future__ import annotations

import threading
import time
from typing import IO


def _size(amount: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"  # pragma: no cover


class Progress:
    """Blobs and bytes done, redrawn on one line of `stream` (stderr when it is a terminal) at most 10x a second."""

    def __init__(self, verb: str, stream: IO[str] | None) -> None:
        self.verb = verb
        self.stream = stream
        self.blobs = self.total_blobs = 0
        self.bytes = self.total_bytes = 0
        self._last = 0.0
        self._drawn = False
        self._lock = threading.Lock()

    def plan(self, blobs: int, nbytes: int) -> None:
        self.total_blobs += blobs
        self.total_bytes += nbytes
        self.draw()

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.draw()

    def blob_done(self, skipped_bytes: int = 0) -> None:
        self.blobs += 1
        self.bytes += skipped_bytes
        self.draw(force=self.blobs == self.total_blobs)

    def draw(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        with self._lock:
            self._last = now
            self.stream.write(
                f"\r{self.verb}: {self.blobs}/{self.total_blobs} blobs, "
                f"{_size(self.bytes)} / {_size(self.total_bytes)}\x1b[K"
            )
            self.stream.flush()
            self._drawn = True

    def close(self) -> None:
        if self._drawn and self.stream is not None:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
