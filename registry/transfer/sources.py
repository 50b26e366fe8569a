"""Where an import reads from: an image layout directory, a tar or a gzip-compressed tar (an OCI archive or a
`docker save` tarball), file by file, by relative path (links followed, paths that leave the source refused)."""

from __future__ import annotations

import gzip
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from registry.transfer.common import GZIP_MAGIC, TransferError

MAX_JSON = 64 << 20  # the largest JSON document (a docker config with a long history) read into memory
CACHED_JSON = 8 << 20  # JSON files up to this size are kept in memory while a compressed archive is scanned


def _member(name: str) -> str | None:
    """A path inside a source, normalised; None for one that leaves it (absolute, or through '..')."""
    norm = posixpath.normpath(name)
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


class Source:
    """Files of an image layout or a tarball, by relative path. `resolve` follows links and returns the path of
    a regular file (or None); the other methods take resolved paths."""

    kind = "directory"

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def resolve(self, name: str) -> str | None:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        raise NotImplementedError

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        """Each of `names` once, with a file to read it from (valid until the next item); in the source's own
        order for compressed archives."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _too_big(self, name: str, size: int, limit: int) -> TransferError:
        return TransferError(f"{self}: {name} is {size} bytes, more than the {limit} expected of it")


class DirectorySource(Source):
    kind = "directory"

    def resolve(self, name: str) -> str | None:
        norm = _member(name)
        if norm is None:
            return None
        return norm if (self.path / norm).is_file() else None

    def size(self, name: str) -> int:
        return (self.path / name).stat().st_size

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        size = self.size(name)
        if size > limit:
            raise self._too_big(name, size, limit)
        return (self.path / name).read_bytes()

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        for name in names:
            with open(self.path / name, "rb") as fh:
                yield name, fh


class _TarIndex:
    """Member names of a tar (normalised) and how links among them resolve."""

    def __init__(self) -> None:
        self.members: dict[str, tarfile.TarInfo] = {}

    def add(self, info: tarfile.TarInfo) -> str | None:
        name = _member(info.name)
        if name is not None:
            self.members[name] = info  # a later member of the same name wins, as when extracting
        return name

    def resolve(self, name: str) -> str | None:
        norm = _member(name)
        for _ in range(16):
            if norm is None:
                return None
            info = self.members.get(norm)
            if info is None:
                return None
            if info.isreg():
                return norm
            if info.issym():
                norm = _member(posixpath.join(posixpath.dirname(norm), info.linkname))
            elif info.islnk():
                norm = _member(info.linkname)
            else:
                return None
        return None


class TarSource(Source):
    """An uncompressed tar: random access."""

    kind = "tar"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.tar = tarfile.open(path, "r:")
        self.index = _TarIndex()
        for info in self.tar.getmembers():
            self.index.add(info)

    def resolve(self, name: str) -> str | None:
        return self.index.resolve(name)

    def size(self, name: str) -> int:
        return self.index.members[name].size

    def _open(self, name: str) -> IO[bytes]:
        fh = self.tar.extractfile(self.index.members[name])
        assert fh is not None
        return fh

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        size = self.size(name)
        if size > limit:
            raise self._too_big(name, size, limit)
        return self._open(name).read()

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        for name in names:
            yield name, self._open(name)

    def close(self) -> None:
        self.tar.close()


class GzipTarSource(Source):
    """A gzip-compressed tar: read front to back. Opening it scans it once, keeping small JSON files (index,
    manifests, configs) in memory; `stream` is another pass."""

    kind = "tar.gz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.index = _TarIndex()
        self.cache: dict[str, bytes] = {}
        for name, info, fh in self._scan():
            if info.isreg() and info.size <= CACHED_JSON:
                head = fh.read(1)
                if head in (b"{", b"["):
                    self.cache[name] = head + fh.read()

    def _scan(self) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes]]]:
        with gzip.open(self.path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                name = self.index.add(info)
                if name is None or not info.isreg():
                    continue
                fh = tar.extractfile(info)
                assert fh is not None
                yield name, info, fh

    def resolve(self, name: str) -> str | None:
        return self.index.resolve(name)

    def size(self, name: str) -> int:
        return self.index.members[name].size

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        size = self.size(name)
        if size > limit:
            raise self._too_big(name, size, limit)
        if name not in self.cache:
            for got, fh in self.stream([name]):
                self.cache[got] = fh.read()
        return self.cache[name]

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        wanted = set(names)
        if not wanted:
            return
        for name, _info, fh in self._scan():
            if name in wanted:
                wanted.discard(name)
                yield name, fh
                if not wanted:
                    return
        if wanted:
            raise TransferError(f"{self}: {sorted(wanted)[0]} vanished from the archive while it was read")


def open_source(path: Path) -> Source:
    if not path.exists():
        raise TransferError(f"{path}: no such file or directory")
    if path.is_dir():
        return DirectorySource(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head == GZIP_MAGIC:
            return GzipTarSource(path)
        return TarSource(path)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        if isinstance(e, tarfile.ReadError) and head != GZIP_MAGIC:
            raise TransferError(
                f"{path}: not an OCI image layout, an OCI archive or a docker save tarball "
                "(expected a directory, a tar or a gzip-compressed tar)"
            ) from None
        raise TransferError(f"{path}: corrupt or truncated archive ({e})") from None
