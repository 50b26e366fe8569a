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


def _credentials(args: argparse.Namespace, config: Config) -> int:
    """Print `export` lines for the generated admin principal's keys."""
    import json

    from registry.auth.principals import ADMIN_FILE

    path = config.server.data_dir / ADMIN_FILE
    if not path.exists():
        print(
            f"moorage: {path} does not exist (it is created on the first start when no [[auth.principals]] are "
            "configured)",
            file=sys.stderr,
        )
        return 1
    creds = json.loads(path.read_text())
    print(f"export AWS_ACCESS_KEY_ID={creds['access_key_id']}")
    print(f"export AWS_SECRET_ACCESS_KEY={creds['secret_access_key']}")
    print(f"export AWS_DEFAULT_REGION={config.registry.region}")
    return 0


def _get_login_password(args: argparse.Namespace, config: Config) -> int:
    """Like `aws ecr get-login-password`: GetAuthorizationToken with the environment's AWS credentials."""
    import base64
    import os

    import botocore.exceptions
    import botocore.session

    host, port = config.listen
    endpoint = args.endpoint or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or config.registry.region
    try:
        client = botocore.session.get_session().create_client("ecr", endpoint_url=endpoint, region_name=region)
        data = client.get_authorization_token()["authorizationData"][0]
    except botocore.exceptions.NoCredentialsError:
        print(
            "moorage: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            '(for the generated admin: eval "$(moorage credentials)")',
            file=sys.stderr,
        )
        return 1
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        print(f"moorage: {e}", file=sys.stderr)
        return 1
    print(base64.b64decode(data["authorizationToken"]).decode().split(":", 1)[1])
    return 0


def _rotate_signing_key(args: argparse.Namespace, config: Config) -> int:
    from registry.auth.tokens import KeyRing

    ring = KeyRing(config.server.data_dir / "keys")
    ring.load()
    kid = ring.rotate()
    print(f"new signing key {kid}; restart the server to sign with it (tokens signed by older keys stay valid)")
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

    creds = sub.add_parser("credentials", help="print export lines for the generated admin principal's keys")
    _common(creds)
    creds.set_defaults(func=_credentials)

    login = sub.add_parser("get-login-password", help="print a registry token (like aws ecr get-login-password)")
    _common(login)
    login.add_argument("--endpoint", help="the registry's URL (default: from --config, else http://127.0.0.1:5000)")
    login.set_defaults(func=_get_login_password)

    rotate = sub.add_parser("rotate-signing-key", help="create a new token signing key and make it current")
    _common(rotate)
    rotate.set_defaults(func=_rotate_signing_key)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (see config.example.toml)")
    p.add_argument("--data-dir", type=Path, help="the data directory (default ./data, or the config's)")


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
    # Only the server logs at the configured level; one-shot commands print their result and nothing else.
    logging.basicConfig(
        level=config.log.level.upper() if args.command == "serve" else "WARNING",
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args, config))
