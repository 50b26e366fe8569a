"""A pull-through cache repository never serves bytes it has no right to (issue 11, item 1).

Attack: a blob is stored once for the whole registry (content addressing). A cache repository's manifests say
which digests it holds, and whoever controls the upstream (or may push into the cache repository) decides
what they say. Listing the digest of somebody else's private layer must not make that layer readable, not by
GET, not by HEAD (an existence oracle), not by a mount, and not through the ECR layer operations.

The rule: a blob is served from a repository only when it was uploaded to it, mounted into it by a principal
allowed to read the source, or fetched from that repository's upstream and verified. A cache repository may
reuse bytes another repository of the same upstream fetched (one download per blob per upstream), never
bytes that came from anywhere else.

Everything runs over real sockets: Moorage with auth on, an aiohttp upstream that serves what the attacker
gives it (tests/upstreams.py), requests for /v2 and boto3 for the ECR API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, digest_of, error_codes, make_image
from tests.server import MoorageServer, auth_config, ecr_client, login_password, principal_toml
from tests.upstreams import MOORAGE_USER_AGENT, MisbehavingUpstream, push_image

MakeServer = Callable[..., MoorageServer]

VICTIM = ("AKIAVICTIMPRINCIPAL0", "victim-secret-0123456789abcdef0123456789")
ATTACKER = ("AKIAATTACKERPRINCIPL", "attacker-secret-0123456789abcdef01234567")
NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def _allow(resource: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                {"Effect": "Allow", "Action": "ecr:*", "Resource": resource},
            ],
        }
    )


def _config(*rules: tuple[str, str]) -> str:
    principals = (
        principal_toml("victim", *VICTIM, _allow("arn:aws:ecr:us-east-1:*:repository/team-a/*")),
        principal_toml("attacker", *ATTACKER, _allow("arn:aws:ecr:us-east-1:*:repository/up*")),
    )
    pull_through = '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
    for prefix, url in rules:
        pull_through += f'[[pull_through.rules]]\necr_repository_prefix = "{prefix}"\nupstream_registry_url = "{url}"\n'
    return auth_config(*principals) + pull_through


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[Callable[[], MisbehavingUpstream]]:
    made: list[MisbehavingUpstream] = []

    def make() -> MisbehavingUpstream:
        up = MisbehavingUpstream(tmp_path / f"upstream{len(made)}").start()
        made.append(up)
        return up

    yield make
    for up in made:
        up.stop()


def _manifest(config: bytes, layers: list[dict]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config), "layers": layers}
    ).encode()


def _blob_gets(up: MisbehavingUpstream, digest: str) -> int:
    return up.count(rf"^GET /v2/\S+/blobs/{re.escape(digest)}", agent=MOORAGE_USER_AGENT)


def _assert_unknown(r: requests.Response, secret: bytes) -> None:
    assert r.status_code == 404, (r.status_code, r.content[:200])
    assert secret not in r.content
    if r.request.method != "HEAD":
        assert error_codes(r) == ["BLOB_UNKNOWN"], r.text


def _victim_secret(srv: MoorageServer) -> tuple[bytes, str]:
    """The victim pushes a private image; returns its secret layer and the layer's digest."""
    victim = ("AWS", login_password(srv, *VICTIM))
    img = make_image(1, 4096)
    push_image(srv.url, "team-a/secret", "v1", img.manifest, OCI_MANIFEST, img.blobs, auth=victim)
    secret = img.layers[0]
    return secret, digest_of(secret)


def test_upstream_manifest_naming_a_stored_digest_does_not_expose_it(
    make_server: MakeServer, upstreams: Callable[[], MisbehavingUpstream]
):
    up = upstreams()
    srv = make_server(_config(("up", up.url)))
    secret, secret_digest = _victim_secret(srv)
    attacker = ("AWS", login_password(srv, *ATTACKER))

    # The attacker's upstream serves a manifest that lists the victim's layer; it has only the config.
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    up.put_blob(config)
    up.put_manifest("evil", "latest", _manifest(config, [descriptor(OCI_LAYER, secret)]), OCI_MANIFEST)

    r = requests.get(
        f"{srv.url}/v2/up/evil/manifests/latest", headers={"Accept": OCI_MANIFEST}, auth=attacker, timeout=30
    )
    assert r.status_code == 200, r.text
    assert secret_digest in r.text  # the cached manifest does list the layer

    _assert_unknown(requests.get(f"{srv.url}/v2/up/evil/blobs/{secret_digest}", auth=attacker, timeout=30), secret)
    _assert_unknown(requests.head(f"{srv.url}/v2/up/evil/blobs/{secret_digest}", auth=attacker, timeout=30), secret)
    # It did ask its upstream for the bytes (that is how a cache repository proves a blob), and was refused.
    assert _blob_gets(up, secret_digest) >= 1

    ecr = ecr_client(srv, *ATTACKER)
    check = ecr.batch_check_layer_availability(repositoryName="up/evil", layerDigests=[secret_digest])
    assert check["layers"] == [{"layerDigest": secret_digest, "layerAvailability": "UNAVAILABLE"}], check
    assert check["failures"] == [], check
    with pytest.raises(ClientError) as e:
        ecr.get_download_url_for_layer(repositoryName="up/evil", layerDigest=secret_digest)
    assert e.value.response["Error"]["Code"] == "LayersNotFoundException"

    # Nor can it be mounted out of the cache repository into one the attacker owns.
    r = requests.post(
        f"{srv.url}/v2/up-loot/blobs/uploads/",
        params={"mount": secret_digest, "from": "up/evil"},
        auth=attacker,
        timeout=30,
    )
    assert r.status_code == 202, (r.status_code, r.text)  # an ordinary upload session, not a 201 mount
    _assert_unknown(requests.get(f"{srv.url}/v2/up-loot/blobs/{secret_digest}", auth=attacker, timeout=30), secret)

    # The victim's own repository is untouched.
    victim = ("AWS", login_password(srv, *VICTIM))
    r = requests.get(f"{srv.url}/v2/team-a/secret/blobs/{secret_digest}", auth=victim, timeout=30)
    assert r.status_code == 200 and r.content == secret


def test_pushed_foreign_layer_in_a_cache_repository_does_not_expose_a_stored_blob(
    make_server: MakeServer, upstreams: Callable[[], MisbehavingUpstream]
):
    up = upstreams()
    srv = make_server(_config(("up", up.url)))
    secret, secret_digest = _victim_secret(srv)
    attacker = ("AWS", login_password(srv, *ATTACKER))

    # A non-distributable layer with `urls` needs no upload, so the manifest is accepted as is.
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = descriptor(NONDISTRIBUTABLE, secret, urls=["https://example.invalid/layer"])
    push_image(srv.url, "up/seeded", "v1", _manifest(config, [layer]), OCI_MANIFEST, [config], auth=attacker)

    _assert_unknown(requests.get(f"{srv.url}/v2/up/seeded/blobs/{secret_digest}", auth=attacker, timeout=30), secret)
    _assert_unknown(requests.head(f"{srv.url}/v2/up/seeded/blobs/{secret_digest}", auth=attacker, timeout=30), secret)
    ecr = ecr_client(srv, *ATTACKER)
    with pytest.raises(ClientError) as e:
        ecr.get_download_url_for_layer(repositoryName="up/seeded", layerDigest=secret_digest)
    assert e.value.response["Error"]["Code"] == "LayersNotFoundException"


def test_cache_repositories_share_bytes_only_with_their_own_upstream(
    make_server: MakeServer, upstreams: Callable[[], MisbehavingUpstream]
):
    """One download per blob per upstream: a second repository of the same rule links the stored bytes with no
    fetch; a repository of another upstream must get them from its own upstream (and is refused if that
    upstream lacks them)."""
    one, two, empty = upstreams(), upstreams(), upstreams()
    srv = make_server(_config(("up", one.url), ("up2", two.url), ("up3", empty.url)))
    attacker = ("AWS", login_password(srv, *ATTACKER))
    img = make_image(1, 8192)
    layer_digest = digest_of(img.layers[0])
    for up in (one, two):
        for blob in img.blobs:
            up.put_blob(blob)
        up.put_manifest("lib/a", "v1", img.manifest, OCI_MANIFEST)
        up.put_manifest("lib/b", "v1", img.manifest, OCI_MANIFEST)
    empty.put_blob(img.config)
    empty.put_manifest("lib/a", "v1", img.manifest, OCI_MANIFEST)

    def pull(repo: str) -> requests.Response:
        r = requests.get(f"{srv.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}, auth=attacker)
        assert r.status_code == 200, r.text
        return requests.get(f"{srv.url}/v2/{repo}/blobs/{layer_digest}", auth=attacker, timeout=60)

    assert pull("up/lib/a").content == img.layers[0]
    assert pull("up/lib/b").content == img.layers[0]
    assert _blob_gets(one, layer_digest) == 1, "a second repository of the same upstream fetched again"

    assert pull("up2/lib/a").content == img.layers[0]
    assert _blob_gets(two, layer_digest) == 1, "another upstream's repository was served bytes it never proved"
    assert pull("up2/lib/b").content == img.layers[0]
    assert _blob_gets(two, layer_digest) == 1

    _assert_unknown(pull("up3/lib/a"), img.layers[0])
    assert _blob_gets(empty, layer_digest) == 1
