"""RSS of the servers under test: VmRSS / VmHWM from /proc, summed over a server's processes (a Moorage supervisor
and its workers), and a sampler thread that keeps the peak while a benchmark runs.
"""

from __future__ import annotations

import glob
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.servers import Server


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a Moorage supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                with open(task) as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
    return out


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def status_mib(pid: int | None, key: str = "VmRSS", tree: list[int] | None = None) -> float | None:
    """A /proc/<pid>/status memory line (VmRSS, VmHWM) in MiB, summed over the process and its descendants
    (for VmHWM the sum of each process's own peak; `tree`: those processes, if already known); None when the
    process is gone."""
    if pid is None:
        return None
    values = [v for p in (tree or process_tree(pid)) if (v := _status_kib(p, key)) is not None]
    return sum(values) / 1024 if values else None


class RssSampler:
    """Samples VmRSS of some processes every `interval` seconds on a thread; `peak` is the largest seen.

    The sampler shares the GIL with the Python load clients, so each sample must stay cheap: a server's
    process tree is looked up once a second (workers don't come and go during a measurement), not at every
    sample, lest a multi-process server be measured with a slower client than a single-process one."""

    TREE_EVERY = 1.0  # seconds

    def __init__(self, pids: dict[str, int | None], interval: float = 0.02) -> None:
        self.pids = {label: pid for label, pid in pids.items() if pid is not None}
        self.interval = interval
        self.before: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._trees: dict[str, list[int]] = {}
        self._tree_at = float("-inf")

    def _sample(self) -> dict[str, float]:
        now = time.monotonic()
        if now - self._tree_at >= self.TREE_EVERY:
            self._trees = {label: process_tree(pid) for label, pid in self.pids.items()}
            self._tree_at = now
        out = {}
        for label, pid in self.pids.items():
            rss = status_mib(pid, tree=self._trees.get(label))
            if rss is not None:
                out[label] = rss
                self.peak[label] = max(self.peak.get(label, 0.0), rss)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self.before = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.after = self._sample()


@contextmanager
def sampling(*servers: Server) -> Iterator[RssSampler]:
    with RssSampler({s.label: s.pid for s in servers}) as sampler:
        yield sampler
