"""Pull-through rules through the API: who owns a rule, and the AWS CLI v1's URL fetching (issue 12, items 7, 9).

- Rules declared in the configuration file are read-only through the API (Delete/Update answer
  InvalidParameterException saying to change the file); they are rewritten from the file at every start, so a
  change through the API would silently come back. Rules created through the API are the API's, and stay
  across restarts.
- The AWS CLI v1 fetches any `http://` parameter value and sends the page instead of the URL. Moorage's error
  echoes the value it received and says how to stop the CLI doing that; with `cli_follow_urlparam = false` the
  same command works.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config, ecr_client

UPSTREAM = "http://127.0.0.1:9"  # never contacted: these tests only create, list and delete rules


def _config(extra_rules: str = "") -> str:
    return auth_config(
        extra=(
            '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
            f'[[pull_through.rules]]\necr_repository_prefix = "cfg"\nupstream_registry_url = "{UPSTREAM}"\n'
            + extra_rules
        )
    )


def _code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def test_configuration_rules_are_read_only_through_the_api(make_server, tmp_path: Path):
    srv: MoorageServer = make_server(_config())
    ecr = ecr_client(srv)
    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="api", upstreamRegistryUrl=UPSTREAM)
    prefixes = {r["ecrRepositoryPrefix"] for r in ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]}
    assert prefixes == {"cfg", "api"}

    with pytest.raises(ClientError) as e:
        ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix="cfg")
    assert _code(e) == "InvalidParameterException"
    assert "configuration file" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        ecr.update_pull_through_cache_rule(
            ecrRepositoryPrefix="cfg",
            credentialArn="arn:aws:secretsmanager:us-east-1:000000000000:secret:ecr-pullthroughcache/x",
        )
    assert _code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="cfg", upstreamRegistryUrl=UPSTREAM)
    assert _code(e) == "PullThroughCacheRuleAlreadyExistsException"

    # After a restart both rules are there, as they were: nothing came back that was deleted, nothing was lost.
    srv.stop()
    srv.start()
    ecr = ecr_client(srv)
    prefixes = {r["ecrRepositoryPrefix"] for r in ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]}
    assert prefixes == {"cfg", "api"}
    ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix="api")  # the API's own rule: deletable
    srv.stop()
    srv.start()
    ecr = ecr_client(srv)
    prefixes = {r["ecrRepositoryPrefix"] for r in ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]}
    assert prefixes == {"cfg"}


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>It works!</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_page() -> Iterator[str]:
    """A plain web page on loopback: what the AWS CLI v1 fetches when given an http:// value."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _aws(srv: MoorageServer, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ADMIN_KEY,
        "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_MAX_ATTEMPTS": "1",
    }
    aws = Path(sys.executable).with_name("aws")
    return subprocess.run(
        [str(aws), "ecr", *args, "--endpoint-url", srv.url], env=env, capture_output=True, text=True, timeout=120
    )


def test_aws_cli_v1_url_fetching_is_explained_and_the_fix_works(make_server, tmp_path: Path, web_page: str):
    srv: MoorageServer = make_server(_config())
    plain = tmp_path / "plain.cfg"
    plain.write_text("[default]\n")
    args = ("create-pull-through-cache-rule", "--ecr-repository-prefix", "web", "--upstream-registry-url", web_page)

    p = _aws(srv, plain, *args)
    assert p.returncode != 0, p.stdout
    assert "InvalidParameterException" in p.stderr, p.stderr
    assert "It works!" in p.stderr, "the error should echo the value Moorage received"
    assert "cli_follow_urlparam = false" in p.stderr, p.stderr

    fixed = tmp_path / "fixed.cfg"
    fixed.write_text("[default]\ncli_follow_urlparam = false\n")
    p = _aws(srv, fixed, *args)
    assert p.returncode == 0, p.stderr
    rules = ecr_client(srv).describe_pull_through_cache_rules(ecrRepositoryPrefixes=["web"])["pullThroughCacheRules"]
    assert [r["upstreamRegistryUrl"] for r in rules] == [web_page]
