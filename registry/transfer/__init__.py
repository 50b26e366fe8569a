"""Air-gapped transfer: `moorage export` writes images out as an OCI image layout or OCI archive, and
`moorage import` loads an OCI image layout, an OCI archive or a `docker save` tarball into a repository.

Both work on a data dir while a server runs on it (through `registry.app.Services`; SQLite serializes the
writers, and the server drops its caches when it sees another process's write).

The parts: `sources` reads what an import is given; `planning` chooses the images of a source and, for an OCI
layout, what each holds; `docker_archive` does that for a `docker save` tarball; `importer` stores it all.
`exporter` gathers what an export writes, and `writers` write it as a layout directory or an archive. `common`
(the error, the layout's names, references) and `progress` serve both directions.
"""

from registry.transfer.common import TransferError, parse_reference
from registry.transfer.exporter import ExportRequest, export_images, prepare_export
from registry.transfer.importer import ImportRequest, import_source, prepare_import
from registry.transfer.progress import Progress
from registry.transfer.sources import DirectorySource, GzipTarSource, Source, TarSource, open_source
from registry.transfer.writers import ArchiveWriter, DirectoryWriter

__all__ = [
    "ArchiveWriter",
    "DirectorySource",
    "DirectoryWriter",
    "ExportRequest",
    "GzipTarSource",
    "ImportRequest",
    "Progress",
    "Source",
    "TarSource",
    "TransferError",
    "export_images",
    "import_source",
    "open_source",
    "parse_reference",
    "prepare_export",
    "prepare_import",
]
