"""`moorage migrate-storage`: a single-machine data dir, built by a real server, copied into PostgreSQL and/or S3,
then served by a real server on the target, which must answer exactly as the source did.

The source (built once for the module, copied for each case) has what a registry accumulates: repositories with
every setting (immutability with exclusions, scan on push, KMS encryption, resource tags, a repository policy,
a lifecycle policy, its preview and its evaluation time), images with tags, a multi-platform index, a referrer,
pull times, a pull-through rule with a cache repository filled from an upstream (blob links that remember their
upstream), a repository creation template, auth with the generated admin, a token issued by the source, and an
upload session left open (which is dropped: said in the summary).
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from storage.sqlite.schema import MIGRATIONS
from tests.oci import (
    OCI_INDEX,
    Client,
    Image,
    assert_pulls,
    canonical,
    descriptor,
    digest_of,
    make_image,
)
from tests.server import AUTH_OFF, MoorageServer, ecr_client, moorage_cli
from tests.shared_storage import Target

HOSTNAME = "registry.test:5000"  # both servers name the same address in URIs, so answers compare equal
AUTH_ON = f'[auth]\nenabled = true\n[registry]\nhostname = "{HOSTNAME}"\n'
UPSTREAMS = '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
LIFECYCLE = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": 30,
                },
                "action": {"type": "expire"},
            }
        ]
    }
)
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "pull", "Effect": "Allow", "Principal": "*", "Action": ["ecr:BatchGetImage"]}],
    }
)


@dataclass
class Source:
    """The module's single-machine registry, stopped, and what it answered before it stopped."""

    data_dir: Path
    admin: tuple[str, str]
    token: str  # issued by the source: must verify on the target
    images: dict[tuple[str, str], Image]  # (repository, tag) -> what was pushed
    index: tuple[str, str, bytes]  # (repository, tag, body)
    cached: tuple[str, str, Image]  # the pull-through cache repository, tag, and the upstream's image
    views: dict[str, Any] = field(default_factory=dict)


def ecr(url: str, admin: tuple[str, str]) -> Any:
    return ecr_client(SimpleNamespace(url=url), *admin)  # type: ignore[arg-type]


def views(client: Any) -> dict[str, Any]:
    """Everything the ECR API says about the registry that a migration must keep (no pulls: they'd move times)."""
    out: dict[str, Any] = {}
    repos = client.describe_repositories()["repositories"]
    out["repositories"] = sorted(repos, key=lambda r: r["repositoryName"])
    for repo in out["repositories"]:
        name = repo["repositoryName"]
        images = client.describe_images(repositoryName=name)["imageDetails"]
        out[f"images {name}"] = sorted(images, key=lambda i: i["imageDigest"])
        out[f"resource tags {name}"] = client.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]
        for call, key in (
            ("get_repository_policy", "policyText"),
            ("get_lifecycle_policy", None),
            ("get_lifecycle_policy_preview", None),
        ):
            try:
                answer = getattr(client, call)(repositoryName=name)
            except client.exceptions.ClientError as e:
                answer = e.response["Error"]["Code"]
            else:
                answer.pop("ResponseMetadata", None)
                answer = answer[key] if key else answer
            out[f"{call} {name}"] = answer
    out["rules"] = client.describe_pull_through_cache_rules()["pullThroughCacheRules"]
    out["templates"] = client.describe_repository_creation_templates()["repositoryCreationTemplates"]
    out["registry"] = {k: v for k, v in client.describe_registry().items() if k != "ResponseMetadata"}
    return out


def wait_preview(client: Any, name: str) -> None:
    deadline = time.monotonic() + 20
    while client.get_lifecycle_policy_preview(repositoryName=name)["status"] == "IN_PROGRESS":
        assert time.monotonic() < deadline, "the lifecycle preview did not complete"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    root = tmp_path_factory.mktemp("migrate-source")
    upstream = MoorageServer(root / "upstream", AUTH_OFF).start()
    srv = MoorageServer(root / "data", AUTH_ON + UPSTREAMS)
    try:
        upstream_image = make_image(layer_size=3000)
        Client(upstream.url).push_image("lib/app", "1", upstream_image)
        srv.start()
        creds = json.loads((srv.data_dir / "admin-credentials.json").read_text())
        admin = (creds["access_key_id"], creds["secret_access_key"])
        client = ecr(srv.url, admin)
        data = client.get_authorization_token()["authorizationData"][0]
        token = base64.b64decode(data["authorizationToken"]).decode().partition(":")[2]
        v2 = Client(srv.url, ("AWS", token))

        client.create_repository_creation_template(
            prefix="team",
            appliedFor=["CREATE_ON_PUSH"],
            imageTagMutability="IMMUTABLE",
            description="the team's",
            resourceTags=[{"Key": "owner", "Value": "team"}],
        )
        client.create_repository(
            repositoryName="prod/app",
            imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
            imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": "latest*"}],
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "KMS", "kmsKey": "arn:aws:kms:us-east-1:000000000000:key/k"},
            tags=[{"Key": "env", "Value": "prod"}, {"Key": "cost", "Value": "42"}],
        )
        images: dict[tuple[str, str], Image] = {}
        for repo, tag in (("prod/app", "1.0"), ("prod/app", "latest"), ("team/base", "v1"), ("team/base", "v2")):
            images[repo, tag] = make_image()
            v2.push_image(repo, tag, images[repo, tag])
        untagged = make_image()
        v2.push_image("prod/app", untagged.digest, untagged)
        # a multi-platform index of two images, and a referrer (a signature-like artifact) of 1.0
        arm, amd = make_image(platform="arm64"), make_image(platform="amd64")
        for image in (arm, amd):
            v2.push_image("team/multi", image.digest, image)
        index = canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [descriptor(i.media_type, i.manifest) for i in (arm, amd)],
            }
        )
        v2.push_manifest("team/multi", "2.0", index, OCI_INDEX)
        subject = images["prod/app", "1.0"]
        signature = make_image(
            n_layers=1, subject=descriptor(subject.media_type, subject.manifest), artifact_type="application/x.sig"
        )
        v2.push_image("prod/app", signature.digest, signature)
        client.set_repository_policy(repositoryName="prod/app", policyText=POLICY)
        client.put_lifecycle_policy(repositoryName="prod/app", lifecyclePolicyText=LIFECYCLE)
        client.start_lifecycle_policy_preview(repositoryName="prod/app")
        wait_preview(client, "prod/app")
        # a pull-through cache repository filled from the upstream: blob links that remember where they came from
        client.create_pull_through_cache_rule(ecrRepositoryPrefix="cache", upstreamRegistryUrl=upstream.url)
        assert_pulls(v2, "cache/lib/app", "1", upstream_image)
        assert_pulls(v2, "team/base", "v1", images["team/base", "v1"])  # a pull time
        v2.post("/v2/team/base/blobs/uploads/")  # an upload session left open: dropped by the migration
        srv.stop()  # pull times are written as it stops
        # the lifecycle's evaluation time, as the scheduled sweep leaves it
        p = moorage_cli("lifecycle", "run", "--config", srv.config_path, "--data-dir", srv.data_dir)
        assert p.returncode == 0, p.stderr
        srv.start()
        src = Source(
            srv.data_dir, admin, token, images, ("team/multi", "2.0", index), ("cache/lib/app", "1", upstream_image)
        )
        src.views = views(ecr(srv.url, admin))
        srv.stop()
        yield src
    finally:
        srv.stop()
        upstream.stop()


def copy_source(source: Source, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(source.data_dir, data)
    return data


def migrate(config: Path, *args: object) -> Any:
    return moorage_cli("migrate-storage", "--config", config, *args, timeout=300)


def assert_one_line_error(p: Any, *words: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    for word in words:
        assert word in p.stderr, p.stderr


@pytest.mark.parametrize("kind", ["postgresql+s3", "postgresql+filesystem", "sqlite+s3"])
def test_a_migrated_registry_answers_as_the_source_did(
    source: Source, kind: str, make_target: Callable[[str], Target], tmp_path: Path
) -> None:
    target = make_target(kind)
    data = copy_source(source, tmp_path)
    # replicas keep their own data dir as scratch space; the same data dir serves for a one-machine target
    target_dir = tmp_path / "replica" if target.dsn else data
    config = tmp_path / "target.toml"
    config.write_text(AUTH_ON + UPSTREAMS + target.toml() + f'[server]\ndata_dir = "{target_dir}"\n')

    p = migrate(config, "--source", data)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["uploadSessionsDropped"] == 1
    assert summary["blobsCopied"] + summary["blobsAlreadyThere"] == summary["blobs"] > 0
    if target.dsn:
        assert summary["repositories"] == 4 and summary["images"] == 10, summary
    if target.prefix:
        assert summary["blobsCopied"] == summary["blobs"] and len(target.objects()) == summary["blobs"]
    if target.dsn:  # the cache's blob links still name the upstream that proved their bytes
        assert target.run_sql("SELECT count(*) FROM repository_blobs WHERE upstream IS NOT NULL") == 3

    srv = MoorageServer(target_dir, config.read_text()).start()
    try:
        client = ecr(srv.url, source.admin)  # the generated admin's keys came across
        assert views(client) == source.views
        # the source's token verifies on the target: pull everything with it, byte for byte
        v2 = Client(srv.url, ("AWS", source.token))
        for (repo, tag), image in source.images.items():
            assert_pulls(v2, repo, tag, image)
        repo, tag, body = source.index
        assert v2.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_INDEX}).content == body
        subject = source.images["prod/app", "1.0"]
        referrers = v2.get(f"/v2/prod/app/referrers/{subject.digest}").json()["manifests"]
        assert [r["artifactType"] for r in referrers] == ["application/x.sig"]
        repo, tag, image = source.cached
        assert_pulls(v2, repo, tag, image)  # from the cache: the upstream is gone
        # a push after the migration gets new ids (no clash with the copied ones) and lists last
        pushed = make_image()
        v2.push_image("team/base", "v3", pushed)
        listed = [i["imageDigest"] for i in client.list_images(repositoryName="team/base")["imageIds"]]
        assert pushed.digest in listed
    finally:
        srv.stop()

    # a second run is refused: the target holds the registry now
    again = migrate(config, "--source", data)
    assert_one_line_error(again, "not empty" if not target.dsn else "completed migration")
    resumed = migrate(config, "--source", data, "--resume")
    if target.dsn:
        assert_one_line_error(resumed, "completed migration")
    else:  # blobs only: resuming copies nothing more
        assert resumed.returncode == 0 and json.loads(resumed.stdout)["blobsCopied"] == 0, resumed.stderr


def test_a_target_that_is_not_empty_is_refused(
    source: Source, make_target: Callable[[str], Target], tmp_path: Path
) -> None:
    target = make_target("postgresql+s3")
    data = copy_source(source, tmp_path)
    config = tmp_path / "target.toml"
    config.write_text(AUTH_ON + target.toml() + f'[server]\ndata_dir = "{tmp_path / "replica"}"\n')
    srv = MoorageServer(tmp_path / "replica", AUTH_OFF + target.toml()).start()  # a replica has been at work
    try:
        ecr_client(srv).create_repository(repositoryName="already/here")
    finally:
        srv.stop()
    p = migrate(config, "--source", data)
    assert_one_line_error(p, "not empty", "1 repositories")
    assert target.objects() == {}  # nothing was copied

    # blobs in the bucket make a target just as taken
    other = make_target("postgresql+s3")
    other.prefix = target.prefix
    config.write_text(AUTH_ON + other.toml() + f'[server]\ndata_dir = "{tmp_path / "replica"}"\n')
    srv = MoorageServer(tmp_path / "replica", AUTH_OFF + target.toml()).start()
    try:
        Client(srv.url).push_image("already/here", "1", make_image(n_layers=1))
    finally:
        srv.stop()
    p = migrate(config, "--source", data)
    assert_one_line_error(p, "not empty", "blobs in its blob store")


def test_a_corrupt_source_blob_fails_clearly_and_resume_finishes_once_it_is_repaired(
    source: Source, make_target: Callable[[str], Target], tmp_path: Path
) -> None:
    target = make_target("postgresql+s3")
    data = copy_source(source, tmp_path)
    # The layer that sorts last: blobs are copied in digest order, 4 at a time, so at least the ones that sort
    # well before it are in the target when its copy fails (the resume below must skip them).
    layer = max((x for image in source.images.values() for x in image.layers), key=digest_of)
    digest = digest_of(layer)
    path = data / "blobs" / "sha256" / digest[7:9] / digest[7:]
    path.write_bytes(b"X" + layer[1:])  # same size, other bytes
    config = tmp_path / "target.toml"
    config.write_text(AUTH_ON + target.toml() + f'[server]\ndata_dir = "{tmp_path / "replica"}"\n')

    p = migrate(config, "--source", data)
    assert_one_line_error(p, digest, "do not match their digest", "damaged")
    assert f"blobs/sha256/{digest[7:9]}/{digest[7:]}" not in target.objects()  # never half visible
    assert target.run_sql("SELECT count(*) FROM repositories") == 0  # no metadata before every blob is there

    p = migrate(config, "--source", data)  # without --resume: the interrupted migration is named
    assert_one_line_error(p, "interrupted migration", "--resume")
    path.write_bytes(layer)
    p = migrate(config, "--source", data, "--resume")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["resumed"] and summary["blobsAlreadyThere"] > 0 and summary["repositories"] == 4, summary


def test_a_data_dir_in_use_by_a_server_is_refused(
    source: Source, make_target: Callable[[str], Target], tmp_path: Path
) -> None:
    target = make_target("postgresql+s3")
    data = copy_source(source, tmp_path)
    config = tmp_path / "target.toml"
    config.write_text(AUTH_ON + target.toml() + f'[server]\ndata_dir = "{tmp_path / "replica"}"\n')
    srv = MoorageServer(data, AUTH_ON).start()
    try:
        p = migrate(config, "--source", data)
        assert_one_line_error(p, "in use by another process")
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        srv.stop()
    assert target.run_sql("SELECT to_regclass('repositories') IS NULL")  # the target was not even touched


def test_a_data_dir_of_an_old_schema_is_migrated_through_its_migrations(
    make_target: Callable[[str], Target], tmp_path: Path
) -> None:
    """A data dir last written at schema version 5 (before upload owners, blob origins, GC claims and shared
    values existed): the SQLite store migrates it on open, then everything is copied."""
    data = tmp_path / "old"
    data.mkdir()
    image = make_image(n_layers=1)
    db = sqlite3.connect(data / "moorage.db")
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 5")
    db.execute(
        "INSERT INTO repositories (id, name, created_at, image_tag_mutability) VALUES (7, 'old/app', 1.5e9, "
        "'IMMUTABLE')"
    )
    for blob in image.blobs:
        d = digest_of(blob)
        db.execute(
            "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES (?, ?, 1.5e9, 1.5e9)", (d, len(blob))
        )
        db.execute("INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (7, ?, 1.5e9)", (d,))
        path = data / "blobs" / "sha256" / d[7:9] / d[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    db.execute(
        "INSERT INTO manifests (id, repository_id, digest, media_type, size, pushed_at, body, image_size, "
        "config_media_type) VALUES (40, 7, ?, ?, ?, 1.5e9, ?, ?, 'application/vnd.oci.image.config.v1+json')",
        (image.digest, image.media_type, len(image.manifest), image.manifest, sum(map(len, image.blobs))),
    )
    for blob in image.blobs:
        db.execute("INSERT INTO manifest_references VALUES (40, ?, 'blob')", (digest_of(blob),))
    db.execute("INSERT INTO tags VALUES (7, 'v1', 40, 1.5e9)")
    db.commit()
    db.close()

    target = make_target("postgresql+s3")
    config = tmp_path / "target.toml"
    config.write_text(AUTH_OFF + target.toml() + f'[server]\ndata_dir = "{tmp_path / "replica"}"\n')
    p = migrate(config, "--source", data)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["images"] == 1
    srv = MoorageServer(tmp_path / "replica", config.read_text()).start()
    try:
        assert_pulls(Client(srv.url), "old/app", "v1", image)
        repo = ecr_client(srv).describe_repositories()["repositories"][0]
        assert (repo["repositoryName"], repo["imageTagMutability"], repo["createdAt"].timestamp()) == (
            "old/app",
            "IMMUTABLE",
            1.5e9,
        )
        # the copied ids are behind the sequences: a new repository and image take fresh ones
        Client(srv.url).push_image("new/app", "1", make_image(n_layers=1))
    finally:
        srv.stop()


def test_the_command_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    p = moorage_cli("migrate-storage", "--data-dir", empty, "--metadata", "postgresql://x@127.0.0.1:1/x")
    assert_one_line_error(p, "holds no single-machine registry")
    data = tmp_path / "data"
    srv = MoorageServer(data, AUTH_OFF).start()
    srv.stop()
    p = moorage_cli("migrate-storage", "--data-dir", data)
    assert_one_line_error(p, "the target is the source")
    p = moorage_cli("migrate-storage", "--data-dir", data, "--metadata", "postgresql://x:pw@127.0.0.1:1/x")
    assert_one_line_error(p, "PostgreSQL", "127.0.0.1:1")
    assert "pw" not in p.stderr
