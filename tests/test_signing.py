"""Signing on push against real servers, with real clients.

- A push (skopeo over /v2, or PutImage) to a repository a signing rule covers is signed before it is acknowledged:
  a cosign simple-signing attachment tagged sha256-<hex>.sig with `subject`, listed by the referrers API, COMPLETE
  in DescribeImageSigningStatus. containers/image (skopeo, with `use-sigstore-attachments`) reads it, and it
  verifies, checked here the way containers/image's sigstoreSigned policy checks it, with the public key
  `moorage signing-key public` prints. Unsigned images (pushed before the rule, or no rule) and tampered
  signatures do not verify.
- skopeo and podman themselves verifying with a `sigstoreSigned` policy: where they are built with sigstore
  support. Debian's skopeo 1.9 and podman 4.3 are not ("Debian-local change: sigstore disabled": they refuse
  every signature), so there those tests skip, saying so (`may_skip`).
- Other signatures under the tag are kept; an index is signed with its platforms; a signing that fails (an
  immutable tag in the way) reports FAILED and leaves the push acknowledged.
- `[signing] enforce`: unsigned pulls refused (403 DENIED, BatchGetImage's ImageInaccessible), signed ones and
  signature manifests served, a signed multi-arch image pullable by skopeo.
- Signatures survive `moorage export` / `import` and replication.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import wait_for
from tests.layouts import write_multi_platform_image, write_single_image
from tests.oci import (
    ALL_MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    canonical,
    descriptor,
    digest_of,
    error_codes,
    make_image,
    random_blob,
)
from tests.podman import isolated_podman
from tests.server import AUTH_OFF, MoorageServer, auth_config, ecr_client, login_password, moorage_cli, moorage_json
from tests.skopeo import Skopeo, isolated_skopeo
from tests.upstreams import DistributionRegistry

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
PROFILE = "arn:aws:signer:us-east-1:000000000000:/signing-profiles/moorage_test"
SIGSTORE_DISABLED = "sigstore disabled"  # what Debian's containers/image says for every sigstore signature


def rule(*filters: str) -> dict[str, Any]:
    out: dict[str, Any] = {"signingProfileArn": PROFILE}
    if filters:
        out["repositoryFilters"] = [{"filter": f, "filterType": "WILDCARD_MATCH"} for f in filters]
    return out


def sign_pushes(srv: MoorageServer, *filters: str) -> Any:
    ecr = ecr_client(srv)
    ecr.put_signing_configuration(signingConfiguration={"rules": [rule(*filters)]})
    return ecr


def public_key(srv: MoorageServer) -> str:
    p = moorage_cli("signing-key", "public", "--config", srv.config_path, "--data-dir", srv.data_dir)
    assert p.returncode == 0 and p.stdout.startswith("-----BEGIN PUBLIC KEY-----"), (p.stdout, p.stderr)
    return p.stdout


def attachment_tag(digest: str) -> str:
    return digest.replace(":", "-", 1) + ".sig"


def statuses(ecr: Any, repository: str, ref: str) -> list[tuple[str, str, str]]:
    image_id = {"imageDigest": ref} if ref.startswith("sha256:") else {"imageTag": ref}
    out = ecr.describe_image_signing_status(repositoryName=repository, imageId=image_id)["signingStatuses"]
    return [(s["signingProfileArn"], s["status"], s.get("failureCode", "")) for s in out]


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    cfg = tmp_path / "skopeo"
    cfg.mkdir()
    return isolated_skopeo(cfg)


def read_attachments(cfg: Path, *hosts: str) -> None:
    """containers/image reads sigstore attachments from these registries (registries.d)."""
    body = "docker:\n" + "".join(f"  {host}:\n    use-sigstore-attachments: true\n" for host in hosts)
    (cfg / "registries.d" / "moorage.yaml").write_text(body)


# -- what containers/image reads, and checks as its sigstoreSigned policy does ------------------------------------


@dataclass
class Pulled:
    manifest_digest: str
    signatures: list[dict[str, Any]]  # {"mimeType", "payload" (bytes), "annotations"}


def pull_with_signatures(skopeo: Skopeo, ref: str, out: Path, creds: str | None = None) -> Pulled:
    """`skopeo copy docker://REF dir:OUT`: containers/image fetches the image and, with use-sigstore-attachments,
    its signatures (the tag sha256-<hex>.sig, its layers), which the dir: transport writes as signature-N."""
    args = ["copy", "--src-tls-verify=false", *(["--src-creds", creds] if creds else [])]
    skopeo(*args, f"docker://{ref}", f"dir:{out}")
    found = []
    for path in sorted(out.glob("signature-*"), key=lambda p: int(p.name.split("-")[1])):
        raw = path.read_bytes()
        assert raw.startswith(b"\x00sigstore-json\n"), f"{path.name} is not a sigstore signature: {raw[:40]!r}"
        sig = json.loads(raw[len(b"\x00sigstore-json\n") :])
        found.append({**sig, "payload": base64.b64decode(sig["payload"])})
    return Pulled("sha256:" + hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest(), found)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys {keys}"
    return dict(pairs)


def rejection(sig: dict[str, Any], public_pem: str, manifest_digest: str, repository: str) -> str | None:
    """Why containers/image's sigstoreSigned (keyPath, signedIdentity matchRepository) would refuse the signature,
    or None when it accepts it: written from containers/image's policy_eval_sigstore.go and cosign_payload.go, not
    from Moorage's code."""
    if sig["mimeType"] != SIMPLE_SIGNING:
        return f"not a signature attachment: {sig['mimeType']}"
    encoded = (sig.get("annotations") or {}).get(SIGNATURE)
    if encoded is None:
        return f"missing {SIGNATURE} annotation"
    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(base64.b64decode(encoded, validate=True), sig["payload"], ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return "cryptographic signature verification failed"
    doc = json.loads(sig["payload"], object_pairs_hook=_no_duplicates)
    if set(doc) != {"critical", "optional"} or set(doc["critical"]) != {"identity", "image", "type"}:
        return f"unexpected fields: {doc}"
    critical = doc["critical"]
    if critical["type"] != "cosign container image signature":
        return f"unrecognized signature type {critical['type']}"
    if set(critical["image"]) != {"docker-manifest-digest"} or set(critical["identity"]) != {"docker-reference"}:
        return f"unexpected fields: {critical}"
    if critical["image"]["docker-manifest-digest"] != manifest_digest:
        return f"signature for digest {critical['image']['docker-manifest-digest']} does not match"
    if critical["identity"]["docker-reference"] != repository:  # matchRepository: HOST/REPO, no tag
        return f"signature for identity {critical['identity']['docker-reference']} is not accepted"
    return None


def accepted(pulled: Pulled, public_pem: str, repository: str) -> bool:
    return any(rejection(s, public_pem, pulled.manifest_digest, repository) is None for s in pulled.signatures)


# -- signing on push -----------------------------------------------------------------------------------------


def test_a_push_is_signed_and_its_signature_verifies(make_server, skopeo: Skopeo, tmp_path: Path) -> None:
    srv: MoorageServer = make_server(auth_config())
    creds = f"AWS:{login_password(srv)}"
    client = Client(srv.url, ("AWS", login_password(srv)))
    layout = tmp_path / "layout"
    image = write_single_image(layout, "v1")

    def push(repository: str) -> None:
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            f"oci:{layout}:v1",
            f"docker://{srv.host}/{repository}:v1",
        )

    push("team/early")  # before any signing configuration
    ecr = sign_pushes(srv, "team/*")
    push("team/app")
    push("other/app")

    assert statuses(ecr, "team/app", "v1") == [(PROFILE, "COMPLETE", "")]
    assert statuses(ecr, "team/early", "v1") == [(PROFILE, "FAILED", "ImageNotSigned")]
    assert statuses(ecr, "other/app", "v1") == [], "no rule covers it: no status"

    sig_tag = attachment_tag(image.digest)
    assert client.get("/v2/team/app/tags/list").json()["tags"] == [sig_tag, "v1"], "one attachment, not signed again"
    assert client.get("/v2/other/app/tags/list").json()["tags"] == ["v1"]
    r = client.get(f"/v2/team/app/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST})
    doc = r.json()
    assert r.headers["Content-Type"] == OCI_MANIFEST
    assert doc["subject"] == {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)}
    assert [layer["mediaType"] for layer in doc["layers"]] == [SIMPLE_SIGNING]
    sig_digest = r.headers["Docker-Content-Digest"]
    referrers = client.get(f"/v2/team/app/referrers/{image.digest}").json()["manifests"]
    assert [d["digest"] for d in referrers] == [sig_digest], "the referrers API lists the signature"
    listed = ecr.list_image_referrers(repositoryName="team/app", subjectId={"imageDigest": image.digest})
    assert [d["digest"] for d in listed["referrers"]] == [sig_digest]

    pem = public_key(srv)
    read_attachments(tmp_path / "skopeo", srv.host)
    pulled = pull_with_signatures(skopeo, f"{srv.host}/team/app:v1", tmp_path / "signed", creds)
    assert pulled.manifest_digest == image.digest and len(pulled.signatures) == 1
    assert rejection(pulled.signatures[0], pem, image.digest, f"{srv.host}/team/app") is None
    assert rejection(pulled.signatures[0], pem, image.digest, f"{srv.host}/other/app") is not None
    assert pull_with_signatures(skopeo, f"{srv.host}/team/early:v1", tmp_path / "early", creds).signatures == []
    assert pull_with_signatures(skopeo, f"{srv.host}/other/app:v1", tmp_path / "other", creds).signatures == []

    # The same push again: already signed, nothing is added.
    push("team/app")
    again = client.get(f"/v2/team/app/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST})
    assert again.headers["Docker-Content-Digest"] == sig_digest
    # The key is the registry's: the same after a restart.
    srv.restart()
    assert public_key(srv) == pem


def test_put_image_adds_its_signature_to_the_others_and_an_index_is_signed_with_its_platforms(
    make_server, skopeo: Skopeo, tmp_path: Path
) -> None:
    srv: MoorageServer = make_server(AUTH_OFF)
    client = Client(srv.url)
    ecr = sign_pushes(srv)  # no filters: every repository
    image = make_image(1, 512)
    for blob in image.blobs:
        client.push_blob("team/put", blob)
    # Someone's cosign signature of the image, pushed before it: a signature manifest, never signed itself.
    foreign_payload = b'{"critical":{},"optional":null}'
    client.push_blob("team/put", foreign_payload)
    foreign_config = canonical({"rootfs": {"type": "layers", "diff_ids": []}})
    client.push_blob("team/put", foreign_config)
    foreign_layer = descriptor(SIMPLE_SIGNING, foreign_payload, annotations={SIGNATURE: "MEUCIQ=="})
    foreign = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, foreign_config),
            "layers": [foreign_layer],
        }
    )
    sig_tag = attachment_tag(image.digest)
    client.push_manifest("team/put", sig_tag, foreign, OCI_MANIFEST)
    assert client.get("/v2/team/put/tags/list").json()["tags"] == [sig_tag]

    ecr.put_image(repositoryName="team/put", imageManifest=image.manifest.decode(), imageTag="v1")
    doc = client.get(f"/v2/team/put/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST}).json()
    assert doc["layers"][0] == foreign_layer, "the other signature stays, first"
    assert len(doc["layers"]) == 2 and doc["layers"][1]["mediaType"] == SIMPLE_SIGNING
    assert doc["subject"]["digest"] == image.digest
    assert statuses(ecr, "team/put", "v1") == [(PROFILE, "COMPLETE", "")]
    assert statuses(ecr, "team/put", sig_tag) == [], "a signature manifest has no status of its own"
    read_attachments(tmp_path / "skopeo", srv.host)
    pulled = pull_with_signatures(skopeo, f"{srv.host}/team/put:v1", tmp_path / "put")
    assert len(pulled.signatures) == 2 and accepted(pulled, public_key(srv), f"{srv.host}/team/put")

    index = write_multi_platform_image(tmp_path / "multi", "m1", arches=("amd64", "arm64"))
    skopeo(
        "copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'multi'}:m1", f"docker://{srv.host}/team/multi:m1"
    )
    for digest in (index.digest, *(child.digest for child in index.children)):
        assert statuses(ecr, "team/multi", digest) == [(PROFILE, "COMPLETE", "")], digest
    pem = public_key(srv)
    for child in index.children:  # a platform pulled by digest carries its own signature
        pulled = pull_with_signatures(skopeo, f"{srv.host}/team/multi@{child.digest}", tmp_path / child.digest[7:19])
        assert accepted(pulled, pem, f"{srv.host}/team/multi"), pulled


def test_an_index_signs_the_platforms_pushed_before_its_rule(make_server) -> None:
    srv: MoorageServer = make_server(AUTH_OFF)
    client = Client(srv.url)
    children = [make_image(1, 256, platform=arch) for arch in ("amd64", "arm64")]
    for child in children:
        client.push_image("team/late", child.digest, child)
    ecr = sign_pushes(srv, "team/*")
    for child in children:
        assert statuses(ecr, "team/late", child.digest) == [(PROFILE, "FAILED", "ImageNotSigned")]
    index = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, c.manifest, platform={"architecture": a, "os": "linux"})
                for c, a in zip(children, ("amd64", "arm64"), strict=True)
            ],
        }
    )
    client.push_manifest("team/late", "m1", index, OCI_INDEX)
    for digest in (digest_of(index), *(child.digest for child in children)):
        assert statuses(ecr, "team/late", digest) == [(PROFILE, "COMPLETE", "")], digest
    tags = client.get("/v2/team/late/tags/list").json()["tags"]
    assert sorted(tags) == sorted(
        ["m1", *(attachment_tag(d) for d in (digest_of(index), *(c.digest for c in children)))]
    )


def test_a_signing_that_fails_reports_failed_and_the_push_is_still_acknowledged(make_server) -> None:
    srv: MoorageServer = make_server(AUTH_OFF)
    client = Client(srv.url)
    ecr = sign_pushes(srv, "locked/*")
    ecr.create_repository(repositoryName="locked/app", imageTagMutability="IMMUTABLE")
    image = make_image(1, 256)
    # A signature manifest already holds the attachment tag, which the repository's immutability pins.
    payload, config = b"{}", canonical({"rootfs": {"type": "layers", "diff_ids": []}})
    for blob in (payload, config):
        client.push_blob("locked/app", blob)
    pinned = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(SIMPLE_SIGNING, payload, annotations={SIGNATURE: "MEUCIQ=="})],
        }
    )
    client.push_manifest("locked/app", attachment_tag(image.digest), pinned, OCI_MANIFEST)

    assert client.push_image("locked/app", "v1", image) == image.digest, "the push is acknowledged (201)"
    (status,) = ecr.describe_image_signing_status(repositoryName="locked/app", imageId={"imageTag": "v1"})[
        "signingStatuses"
    ]
    assert (status["status"], status["failureCode"]) == ("FAILED", "TagImmutable"), status
    assert "immutable" in status["failureReason"], status
    r = client.get("/v2/locked/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == image.manifest
    assert "signing locked/app@" in srv.log_containing("TagImmutable")


@pytest.mark.parametrize("tamper", ["payload", "signature"])
def test_a_tampered_signature_does_not_verify(make_server, skopeo: Skopeo, tmp_path: Path, tamper: str) -> None:
    srv: MoorageServer = make_server(AUTH_OFF)
    client = Client(srv.url)
    ecr = sign_pushes(srv, "team/*")
    image = write_single_image(tmp_path / "layout", "v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{srv.host}/team/app:v1")
    pem, repository = public_key(srv), f"{srv.host}/team/app"
    read_attachments(tmp_path / "skopeo", srv.host)
    assert accepted(pull_with_signatures(skopeo, f"{srv.host}/team/app:v1", tmp_path / "before"), pem, repository)

    retag_tampered(client, "team/app", image.digest, tamper)
    pulled = pull_with_signatures(skopeo, f"{srv.host}/team/app:v1", tmp_path / "after")
    assert len(pulled.signatures) == 1
    why = rejection(pulled.signatures[0], pem, image.digest, repository)
    assert why == "cryptographic signature verification failed", why
    assert statuses(ecr, "team/app", "v1") == [(PROFILE, "FAILED", "ImageNotSigned")]


def retag_tampered(client: Client, repository: str, digest: str, tamper: str) -> None:
    """Push the image's signature manifest again, its payload (the digest it names) or its signature changed."""
    sig_tag = attachment_tag(digest)
    doc = client.get(f"/v2/{repository}/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST}).json()
    layer = doc["layers"][0]
    if tamper == "payload":
        payload = client.get(f"/v2/{repository}/blobs/{layer['digest']}").content
        forged = payload.replace(digest.encode(), b"sha256:" + b"0" * 64)
        assert forged != payload
        client.push_blob(repository, forged)
        doc["layers"][0] = descriptor(SIMPLE_SIGNING, forged, annotations=layer["annotations"])
    else:
        raw = bytearray(base64.b64decode(layer["annotations"][SIGNATURE]))
        raw[-1] ^= 1
        layer["annotations"][SIGNATURE] = base64.b64encode(bytes(raw)).decode()
    client.push_manifest(repository, sig_tag, json.dumps(doc).encode(), OCI_MANIFEST)


# -- enforcement -----------------------------------------------------------------------------------------------


def test_enforced_pulls_need_a_valid_signature(make_server, skopeo: Skopeo, tmp_path: Path) -> None:
    srv: MoorageServer = make_server(AUTH_OFF + '[signing]\nenforce = ["prod/*"]\n')
    client = Client(srv.url)
    layout = tmp_path / "layout"
    image = write_single_image(layout, "v1")
    index = write_multi_platform_image(tmp_path / "multi", "m1")

    def push(repository: str, source: str = f"oci:{layout}:v1", *extra: str) -> None:
        skopeo("copy", *extra, "--dest-tls-verify=false", source, f"docker://{srv.host}/{repository}")

    push("prod/early:v1")  # before the signing rule
    ecr = sign_pushes(srv, "prod/*")
    push("prod/app:v1")
    push("prod/multi:m1", f"oci:{tmp_path / 'multi'}:m1", "--all")
    push("dev/app:v1")  # no rule signs it, nothing enforces it

    for ref in ("v1", image.digest):
        for method in ("GET", "HEAD"):
            r = client.request(method, f"/v2/prod/early/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
            assert r.status_code == 403, (method, ref, r.status_code)
            if method == "GET":
                assert error_codes(r) == ["DENIED"], r.text
                assert "not signed by this registry's key" in r.json()["errors"][0]["message"], r.text
                assert r.json()["errors"][0]["detail"] == {"name": "prod/early", "digest": image.digest}
    got = ecr.batch_get_image(repositoryName="prod/early", imageIds=[{"imageTag": "v1"}])
    assert got["images"] == [] and [f["failureCode"] for f in got["failures"]] == ["ImageInaccessible"], got
    assert "not signed" in got["failures"][0]["failureReason"]
    refused = skopeo(
        "copy", "--src-tls-verify=false", f"docker://{srv.host}/prod/early:v1", f"oci:{tmp_path / 'x'}:v1", check=False
    )
    assert refused.returncode != 0 and "not signed" in refused.stderr, refused.stderr

    for repository, ref in (("prod/app", "v1"), ("prod/app", attachment_tag(image.digest)), ("dev/app", "v1")):
        r = client.get(f"/v2/{repository}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 200, (repository, ref, r.text)
    got = ecr.batch_get_image(repositoryName="prod/app", imageIds=[{"imageTag": "v1"}])
    assert [i["imageId"]["imageDigest"] for i in got["images"]] == [image.digest] and got["failures"] == []
    skopeo("copy", "--src-tls-verify=false", f"docker://{srv.host}/prod/app:v1", f"oci:{tmp_path / 'app'}:v1")
    # A signed multi-arch image: the index, then its platforms by digest.
    multi = f"docker://{srv.host}/prod/multi:m1"
    skopeo("copy", "--all", "--src-tls-verify=false", multi, f"oci:{tmp_path / 'multi-all'}:m1")
    one = ("--override-arch", "arm64", "--override-os", "linux")
    skopeo(*one, "copy", "--src-tls-verify=false", multi, f"oci:{tmp_path / 'multi-arm64'}:m1")
    for child in index.children:
        assert (
            client.get(f"/v2/prod/multi/manifests/{child.digest}", headers={"Accept": OCI_MANIFEST}).status_code == 200
        )

    retag_tampered(client, "prod/app", image.digest, "signature")  # a signature that no longer verifies
    r = client.get("/v2/prod/app/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 403 and error_codes(r) == ["DENIED"], r.text

    # Shaped like a signature manifest, but its layer is no signing payload (a tarball, say): refused too.
    config, layer = canonical({"rootfs": {"type": "layers", "diff_ids": []}}), random_blob(2048)
    for blob in (config, layer):
        client.push_blob("prod/disguised", blob)
    disguised = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(SIMPLE_SIGNING, layer, annotations={SIGNATURE: "MEUCIQ=="})],
        }
    )
    client.push_manifest("prod/disguised", "v1", disguised, OCI_MANIFEST)
    r = client.get("/v2/prod/disguised/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 403 and error_codes(r) == ["DENIED"], r.text


# -- containers/image's own verification (where it is built with sigstore) ---------------------------------------


def verifying_policy(cfg: Path, host: str, pem: str) -> dict[str, Any]:
    (cfg / "moorage.pub").write_text(pem)
    return {
        "default": [{"type": "reject"}],
        "transports": {  # the registry's images need a signature; where they go does not
            "docker": {
                host: [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": str(cfg / "moorage.pub"),
                        "signedIdentity": {"type": "matchRepository"},
                    }
                ]
            },
            "oci": {"": [{"type": "insecureAcceptAnything"}]},
            "dir": {"": [{"type": "insecureAcceptAnything"}]},
        },
    }


@contextlib.contextmanager
def signed_site(make_server, skopeo: Skopeo, tmp_path: Path) -> Iterator[tuple[MoorageServer, str]]:
    """A registry (auth on) with team/app:v1 signed, team/early:v1 and other/app:v1 not, team/bad:v1 tampered."""
    srv: MoorageServer = make_server(auth_config())
    creds = f"AWS:{login_password(srv)}"
    layout = tmp_path / "layout"
    image = write_single_image(layout, "v1")

    def push(repository: str) -> None:
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            f"oci:{layout}:v1",
            f"docker://{srv.host}/{repository}:v1",
        )

    push("team/early")
    sign_pushes(srv, "team/*")
    for repository in ("team/app", "team/bad", "other/app"):
        push(repository)
    retag_tampered(Client(srv.url, ("AWS", login_password(srv))), "team/bad", image.digest, "payload")
    yield srv, creds


@pytest.mark.may_skip("Debian's skopeo is built without sigstore verification")
def test_skopeo_verifies_with_a_sigstore_signed_policy(make_server, skopeo: Skopeo, tmp_path: Path) -> None:
    with signed_site(make_server, skopeo, tmp_path) as (srv, creds):
        cfg = tmp_path / "skopeo"
        (cfg / "policy.json").write_text(json.dumps(verifying_policy(cfg, srv.host, public_key(srv))))
        read_attachments(cfg, srv.host)

        def pull(repository: str) -> Any:
            src = f"docker://{srv.host}/{repository}:v1"
            return skopeo(
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                creds,
                src,
                f"dir:{tmp_path / repository.replace('/', '-')}",  # (dir: keeps signatures; oci: refuses them)
                check=False,
            )

        signed = pull("team/app")
        if signed.returncode != 0 and SIGSTORE_DISABLED in signed.stderr:
            pytest.skip(f"this skopeo cannot verify sigstore signatures: {signed.stderr.strip()}")
        assert signed.returncode == 0, signed.stderr
        for repository in ("team/early", "other/app"):
            refused = pull(repository)
            assert refused.returncode != 0 and "no signature exists" in refused.stderr, refused.stderr
        tampered = pull("team/bad")
        assert tampered.returncode != 0 and "signature" in tampered.stderr, tampered.stderr


@pytest.mark.may_skip("Debian's podman is built without sigstore verification")
def test_podman_verifies_with_a_sigstore_signed_policy(make_server, skopeo: Skopeo, tmp_path: Path) -> None:
    with signed_site(make_server, skopeo, tmp_path) as (srv, creds):
        home = tmp_path / "home"
        config = home / ".config" / "containers"
        (config / "registries.d").mkdir(parents=True)
        (config / "policy.json").write_text(json.dumps(verifying_policy(config, srv.host, public_key(srv))))
        read_attachments(config, srv.host)
        (tmp_path / "podman").mkdir()
        with isolated_podman(tmp_path / "podman", home=home) as podman:

            def pull(repository: str) -> Any:
                return podman(
                    "pull", "--tls-verify=false", "--creds", creds, f"{srv.host}/{repository}:v1", check=False
                )

            signed = pull("team/app")
            if signed.returncode != 0 and SIGSTORE_DISABLED in signed.stderr:
                pytest.skip(f"this podman cannot verify sigstore signatures: {signed.stderr.strip()}")
            assert signed.returncode == 0, signed.stderr
            for repository in ("team/early", "other/app"):
                refused = pull(repository)
                assert refused.returncode != 0 and "no signature exists" in refused.stderr, refused.stderr
            tampered = pull("team/bad")
            assert tampered.returncode != 0 and "signature" in tampered.stderr, tampered.stderr


# -- signatures travel --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["repository", "tag"])
def test_export_and_import_keep_signatures(make_server, skopeo: Skopeo, tmp_path: Path, what: str) -> None:
    source: MoorageServer = make_server(AUTH_OFF)
    sign_pushes(source, "team/*")
    image = write_single_image(tmp_path / "layout", "v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{source.host}/team/app:v1")
    sig_tag = attachment_tag(image.digest)
    signature = Client(source.url).get(f"/v2/team/app/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST})
    reference = "team/app" if what == "repository" else "team/app:v1"  # a tag: the signature goes as a referrer
    moorage_json(source, "export", reference, tmp_path / "export.tar")

    target: MoorageServer = make_server(AUTH_OFF)  # another registry, with a key of its own
    moorage_json(target, "import", tmp_path / "export.tar")
    got = Client(target.url).get(f"/v2/team/app/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST})
    assert got.status_code == 200 and got.content == signature.content, "the attachment tag is back, byte-exact"
    referrers = Client(target.url).get(f"/v2/team/app/referrers/{image.digest}").json()["manifests"]
    assert [d["digest"] for d in referrers] == [signature.headers["Docker-Content-Digest"]]
    read_attachments(tmp_path / "skopeo", target.host)
    pulled = pull_with_signatures(skopeo, f"{target.host}/team/app:v1", tmp_path / "imported")
    assert accepted(pulled, public_key(source), f"{source.host}/team/app"), "the source's signature still verifies"
    assert not accepted(pulled, public_key(target), f"{source.host}/team/app"), "(made by the source's key)"


def test_signatures_are_replicated(make_server, skopeo: Skopeo, tmp_path: Path) -> None:
    dist = DistributionRegistry(tmp_path / "dist").start()
    try:
        source: MoorageServer = make_server(
            AUTH_OFF
            + '[replication]\nretry_max_interval = "1s"\ntimeout = "5s"\n[[replication.destinations]]\n'
            + f'region = "eu-west-1"\nregistry_id = "333333333333"\nendpoint = "{dist.url}"\n'
        )
        ecr = sign_pushes(source, "team/*")
        ecr.put_replication_configuration(
            replicationConfiguration={
                "rules": [{"destinations": [{"region": "eu-west-1", "registryId": "333333333333"}]}]
            }
        )
        image = write_single_image(tmp_path / "layout", "v1")
        skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{source.host}/team/app:v1"
        )
        sig_tag = attachment_tag(image.digest)
        signature = requests.get(
            f"{source.url}/v2/team/app/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST}, timeout=30
        ).content

        def copied() -> bool:
            r = requests.get(f"{dist.url}/v2/team/app/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST}, timeout=5)
            return r.status_code == 200 and r.content == signature

        wait_for(copied, 60, "the signature manifest on the destination", details=lambda: source.log()[-3000:])
        read_attachments(tmp_path / "skopeo", dist.host)
        pulled = pull_with_signatures(skopeo, f"{dist.host}/team/app:v1", tmp_path / "replicated")
        assert accepted(pulled, public_key(source), f"{source.host}/team/app")
    finally:
        dist.stop()


# -- the protocol's errors ----------------------------------------------------------------------------------------


def test_bad_signing_requests_get_ecr_errors(make_server) -> None:
    srv: MoorageServer = make_server(AUTH_OFF)
    ecr = ecr_client(srv)

    def code(call: Any, **params: Any) -> tuple[int, str]:
        with pytest.raises(ClientError) as e:
            call(**params)
        return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]

    bad_rules = [
        [{"signingProfileArn": "arn:aws:iam::000000000000:role/not-a-profile"}],
        [{**rule("prod/*"), "repositoryFilters": [{"filter": "prod/*", "filterType": "PREFIX_MATCH"}]}],
        [rule("Not A Repository!")],
        [rule() for _ in range(11)],
    ]
    for rules in bad_rules:
        assert code(ecr.put_signing_configuration, signingConfiguration={"rules": rules}) == (
            400,
            "InvalidParameterException",
        ), rules
    assert code(ecr.get_signing_configuration) == (400, "SigningConfigurationNotFoundException")
    sign_pushes(srv)
    Client(srv.url).push_image("team/app", "v1", make_image(1, 64))
    image_id = {"imageTag": "v9"}
    assert code(ecr.describe_image_signing_status, repositoryName="team/app", imageId=image_id) == (
        400,
        "ImageNotFoundException",
    )
    assert code(ecr.describe_image_signing_status, repositoryName="no/such", imageId=image_id) == (
        400,
        "RepositoryNotFoundException",
    )
    assert statuses(ecr, "team/app", "v1") == [(PROFILE, "COMPLETE", "")]
