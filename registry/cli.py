"""The `moorage` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from registry import __version__
from registry.config import Config, ConfigError, load


def _serve(args: argparse.Namespace, config: Config) -> int:
    from aiohttp import web

    from registry.app import create_app

    host, port = config.listen
    config.server.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(config)
    log = logging.getLogger("moorage")
    log.info(
        "Moorage %s serving on http://%s:%d with data in %s",
        __version__,
        host,
        port,
        config.server.data_dir.resolve(),
    )
    web.run_app(app, host=host, port=port, print=None, access_log=None, shutdown_timeout=30, handle_signals=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moorage", description="A local OCI registry that speaks Amazon ECR.")
    parser.add_argument("--version", action="version", version=f"moorage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the registry")
    serve.add_argument("--config", type=Path, help="TOML configuration file (see config.example.toml)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000)")
    serve.add_argument("--data-dir", type=Path, help="where blobs and metadata live (default ./data)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(
            args.config,
            {
                "server": {
                    "listen": getattr(args, "listen", None),
                    "data_dir": str(args.data_dir) if getattr(args, "data_dir", None) else None,
                }
            },
        )
    except ConfigError as e:
        print(f"moorage: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args, config))
