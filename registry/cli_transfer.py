"""`moorage import` and `moorage export`: the command-line side of registry.transfer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.config import Config


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the `import` and `export` subcommands to `sub` (the `moorage` subparsers); `common` adds --config and
    --data-dir."""
    imp = sub.add_parser(
        "import",
        help="load an OCI image layout, OCI archive or docker save tarball into a repository",
        description="Load an OCI image layout (a directory), an OCI archive (a .tar or .tar.gz of one) or a "
        "`docker save` tarball into the registry. Without TAG, the image's own tag is used (every tagged image "
        "of the source, under its own tag); without REPOSITORY, the repositories the source names (a Moorage "
        "export, or docker save's RepoTags). Importing into a pull-through cache repository "
        "(<prefix>/<upstream repository>) pre-warms the cache. Works while a server runs on the data dir.",
    )
    common(imp)
    imp.add_argument("source", metavar="SOURCE", type=Path, help="layout directory, OCI archive or docker save tar")
    imp.add_argument("reference", metavar="REPOSITORY[:TAG]", nargs="?", help="where to import the image(s)")
    imp.set_defaults(func=_import)

    exp = sub.add_parser(
        "export",
        help="write images to an OCI image layout or OCI archive (for air-gapped sites)",
        description="Write images (with every platform of a multi-platform image, and every blob) to an OCI image "
        "layout (DEST a directory) or an OCI archive (DEST ending in .tar, .tar.gz or .tgz). REPOSITORY without "
        "a tag exports all its tags. Re-running an interrupted export resumes it.",
    )
    common(exp)
    exp.add_argument("references", metavar="REPOSITORY[:TAG]", nargs="+", help="images to export")
    exp.add_argument("dest", metavar="DEST", type=Path, help="layout directory, or archive (.tar, .tar.gz, .tgz)")
    exp.set_defaults(func=_export)


def _import(args: argparse.Namespace, config: Config) -> int:
    from registry import transfer

    return _run(
        config,
        "import",
        lambda: transfer.prepare_import(args.source, args.reference),
        transfer.import_source,
    )


def _export(args: argparse.Namespace, config: Config) -> int:
    from registry import transfer

    def prepare() -> Any:
        request = transfer.prepare_export(args.references, args.dest)
        db = config.server.data_dir / "moorage.db"
        if not config.storage.metadata.reveal() and not db.is_file():  # (replicas: the metadata is in PostgreSQL)
            raise transfer.TransferError(f"{config.server.data_dir} holds no registry data ({db.name} not found)")
        return request

    return _run(config, "export", prepare, transfer.export_images)


def _run(config: Config, verb: str, prepare: Callable[[], Any], job: Callable[[Any, Any, Any], Any]) -> int:
    """Check the arguments with `prepare()`, then run `job(services, prepared, progress)` against the data dir;
    print its JSON summary, or one line on failure."""
    import asyncio
    import json
    import sqlite3
    import tarfile

    from registry import transfer
    from registry.errors import RegistryError
    from storage.errors import StorageError

    progress = transfer.Progress(verb, sys.stderr if sys.stderr.isatty() else None)

    async def main(prepared: Any) -> Any:
        from registry.app import open_services  # the server's whole stack: only once the arguments are good

        async with open_services(config) as services:
            return await job(services, prepared, progress)

    try:
        summary = asyncio.run(main(prepare()))
    except KeyboardInterrupt:
        print(f"moorage: {verb} interrupted; run it again to finish it", file=sys.stderr)
        return 130
    except transfer.TransferError as e:
        print(f"moorage: {e}", file=sys.stderr)
        return 1
    except RegistryError as e:
        print(f"moorage: {verb} failed: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"moorage: {verb} failed: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except (StorageError, tarfile.TarError, sqlite3.Error, ValueError) as e:
        print(f"moorage: {verb} failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: still one line, and what it was
        print(f"moorage: {verb} failed unexpectedly: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
