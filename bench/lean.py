"""A lean pulling client: what a warm pull costs the server, with as little client work as a pull can have.

skopeo spends most of a warm pull on itself (its start, its checks, writing files): the server's part of it is a
few percent. This client does what docker does on the wire and nothing else: GET the manifest by tag, then the
config and the layers, up to 3 blobs at once (docker's default max-concurrent-downloads), each on a keep-alive
connection of its own opened before the clock starts; bodies are read with recv_into a 4 MiB buffer (as the
large-blob client in bench/load.py) and thrown away. Every answer must be 200 with the Content-Length the
manifest declares; digests (the manifest's and each blob's) are verified only when asked, on the first pull:
hashing costs the client more CPU than the server spends on a warm pull, and the two share the machine's cores.

`LeanClient(...).pull()` is one pull (its seconds); `fleet_pull(clients)` starts one pull on each client at once
and returns the wall time until the last one ended (a CI fleet hitting a warm cache).
"""

from __future__ import annotations

import hashlib
import json
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from bench.content import ACCEPT
from bench.load import Connection
from bench.servers import BenchError

BUFFER = 4 << 20
PARALLEL = 3  # blobs at once, as docker's max-concurrent-downloads


def _connection(netloc: str, timeout: float) -> Connection:
    """A keep-alive connection with a 4 MiB buffer of its own (the client's threads read at once), no Nagle."""
    conn = Connection(netloc, timeout, memoryview(bytearray(BUFFER)))
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class LeanClient:
    """Pulls `name:tag` from the registry at `url` again and again on the same `PARALLEL` connections."""

    def __init__(self, url: str, name: str, tag: str, headers: dict[str, str] | None = None, timeout: float = 120):
        self.netloc = urlsplit(url).netloc
        self.name = name
        self.tag = tag
        self.headers = headers or {}
        self.connections: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._all = [_connection(self.netloc, timeout) for _ in range(PARALLEL)]
        for conn in self._all:
            self.connections.put(conn)
        self.pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="lean")
        self.manifest: bytes | None = None  # the manifest of the first pull: later ones must match it
        self.bytes_per_pull = 0

    def _get(self, target: str, headers: dict[str, str], size: int | None, digest: str | None) -> bytes:
        """One GET on a free connection: 200 and `size` bytes (if known) checked, `digest` verified if given; the
        body is kept only when `size` is None (the manifest)."""
        conn = self.connections.get()
        try:
            kept = bytearray()
            hasher = hashlib.sha256() if digest else None

            def sink(piece: memoryview) -> None:
                if hasher is not None:
                    hasher.update(piece)
                if size is None:
                    kept.extend(piece)

            status, _, length = conn.get(
                target, {**self.headers, **headers}, sink if (hasher or size is None) else None
            )
        except OSError as e:
            raise BenchError(f"GET {self.netloc}{target[:100]}: {e}") from None
        finally:
            self.connections.put(conn)
        if status != "200":
            raise BenchError(f"GET {self.netloc}{target[:100]}: {status}")
        if size is not None and length != size:
            raise BenchError(f"GET {self.netloc}{target[:100]}: {length} bytes, the manifest says {size}")
        if hasher is not None and f"sha256:{hasher.hexdigest()}" != digest:
            raise BenchError(f"GET {self.netloc}{target[:100]}: the body's digest is sha256:{hasher.hexdigest()}")
        return bytes(kept)

    def pull(self, verify: bool = False) -> float:
        """One pull: the manifest by tag, then its config and layers, `PARALLEL` at a time; its seconds."""
        t0 = time.perf_counter()
        manifest = self._get(f"/v2/{self.name}/manifests/{self.tag}", {"Accept": ACCEPT}, None, None)
        if self.manifest is None:
            self.manifest = manifest
        elif manifest != self.manifest:
            raise BenchError(f"{self.netloc}/{self.name}:{self.tag}: the manifest changed between pulls")
        try:
            doc = json.loads(manifest)
            blobs = [(d["digest"], int(d["size"])) for d in [doc["config"], *doc["layers"]]]
        except (ValueError, KeyError, TypeError) as e:
            raise BenchError(f"{self.netloc}/{self.name}:{self.tag}: not an image manifest ({e})") from None
        futures = [
            self.pool.submit(self._get, f"/v2/{self.name}/blobs/{d}", {}, size, d if verify else None)
            for d, size in blobs
        ]
        for future in futures:
            future.result()
        seconds = time.perf_counter() - t0
        self.bytes_per_pull = len(manifest) + sum(size for _, size in blobs)
        return seconds

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for conn in self._all:
            conn.close()


def verify_first(client: LeanClient, manifest: bytes) -> float:
    """The first pull, every digest verified, and the manifest the one expected: its seconds."""
    seconds = client.pull(verify=True)
    if client.manifest != manifest:
        raise BenchError(f"{client.netloc}/{client.name}:{client.tag}: not the manifest that was pushed")
    return seconds


def fleet_pull(clients: list[LeanClient]) -> float:
    """One pull on every client at once (each in a thread of its own, all released together): the wall time
    from the release to the end of the last pull."""
    start = threading.Event()
    errors: list[BaseException] = []

    def run(client: LeanClient) -> None:
        start.wait()
        try:
            client.pull()
        except BaseException as e:  # reported below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    time.sleep(0.02)  # every thread waiting at the start line
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        raise BenchError(f"{len(clients)} concurrent lean pulls did not end in 600 s")
    if errors:
        raise errors[0]
    return wall
