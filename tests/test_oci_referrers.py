"""OCI distribution-spec v1.1 conformance, the referrers API: GET /v2/<name>/referrers/<digest>, its
descriptors (artifactType, annotations), the artifactType filter, and index referrers/subjects."""

from __future__ import annotations

import json

import pytest
import requests

from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    SIG,
    Client,
    descriptor,
    digest_of,
    make_image,
    push_artifact,
    random_blob,
)

SBOM = "application/vnd.example.sbom.v1"
CUSTOM_CONFIG = "application/vnd.example.custom.config.v1+json"


def push_subject(client: Client, repo: str, tag: str = "v1") -> dict:
    """Push a plain image; return its descriptor for use as a `subject`."""
    img = make_image(1, 64)
    client.push_image(repo, tag, img)
    return descriptor(OCI_MANIFEST, img.manifest)


def referrers(client: Client, repo: str, digest: str, **params: str) -> tuple[list[dict], requests.Response]:
    """GET the referrers index, check its envelope, and return its descriptors (normalised) and the response."""
    r = client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["Content-Type"] == OCI_INDEX
    doc = r.json()
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == OCI_INDEX
    assert isinstance(doc["manifests"], list)
    out = []
    for d in doc["manifests"]:
        norm = {k: d[k] for k in ("mediaType", "digest", "size", "artifactType") if k in d}
        if d.get("annotations"):
            norm["annotations"] = d["annotations"]
        out.append(norm)
    return out, r


def by_digest(descs: list[dict]) -> dict[str, dict]:
    out = {d["digest"]: d for d in descs}
    assert len(out) == len(descs), f"duplicate descriptors: {descs}"
    return out


def test_referrers_lists_every_referrer(client: Client, repo: str) -> None:
    subject = push_subject(client, repo)
    other_subject = push_subject(client, repo, tag="other")
    expected = [
        push_artifact(client, repo, subject, SIG, annotations={"org.example.signer": "alice", "n": "1"}),
        push_artifact(client, repo, subject, SBOM),
        push_artifact(client, repo, subject, None, config_type=CUSTOM_CONFIG),
        push_artifact(client, repo, subject, SIG, annotations={"org.opencontainers.image.created": "2024-01-01"}),
    ]
    unrelated = push_artifact(client, repo, other_subject, SIG)

    got, r = referrers(client, repo, subject["digest"])
    assert by_digest(got) == by_digest(expected)
    assert "OCI-Filters-Applied" not in r.headers

    got, _ = referrers(client, repo, other_subject["digest"])
    assert got == [unrelated]


def test_referrer_artifact_type_falls_back_to_config_media_type(client: Client, repo: str) -> None:
    subject = push_subject(client, repo)
    # A full image (config application/vnd.oci.image.config.v1+json) with a subject and no artifactType.
    img = make_image(1, 64, subject=subject)
    client.push_image(repo, img.digest, img)
    custom = push_artifact(client, repo, subject, None, config_type=CUSTOM_CONFIG)
    got, _ = referrers(client, repo, subject["digest"])
    assert {d["digest"]: d["artifactType"] for d in got} == {
        img.digest: OCI_CONFIG,
        custom["digest"]: CUSTOM_CONFIG,
    }


def test_referrer_annotations_copied(client: Client, repo: str) -> None:
    subject = push_subject(client, repo)
    annotations = {
        "org.opencontainers.image.created": "2024-05-06T07:08:09Z",
        "org.example.unicode": "h\u00e9llo \u2603",
        "org.example.empty": "",
    }
    expected = push_artifact(client, repo, subject, SIG, annotations=annotations)
    got, _ = referrers(client, repo, subject["digest"])
    assert got == [expected]
    assert got[0]["annotations"] == annotations


@pytest.mark.parametrize(
    ("artifact_type", "expected_count"),
    [(SIG, 2), (SBOM, 1), (CUSTOM_CONFIG, 1), ("application/vnd.example.nothing", 0)],
)
def test_referrers_artifact_type_filter(client: Client, repo: str, artifact_type: str, expected_count: int) -> None:
    subject = push_subject(client, repo)
    pushed = [
        push_artifact(client, repo, subject, SIG),
        push_artifact(client, repo, subject, SIG, annotations={"k": "v"}),
        push_artifact(client, repo, subject, SBOM),
        push_artifact(client, repo, subject, None, config_type=CUSTOM_CONFIG),
    ]
    got, r = referrers(client, repo, subject["digest"], artifactType=artifact_type)
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    want = [d for d in pushed if d["artifactType"] == artifact_type]
    assert len(want) == expected_count
    assert by_digest(got) == by_digest(want)


def test_referrers_unknown_subject(client: Client, repo: str) -> None:
    push_subject(client, repo)
    got, _ = referrers(client, repo, digest_of(b"no such subject"))
    assert got == []


def test_referrers_subject_never_pushed(client: Client, repo: str) -> None:
    """Referrers may be pushed before (or without) their subject."""
    ghost = make_image(1, 64)
    subject = descriptor(OCI_MANIFEST, ghost.manifest)
    expected = push_artifact(client, repo, subject, SIG)
    got, _ = referrers(client, repo, ghost.digest)
    assert got == [expected]
    # Pushing the subject afterwards changes nothing.
    client.push_image(repo, "late", ghost)
    got, _ = referrers(client, repo, ghost.digest)
    assert got == [expected]


def test_referrers_index_as_referrer(client: Client, repo: str) -> None:
    subject = push_subject(client, repo)
    child = make_image(1, 32)
    client.push_image(repo, child.digest, child)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": SBOM,
            "manifests": [descriptor(OCI_MANIFEST, child.manifest)],
            "subject": subject,
            "annotations": {"org.example.kind": "sbom-bundle"},
        },
        indent=2,
    ).encode()
    r = client.push_manifest(repo, digest_of(body), body, OCI_INDEX)
    assert r.headers["OCI-Subject"] == subject["digest"]
    got, _ = referrers(client, repo, subject["digest"])
    assert got == [
        {
            "mediaType": OCI_INDEX,
            "digest": digest_of(body),
            "size": len(body),
            "artifactType": SBOM,
            "annotations": {"org.example.kind": "sbom-bundle"},
        }
    ]


def test_referrers_index_as_subject(client: Client, repo: str) -> None:
    children = [make_image(1, 32) for _ in range(2)]
    for child in children:
        client.push_image(repo, child.digest, child)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, c.manifest) for c in children],
        },
        indent=2,
    ).encode()
    client.push_manifest(repo, "multi", index, OCI_INDEX)
    subject = descriptor(OCI_INDEX, index)
    expected = push_artifact(client, repo, subject, SIG)
    got, _ = referrers(client, repo, digest_of(index))
    assert got == [expected]
    # The children are not the subject.
    for child in children:
        assert referrers(client, repo, child.digest)[0] == []


def test_referrers_delete_removes(client: Client, repo: str) -> None:
    subject = push_subject(client, repo)
    keep = push_artifact(client, repo, subject, SIG)
    gone = push_artifact(client, repo, subject, SBOM)
    assert by_digest(referrers(client, repo, subject["digest"])[0]) == by_digest([keep, gone])
    r = client.delete(f"/v2/{repo}/manifests/{gone['digest']}")
    assert r.status_code == 202
    got, _ = referrers(client, repo, subject["digest"])
    assert got == [keep]
    got, _ = referrers(client, repo, subject["digest"], artifactType=SBOM)
    assert got == []


def test_referrers_tagged_referrer_listed_once(client: Client, repo: str) -> None:
    subject = push_subject(client, repo)
    expected = push_artifact(client, repo, subject, SIG, ref="sig")
    # Push the same bytes again by digest, and tag them a second time.
    body = client.get(f"/v2/{repo}/manifests/sig").content
    client.push_manifest(repo, expected["digest"], body)
    client.push_manifest(repo, "sig2", body)
    got, _ = referrers(client, repo, subject["digest"])
    assert got == [expected]


def test_referrers_scoped_to_repository(client: Client, repo: str) -> None:
    other = f"{repo}-other"
    img = make_image(1, 64)
    client.push_image(repo, "v1", img)
    client.push_image(other, "v1", img)
    subject = descriptor(OCI_MANIFEST, img.manifest)
    mine = push_artifact(client, repo, subject, SIG)
    theirs = push_artifact(client, other, subject, SBOM)
    assert referrers(client, repo, img.digest)[0] == [mine]
    assert referrers(client, other, img.digest)[0] == [theirs]


def test_referrers_sha512_subject(client: Client, repo: str) -> None:
    """A subject may be named by any supported digest algorithm."""
    ghost = random_blob(100)
    subject = {"mediaType": OCI_MANIFEST, "digest": digest_of(ghost, "sha512"), "size": len(ghost)}
    expected = push_artifact(client, repo, subject, SIG)
    got, _ = referrers(client, repo, subject["digest"])
    assert got == [expected]
