"""An image's layers applied in order, for the few files a scan reads. Pure (reads the layer files given).

Each layer is a tar file, gzip- or zstd-compressed or not (told by its first bytes; zstd needs the standard
library's `compression.zstd` (Python 3.14+) or the `backports.zstd` package). Layers are read as streams,
member by member, in memory: nothing is written to disk and no member is ever extracted. Member names are
cleaned (`./`, `/` and empty components dropped); a name with a `..` component is ignored.

OCI whiteouts are honoured: `.wh.<name>` hides `<name>` (and everything under it) of the lower layers, and
`.wh..wh..opq` hides everything the lower layers had in its directory; neither hides what its own layer holds.
Any non-directory entry also replaces what lower layers had at its path, a directory included.

Bounds: a member larger than `max_member_bytes` is skipped unread (as if absent); more than `max_members`
members over all the layers raises LayerError rather than scanning part of an image. What the tar module would
read whole into memory while reading headers is bounded too (`_BoundedTarInfo`): a GNU long name or link, or a
pax header, larger than MAX_HEADER_BYTES, global pax headers adding up to more, or a sparse member's map of more
than MAX_SPARSE_ENTRIES, raise LayerError (a few KiB of gzip can otherwise declare gigabytes of them).
"""

from __future__ import annotations

import gzip
import importlib
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import IO, Any, cast

MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_MEMBERS = 2_000_000
MAX_HEADER_BYTES = 1024 * 1024  # a long name, a pax header; and all global pax headers together
MAX_SPARSE_ENTRIES = 16384  # (offset, size) pairs of a sparse member's map
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_module() -> ModuleType | None:
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


_zstd = _zstd_module()


class LayerError(ValueError):
    """A layer that cannot be read (not a tar, corrupt compression, zstd without a library), or an image with
    more members than a scan considers."""


Kind = str  # what a file is to the caller ("dpkg", "python", ...)
Select = Callable[[str], "Kind | None"]  # a cleaned path -> its kind, None for a file the caller skips
Parse = Callable[[Kind, str, bytes], Any]  # (kind, path, content) -> what to keep of it (None: nothing)


def clean_path(name: str) -> str | None:
    """A member's name as a relative path without `.`, `/` or empty components; None if it climbs out (`..`)."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def merged(
    layers: Sequence[str | os.PathLike[str]],
    select: Select,
    parse: Parse,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_members: int = MAX_MEMBERS,
) -> dict[str, tuple[Kind, Any]]:
    """The selected files of the image the layers make, each parsed: path -> (kind, what `parse` kept)."""
    state: dict[str, tuple[Kind, Any]] = {}
    budget = [max_members]
    for layer in layers:
        _apply(state, layer, select, parse, max_member_bytes, budget)
    return state


def _apply(
    state: dict[str, tuple[Kind, Any]],
    layer: str | os.PathLike[str],
    select: Select,
    parse: Parse,
    max_member_bytes: int,
    budget: list[int],
) -> None:
    lower_dirs = {ancestor for path in state for ancestor in _ancestors(path)}
    hidden: set[str] = set()  # lower paths this layer removes, with everything under them
    opaque: set[str] = set()  # directories whose lower content this layer hides
    added: dict[str, tuple[Kind, Any]] = {}
    for tar, member in _members(layer, budget):
        path = clean_path(member.name)
        if not path:
            continue
        directory, _, base = path.rpartition("/")
        if base == OPAQUE:
            opaque.add(directory)
            continue
        if base.startswith(WHITEOUT):
            hidden.add(f"{directory}/{base[len(WHITEOUT) :]}" if directory else base[len(WHITEOUT) :])
            continue
        if member.isdir():
            if path in state:  # a directory where a lower layer had a file
                hidden.add(path)
            continue
        if path in state or path in lower_dirs:
            hidden.add(path)
        added.pop(path, None)  # the last entry for a path in a layer wins
        kind = select(path)
        if kind is None:
            continue
        if member.islnk():  # a hard link to a file of the same kind read before it
            target = clean_path(member.linkname) or ""
            found = added.get(target) or (None if _is_hidden(target, hidden, opaque) else state.get(target))
            if found is not None and found[0] == kind:
                added[path] = found
            continue
        if not member.isreg() or member.size > max_member_bytes:
            continue
        content = _read(tar, member, layer)
        kept = parse(kind, path, content)
        if kept is not None:
            added[path] = (kind, kept)
    if hidden or opaque:
        for path in [p for p in state if _is_hidden(p, hidden, opaque)]:
            del state[path]
    state.update(added)


def _ancestors(path: str) -> Iterator[str]:
    """The directories above a path, the root ("") first: "a/b/c" -> "", "a", "a/b"."""
    yield ""
    position = path.find("/")
    while position != -1:
        yield path[:position]
        position = path.find("/", position + 1)


def _is_hidden(path: str, hidden: set[str], opaque: set[str]) -> bool:
    if path in hidden:
        return True
    return any(ancestor in hidden or ancestor in opaque for ancestor in _ancestors(path))


class _BoundedTarInfo(tarfile.TarInfo):
    """The tar module's header processing, with what it reads into memory bounded (see the module's docstring).
    The sparse maps are read as the tar module reads them (3.11 to 3.14), counting."""

    def _refuse(self, what: str) -> LayerError:
        return LayerError(f"{self.name[:200]!r}: {what} larger than a scan reads")

    def _proc_gnulong(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_HEADER_BYTES:
            raise self._refuse("a GNU long name or link")
        taken: tarfile.TarInfo = super()._proc_gnulong(tar)  # type: ignore[misc]
        return taken

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_HEADER_BYTES:
            raise self._refuse("a pax header")
        if self.type == tarfile.XGLTYPE:
            held = sum(len(k) + len(v) for k, v in tar.pax_headers.items())
            if held + self.size > MAX_HEADER_BYTES:
                raise self._refuse("global pax headers")
        taken: tarfile.TarInfo = super()._proc_pax(tar)  # type: ignore[misc]
        return taken

    def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        fileobj: Any = tar.fileobj
        while isextended:
            buf = fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("unexpected end of data in a sparse header")
            pos = 0
            nti = tarfile.nti  # type: ignore[attr-defined]
            for _ in range(21):
                try:
                    offset = nti(buf[pos : pos + 12])
                    numbytes = nti(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
                pos += 24
            if len(structs) > MAX_SPARSE_ENTRIES:
                raise self._refuse("a sparse map")
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: Any, tar: tarfile.TarFile) -> None:
        fileobj: Any = tar.fileobj
        read = fileobj.read
        buf = read(tarfile.BLOCKSIZE)
        fields_text, _, buf = buf.partition(b"\n")
        fields = int(fields_text)
        if fields < 0 or fields > MAX_SPARSE_ENTRIES:
            raise self._refuse("a sparse map")
        sparse: list[int] = []
        while len(sparse) < fields * 2:
            if b"\n" not in buf:
                more = read(tarfile.BLOCKSIZE)
                if not more:
                    raise tarfile.ReadError("unexpected end of data in a sparse map")
                buf += more
            number, sep, buf = buf.partition(b"\n")
            if not sep:
                raise tarfile.ReadError("a sparse map's number is too long")
            sparse.append(int(number))
        next.offset_data = fileobj.tell()
        next.sparse = list(zip(sparse[::2], sparse[1::2], strict=False))  # type: ignore[assignment]


def _errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
    if _zstd is not None:
        errors += (_zstd.ZstdError,)
    return errors


def _open(raw: IO[bytes], layer: str | os.PathLike[str]) -> IO[bytes]:
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic == _ZSTD_MAGIC:
        if _zstd is None:
            raise LayerError(f"{os.fspath(layer)}: a zstd layer, and no zstd library (backports.zstd) is installed")
        stream: IO[bytes] = _zstd.ZstdFile(raw, mode="rb")
        return stream
    return raw


def _members(layer: str | os.PathLike[str], budget: list[int]) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The layer's members in order, as a stream (the caller reads a member before asking for the next)."""
    errors = _errors()
    try:
        with (
            open(layer, "rb") as raw,
            _open(raw, layer) as stream,
            tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar,
        ):
            while True:
                member = tar.next()
                if member is None:
                    return
                # a stream needs no index of the members it has passed: keep memory flat (typeshed omits `members`)
                tar.members.clear()  # type: ignore[attr-defined]
                budget[0] -= 1
                if budget[0] < 0:
                    raise LayerError(f"{os.fspath(layer)}: the image has more members than a scan considers")
                yield tar, member
    except LayerError:
        raise
    except errors as e:
        raise LayerError(f"{os.fspath(layer)}: not a readable layer ({type(e).__name__}: {e})") from None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, layer: str | os.PathLike[str]) -> bytes:
    try:
        f = tar.extractfile(member)
        if f is None:
            return b""
        with f:
            return f.read(member.size)
    except _errors() as e:
        raise LayerError(f"{os.fspath(layer)}: {member.name}: not readable ({type(e).__name__}: {e})") from None


def kinds(state: Mapping[str, tuple[Kind, Any]], kind: Kind) -> Iterator[tuple[str, Any]]:
    """The (path, parsed) pairs of one kind, sorted by path."""
    for path in sorted(state):
        if state[path][0] == kind:
            yield path, state[path][1]
