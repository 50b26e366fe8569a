"""The offline tools on the shared backends (PostgreSQL metadata, S3 blobs) beside a live replica on the same
backends: `moorage import`, `export`, `gc`, `lifecycle run`, `credentials` and `check-config`.

Each command runs as its own process with its own data dir (a replica's scratch space, as on another machine),
the server sees what it did at its next request (the change feed), and the bucket is inspected directly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.layouts import read_layout, write_multi_platform_image, write_single_image
from tests.oci import OCI_INDEX, Client, assert_pulls, digest_of, make_image
from tests.server import AUTH_OFF, REPO_ROOT, MoorageServer, ecr_client, moorage_cli
from tests.shared_storage import Target

CONFIG = AUTH_OFF + '[gc]\ngrace_period = "1ms"\n'


@pytest.fixture
def shared(make_target: Callable[[str], Target], tmp_path: Path) -> Iterator[tuple[Target, MoorageServer, Path]]:
    """A PostgreSQL + S3 target, a replica serving it, and the config file the tools use."""
    target = make_target("postgresql+s3")
    srv = MoorageServer(tmp_path / "replica", CONFIG + target.toml()).start()
    config = tmp_path / "tools.toml"
    config.write_text(CONFIG + target.toml() + f'[server]\ndata_dir = "{tmp_path / "tools"}"\n')
    try:
        yield target, srv, config
    finally:
        srv.stop()


def tool(config: Path, *args: object) -> Any:
    """A tool on the shared backends, which must succeed; its JSON."""
    p = moorage_cli(*args, "--config", config)
    assert p.returncode == 0, f"moorage {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest[7:9]}/{digest[7:]}"


def test_import_then_pull_from_the_replica_and_export_back(
    shared: tuple[Target, MoorageServer, Path], tmp_path: Path
) -> None:
    target, srv, config = shared
    single = write_single_image(tmp_path / "single", tag="1.0")
    multi = write_multi_platform_image(tmp_path / "multi", tag="2.0")
    archive = tmp_path / "multi.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "multi", arcname=".")
    tool(config, "import", tmp_path / "single", "team/app")
    tool(config, "import", archive, "team/multi")
    # the replica serves what the tool imported, at once, from the bucket
    client = Client(srv.url)
    r = client.get("/v2/team/app/manifests/1.0", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200 and r.content == single.manifest
    for digest, data in single.blobs.items():
        if digest != single.digest:
            assert client.get(f"/v2/team/app/blobs/{digest}").content == data
            assert blob_key(digest) in target.objects()
    index = client.get("/v2/team/multi/manifests/2.0", headers={"Accept": OCI_INDEX})
    assert index.status_code == 200 and index.content == multi.index

    # export (another process, data dir of its own) writes back exactly what was imported, pushed or not
    pushed = make_image()
    client.push_image("team/pushed", "p", pushed)
    out = tmp_path / "out"
    summary = tool(config, "export", "team/app:1.0", "team/multi:2.0", "team/pushed:p", out)
    assert summary
    for ref, image in (("team/app:1.0", single), ("team/multi:2.0", multi)):
        layout = read_layout(out, ref)
        assert layout.top_digest == image.digest
        assert {d: layout.blobs.get(d) for d in image.blobs} == image.blobs
    layout = read_layout(out, "team/pushed:p")
    assert layout.top_digest == pushed.digest
    assert all(layout.blobs[digest_of(b)] == b for b in pushed.blobs)


def test_gc_removes_unreferenced_blobs_from_the_bucket_while_the_replica_serves_the_rest(
    shared: tuple[Target, MoorageServer, Path],
) -> None:
    target, srv, config = shared
    client = Client(srv.url)
    kept, dropped = make_image(), make_image()
    client.push_image("gc/app", "kept", kept)
    client.push_image("gc/app", "dropped", dropped)
    ecr_client(srv).batch_delete_image(repositoryName="gc/app", imageIds=[{"imageTag": "dropped"}])
    assert all(blob_key(digest_of(b)) in target.objects() for b in dropped.blobs)

    assert tool(config, "gc", "--dry-run")["blobsRemoved"] == len(dropped.blobs)
    assert all(blob_key(digest_of(b)) in target.objects() for b in dropped.blobs)  # a dry run keeps them
    report = tool(config, "gc")
    assert report["blobsRemoved"] == len(dropped.blobs) and report["bytesFreed"] == sum(map(len, dropped.blobs))
    objects = target.objects()
    assert not any(blob_key(digest_of(b)) in objects for b in dropped.blobs)
    assert all(blob_key(digest_of(b)) in objects for b in kept.blobs)
    assert_pulls(client, "gc/app", "kept", kept)
    for blob in dropped.blobs:
        assert client.get(f"/v2/gc/app/blobs/{digest_of(blob)}").status_code == 404
    assert tool(config, "gc")["blobsRemoved"] == 0


def test_lifecycle_run_expires_per_policy_and_the_replica_sees_it_at_once(
    shared: tuple[Target, MoorageServer, Path],
) -> None:
    _, srv, config = shared
    client, ecr = Client(srv.url), ecr_client(srv)
    images = [make_image(n_layers=1) for _ in range(3)]
    for i, image in enumerate(images):
        client.push_image("life/app", f"v{i}", image)
    policy = {
        "rules": [
            {
                "rulePriority": 1,
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1},
                "action": {"type": "expire"},
            }
        ]
    }
    ecr.put_lifecycle_policy(repositoryName="life/app", lifecyclePolicyText=json.dumps(policy))
    assert len(ecr.describe_images(repositoryName="life/app")["imageDetails"]) == 3
    assert client.get("/v2/life/app/manifests/v0").status_code == 200  # (cached by the replica now)

    report = tool(config, "lifecycle", "run", "--repository", "life/app")
    expired = {digest for repo in report for digest in (i["imageDigest"] for i in repo.get("expired", []))}
    assert expired == {images[0].digest, images[1].digest}, report
    left = ecr.describe_images(repositoryName="life/app")["imageDetails"]
    assert [i["imageDigest"] for i in left] == [images[2].digest]
    assert client.get("/v2/life/app/manifests/v0").status_code == 404
    assert ecr.get_lifecycle_policy(repositoryName="life/app")["lastEvaluatedAt"]


@pytest.mark.parametrize(
    ("command", "lock"), [(["gc"], "job gc"), (["lifecycle", "run"], "job lifecycle")], ids=["gc", "lifecycle"]
)
def test_the_commands_wait_while_another_machine_runs_the_job(
    shared: tuple[Target, MoorageServer, Path], tmp_path: Path, command: list[str], lock: str
) -> None:
    """One collector and one lifecycle runner across replicas: while another process on the same PostgreSQL
    (another machine, data dir of its own) holds the job's advisory lock, as a replica's scheduled run does, the
    command says it waits and does not run; it runs once that process dies (PostgreSQL releases its lock)."""
    target, _, config = shared
    where = json.dumps({"data": str(tmp_path / "holder"), "metadata": target.dsn})
    (tmp_path / "holder").mkdir()
    holder_command = [sys.executable, "-m", "tests.contract.backends", "postgresql+filesystem", where, "lock", lock]
    command_line = [sys.executable, "-m", "registry", *command, "--config", str(config)]
    with subprocess.Popen(holder_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT) as h:
        try:
            assert h.stdout is not None and h.stdout.readline().strip() == "held"
            with subprocess.Popen(
                command_line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
            ) as proc:
                try:
                    assert proc.stderr is not None
                    line = proc.stderr.readline()
                    assert "waiting for the" in line, line + proc.stderr.read()
                    time.sleep(1)
                    assert proc.poll() is None, "the command ran beside another machine's run"
                    h.kill()  # PostgreSQL releases a dead session's advisory locks
                    out, err = proc.communicate(timeout=60)
                finally:
                    proc.kill()
            assert proc.returncode == 0, err
            json.loads(out)
        finally:
            h.kill()


def test_credentials_of_the_generated_admin_come_from_the_shared_store(
    make_target: Callable[[str], Target], tmp_path: Path
) -> None:
    target = make_target("postgresql+s3")
    srv = MoorageServer(tmp_path / "replica", "[auth]\nenabled = true\n" + target.toml()).start()
    srv.stop()
    creds = json.loads((srv.data_dir / "admin-credentials.json").read_text())
    config = tmp_path / "tools.toml"
    config.write_text(target.toml() + f'[server]\ndata_dir = "{tmp_path / "elsewhere"}"\n')
    p = moorage_cli("credentials", "--config", config)
    assert p.returncode == 0, p.stderr
    assert f"export AWS_ACCESS_KEY_ID={creds['access_key_id']}" in p.stdout


def test_check_config_reaches_the_storage_it_names(make_target: Callable[[str], Target], tmp_path: Path) -> None:
    target = make_target("postgresql+s3")
    good = tmp_path / "good.toml"
    good.write_text(target.toml())
    p = moorage_cli("check-config", good)
    assert p.returncode == 0, p.stderr
    assert "metadata: PostgreSQL" in p.stdout and "reachable" in p.stdout and "blobs: s3://" in p.stdout
    assert "the first start migrates it" in p.stdout  # nothing was created by the check
    assert target.run_sql("SELECT to_regclass('schema_version') IS NULL")

    dead_pg = tmp_path / "dead-pg.toml"
    dead_pg.write_text(target.toml().replace(target.dsn, "postgresql://moorage:secret@127.0.0.1:1/nowhere"))
    dead_s3 = tmp_path / "dead-s3.toml"
    dead_s3.write_text(re.sub(r'endpoint_url = "[^"]*"', 'endpoint_url = "http://127.0.0.1:1"', target.toml()))
    for config, words in ((dead_pg, ("PostgreSQL", "127.0.0.1:1", "unreachable")), (dead_s3, ("storage",))):
        p = moorage_cli("check-config", config, timeout=60)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1 and "secret" not in p.stderr, p.stderr
        assert all(word in p.stderr for word in words), p.stderr
        assert moorage_cli("check-config", "--no-connect", config).returncode == 0
