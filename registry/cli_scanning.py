"""`moorage vuln-db import FILE...` and `moorage vuln-db status`: the vulnerability database that scans match
packages against, loaded offline from OSV's exports."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from registry.config import Config

Offline = Callable[[Config, Callable[[Any], Any]], int]


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None], offline: Offline) -> None:
    """Add `vuln-db` to `sub` (the `moorage` subparsers); `common` adds --config and --data-dir; `offline` runs a
    job against the stores and prints its JSON."""
    db = sub.add_parser("vuln-db", help="the vulnerability database scans use (OSV exports, loaded offline)")
    commands = db.add_subparsers(dest="vuln_db_command", required=True)
    load = commands.add_parser(
        "import",
        help="load OSV records: per-ecosystem all.zip exports, or JSON files",
        description="Load OSV vulnerability records into the registry's database: OSV's per-ecosystem exports "
        "(https://osv-vulnerabilities.storage.googleapis.com/<ECOSYSTEM>/all.zip, e.g. Debian, Alpine, PyPI, npm), "
        "a JSON file of one record, or a JSON list of records. A record already loaded is replaced only by a "
        "newer one (its `modified`). Images in repositories scanned CONTINUOUS_SCAN that hold a package a new or "
        "changed record affects are queued for a rescan, which a running server does within [scanning] "
        "sweep_interval. Works while a server runs on the same storage.",
    )
    common(load)
    load.add_argument("files", nargs="+", metavar="FILE")
    load.set_defaults(func=lambda args, config: offline(config, _importer(args.files)))
    status = commands.add_parser("status", help="how many records are loaded, and when the last was")
    common(status)
    status.set_defaults(func=lambda args, config: offline(config, _status))


def _importer(files: list[str]) -> Callable[[Any], Any]:
    async def job(services: Any) -> Any:
        from registry.scanning.service import import_database

        try:
            read, changed, rescans = await import_database(
                services.meta, services.settings, services.images, files, time.time()
            )
        except OSError as e:
            raise ValueError(f"cannot read {e.filename or 'a file'}: {e.strerror or e}") from None
        count, _ = await services.meta.vulnerability_stats()
        return {"recordsRead": read, "recordsNewOrChanged": changed, "rescansQueued": rescans, "recordsLoaded": count}

    return job


async def _status(services: Any) -> Any:
    from datetime import UTC, datetime

    count, updated_at = await services.meta.vulnerability_stats()
    when = datetime.fromtimestamp(updated_at, UTC).isoformat() if updated_at is not None else None
    return {"recordsLoaded": count, "updatedAt": when}
