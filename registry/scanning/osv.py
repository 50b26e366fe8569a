"""Reading OSV exports: the records of a vulnerability database, as OSV publishes them. Pure (reads one file).

An export is one of: a zip of one JSON record per member (OSV's `<ECOSYSTEM>/all.zip`, members named
`<ID>.json`), a file holding one JSON record, or a file holding a JSON list of records. Each record must be a
JSON object with a string `id`; anything else raises ValueError naming the member (or the list's index).

Sizes are bounded before anything is decompressed or parsed: a member whose declared or actual size passes
`max_record_bytes`, a zip whose members together declare more than `max_total_bytes`, or more members than
`max_members`, raises ValueError (a zip bomb is refused, not unpacked). A zip member's read stops at its
declared size, so a member that lies about its size cannot run past the bound either.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from typing import Any

MAX_RECORD_BYTES = 16 * 1024 * 1024  # one record; OSV's largest are a few hundred KiB
MAX_TOTAL_BYTES = 8 * 1024 * 1024 * 1024  # a whole export, uncompressed
MAX_MEMBERS = 2_000_000
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip


def read_export(
    path: str | os.PathLike[str],
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Iterator[dict[str, Any]]:
    """The OSV records of an export, in the export's order (see the module's docstring)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic in _ZIP_MAGIC:
        yield from _read_zip(path, max_record_bytes, max_total_bytes, max_members)
        return
    size = os.path.getsize(path)
    if size > max_total_bytes:
        raise ValueError(f"{os.fspath(path)}: {size} bytes, more than the {max_total_bytes} allowed")
    with open(path, "rb") as f:
        document = _parse(f.read(), os.path.basename(path))
    if isinstance(document, list):
        for index, record in enumerate(document):
            yield _checked(record, f"{os.path.basename(path)}[{index}]")
    else:
        yield _checked(document, os.path.basename(path))


def _read_zip(
    path: str | os.PathLike[str], max_record_bytes: int, max_total_bytes: int, max_members: int
) -> Iterator[dict[str, Any]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{os.fspath(path)}: not a readable zip ({e})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_members:
            raise ValueError(f"{os.fspath(path)}: {len(members)} members, more than the {max_members} allowed")
        declared = sum(m.file_size for m in members)
        if declared > max_total_bytes:
            raise ValueError(
                f"{os.fspath(path)}: its members unpack to {declared} bytes, more than the {max_total_bytes} "
                "allowed (a zip bomb?)"
            )
        for member in members:
            if not member.filename.endswith(".json"):
                continue  # OSV's exports hold only records; anything else is not one
            if member.file_size > max_record_bytes:
                raise ValueError(
                    f"{member.filename}: unpacks to {member.file_size} bytes, more than the {max_record_bytes} "
                    "allowed for a record (a zip bomb?)"
                )
            try:
                with archive.open(member) as f:
                    data = f.read(max_record_bytes + 1)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
                raise ValueError(f"{member.filename}: cannot be unpacked ({e})") from None
            if len(data) > max_record_bytes:  # not reachable while zipfile stops at the declared size
                raise ValueError(f"{member.filename}: more than the {max_record_bytes} bytes allowed for a record")
            yield _checked(_parse(data, member.filename), member.filename)


def _parse(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None


def _checked(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: an OSV record is a JSON object, not {type(record).__name__}")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise ValueError(f"{where}: an OSV record needs a string id")
    return record
