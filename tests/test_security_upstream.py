"""Security of the pull-through cache's upstream side (issue 11, items 5-7), over the real HTTP surface.

- Server-side request forgery: which upstreams rules may name (`[pull_through] allowed_upstreams`), checked
  when a rule is created (ECR API or configuration), on every redirect and token realm, and on the addresses
  a name resolves to when connecting. Credentials never follow a redirect to another host, and an upstream's
  error bodies are never shown to clients.
- Upstream manifests up to 4 MiB are read whole; larger ones get a clear OCI error.
- Blob downloads are bounded by the declared size, Content-Length and `blob_download_timeout`, and a failed
  one leaves nothing behind.

Network rule: everything here is on loopback. Addresses such as 169.254.169.254 only ever appear in rules
that are refused before anything is contacted (with `offline = true` as a second guard), never in one that is
pulled through; the connect-time check is exercised with `localhost`, which resolves to loopback. The hostile
upstreams are small aiohttp servers run in a thread of the test process, on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from botocore.exceptions import ClientError

from tests.helpers import wait_for
from tests.oci import ALL_MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, digest_of, error_codes, get_manifest, make_image
from tests.server import AUTH_OFF, MoorageServer, auth_config, blob_file, ecr_client, moorage_cli
from tests.upstreams import DistributionRegistry, push_image

MakeServer = Callable[..., MoorageServer]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MiB = 1024 * 1024
SECRET = "s3cr3t-internal-0f9a8b"  # what an internal service's answers contain; must never reach a client


# -- a scriptable upstream, in-process ---------------------------------------------------------------------


class FakeUpstream:
    """An HTTP server on a loopback address, run on its own event loop in a thread. Every request is recorded
    (method, path, headers) before `handler` answers it; `sent` counts the body bytes handlers wrote."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.ip = ip
        self.port = 0
        self.handler: Handler = self._not_found
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.sent = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        async def dispatch(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.method, request.path_qs, dict(request.headers)))
            return await self.handler(request)

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", dispatch)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.ip, 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the fake upstream did not start"
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    @staticmethod
    async def _not_found(request: web.Request) -> web.StreamResponse:
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "no"}]}, status=404)

    async def stream(self, request: web.Request, chunks: Iterator[bytes], delay: float = 0.0, **kw: Any) -> Any:
        """A streamed 200 (Content-Length if given as `length`, else chunked) that writes `chunks`, with `delay`
        seconds between them, until they run out or the client goes away."""
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if kw.get("length") is not None:
            resp.content_length = kw["length"]
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for chunk in chunks:
                await resp.write(chunk)
                self.sent += len(chunk)
                if delay:
                    await asyncio.sleep(delay)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: that is the point
        return resp


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeUpstream]]:
    made: list[FakeUpstream] = []

    def make(ip: str = "127.0.0.1") -> FakeUpstream:
        made.append(FakeUpstream(ip).start())
        return made[-1]

    yield make
    for f in made:
        f.stop()


def registry(manifests: dict[str, tuple[bytes, str]], blobs: dict[str, Handler] | None = None) -> Handler:
    """A handler serving `/v2/`, manifests by path tail (`repo/manifests/ref`) and blob handlers by digest."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path in ("/v2/", "/v2"):
            return web.json_response({})
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", request.path)
        if m and m[2] == "manifests" and f"{m[1]}/manifests/{m[3]}" in manifests:
            body, media_type = manifests[f"{m[1]}/manifests/{m[3]}"]
            return web.Response(
                body=body, headers={"Content-Type": media_type, "Docker-Content-Digest": digest_of(body)}
            )
        if m and m[2] == "blobs" and blobs and m[3] in blobs:
            return await blobs[m[3]](request)
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}, status=404)

    return handle


# -- Moorage -----------------------------------------------------------------------------------------------


def config(*rules: tuple[str, str], allowed: list[str] | None, auth: str = AUTH_OFF, extra: str = "", **kw: Any) -> str:
    """A Moorage config with `allowed_upstreams` (None: the default), `[pull_through]` settings and rules."""
    out = auth + "[pull_through]\n"
    if allowed is not None:
        out += f"allowed_upstreams = {json.dumps(allowed)}\n"
    out += "".join(f"{key} = {json.dumps(value)}\n" for key, value in kw.items())
    for prefix, url in rules:
        out += f'[[pull_through.rules]]\necr_repository_prefix = "{prefix}"\nupstream_registry_url = "{url}"\n'
    return out + extra


def message_of(r: requests.Response) -> str:
    error_codes(r)  # the OCI error shape
    return " ".join(e["message"] for e in r.json()["errors"])


def leftovers(srv: MoorageServer) -> list[str]:
    """Files under uploads/ (spools and their size notes)."""
    return sorted(p.name for p in (srv.data_dir / "uploads").iterdir())


def linked(srv: MoorageServer, digest: str) -> int:
    with sqlite3.connect(f"file:{srv.data_dir / 'moorage.db'}?mode=ro", uri=True) as db:
        (n,) = db.execute("SELECT count(*) FROM repository_blobs WHERE digest = ?", (digest,)).fetchone()
        (b,) = db.execute("SELECT count(*) FROM blobs WHERE digest = ?", (digest,)).fetchone()
    return n + b


def ecr_code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


# == 5. server-side request forgery =========================================================================

FORBIDDEN_ALWAYS = [
    "169.254.169.254",
    "http://169.254.169.254",
    "http://169.254.169.254:80",
    "http://169.254.170.2",
    "0.0.0.0:5000",
    "http://0.0.0.0",
    "224.0.0.1",
    "http://255.255.255.255",
    "http://100.100.100.200",
]


def test_create_rule_refuses_metadata_and_unlisted_upstreams(make_server: MakeServer):
    # offline: a second guard, so that even a rule wrongly accepted here is never contacted.
    srv = make_server(config(allowed=None, auth=auth_config(), offline=True))
    ecr = ecr_client(srv)
    for url in [*FORBIDDEN_ALWAYS, "http://127.0.0.1:5000", "http://10.0.0.1", "http://192.168.1.1:5000"]:
        with pytest.raises(ClientError) as e:
            ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="ssrf", upstreamRegistryUrl=url)
        assert ecr_code(e) == "UnsupportedUpstreamRegistryException", (url, e.value.response)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        message = e.value.response["Error"]["Message"]
        why = "Moorage never contacts it" if url in FORBIDDEN_ALWAYS else "in [pull_through] allowed_upstreams"
        assert message.startswith(f"The upstream registry '{url}' is not supported here: ") and why in message, url
    assert ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"] == []
    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="hub", upstreamRegistryUrl="registry-1.docker.io")

    operator = ["registry-1.docker.io", "ghcr.io", "*.example.com", "127.0.0.1:5001", "10.0.0.0/8", "169.254.0.0/15"]
    srv = make_server(config(allowed=operator, auth=auth_config(), offline=True))
    ecr = ecr_client(srv)
    for i, url in enumerate(["ghcr.io", "mirror.example.com", "http://127.0.0.1:5001", "http://10.1.2.3:5000"]):
        ecr.create_pull_through_cache_rule(ecrRepositoryPrefix=f"ok{i}", upstreamRegistryUrl=url)
    refused = [*FORBIDDEN_ALWAYS, "quay.io", "example.com", "http://127.0.0.1:5002", "http://127.0.0.2:5001"]
    for url in refused:
        with pytest.raises(ClientError) as e:
            ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="ssrf", upstreamRegistryUrl=url)
        assert ecr_code(e) == "UnsupportedUpstreamRegistryException", (url, e.value.response)
    assert len(ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]) == 4


@pytest.mark.parametrize(
    ("allowed", "url"),
    [(None, "http://169.254.169.254"), (["*", "0.0.0.0/0"], "http://169.254.169.254"), (None, "http://127.0.0.1:5001")],
)
def test_config_rule_with_a_forbidden_upstream_is_refused_at_start(tmp_path: Path, allowed: list[str] | None, url: str):
    path = tmp_path / "moorage.toml"
    path.write_text(config(("hub", url), allowed=allowed, offline=True))
    checked = moorage_cli("check-config", path, timeout=30)
    assert checked.returncode != 0, checked.stdout
    assert "pull_through.rules[0].upstream_registry_url" in checked.stderr + checked.stdout
    serve = ["serve", "--config", str(path), "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0"]
    served = moorage_cli(*serve, timeout=30)
    assert served.returncode != 0 and "upstream_registry_url" in served.stderr + served.stdout


def test_addresses_are_checked_when_connecting(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    """`localhost` may be named, but it resolves to loopback: refused unless the address is listed too."""
    up = fake()
    img = make_image(1)
    up.handler = registry({"team/app/manifests/v1": (img.manifest, OCI_MANIFEST)})
    rule = ("lh", f"http://localhost:{up.port}")
    srv = make_server(config(rule, allowed=["localhost"]))
    r = get_manifest(srv, "lh/team/app", "v1")
    assert r.status_code == 502, (r.status_code, r.text)
    message = message_of(r)
    assert "loopback" in message and "allowed_upstreams" in message, message
    assert up.requests == [], "the loopback upstream was contacted"

    srv = make_server(config(rule, allowed=["localhost", "127.0.0.1", "::1"]))
    r = get_manifest(srv, "lh/team/app", "v1")
    assert r.status_code == 200 and r.content == img.manifest, (r.status_code, r.text)
    assert up.paths() == ["/v2/team/app/manifests/v1"]


def test_a_stored_rule_is_held_to_the_current_allowlist(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    """A rule created under a wider allowlist is refused at pull time (and by Validate) after it narrows."""
    up = fake()
    img = make_image(1)
    up.handler = registry({"team/app/manifests/v1": (img.manifest, OCI_MANIFEST)})
    srv = make_server(config(allowed=["127.0.0.1"], auth=auth_config()))
    ecr = ecr_client(srv)
    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="old", upstreamRegistryUrl=up.url)
    srv.stop()
    srv.config_path.write_text(config(allowed=None, auth=auth_config()))
    srv.start()
    valid = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix="old")
    assert valid["isValid"] is False and "allowed_upstreams" in valid["failure"], valid
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    r = requests.get(
        f"{srv.url}/v2/old/team/app/manifests/v1",
        headers={"Accept": ALL_MANIFEST_TYPES, "Authorization": f"Basic {token}"},
        timeout=30,
    )
    assert r.status_code == 502 and "allowed_upstreams" in message_of(r), (r.status_code, r.text)
    assert up.requests == []


def _image_with_redirected_blob(up: FakeUpstream, target: str) -> tuple[bytes, bytes]:
    """An upstream whose manifest is served and whose layer GET redirects to `target` + /storage/<digest>."""
    img = make_image(1, 4096)
    layer = img.layers[0]

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{target}/storage/{digest_of(layer)}")

    up.handler = registry({"team/app/manifests/v1": (img.manifest, OCI_MANIFEST)}, {digest_of(layer): redirect})
    return img.manifest, layer


def test_redirect_to_a_host_not_allowed_is_not_followed(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    up, other = fake("127.0.0.1"), fake("127.0.0.2")
    _, layer = _image_with_redirected_blob(up, other.url)
    srv = make_server(config(("up", up.url), allowed=[f"127.0.0.1:{up.port}"]))
    assert get_manifest(srv, "up/team/app", "v1").status_code == 200
    r = requests.get(f"{srv.url}/v2/up/team/app/blobs/{digest_of(layer)}", timeout=30)
    assert r.status_code == 502, (r.status_code, r.content[:200])
    assert "127.0.0.2" in message_of(r) and "allowed_upstreams" in message_of(r)
    assert other.requests == [], "the redirect to a host not allowed was followed"
    assert not blob_file(srv, digest_of(layer)).exists()


def test_credentials_never_follow_a_redirect_to_another_host(
    make_server: MakeServer, fake: Callable[..., FakeUpstream]
):
    """The upstream wants Basic credentials; its blob GET redirects to storage on another (allowed) host, which
    gets the request without them."""
    up, storage = fake("127.0.0.1"), fake("127.0.0.2")
    manifest, layer = _image_with_redirected_blob(up, storage.url)
    served = up.handler

    async def basic_auth(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "").startswith("Basic "):
            return await served(request)
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="upstream"'})

    async def storage_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=layer)

    up.handler, storage.handler = basic_auth, storage_handler
    secrets = '[secrets.up]\nusername = "moorage"\npassword = "upstream-password"\n'
    rules = (
        f'[[pull_through.rules]]\necr_repository_prefix = "up"\nupstream_registry_url = "{up.url}"\ncredential = "up"\n'
    )
    srv = make_server(config(allowed=["127.0.0.1", "127.0.0.2"], extra=rules + secrets))
    assert get_manifest(srv, "up/team/app", "v1").content == manifest
    r = requests.get(f"{srv.url}/v2/up/team/app/blobs/{digest_of(layer)}", timeout=30)
    assert r.status_code == 200 and r.content == layer, (r.status_code, r.content[:200])
    assert [p for p in storage.paths()] == [f"/storage/{digest_of(layer)}"]
    assert all("Authorization" not in headers for _, _, headers in storage.requests), storage.requests
    assert any(h.get("Authorization", "").startswith("Basic ") for _, p, h in up.requests if "/blobs/" in p)


def _bearer_upstream(up: FakeUpstream, realm: str) -> bytes:
    img = make_image(1)
    served = registry({"team/app/manifests/v1": (img.manifest, OCI_MANIFEST)})

    async def bearer(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") == "Bearer the-token":
            return await served(request)
        challenge = f'Bearer realm="{realm}",service="fake",scope="repository:team/app:pull"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    up.handler = bearer
    return img.manifest


async def _token(request: web.Request) -> web.StreamResponse:
    return web.json_response({"token": "the-token", "expires_in": 300})


def test_token_realm_is_held_to_the_allowlist(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    up, auth = fake("127.0.0.1"), fake("127.0.0.2")
    manifest = _bearer_upstream(up, f"{auth.url}/token")
    auth.handler = _token
    secrets = '[secrets.up]\nusername = "moorage"\npassword = "upstream-password"\n'
    rules = (
        f'[[pull_through.rules]]\necr_repository_prefix = "up"\nupstream_registry_url = "{up.url}"\ncredential = "up"\n'
    )

    srv = make_server(config(allowed=["127.0.0.1"], extra=rules + secrets))
    r = get_manifest(srv, "up/team/app", "v1")
    assert r.status_code == 502 and "127.0.0.2" in message_of(r), (r.status_code, r.text)
    assert auth.requests == [], "the credentials went to a token realm that is not allowed"

    # Allowed: the realm the upstream declares gets the Basic credentials (to issue a token), nobody else.
    srv = make_server(config(allowed=["127.0.0.1", "127.0.0.2"], extra=rules + secrets))
    before = len(up.requests)
    r = get_manifest(srv, "up/team/app", "v1")
    assert r.status_code == 200 and r.content == manifest, (r.status_code, r.text)
    ((_, path, headers),) = auth.requests
    assert path.startswith("/token?") and headers["Authorization"].startswith("Basic ")
    assert [h.get("Authorization") for _, _, h in up.requests[before:]] == [None, "Bearer the-token"]


def test_upstream_error_bodies_are_not_shown_to_clients(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    up = fake()
    answers = {
        "plain": web.Response(status=500, text=f"internal service {SECRET} at /admin"),
        "json": web.json_response({"errors": [{"code": "DENIED", "message": SECRET}], "detail": SECRET}, status=403),
        "html": web.Response(status=404, text=f"<html>{SECRET}</html>", content_type="text/html"),
        "metadata": web.json_response({"Code": "Success", "AccessKeyId": SECRET}, status=400),
    }

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path in ("/v2/", "/v2"):
            return web.Response(status=500, text=SECRET)
        return answers[request.path.split("/")[2]]

    up.handler = handle
    srv = make_server(config(("up", up.url), allowed=["127.0.0.1"], auth=auth_config()))
    ecr = ecr_client(srv)
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    for name in answers:
        r = requests.get(
            f"{srv.url}/v2/up/{name}/app/manifests/v1",
            headers={"Accept": ALL_MANIFEST_TYPES, "Authorization": f"Basic {token}"},
            timeout=30,
        )
        assert r.status_code >= 400 and error_codes(r), (name, r.status_code, r.text)
        assert SECRET not in r.text, (name, r.text)
    valid = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix="up")
    assert valid["isValid"] is False and SECRET not in json.dumps(valid), valid


# == 6. large manifests =====================================================================================


def big_index(n: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An index of `n` distinct single-layer manifests sharing one config and one layer."""
    config_blob = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(512)
    children = []
    for i in range(n):
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config_blob),
                "size": len(config_blob),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(layer), "size": len(layer)}
            ],
            "annotations": {"n": str(i)},
        }
        children.append((json.dumps(doc).encode(), b""))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest_of(m),
                "size": len(m),
                "platform": {"architecture": f"arch{i}", "os": "linux"},
            }
            for i, (m, _) in enumerate(children)
        ],
    }
    return json.dumps(index, indent=1).encode(), [(config_blob, layer), *children]


def test_large_index_from_distribution_is_read_whole(make_server: MakeServer, tmp_path: Path):
    index, ((config_blob, layer), *children) = big_index(1000)
    assert len(index) > 128 * 1024
    up = DistributionRegistry(tmp_path / "distribution").start()
    try:
        push_image(up.url, "team/big", digest_of(children[0][0]), children[0][0], OCI_MANIFEST, [config_blob, layer])
        session = requests.Session()  # one connection for the other 999
        for child, _ in children[1:]:
            r = session.put(
                f"{up.url}/v2/team/big/manifests/{digest_of(child)}",
                data=child,
                headers={"Content-Type": OCI_MANIFEST},
                timeout=30,
            )
            assert r.status_code == 201, (r.status_code, r.text)
        r = session.put(
            f"{up.url}/v2/team/big/manifests/v1", data=index, headers={"Content-Type": OCI_INDEX}, timeout=60
        )
        assert r.status_code == 201, (r.status_code, r.text)
        srv = make_server(config(("up", up.url), allowed=["127.0.0.1"]))
        started = time.monotonic()
        r = get_manifest(srv, "up/team/big", "v1")
        elapsed = time.monotonic() - started
        assert r.status_code == 200, (r.status_code, r.text[:500])
        assert r.content == index and r.headers["Docker-Content-Digest"] == digest_of(index)
        # A child, through the index, by digest.
        child = children[999][0]
        r = get_manifest(srv, "up/team/big", digest_of(child))
        assert r.status_code == 200 and r.content == child
        print(f"index of {len(index)} bytes ({len(children)} manifests) pulled through in {elapsed:.2f}s")
    finally:
        up.stop()


def _padded_index(size: int) -> bytes:
    """A valid OCI index of exactly `size` bytes (an annotation pads it)."""
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "annotations": {"pad": ""}}
    base = len(json.dumps(doc).encode())
    doc["annotations"]["pad"] = "x" * (size - base)
    body = json.dumps(doc).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_manifests_up_to_4_mib_are_read_whole_and_larger_ones_refused(
    make_server: MakeServer, fake: Callable[..., FakeUpstream], chunked: bool
):
    up = fake()
    exact, over = _padded_index(4 * MiB), _padded_index(4 * MiB + 1)
    bodies = {"exact": exact, "over": over}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = bodies[request.path.split("/")[3]]
        if not chunked:
            return web.Response(body=body, headers={"Content-Type": OCI_INDEX})
        resp = web.StreamResponse(headers={"Content-Type": OCI_INDEX})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 100_000):
            await resp.write(body[i : i + 100_000])
        await resp.write_eof()
        return resp

    up.handler = handle
    srv = make_server(config(("up", up.url), allowed=["127.0.0.1"]))
    r = get_manifest(srv, "up/team/exact", "v1")
    assert r.status_code == 200 and r.content == exact, (r.status_code, r.text[:300])
    r = get_manifest(srv, "up/team/over", "v1")
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert "4 MiB" in message_of(r) and r.headers["Content-Type"].startswith("application/json")


# == 7. bounded blob downloads ===============================================================================


def _serve_layer(
    up: FakeUpstream, behaviour: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]
) -> tuple[str, bytes]:
    img = make_image(1, MiB)
    layer = img.layers[0]

    async def blob(request: web.Request) -> web.StreamResponse:
        return await behaviour(request, layer)

    up.handler = registry({"team/app/manifests/v1": (img.manifest, OCI_MANIFEST)}, {digest_of(layer): blob})
    return digest_of(layer), layer


def _pull_blob(srv: MoorageServer, digest: str, timeout: float) -> tuple[int, int, str, float]:
    """(status, body bytes received, error, seconds): a GET that reads what comes, for at most `timeout`."""
    started = time.monotonic()
    got, error, status = 0, "", 0
    try:
        with requests.get(f"{srv.url}/v2/up/team/app/blobs/{digest}", stream=True, timeout=timeout) as r:
            status = r.status_code
            for chunk in r.raw.stream(64 * 1024, decode_content=False):
                got += len(chunk)
                if time.monotonic() - started > timeout:
                    error = "still streaming"
                    break
    except Exception as e:  # a connection cut mid-body, as requests and urllib3 report it
        error = type(e).__name__
    return status, got, error, time.monotonic() - started


def _assert_nothing_cached(srv: MoorageServer, digest: str) -> None:
    wait_for(lambda: leftovers(srv) == [], 5, "no spool file left", details=lambda: str(leftovers(srv)))
    assert not blob_file(srv, digest).exists()
    assert linked(srv, digest) == 0


def test_upstream_sending_more_than_declared_with_content_length(
    make_server: MakeServer, fake: Callable[..., FakeUpstream]
):
    up = fake()
    total = 64 * MiB

    async def oversize(request: web.Request, layer: bytes) -> web.StreamResponse:
        return await up.stream(request, (layer for _ in range(total // len(layer))), length=total)

    digest, layer = _serve_layer(up, oversize)
    srv = make_server(config(("up", up.url), allowed=["127.0.0.1"]))
    assert get_manifest(srv, "up/team/app", "v1").status_code == 200
    status, got, _, elapsed = _pull_blob(srv, digest, timeout=30)
    assert status == 502 and got < 4096, (status, got)  # refused before any byte: an OCI error
    assert up.sent < 16 * MiB, f"Moorage read {up.sent} bytes of a blob declared as {len(layer)}"
    _assert_nothing_cached(srv, digest)
    print(f"oversize: refused in {elapsed:.2f}s; the upstream got {up.sent} bytes out of {total}")


def test_upstream_sending_endless_bytes(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    up = fake()
    cap = 256 * MiB  # "endless" (a bound only so that a broken Moorage cannot fill the disk)

    async def endless(request: web.Request, layer: bytes) -> web.StreamResponse:
        return await up.stream(request, (layer for _ in range(cap // len(layer))))

    digest, layer = _serve_layer(up, endless)
    srv = make_server(config(("up", up.url), allowed=["127.0.0.1"]))
    assert get_manifest(srv, "up/team/app", "v1").status_code == 200
    status, got, error, elapsed = _pull_blob(srv, digest, timeout=20)
    assert got < len(layer), f"the client got {got} bytes ({status}, {error})"  # never a complete body
    assert elapsed < 10, elapsed
    assert up.sent < 32 * MiB, f"Moorage read {up.sent} bytes of a blob declared as {len(layer)}"
    _assert_nothing_cached(srv, digest)
    print(f"endless: stopped in {elapsed:.2f}s; the upstream got {up.sent} bytes out")


def test_upstream_trickling_past_the_deadline(make_server: MakeServer, fake: Callable[..., FakeUpstream]):
    up = fake()

    async def trickle(request: web.Request, layer: bytes) -> web.StreamResponse:
        pieces = (layer[i : i + 1024] for i in range(0, len(layer), 1024))  # 1 KiB every 0.1 s: 100 s in all
        return await up.stream(request, pieces, delay=0.1, length=len(layer))

    digest, layer = _serve_layer(up, trickle)
    deadline = 2.0
    srv = make_server(config(("up", up.url), allowed=["127.0.0.1"], blob_download_timeout=f"{deadline}s"))
    assert get_manifest(srv, "up/team/app", "v1").status_code == 200
    status, got, error, elapsed = _pull_blob(srv, digest, timeout=20)
    assert got < len(layer), f"the client got {got} bytes ({status}, {error})"
    # Not before the deadline (within a poll's slack), and not much after it (scheduling on a loaded machine).
    assert deadline - 0.5 < elapsed < deadline + 4, f"the download ended after {elapsed:.1f}s; the deadline is 2s"
    _assert_nothing_cached(srv, digest)
    srv.log_containing("blob_download_timeout")
    print(f"trickle: ended after {elapsed:.2f}s with {got} bytes sent to the client")
