"""Instructions per request: the manifest GET by tag and the small-blob GET, counted by callgrind.

req/s on this 2-core VM swing by ±30% from one run to the next; the instructions a server executes for a request
do not. So each of three servers runs as ONE process (Moorage with `workers = 1` serves in the process it starts,
with no supervisor; bench/bare_server.py with one process likewise) under

    valgrind --tool=callgrind --callgrind-out-file=<tmp> --instr-atstart=no --vgdb=yes python -m ...

valgrind runs the interpreter itself (no wrapper script: the server's own process is the one counted), with
Python's own allocator (pymalloc) as in production: callgrind needs no option for Python. The servers:
`moorage` (auth off), `moorage-auth` (auth on; every GET carries `Authorization: Basic base64(AWS:<token>)`, as
in the wrk GET benchmarks) and `bare-aiohttp` (bench/bare_server.py answering with the very bytes and header fields
the callgrind Moorage sent). One server at a time, measured then stopped: instruction counts do not drift with the
machine's load, so there is nothing to interleave.

Instrumentation is off while the interpreter starts and the server is seeded (a skopeo push) and warmed (a few
hundred GETs of each route: Python's specializing interpreter, Moorage's caches and prepared heads settle). Then:

1. the idle rate: `SETTLE_SECONDS` for the warm-up's tail to pass (the teardown of its connections, a pull-time
   flush), then `callgrind_control -i on`, `-z`, `instr_idle` seconds without a request, `-d`: the server's Ir
   per second of wall time with nothing to do (Moorage's metrics sync every second, its pull-time flush every
   5 s, its log writer's wake-ups: ~0.2M a second; about 0 for the bare app);
2. `runs` windows per route, each: 16 (`connections`) keep-alive connections opened and one GET sent on each
   (so the server has accepted them and set them up: connecting is not a GET's cost, and wrk's connections too
   live for a whole run), then `-i on`, `-z`, exactly N (`instr_requests`) GETs, `-d`, `-i off`, then the
   connections closed; instructions per request = (the dump's Ir - idle rate * the window's seconds) ÷ N.

Exactly N: `Client.get` keeps each connection with one GET in flight (as wrk -c keeps them), sends the next on a
connection when its answer is complete (200, the expected Content-Length, no `Connection: close`) and stops sending
at N. Moorage's own count must agree before the window is closed: its access log must hold N lines of this
client's GETs (its User-Agent) of the path, so the log writer thread's work for them is inside the window.

Why the idle rate is taken off rather than windows of N and 2N differenced: timer-driven work costs per second,
not per request. At full speed it is spread over thousands of requests a second, under callgrind (~50x slower)
over a few hundred, which would charge Moorage for it many times over; a window of 2N lasts twice as long as one
of N, so differencing would not cancel it. What remains is per-request work that is batched in time: the log
writer wakes every 20 ms while lines come and writes them in one go; under callgrind fewer lines share a wake-up
than at full speed, so Moorage's count is a little high (it errs against Moorage). Trials on one server, manifest
GET: windows of 300, 600 and 1,200 GETs gave 171.3k, 171.6k and 172.1k per GET (172.2k, 172.3k and 172.7k before
the idle cost was taken off); with the connections opened inside the window and not primed, 179.5k, 174.4k and
171.1k (their accept and setup, spread over fewer GETs); with the idle rate measured right after the warm-up, whose
first second costs ~1.4M instructions, the idle correction took off ~2.3k a GET instead of ~0.7k.

What it does not count: the kernel's work (system calls, the TCP stack over loopback, copies): callgrind counts
the instructions the process executes in user space. The kernel's part of a GET (reading the request, writing the
answer, TCP) is much the same on the three servers, and in req/s or CPU time it dilutes every difference between
them; here nothing dilutes a user-space cost such as auth's token check or Moorage's routing and access log. So
the shares here are stricter than with wrk: the auth target (≥ 90%) especially is harder to meet here.

Results: a table (the median of the `runs` windows per server and route; bare ÷ Moorage against the issue's
≥ 70%, auth off ÷ on against its ≥ 90%: fewer instructions is faster, so these are the speeds' shares), and every
window's numbers in RESULTS.json under `samples.instructions`.
"""

from __future__ import annotations

import json
import selectors
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.content import ACCEPT, Image, digest_of
from bench.report import AUTH_COST, BARE, BARE_SHARE, MOORAGE, MOORAGE_AUTH, Table, _pct, _word
from bench.servers import BareAiohttp, BenchError, Moorage, Served, Server, served
from bench.suite import Bench

LABELS = (MOORAGE, MOORAGE_AUTH, BARE)
ROUTES = ("manifest", "small-blob")
VALGRIND = shutil.which("valgrind") or "valgrind"
USER_AGENT = "moorage-bench-instructions"  # every GET's, so Moorage's access log lines of ours can be counted
CALLGRIND_CONTROL = shutil.which("callgrind_control") or "callgrind_control"
# Seconds between the warm-up and the idle measurement: right after the warm-up, the server still tears down its
# connections and flushes its pull times (a first idle second costs it ~1.4M instructions, later ones ~0.2M).
SETTLE_SECONDS = 2.0
START_TIMEOUT = 300.0  # seconds for a server under valgrind to answer (Moorage's start takes a few seconds here)


# -- callgrind's output files -------------------------------------------------------------------------


def callgrind_totals(text: str) -> dict[str, int]:
    """The events of a callgrind output file (`events: Ir ...`) and their total cost: the `totals:` line (the sum
    of every cost line), else the `summary:` line. ValueError when the file has no events line or neither total
    (a truncated or foreign file)."""
    events: list[str] | None = None
    totals: list[int] | None = None
    summary: list[int] | None = None
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        if key == "events":
            events = rest.split()
        elif key in ("totals", "summary"):
            try:
                values = [int(x) for x in rest.split()]
            except ValueError:
                raise ValueError(f"callgrind output: a bad {key} line {line!r}") from None
            if key == "totals":
                totals = values
            else:
                summary = values
    if not events:
        raise ValueError("callgrind output: no `events:` line")
    found = totals if totals is not None else summary
    if found is None:
        raise ValueError("callgrind output: no `totals:` nor `summary:` line")
    if not found or len(found) > len(events):
        raise ValueError(f"callgrind output: {len(found)} totals for the events {events}")
    # Trailing events with no cost may be left out of a cost line (callgrind's format): they are 0.
    return {name: (found[i] if i < len(found) else 0) for i, name in enumerate(events)}


def instructions(text: str) -> int:
    """Ir, the instructions executed, of a callgrind output file's text."""
    totals = callgrind_totals(text)
    if "Ir" not in totals:
        raise ValueError(f"callgrind output: no Ir among the events {sorted(totals)}")
    return totals["Ir"]


# -- the arithmetic and the table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One counted window: `ir` instructions in `seconds` of wall time for `requests` GETs; `idle_rate` the
    server's Ir per second with no request."""

    ir: int
    requests: int
    seconds: float
    idle_rate: float
    bytes: int = 0  # of the answers, heads and bodies

    @property
    def idle(self) -> float:
        return self.idle_rate * self.seconds

    @property
    def per_request(self) -> float:
        if self.requests <= 0:
            raise ValueError("a window without requests")
        return (self.ir - self.idle) / self.requests

    def sample(self) -> dict[str, float]:
        """The window's numbers, for the JSON."""
        return {
            "ir": self.ir,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "idle_ir": round(self.idle),
            "per_request": round(self.per_request, 1),
            "bytes_per_response": round(self.bytes / self.requests) if self.requests else 0,
        }


def share(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, None if either is missing (or the denominator 0)."""
    return None if numerator is None or not denominator else numerator / denominator


def verdicts(per_request: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float | bool | None]]:
    """Per route (of `per_request[route][label]`: instructions per request, one per window): the medians, bare ÷
    Moorage (fewer instructions is better, so this is Moorage's speed as a share of bare's: target ≥ 70%), Moorage
    auth off ÷ auth on (target ≥ 90%), each target met (True), missed (False) or not measured (None)."""
    out: dict[str, dict[str, float | bool | None]] = {}
    for route, by_label in per_request.items():
        med = {label: statistics.median(v) if v else None for label, v in by_label.items()}
        moorage, auth, bare = med.get(MOORAGE), med.get(MOORAGE_AUTH), med.get(BARE)
        bare_share, auth_share = share(bare, moorage), share(moorage, auth)
        out[route] = {
            MOORAGE: moorage,
            MOORAGE_AUTH: auth,
            BARE: bare,
            "bare_of_moorage": bare_share,
            "bare_of_moorage_auth": share(bare, auth),
            "auth_off_of_on": auth_share,
            "bare_target_met": None if bare_share is None else bare_share >= BARE_SHARE,
            "auth_target_met": None if auth_share is None else auth_share >= 1 - AUTH_COST,
        }
    return out


def _count(value: float | bool | None) -> str:
    return "—" if value is None or isinstance(value, bool) else f"{value:,.0f}"


TITLES = {"manifest": "manifest GET by tag", "small-blob": "small blob GET"}


def table(per_request: dict[str, dict[str, list[float]]], requests: int, connections: int, runs: int) -> Table:
    """The instructions table: a row per route, the issue's two targets marked met or missed."""
    headers = [
        "benchmark",
        "Moorage",
        "Moorage (auth)",
        "bare-aiohttp",
        f"bare ÷ Moorage (target ≥ {BARE_SHARE:.0%})",
        f"auth off ÷ on (target ≥ {1 - AUTH_COST:.0%})",
        "bare ÷ Moorage (auth)",
    ]
    rows = []
    for route, v in verdicts(per_request).items():
        rows.append(
            [
                TITLES.get(route, route),
                _count(v[MOORAGE]),
                _count(v[MOORAGE_AUTH]),
                _count(v[BARE]),
                f"{_pct(v['bare_of_moorage'])} {_word(v['bare_target_met'])}",
                f"{_pct(v['auth_off_of_on'])} {_word(v['auth_target_met'])}",
                _pct(v["bare_of_moorage_auth"]),
            ]
        )
    note = (
        f"Instructions executed per request (callgrind's Ir, user space only: the kernel's system calls and TCP "
        f"are not counted), the median of {runs} window(s) of exactly {requests:,} GETs on {connections} keep-alive "
        "connections, each server one process under valgrind (bench/instructions.py). Fewer is better, so the "
        "shares are of instructions inverted: bare ÷ Moorage is Moorage's speed as a share of the bare aiohttp "
        "app's, auth off ÷ on the speed with auth on as a share of auth off's. Repeatable to well under 1% from run "
        "to run, where req/s on this machine swing by ±30%."
    )
    return Table("Instructions per request (callgrind)", headers, rows, note)


# -- the client -----------------------------------------------------------------------------------------


@dataclass
class Driven:
    requests: int
    bytes: int
    seconds: float


def request_bytes(host: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[str, int, bool]:
    """(status, Content-Length, whether the server will close the connection) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    status = parts[1] if len(parts) > 1 else "?"
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "content-length" not in fields:
        raise BenchError(f"{lines[0]!r}: no Content-Length ({fields})")
    return status, int(fields["content-length"]), fields.get("connection", "").lower() == "close"


@dataclass
class _Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    need: int | None = None  # the whole response's length, once its head is in


class Client:
    """`connections` keep-alive connections to `host` ("127.0.0.1:port"), opened at once (before a counted window
    starts: connecting is not a GET's cost) and kept until `close`; `get` sends exactly `count` GETs over them."""

    def __init__(self, host: str, connections: int, connect_timeout: float = 30) -> None:
        ip, _, port = host.rpartition(":")
        if ip != "127.0.0.1":
            raise BenchError(f"the instructions client: {host} is not on 127.0.0.1")
        self.host = host
        self.sel = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        try:
            for _ in range(connections):
                sock = socket.create_connection((ip, int(port)), timeout=connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Conn(sock)
                self.conns.append(conn)
                self.sel.register(sock, selectors.EVENT_READ, conn)
        except OSError as e:
            self.close()
            raise BenchError(f"connecting to {host}: {e}") from None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sel.close()
        for conn in self.conns:
            conn.sock.close()
        self.conns = []

    def get(
        self, target: str, headers: dict[str, str], count: int, *, body_length: int | None = None, timeout: float = 600
    ) -> Driven:
        """Exactly `count` GETs of `target`, each connection with one in flight (as wrk -c keeps them), the next
        sent on a connection when its answer is complete; every answer checked: 200, `body_length` bytes of body
        if given, the connection kept open. `timeout` bounds the whole run."""
        request = request_bytes(self.host, target, headers)
        sent = done = total = 0
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            for conn in self.conns[:count]:
                conn.sock.sendall(request)
                sent += 1
            while done < count:
                left = deadline - time.monotonic()
                events = self.sel.select(left) if left > 0 else []
                if not events:
                    raise BenchError(f"GET {target[:100]}: {done} of {count} answers in {timeout:g} s")
                for key, _ in events:
                    conn = key.data
                    if not self._read(conn, target, body_length):
                        continue
                    done += 1
                    total += len(conn.buf)
                    conn.buf.clear()
                    conn.need = None
                    if sent < count:
                        conn.sock.sendall(request)
                        sent += 1
        except OSError as e:
            raise BenchError(f"GET {target[:100]}: {e}") from None
        return Driven(done, total, time.monotonic() - t0)

    @staticmethod
    def _read(conn: _Conn, target: str, body_length: int | None) -> bool:
        """Read what `conn` has; whether its answer is complete."""
        chunk = conn.sock.recv(262144)
        if not chunk:
            raise BenchError(f"GET {target[:100]}: the server closed a keep-alive connection")
        conn.buf += chunk
        if conn.need is None:
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.buf) > 65536:
                    raise BenchError(f"GET {target[:100]}: no end of the head in 64 KiB")
                return False
            status, length, closing = parse_head(bytes(conn.buf[:end]))
            if status != "200" or closing:
                raise BenchError(f"GET {target[:100]}: {status}{' (closing)' if closing else ''}")
            if body_length is not None and length != body_length:
                raise BenchError(f"GET {target[:100]}: {length} bytes of body, not {body_length}")
            conn.need = end + 4 + length
        if len(conn.buf) > conn.need:
            raise BenchError(f"GET {target[:100]}: {len(conn.buf) - conn.need} bytes past the answer")
        return len(conn.buf) == conn.need


# -- callgrind around a server ------------------------------------------------------------------------


def valgrind_command(out_file: Path) -> list[str]:
    """What the server's interpreter runs under: callgrind, counting nothing until told to."""
    return [
        VALGRIND,
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        "--instr-atstart=no",  # the interpreter's start and the warm-up run uninstrumented (faster)
        "--vgdb=yes",  # (the default) callgrind_control reaches the process through vgdb
        "--quiet",
    ]


class Callgrind:
    """callgrind_control on one process, whose counters go to `out_file` (`-d` writes `out_file`.1, .2 ...)."""

    def __init__(self, pid: int, out_file: Path) -> None:
        self.pid = pid
        self.out_file = out_file
        self.dumps = 0

    def control(self, *args: str) -> None:
        try:
            p = subprocess.run(
                [CALLGRIND_CONTROL, *args, str(self.pid)], capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"callgrind_control {' '.join(args)} {self.pid}: no answer in 120 s") from None
        if p.returncode != 0 or "OK" not in p.stdout:
            raise BenchError(f"callgrind_control {' '.join(args)} {self.pid}: {p.stdout.strip()} {p.stderr.strip()}")

    def on(self) -> None:
        self.control("--instr=on")
        self.control("--zero")

    def off(self) -> None:
        self.control("--instr=off")

    def dump(self) -> int:
        """Write the counters since the last zero or dump; their Ir."""
        self.control("--dump")
        self.dumps += 1
        path = Path(f"{self.out_file}.{self.dumps}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # written by the time control returns; bounded all the same
            try:
                return instructions(path.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.1)
        raise BenchError(f"callgrind: no counters in {path}")


# -- the benchmark --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    key: str
    path: str
    headers: dict[str, str]
    body: int  # the expected body length


def _routes(image: Image) -> list[Route]:
    return [
        Route("manifest", "/v2/bench/small/manifests/v1", {"Accept": ACCEPT}, len(image.manifest)),
        Route("small-blob", f"/v2/bench/small/blobs/{image.layer_digests[0]}", {}, image.layer_sizes[0]),
    ]


def logged_gets(text: str, path: str) -> int:
    """How many GETs of `path` answered 200 by this client (its User-Agent) an access log's text holds (Moorage's:
    JSON lines)."""
    count = 0
    for line in text.splitlines():
        if USER_AGENT not in line or not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            entry.get("logger") == "moorage.access"
            and entry.get("user_agent") == USER_AGENT
            and entry.get("method") == "GET"
            and entry.get("path") == path
            and entry.get("status") == 200
        ):
            count += 1
    return count


def access_lines(server: Server, path: str) -> int | None:
    """The server's own count of this client's GETs of `path`, from its access log; None for a server without
    one (bare-aiohttp)."""
    if not isinstance(server, Moorage):
        return None
    try:
        return logged_gets(server.log_path.read_text(errors="replace"), path)
    except FileNotFoundError:
        return 0


def wait_lines(server: Server, path: str, expected: int, timeout: float = 120) -> None:
    """Until the server's access log holds `expected` lines of this client's GETs of `path` (its writer thread
    writes them in batches, a moment after the answers): the server's count and ours must agree."""
    deadline = time.monotonic() + timeout
    got = access_lines(server, path)
    while got is not None and got < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        got = access_lines(server, path)
    if got is not None and got != expected:
        raise BenchError(f"{server.label}: {got} access log lines for GET {path}, {expected} GETs sent")


@contextmanager
def under_callgrind(server: Server, out_file: Path) -> Iterator[Callgrind]:
    """The server started (under valgrind), its Callgrind, and the server stopped at the end whatever happens."""
    try:
        server.start()
        assert server.pid is not None
        yield Callgrind(server.pid, out_file)
    finally:
        server.stop()


def measure(
    server: Server,
    cg: Callgrind,
    routes: list[Route],
    *,
    requests: int,
    warm: int,
    runs: int,
    connections: int,
    idle_seconds: float,
) -> tuple[dict[str, list[Window]], float]:
    """Warm each route, watch the server idle, then `runs` windows of `requests` GETs per route, on connections
    opened before each window and closed after it: the windows per route, and the idle rate (Ir per second)."""
    headers = {"User-Agent": USER_AGENT, **server.headers}
    sent = {r.key: access_lines(server, r.path) or 0 for r in routes}  # (an earlier measure's, all waited for)

    def gets(r: Route, count: int) -> Driven:
        driven = client.get(r.path, {**r.headers, **headers}, count, body_length=r.body)
        sent[r.key] += count
        wait_lines(server, r.path, sent[r.key])  # and the writer thread's work for these lines done
        return driven

    with Client(server.host, connections) as client:
        for r in routes:
            gets(r, warm)
    time.sleep(SETTLE_SECONDS)  # the warm-up's tail (its connections' teardown, the next pull-time flush) not idle
    cg.on()
    t0 = time.monotonic()
    time.sleep(idle_seconds)
    idle_ir = cg.dump()
    idle_rate = idle_ir / (time.monotonic() - t0)
    cg.off()
    windows: dict[str, list[Window]] = {r.key: [] for r in routes}
    for _ in range(runs):
        for r in routes:
            with Client(server.host, connections) as client:
                gets(r, connections)  # one GET on each connection first: the server has accepted them all
                cg.on()
                t0 = time.monotonic()
                driven = gets(r, requests)
                ir = cg.dump()
                seconds = time.monotonic() - t0
                cg.off()
            window = Window(ir, driven.requests, seconds, idle_rate, driven.bytes)
            windows[r.key].append(window)
            print(
                f"  {server.label} {r.key}: {window.per_request:,.0f} Ir/request ({driven.requests} GETs in "
                f"{seconds:.1f} s; {window.idle / driven.requests:,.0f} of idle cost taken off)",
                flush=True,
            )
    return windows, idle_rate


def _server(b: Bench, label: str, wrap: list[str], answers: tuple[Served, Served] | None) -> Server:
    """The server `label` stands for, as one process under `wrap` (valgrind)."""
    if label == BARE:
        if answers is None:
            raise BenchError("bare-aiohttp repeats Moorage's answers: measure moorage (auth off) too")
        root = b.workdir / f"{BARE}-callgrind"
        return BareAiohttp(
            f"{BARE}-callgrind", root, *answers, tag="v1", processes=1, wrap=wrap, start_timeout=START_TIMEOUT
        )
    root = b.workdir / f"{label}-callgrind"
    auth = label == MOORAGE_AUTH
    return Moorage(f"{label}-callgrind", root, auth=auth, workers=1, wrap=wrap, start_timeout=START_TIMEOUT)


def _answers(server: Server, image: Image) -> tuple[Served, Served]:
    """Moorage's answers to the manifest and small-blob GETs, checked against what was pushed."""
    manifest_route, blob_route = _routes(image)
    manifest = served(server, manifest_route.path, manifest_route.headers)
    blob = served(server, blob_route.path, blob_route.headers)
    if manifest.body != image.manifest or digest_of(blob.body) != image.layer_digests[0]:
        raise BenchError(f"{server.label}: the manifest or small blob it answered is not what was pushed")
    return manifest, blob


def run(b: Bench, *, route_keys: tuple[str, ...] = ROUTES, labels: tuple[str, ...] = LABELS) -> None:
    """The `instructions` benchmark (see the module's docstring) on the `labels` servers, one under callgrind at a
    time (Moorage, auth off, first: its answers are what the bare app repeats), for the `route_keys` routes. A
    server that fails is noted and the others still run."""
    for tool in (VALGRIND, CALLGRIND_CONTROL):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: apt-get install valgrind")
    plan = b.plan
    image = b.small()
    routes = [r for r in _routes(image) if r.key in route_keys]
    per_request: dict[str, dict[str, list[float]]] = {r.key: {} for r in routes}
    raw: dict[str, dict[str, list[dict[str, float]]]] = {r.key: {} for r in routes}
    sizes: dict[str, dict[str, float]] = {r.key: {} for r in routes}  # bytes per response
    idle: dict[str, float] = {}
    answers: tuple[Served, Served] | None = None
    out_dir = Path(tempfile.mkdtemp(prefix="callgrind-", dir=b.workdir))
    for label in [lb for lb in LABELS if lb in labels]:
        out_file = out_dir / f"{label}.out"
        print(f"  {label}: starting under callgrind", flush=True)
        try:
            server = _server(b, label, valgrind_command(out_file), answers)
            with under_callgrind(server, out_file) as cg:
                if isinstance(server, Moorage):
                    b.push(server, image, "bench/small")
                    if label == MOORAGE:
                        answers = _answers(server, image)
                windows, idle[label] = measure(
                    server,
                    cg,
                    routes,
                    requests=plan.instr_requests,
                    warm=plan.instr_warm,
                    runs=plan.runs,
                    connections=plan.connections,
                    idle_seconds=plan.instr_idle,
                )
        except BenchError as e:
            b.results.note(f"instructions: {label} not measured: {e}")
            continue
        for key, ws in windows.items():
            per_request[key][label] = [w.per_request for w in ws]
            raw[key][label] = [w.sample() for w in ws]
            sizes[key][label] = raw[key][label][-1]["bytes_per_response"]
    for key, by_label in sizes.items():
        if len(set(by_label.values())) > 1:
            b.results.note(f"instructions: {key}: the servers sent different bytes per response: {by_label}")
    b.results.samples["instructions"] = {
        "per_request": per_request,
        "windows": raw,
        "idle_ir_per_second": {lb: round(rate) for lb, rate in idle.items()},
        "bytes_per_response": sizes,
        "requests_per_window": plan.instr_requests,
        "connections": plan.connections,
        "targets": verdicts(per_request),
    }
    b.results.tables.append(table(per_request, plan.instr_requests, plan.connections, plan.runs))


def instructions_benchmark(b: Bench) -> None:
    run(b)


BENCHMARKS = {"instructions": instructions_benchmark}
