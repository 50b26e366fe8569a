"""What every part of a transfer shares: the error a user sees, the names an OCI image layout uses, and how image
references are read."""

from __future__ import annotations

from registry import oci
from registry.errors import RegistryError

REF_NAME = "org.opencontainers.image.ref.name"
REPOSITORY_ANNOTATION = "io.moorage.repository"  # export names each image's repository, so import can restore it
OCI_INDEX_FOR = "io.moorage.oci-index-for"  # an OCI index export made for a Docker manifest (see exporter.py)
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = b'{"imageLayoutVersion": "1.0.0"}\n'
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class TransferError(Exception):
    """Bad input or a refused operation: the message is one line for the user."""


def parse_reference(text: str) -> tuple[str, str | None]:
    """`REPOSITORY[:TAG]` -> (repository, tag or None), both validated."""
    if "@" in text:
        raise TransferError(f"{text!r}: digest references are not supported here; use REPOSITORY[:TAG]")
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        name, tag = text, ""
    try:
        oci.validate_name(name)
        if sep and "/" not in tag:
            oci.validate_tag(tag)
    except RegistryError as e:
        raise TransferError(f"{text!r}: {e.message}") from None
    return name, tag or None


def split_ref(ref: str | None) -> tuple[str | None, str | None]:
    """An image reference as layouts and tarballs spell it -> (repository or None, tag or None).

    `v1` is a tag; `team/app:v1` and `registry.example:5000/team/app:v1` name a repository too (the registry
    host is dropped).
    """
    if not ref:
        return None, None
    ref = ref.split("@", 1)[0]
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, ""
    if not name:
        return None, tag or None
    if "/" not in name and not sep:  # a bare word: a tag
        return None, name
    parts = name.split("/")
    if len(parts) > 1 and (parts[0] == "localhost" or "." in parts[0] or ":" in parts[0]):
        parts = parts[1:]
    return "/".join(parts) or None, tag or None


def blob_member(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"
