"""`moorage migrate-storage`, and `check-config`'s look at the storage backends: the command-line side of
storage.migrate and storage.factory.probe."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.config import Config

DB_FILE = "moorage.db"


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `migrate-storage` to `sub` (the `moorage` subparsers); `common` adds --config and --data-dir."""
    mig = sub.add_parser(
        "migrate-storage",
        help="copy a single-machine data dir (SQLite and files) into the storage the configuration names",
        description="Copy a single-machine registry (SQLite metadata and filesystem blobs in a data dir, written by "
        "any earlier Moorage) into the storage that [storage] names: PostgreSQL metadata and/or S3 blobs. "
        "Everything comes across (repositories with their settings and policies, images, tags, referrers, pull "
        "times, rules, templates, lifecycle state, signing keys and the generated admin, so tokens and keys "
        "issued before stay valid) except upload sessions in progress. Blobs are verified against their digests "
        "as they are copied; the metadata lands in one transaction once every blob is there. The target must be "
        "empty; an interrupted run is finished with --resume. No server may run on the data dir meanwhile.",
    )
    common(mig)
    mig.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="the single-machine data dir to copy (default: the data dir of --config / --data-dir)",
    )
    mig.add_argument("--metadata", metavar="URL", help="the target's [storage] metadata (postgresql://...)")
    mig.add_argument("--blobs", metavar="URL", help="the target's [storage] blobs (s3://BUCKET/prefix)")
    mig.add_argument("--resume", action="store_true", help="finish an interrupted migration into the same target")
    mig.set_defaults(func=migrate_storage)


def migrate_storage(args: argparse.Namespace, config: Config) -> int:
    """Copy the source data dir into the configured backends; print a JSON summary, or one line on failure."""
    import asyncio
    import json
    import sqlite3

    from registry import transfer
    from storage.errors import StorageError

    try:
        plan = _plan(args, config)
    except ValueError as e:
        print(f"moorage: migrate-storage: {e}", file=sys.stderr)
        return 1
    progress = transfer.Progress("migrate-storage", sys.stderr if sys.stderr.isatty() else None)
    try:
        report = asyncio.run(_migrate(config, plan, progress, resume=args.resume))
    except KeyboardInterrupt:
        print("moorage: migrate-storage interrupted; run it again with --resume to finish it", file=sys.stderr)
        return 130
    except (StorageError, ValueError, sqlite3.Error) as e:
        print(f"moorage: migrate-storage failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"moorage: migrate-storage failed: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: still one line, and what it was
        print(f"moorage: migrate-storage failed unexpectedly: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(json.dumps(report, indent=2))
    return 0


class _Plan:
    """What goes where: the source data dir, the target's backends, and which parts move."""

    def __init__(self, source: Path, target_dir: Path, metadata: str, blobs: str) -> None:
        self.source, self.target_dir, self.metadata, self.blobs = source, target_dir, metadata, blobs
        same_dir = source.resolve() == target_dir.resolve()
        self.shared = bool(metadata)  # PostgreSQL: keys and the generated admin go into the shared values
        self.copy_metadata = bool(metadata) or not same_dir  # SQLite in the same data dir stays where it is
        self.same_blobs = not blobs and same_dir  # the filesystem store of the same data dir

    def describe(self) -> str:
        meta = f"SQLite in {self.target_dir}"
        if self.metadata:
            from storage.postgres.connection import redact

            meta = redact(self.metadata)
        return f"{meta}, blobs in {self.blobs or self.target_dir}"


def _plan(args: argparse.Namespace, config: Config) -> _Plan:
    source = Path(args.source or config.server.data_dir)
    if not (source / DB_FILE).is_file():
        raise ValueError(f"{source} holds no single-machine registry ({DB_FILE} not found); name it with --source")
    plan = _Plan(source, config.server.data_dir, config.storage.metadata.reveal(), config.storage.blobs)
    if not plan.copy_metadata and plan.same_blobs:
        raise ValueError(
            f"the target is the source ({source}): name other storage with [storage] metadata / blobs in --config, "
            "or --metadata / --blobs"
        )
    return plan


async def _migrate(config: Config, plan: _Plan, progress: Any, *, resume: bool) -> dict[str, Any]:
    from registry.auth.principals import ADMIN_FILE, shared_admin_value
    from registry.auth.tokens import shared_key_values
    from storage.factory import S3Options, Stores, open_blob_store, open_stores
    from storage.migrate import migrate

    s3 = config.storage.s3
    options = S3Options(s3.endpoint_url, s3.region, s3.access_key_id, s3.secret_access_key.reveal())
    values: dict[str, bytes] = {}
    if plan.shared:  # what a single machine keeps in files, replicas keep in the shared store
        values = {**shared_key_values(plan.source / "keys"), **shared_admin_value(plan.source)}
    source = open_stores(plan.source, exclusive=True)  # refused while a server or a command has it open
    try:
        await source.open()
        if plan.copy_metadata:
            target = open_stores(plan.target_dir, metadata=plan.metadata, blobs=plan.blobs, s3=options)
        else:  # SQLite stays in the data dir: only the blobs move, beside the source's metadata and locks
            blobs = open_blob_store(plan.source, source.locks, blobs=plan.blobs, s3=options)
            target = Stores(source.meta, blobs, source.locks, source.changes)
        try:
            if plan.copy_metadata:
                await target.open()
            stats = await source.meta.storage_stats()
            progress.plan(stats["blobs"], stats["blob_bytes"])

            def step(done: int, copied: int) -> None:
                progress.blobs, progress.bytes = done, copied
                progress.draw()

            report = await migrate(
                source,
                target,
                source_name=str(plan.source.resolve()),
                target_name=plan.describe(),
                values=values,
                resume=resume,
                copy_metadata_too=plan.copy_metadata,
                same_blobs=plan.same_blobs,
                progress=step,
            )
        finally:
            if plan.copy_metadata:
                await target.close()
            else:
                await target.blobs.close()
    finally:
        await source.close()
    if plan.copy_metadata and not plan.shared:  # another data dir's SQLite: its keys and admin are files there
        _copy_identity(plan.source, plan.target_dir, ADMIN_FILE)
    return report.as_dict()


def _copy_identity(source: Path, target: Path, admin_file: str) -> None:
    if (source / "keys").is_dir():
        shutil.copytree(source / "keys", target / "keys", dirs_exist_ok=True)
    if (source / admin_file).is_file():
        shutil.copy2(source / admin_file, target / admin_file)


def check_storage(config: Config) -> tuple[list[str], list[str]]:
    """(problems, what answered) for the shared backends the configuration names (nothing for the data dir's)."""
    import asyncio

    from storage.factory import S3Options, probe

    s3 = config.storage.s3
    options = S3Options(s3.endpoint_url, s3.region, s3.access_key_id, s3.secret_access_key.reveal())
    return asyncio.run(probe(config.storage.metadata.reveal(), config.storage.blobs, options))
