"""The `Moorage-Replication` header on a destination Moorage, as an attacker would use it: the header lets a
principal allowed `ecr:ReplicateImage` push (and creates missing repositories with the REPLICATION creation
template), and nothing more for anyone else. A principal allowed to push but not to replicate gets what it had
without the header: no repository created where `create_on_push` is off, and `[signing] enforce` still refuses
its HEAD of an unsigned image."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.oci import OCI_MANIFEST, Client, error_codes, make_image
from tests.server import MoorageServer, auth_config, ecr_client, login_password, principal_toml

HEADER = {"Moorage-Replication": "000000000000"}
PUSHER = ("AKIAPUSHERNOREPLICATE", "pusher-secret-0123456789")
REPLICATOR = ("AKIAREPLICATORONLY001", "replicator-secret-0123456789")


def policy(*actions: str) -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]}
    )


PUSH_AND_PULL = policy(
    "ecr:GetAuthorizationToken",
    "ecr:BatchGetImage",
    "ecr:BatchCheckLayerAvailability",
    "ecr:GetDownloadUrlForLayer",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    root = tmp_path_factory.mktemp("replication-header")
    config = auth_config(
        principal_toml("pusher", *PUSHER, PUSH_AND_PULL),
        principal_toml("replicator", *REPLICATOR, policy("ecr:GetAuthorizationToken", "ecr:ReplicateImage")),
        extra='[registry]\ncreate_on_push = false\n[signing]\nenforce = ["signed/*"]\n',
    )
    server = MoorageServer(root / "data", config).start()
    try:
        yield server
    finally:
        server.stop()


def client(srv: MoorageServer, creds: tuple[str, str], *, replicating: bool) -> Client:
    c = Client(srv.url, ("AWS", login_password(srv, *creds)))
    if replicating:
        c.s.headers.update(HEADER)
    return c


def test_the_header_creates_no_repository_for_a_principal_not_allowed_to_replicate(srv: MoorageServer):
    ecr = ecr_client(srv)
    pusher = client(srv, PUSHER, replicating=True)
    img = make_image(1, 256)
    r = pusher.post("/v2/team/forged/blobs/uploads/")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"], (r.status_code, r.text)
    r = pusher.put("/v2/team/forged/manifests/v1", data=img.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"], (r.status_code, r.text)
    names = {repo["repositoryName"] for repo in ecr.describe_repositories()["repositories"]}
    assert "team/forged" not in names, names
    # What the header is for: the replicator's push creates the repository.
    replicator = client(srv, REPLICATOR, replicating=True)
    replicator.push_image("team/replicated", "v1", img)
    names = {repo["repositoryName"] for repo in ecr.describe_repositories()["repositories"]}
    assert "team/replicated" in names, names


def test_the_header_does_not_lift_signing_enforcement_for_a_principal_not_allowed_to_replicate(srv: MoorageServer):
    ecr_client(srv).create_repository(repositoryName="signed/app")
    pusher = client(srv, PUSHER, replicating=False)
    img = make_image(1, 256)
    pusher.push_image("signed/app", "v1", img)  # no signing rule: not signed
    assert pusher.head("/v2/signed/app/manifests/v1").status_code == 403
    forged = client(srv, PUSHER, replicating=True)
    r = forged.head("/v2/signed/app/manifests/v1")
    assert r.status_code == 403 and "Docker-Content-Digest" not in r.headers, (r.status_code, dict(r.headers))
    # A replicating registry checks what the destination holds, signed or not.
    replicator = client(srv, REPLICATOR, replicating=True)
    assert replicator.head("/v2/signed/app/manifests/v1").status_code == 200
