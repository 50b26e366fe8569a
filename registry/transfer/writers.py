"""Where an export goes: an OCI image layout directory or an OCI archive, each written so that a killed export
leaves nothing half-written under a final name and a re-run resumes it.

A directory export writes each blob to `<hex>.partial` and renames it, and writes `index.json` last; re-running
it skips blobs already there with the right size. An archive is written to `<DEST>.partial` with a journal of
complete members (`<DEST>.partial.json`); re-running resumes after the last complete member, and DEST appears by
rename only when it is complete."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from registry import oci
from registry.transfer.common import (
    GZIP_MAGIC,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    REF_NAME,
    ZSTD_MAGIC,
    TransferError,
    blob_member,
)
from registry.transfer.progress import Progress
from storage.files import atomic_write, fsync_dir

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARTIAL = ".partial"


class Writer:
    """Where an export goes."""

    dest: Path

    def check(self) -> None:
        """Refuse a destination that can't be written, before anything is."""

    def has(self, digest: str, size: int) -> bool:
        raise NotImplementedError

    async def begin(self) -> None:
        raise NotImplementedError

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes], progress: Progress) -> None:
        raise NotImplementedError

    async def finish(self, entries: list[dict[str, Any]]) -> None:
        raise NotImplementedError


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _index_json(entries: list[dict[str, Any]]) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _mismatch(digest: str, actual: str, size: int, got: int) -> TransferError:
    if got != size:
        return TransferError(f"blob {digest} is damaged in the data dir: {got} bytes, not {size}")
    return TransferError(f"blob {digest} is damaged in the data dir: its content is {actual}")


def _write_hashed(fh: IO[bytes], hasher: Any, chunk: bytes) -> None:
    fh.write(chunk)
    hasher.update(chunk)


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, data, suffix=PARTIAL)


def _flush(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


class DirectoryWriter(Writer):
    """An OCI image layout directory (merged into one that is already there)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest

    def _path(self, digest: str) -> Path:
        return self.dest / blob_member(digest)

    def check(self) -> None:
        dest = self.dest
        if dest.exists() and not dest.is_dir():
            raise TransferError(f"{dest} exists and is not a directory (archives end in .tar, .tar.gz or .tgz)")
        if dest.is_dir() and any(dest.iterdir()) and not (dest / LAYOUT_FILE).is_file():
            raise TransferError(f"{dest} is a directory that is not an OCI image layout; choose an empty one")

    async def begin(self) -> None:
        dest = self.dest
        self.check()
        dest.mkdir(parents=True, exist_ok=True)
        if not (dest / LAYOUT_FILE).is_file():
            await asyncio.to_thread(_atomic_write, dest / LAYOUT_FILE, LAYOUT_VERSION)

    def has(self, digest: str, size: int) -> bool:
        try:
            return self._path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes], progress: Progress) -> None:
        final = self._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + PARTIAL)
        hasher = hashlib.new(oci.digest_algorithm(digest))
        fh = await asyncio.to_thread(open, tmp, "wb")
        written = 0
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(_write_hashed, fh, hasher, chunk)
                    written += len(chunk)
                    progress.add(len(chunk))
                await asyncio.to_thread(_flush, fh)
            finally:
                await asyncio.to_thread(fh.close)
            actual = f"{hasher.name}:{hasher.hexdigest()}"
            if actual != digest or written != size:
                raise _mismatch(digest, actual, size, written)
            await asyncio.to_thread(os.replace, tmp, final)
        finally:
            await asyncio.to_thread(tmp.unlink, True)

    async def finish(self, entries: list[dict[str, Any]]) -> None:
        index_path = self.dest / INDEX_FILE
        # Entries already there stay, unless this export replaces them (same name; same untagged manifest).
        names = {entry["annotations"].get(REF_NAME) for entry in entries} - {None}
        untagged = {entry["digest"] for entry in entries if REF_NAME not in entry["annotations"]}
        kept: list[dict[str, Any]] = []
        if index_path.is_file():
            try:
                old_index = json.loads(index_path.read_bytes())
                for old_entry in old_index.get("manifests", []):
                    name = (old_entry.get("annotations") or {}).get(REF_NAME)
                    if name in names or (name is None and old_entry.get("digest") in untagged):
                        continue
                    kept.append(old_entry)
            except (ValueError, AttributeError, TypeError):
                kept = []
        for alg_dir in (self.dest / "blobs").glob("*"):
            if alg_dir.is_dir():
                for leftover in alg_dir.glob("*" + PARTIAL):  # from an export that was killed
                    leftover.unlink(missing_ok=True)
                await asyncio.to_thread(fsync_dir, alg_dir)
        await asyncio.to_thread(_atomic_write, index_path, _index_json(kept + entries))
        await asyncio.to_thread(fsync_dir, self.dest)


class ArchiveWriter(Writer):
    """An OCI archive: a tar of a layout (each member compressed as its own gzip member for .tar.gz, so the
    file can be cut back to any member boundary). Written to DEST.partial with a journal of the members that
    are complete; a re-run resumes after the last of them."""

    def __init__(self, dest: Path, compress: bool) -> None:
        self.dest = dest
        self.compress = compress
        self.partial = dest.with_name(dest.name + PARTIAL)
        self.journal = dest.with_name(dest.name + PARTIAL + ".json")
        self.members: dict[str, int] = {}
        self.offset = 0
        self.fh: IO[bytes] | None = None

    def check(self) -> None:
        if self.dest.is_dir():
            raise TransferError(f"{self.dest} is a directory; an archive must be a file")

    async def begin(self) -> None:
        self.check()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        state = await asyncio.to_thread(self._resumable)
        if state is not None:
            self.members, self.offset = state
            self.fh = await asyncio.to_thread(open, self.partial, "r+b")  # closed by finish() or close()
            self.fh.truncate(self.offset)
            self.fh.seek(self.offset)
        else:
            self.fh = await asyncio.to_thread(open, self.partial, "wb")
            self.journal.unlink(missing_ok=True)
        if LAYOUT_FILE not in self.members:
            await self._add(LAYOUT_FILE, len(LAYOUT_VERSION), one_chunk(LAYOUT_VERSION), None)
        if "blobs" not in self.members:
            await self._add_dir("blobs")

    def _resumable(self) -> tuple[dict[str, int], int] | None:
        try:
            state = json.loads(self.journal.read_bytes())
            members, offset = dict(state["members"]), int(state["offset"])
            if state.get("compress") != self.compress or self.partial.stat().st_size < offset:
                return None
            return members, offset
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has(self, digest: str, size: int) -> bool:
        return self.members.get(blob_member(digest)) == size

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes], progress: Progress) -> None:
        alg_dir = posixpath.dirname(blob_member(digest))
        if alg_dir not in self.members:
            await self._add_dir(alg_dir)
        await self._add(blob_member(digest), size, chunks, progress, digest)

    async def _add_dir(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        await self._add_member(name, info, one_chunk(b""), None, None)

    async def _add(
        self, name: str, size: int, chunks: AsyncIterator[bytes], progress: Progress | None, digest: str | None = None
    ) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        await self._add_member(name, info, chunks, progress, digest)

    async def _add_member(
        self,
        name: str,
        info: tarfile.TarInfo,
        chunks: AsyncIterator[bytes],
        progress: Progress | None,
        digest: str | None,
        *,
        journal: bool = True,
    ) -> None:
        """Append one member (header, data, padding), then record it in the journal. On any failure the file is
        cut back to where the member started."""
        fh = self.fh
        assert fh is not None
        start = self.offset
        header: bytes | None = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        hasher = hashlib.new(oci.digest_algorithm(digest)) if digest else None
        compressor: Any = None
        written = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if compressor is None and self.compress:
                    # Compressed layers don't shrink: store them (fast); compress the rest.
                    level = 0 if chunk[:2] == GZIP_MAGIC or chunk[:4] == ZSTD_MAGIC else 6
                    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
                if header is not None:
                    await asyncio.to_thread(self._emit, compressor, header, None)
                    header = None
                await asyncio.to_thread(self._emit, compressor, chunk, hasher)
                written += len(chunk)
                if progress is not None:
                    progress.add(len(chunk))
            if self.compress and compressor is None:
                compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
            if header is not None:
                await asyncio.to_thread(self._emit, compressor, header, None)
            if digest is not None:
                assert hasher is not None
                actual = f"{hasher.name}:{hasher.hexdigest()}"
                if actual != digest or written != info.size:
                    raise _mismatch(digest, actual, info.size, written)
            elif written != info.size:
                raise TransferError(f"{name}: wrote {written} bytes, not {info.size}")
            padding = (-written) % tarfile.BLOCKSIZE
            await asyncio.to_thread(self._emit, compressor, b"\0" * padding, None)
            if compressor is not None:
                await asyncio.to_thread(self._emit_raw, compressor.flush())
            await asyncio.to_thread(_flush, fh)
        except BaseException:
            with contextlib.suppress(Exception):
                fh.truncate(start)
                fh.seek(start)
            self.offset = start
            raise
        self.offset = fh.tell()
        if journal:
            self.members[name] = info.size
            await asyncio.to_thread(self._save_journal)

    def _emit(self, compressor: Any, data: bytes, hasher: Any) -> None:
        if hasher is not None:
            hasher.update(data)
        self._emit_raw(compressor.compress(data) if compressor is not None else data)

    def _emit_raw(self, data: bytes) -> None:
        assert self.fh is not None
        if data:
            self.fh.write(data)

    def _save_journal(self) -> None:
        state = {"compress": self.compress, "offset": self.offset, "members": self.members}
        _atomic_write(self.journal, json.dumps(state).encode())

    async def finish(self, entries: list[dict[str, Any]]) -> None:
        index = _index_json(entries)
        info = tarfile.TarInfo(INDEX_FILE)
        info.size, info.mode, info.mtime = len(index), 0o644, 0
        await self._add_member(INDEX_FILE, info, one_chunk(index), None, None, journal=False)  # a re-run rewrites it
        end = b"\0" * (2 * tarfile.BLOCKSIZE)
        await asyncio.to_thread(self._emit_raw, gzip.compress(end, mtime=0) if self.compress else end)
        assert self.fh is not None
        await asyncio.to_thread(_flush, self.fh)
        self.fh.close()
        self.fh = None
        await asyncio.to_thread(os.replace, self.partial, self.dest)
        self.journal.unlink(missing_ok=True)
        await asyncio.to_thread(fsync_dir, self.dest.parent)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def writer_for(dest: Path) -> Writer:
    name = dest.name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        return ArchiveWriter(dest, compress=not name.endswith(".tar"))
    return DirectoryWriter(dest)
