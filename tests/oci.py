"""Helpers for building OCI content and talking the /v2 API with plain HTTP (requests)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SIG = "application/vnd.example.signature.v1"  # an artifact type for referrer tests
EMPTY = b"{}"  # the OCI empty descriptor's content
ALL_MANIFEST_TYPES = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


def digest_of(data: bytes, alg: str = "sha256") -> str:
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def random_blob(size: int = 1024) -> bytes:
    return os.urandom(size)


def descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(
    n_layers: int = 2,
    layer_size: int = 2048,
    *,
    docker: bool = False,
    subject: dict | None = None,
    artifact_type: str | None = None,
    annotations: dict | None = None,
    platform: str = "amd64",
) -> Image:
    config = canonical(
        {
            "architecture": platform,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "nonce": os.urandom(8).hex(),
        }
    )
    layers = [random_blob(layer_size) for _ in range(n_layers)]
    mt = DOCKER_MANIFEST if docker else OCI_MANIFEST
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": mt,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer) for layer in layers],
    }
    if subject is not None:
        doc["subject"] = subject
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if annotations is not None:
        doc["annotations"] = annotations
    return Image(config, layers, json.dumps(doc, indent=2).encode(), mt)


def random_image(layer_sizes: list[int]) -> tuple[bytes, list[bytes]]:
    """An OCI image of random layers of these sizes and a unique config: its manifest and its blobs (the config
    first), as `tests.upstreams.push_image` takes them."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layers = [os.urandom(size) for size in layer_sizes]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        }
    ).encode()
    return manifest, [config, *layers]


class Client:
    """A thin /v2 client over requests, with every step explicit so tests can assert on each response."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.s = requests.Session()
        if auth:
            self.s.auth = auth

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    def request(self, method: str, path: str, **kw) -> requests.Response:
        """Every response is checked: a 5xx fails the test, and so does a hang (a bounded timeout)."""
        kw.setdefault("timeout", 60)
        kw.setdefault("allow_redirects", False)
        r = self.s.request(method, self.url(path), **kw)
        assert r.status_code < 500, f"{method} {path} -> {r.status_code}: {r.text[:500]}"
        return r

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw) -> requests.Response:
        return self.request("HEAD", path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw) -> requests.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.request("DELETE", path, **kw)

    # -- composite steps -------------------------------------------------------------------------
    def push_blob(self, repo: str, data: bytes, alg: str = "sha256") -> str:
        d = digest_of(data, alg)
        r = self.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"digest": d},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, (r.status_code, r.text)
        assert r.headers["Docker-Content-Digest"] == d
        return d

    def push_manifest(
        self, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST, **kw
    ) -> requests.Response:
        r = self.put(f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type}, **kw)
        assert r.status_code == 201, (r.status_code, r.text)
        return r

    def push_image(self, repo: str, ref: str, image: Image) -> str:
        for blob in image.blobs:
            self.push_blob(repo, blob)
        self.push_manifest(repo, ref, image.manifest, image.media_type)
        return image.digest

    def upload_size(self, location: str) -> int:
        """How many bytes an upload session holds so far, from its status (204, Range: 0-<last>; an empty
        session says 0-0, read as 1)."""
        r = self.get(location)
        assert r.status_code == 204, (r.status_code, r.text)
        return int(r.headers["Range"].split("-")[1]) + 1


def push_artifact(
    client: Client,
    repo: str,
    subject: dict,
    artifact_type: str | None = SIG,
    config_type: str = OCI_EMPTY,
    annotations: dict | None = None,
    ref: str | None = None,
) -> dict:
    """Push an artifact manifest referring to `subject` (by digest unless `ref`); return the descriptor
    the referrers API must list for it."""
    config = EMPTY if config_type == OCI_EMPTY else json.dumps({"kind": config_type}).encode()
    payload = random_blob(48)
    client.push_blob(repo, config)
    client.push_blob(repo, payload)
    doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = descriptor(config_type, config)
    doc["layers"] = [descriptor("application/octet-stream", payload)]
    doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    body = json.dumps(doc, indent=2).encode()
    r = client.push_manifest(repo, ref or digest_of(body), body, OCI_MANIFEST)
    assert r.headers["OCI-Subject"] == subject["digest"]
    expected = {
        "mediaType": OCI_MANIFEST,
        "digest": digest_of(body),
        "size": len(body),
        "artifactType": artifact_type or config_type,
    }
    if annotations:
        expected["annotations"] = annotations
    return expected


def error_codes(r: requests.Response) -> list[str]:
    """The OCI error codes of a response, asserting the body has the spec's error shape."""
    body = r.json()
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for e in body["errors"]:
        assert isinstance(e.get("code"), str) and isinstance(e.get("message"), str), e
    return [e["code"] for e in body["errors"]]


def location(r: requests.Response) -> str:
    """The response's Location, resolved against the request URL (it may be relative)."""
    assert "Location" in r.headers, (r.status_code, dict(r.headers))
    return urljoin(r.url, r.headers["Location"])


# -- pulls from a registry process ---------------------------------------------------------------------


class Registry(Protocol):
    """Anything with a base URL: a MoorageServer, an upstream registry."""

    @property
    def url(self) -> str: ...


def get_manifest(
    srv: Registry, repo: str, ref: str, *, auth: tuple[str, str] | None = None, timeout: float = 30, **kw: Any
) -> requests.Response:
    """GET a manifest accepting every manifest type (a fresh connection; nothing asserted)."""
    return requests.get(
        f"{srv.url}/v2/{repo}/manifests/{ref}",
        headers={"Accept": ALL_MANIFEST_TYPES},
        timeout=timeout,
        auth=auth,
        **kw,
    )


def get_blob(
    srv: Registry, repo: str, digest: str, *, auth: tuple[str, str] | None = None, timeout: float = 60, **kw: Any
) -> requests.Response:
    """GET a blob (a fresh connection; nothing asserted)."""
    return requests.get(f"{srv.url}/v2/{repo}/blobs/{digest}", timeout=timeout, auth=auth, **kw)


def assert_pulls(
    where: Client | Registry, repo: str, ref: str, image: Image, auth: tuple[str, str] | None = None
) -> None:
    """The manifest (byte-exact, with its digest) and every blob of `image` come back under `ref`."""
    c = where if isinstance(where, Client) else Client(where.url, auth)
    r = c.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200, (repo, ref, r.status_code, r.text)
    assert r.content == image.manifest and r.headers["Docker-Content-Digest"] == image.digest, (repo, ref)
    for blob in image.blobs:
        b = c.get(f"/v2/{repo}/blobs/{digest_of(blob)}")
        assert b.status_code == 200 and b.content == blob, (repo, digest_of(blob), b.status_code, b.text[:300])
