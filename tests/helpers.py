"""What the test modules share besides servers and content: one way to wait for a condition, one way to
require an external tool, a look at processes, and for the unit tests of caches a fake change feed and the
held reads of a fake store.

- `wait_for` polls a predicate, treating an HTTP error it raises (refused, reset, a read timeout on a loaded
  machine) as "not yet", and fails naming what it waited for and what it saw last.
- `require` finds a tool or skips the test saying which tool is missing and how to get it. Under CI=true the
  conftest turns every skip into a failure (see `pytest_runtest_makereport` there), so a missing tool or a
  daemon that cannot start fails CI, naming the reason, instead of passing by skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

CI = os.environ.get("CI") == "true"
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    A `requests.RequestException` raised by the predicate counts as "not yet" (a server starting, restarting
    or slow to answer under load); any other exception fails at once. After `timeout` seconds, an
    AssertionError naming `what`, the last result (or HTTP error) and `details()`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = last = predicate()
        except requests.RequestException as e:
            value, last = None, e  # type: ignore[assignment]
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            seen = repr(last)
            seen = seen if len(seen) <= 500 else seen[:500] + "..."
            more = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {seen}){more}")
        time.sleep(interval)


def running(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """True while `proc` runs; once it has exited, an AssertionError with the end of `log`, so that a
    `wait_for` on something the process should do stops at once instead of timing out."""
    assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
    return True


def http_ok(url: str, timeout: float = 5.0, **kw: Any) -> bool:
    """GET `url` answers 200 (raises what requests raises: use it inside `wait_for`)."""
    return requests.get(url, timeout=timeout, **kw).status_code == 200


def require(tool: str, hint: str) -> str:
    """The path of `tool` (a name looked up on PATH, or an absolute path), or a skip naming it and `hint`
    (how to install it). A failure under CI=true, like every skip."""
    path = tool if os.path.isabs(tool) else shutil.which(tool)
    if path is None or not os.access(path, os.X_OK):
        pytest.skip(f"{Path(tool).name} is not installed ({hint})")
    return path


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: an orphan's new parent may not have reaped it yet)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


_HOLDER = """
import sys, time
from storage.local import ProcessLocks
locks = ProcessLocks(sys.argv[1])
assert locks.try_acquire(sys.argv[2])
print("held", flush=True)
time.sleep(60)
"""


def hold_in_child(path: Path, name: str) -> subprocess.Popen[str]:
    """Another process holding the named lock of the lock file `path` (storage.local.ProcessLocks) for up to a
    minute; kill it to release the lock."""
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), name],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


class FakeChangeFeed:
    """A change feed (storage.coordination.ChangeFeed) as the caches read it: `epoch()` answers `now`, which a
    test moves to play another process's commit."""

    def __init__(self) -> None:
        self.now = 0

    def epoch(self) -> int:
        return self.now


class HeldReads:
    """For a fake store: while `gated`, each read `hold()`s until a test sets its gate (in `gates`, in the order
    the reads began); then it raises `fail` if that is set."""

    def __init__(self) -> None:
        self.gated = False
        self.gates: list[asyncio.Event] = []
        self.fail: Exception | None = None

    async def hold(self) -> None:
        if self.gated:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        if self.fail is not None:
            raise self.fail
