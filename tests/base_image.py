"""A local Debian bookworm base image with python3 for building Moorage's container image offline.

No base image can be pulled here, so one is made with `debootstrap --variant=minbase --include=python3,python3-venv`
(which needs only Debian's mirror), trimmed of apt caches, docs and locales, and kept as a tarball under
CACHE_DIR. The file name carries a key of the recipe, so a changed recipe builds a new tarball and an unchanged
one is reused by every later run; `load_base_image()` imports it into a (private) dockerd.

Set MOORAGE_TEST_CACHE to cache elsewhere and MOORAGE_TEST_DEBIAN_MIRROR to use another mirror.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.dockerd import Dockerd

CACHE_DIR = Path(os.environ.get("MOORAGE_TEST_CACHE", "/var/cache/moorage-test"))
MIRROR = os.environ.get("MOORAGE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv")
# Bump when the recipe below changes in a way the key does not see.
RECIPE = 1
# Removed from the root file system after debootstrap: nothing at run time needs them.
TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/log",
)
IMAGE_NAME = "moorage-test/bookworm-python"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBOOTSTRAP_TIMEOUT = 900.0


class BaseImageUnavailable(Exception):
    """The base image cannot be built here; the message says why (a reason to skip)."""


def key() -> str:
    recipe = f"{RECIPE}|{SUITE}|{','.join(PACKAGES)}|{MIRROR}|{platform.machine()}|{','.join(TRIM)}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def tarball_path(cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"{SUITE}-python3-{key()}.tar"


def base_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached root file system tarball, made with debootstrap first if there is none yet."""
    path = tarball_path(cache_dir)
    if path.exists():
        return path
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise BaseImageUnavailable("debootstrap needs root to build the base image")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise BaseImageUnavailable("debootstrap is not installed (apt-get install debootstrap)")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BaseImageUnavailable(f"cannot create the cache directory {cache_dir}: {e}") from None
    with _locked(cache_dir / ".lock"):
        if path.exists():  # another process built it while we waited
            return path
        _build(debootstrap, cache_dir, path)
        for stale in cache_dir.glob(f"{SUITE}-python3-*.tar"):
            if stale != path:
                stale.unlink(missing_ok=True)
    return path


def load_base_image(d: Dockerd, cache_dir: Path = CACHE_DIR) -> str:
    """Import the cached base into dockerd `d` (once) and return its reference."""
    ref = f"{IMAGE_NAME}:{key()}"
    if d.run("image", "inspect", ref, check=False).returncode == 0:
        return ref
    tar = base_tarball(cache_dir)
    d.run("import", "--change", f"ENV PATH={DEFAULT_PATH}", "--change", 'CMD ["/bin/bash"]', str(tar), ref, timeout=300)
    return ref


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(debootstrap: str, cache_dir: Path, dest: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
    root = work / "root"
    log = work / "debootstrap.log"
    cmd = [
        debootstrap,
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(root),
        MIRROR,
    ]
    started = time.monotonic()
    try:
        with open(log, "wb") as out:
            try:
                proc = subprocess.run(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=DEBOOTSTRAP_TIMEOUT
                )
            except subprocess.TimeoutExpired:
                raise BaseImageUnavailable(
                    f"debootstrap took more than {DEBOOTSTRAP_TIMEOUT:.0f}s:\n{_tail(log)}"
                ) from None
        if proc.returncode != 0:
            inner = root / "debootstrap" / "debootstrap.log"
            raise BaseImageUnavailable(
                f"`{' '.join(cmd)}` failed with exit {proc.returncode}:\n{_tail(log)}\n--- {inner} ---\n{_tail(inner)}"
            )
        if not (root / "usr" / "bin" / "python3").exists():
            raise BaseImageUnavailable(f"debootstrap finished but {root}/usr/bin/python3 is missing:\n{_tail(log)}")
        _unmount_under(root)
        for rel in TRIM:
            target = root / rel
            if target.is_dir() and not target.is_symlink():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = work / "base.tar"
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(partial, dest)
        print(f"base image tarball {dest} built in {time.monotonic() - started:.0f}s")
    finally:
        # debootstrap mounts /proc and /sys in the target while it runs; never delete through a mount.
        if _unmount_under(work):
            shutil.rmtree(work, ignore_errors=True)


def _unmount_under(path: Path) -> bool:
    """Unmount everything mounted below `path`, deepest first; True when nothing is left mounted."""

    def mounts() -> list[str]:
        prefix = str(path) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [p for p in points if p.startswith(prefix)]

    for mp in sorted(mounts(), reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, timeout=60, check=False)
    return not mounts()


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
