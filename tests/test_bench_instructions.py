"""bench/instructions.py: callgrind's totals read from its output files, the per-request arithmetic, the table and its
targets, the exact-count client, the server's own count from its access log, and (slow) the benchmark for real on the
manifest GET, each server under valgrind."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import instructions as ins
from bench.__main__ import GROUPS, required_tools, selected
from bench.report import BARE, MOORAGE, MOORAGE_AUTH, Results
from bench.servers import BenchError
from tests.helpers import require

# The shape of a dump by `callgrind_control -d` (valgrind 3.19), cut short: `summary:` near the top, the cost
# lines, `totals:` (their sum) at the end.
DUMP = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 9232
cmd:  /work/main/.venv/bin/python -m bench.bare_server --port 47939 --processes 1
part: 2


desc: I1 cache:
desc: D1 cache:
desc: LL cache:

desc: Timerange: Basic block 88 - 40320671
desc: Trigger: dump

positions: line
events: Ir
summary: 191531493


ob=(23) /work/main/.venv/lib/python3.11/site-packages/multidict/_multidict.cpython-311-x86_64-linux-gnu.so
fl=(151) /project/multidict/_multilib/views.h
fn=(2412) multidict_items
271 3000
cfn=(2414) _multidict_view_new
calls=1000 42
* 68000

totals: 191531497
"""


# -- callgrind's files ----------------------------------------------------------------------------------


def test_the_total_is_read_from_the_totals_line():
    assert ins.instructions(DUMP) == 191_531_497
    assert ins.callgrind_totals(DUMP) == {"Ir": 191_531_497}


def test_a_file_cut_before_its_totals_line_gives_its_summary():
    cut = DUMP[: DUMP.index("totals:")]
    assert ins.instructions(cut) == 191_531_493


def test_a_file_without_totals_is_rejected():
    bare = "\n".join(line for line in DUMP.splitlines() if not line.startswith(("totals:", "summary:")))
    with pytest.raises(ValueError, match="no `totals:` nor `summary:`"):
        ins.instructions(bare)
    with pytest.raises(ValueError, match="no `events:`"):
        ins.instructions(DUMP.replace("events: Ir", ""))
    with pytest.raises(ValueError, match="no Ir"):
        ins.instructions(DUMP.replace("events: Ir", "events: Dr"))
    with pytest.raises(ValueError, match="bad totals"):
        ins.instructions(DUMP.replace("totals: 191531497", "totals: lots"))
    with pytest.raises(ValueError):
        ins.instructions("")


def test_several_events_and_a_short_totals_line():
    text = "events: Ir Dr Dw\nsummary: 10 4 2\ntotals: 10 4\n"
    assert ins.callgrind_totals(text) == {"Ir": 10, "Dr": 4, "Dw": 0}
    assert ins.instructions(text) == 10
    with pytest.raises(ValueError, match="totals for the events"):
        ins.callgrind_totals("events: Ir\ntotals: 1 2\n")


# -- the arithmetic, the targets, the table -------------------------------------------------------------


def test_instructions_per_request_take_the_idle_cost_of_the_window_off():
    window = ins.Window(ir=171_000_000, requests=1000, seconds=4.0, idle_rate=250_000.0, bytes=1000 * 900)
    assert window.idle == 1_000_000
    assert window.per_request == 170_000
    sample = window.sample()
    assert sample["per_request"] == 170_000 and sample["bytes_per_response"] == 900 and sample["idle_ir"] == 1_000_000
    assert ins.Window(5_000, 10, 1.0, 0.0).per_request == 500
    with pytest.raises(ValueError):
        _ = ins.Window(5_000, 0, 1.0, 0.0).per_request


def _per_request(moorage: list[float], auth: list[float], bare: list[float]) -> dict[str, dict[str, list[float]]]:
    return {"manifest": {MOORAGE: moorage, MOORAGE_AUTH: auth, BARE: bare}}


def test_the_targets_are_shares_of_instructions_inverted():
    v = ins.verdicts(_per_request([168_000, 169_000, 175_000], [192_000], [187_000]))["manifest"]
    assert v[MOORAGE] == 169_000  # the median of the windows
    assert v["bare_of_moorage"] == pytest.approx(187 / 169)
    assert v["bare_target_met"] is True
    assert v["auth_off_of_on"] == pytest.approx(169 / 192)
    assert v["auth_target_met"] is False  # 88% < 90%
    v = ins.verdicts(_per_request([300_000], [310_000], [187_000]))["manifest"]
    assert v["bare_of_moorage"] == pytest.approx(187 / 300)
    assert v["bare_target_met"] is False  # 62% < 70%
    assert v["auth_target_met"] is True  # 97%
    v = ins.verdicts({"manifest": {MOORAGE: [170_000]}})["manifest"]
    assert v["bare_target_met"] is None and v["auth_target_met"] is None and v[BARE] is None


def test_the_table_marks_each_target():
    t = ins.table(_per_request([169_000], [192_000], [187_000]), requests=2000, connections=16, runs=3)
    assert t.title == "Instructions per request (callgrind)"
    assert len(t.rows) == 1
    row = dict(zip(t.headers, t.rows[0], strict=True))
    assert row["benchmark"] == "manifest GET by tag"
    assert (row["Moorage"], row["Moorage (auth)"], row["bare-aiohttp"]) == ("169,000", "192,000", "187,000")
    assert row["bare ÷ Moorage (target ≥ 70%)"] == "111% met"
    assert row["auth off ÷ on (target ≥ 90%)"] == "88% **missed**"
    assert "2,000 GETs on 16" in t.note and "3 window(s)" in t.note
    t = ins.table({"manifest": {MOORAGE: [169_000]}}, requests=10, connections=1, runs=1)
    row = dict(zip(t.headers, t.rows[0], strict=True))
    assert row["bare-aiohttp"] == "—" and row["bare ÷ Moorage (target ≥ 70%)"] == "— n/a"


def test_the_benchmark_is_in_the_headline_group_and_needs_valgrind():
    assert "instructions" in GROUPS["headline"]
    assert "instructions" in selected("headline")
    assert required_tools(["instructions"])["valgrind"] == "valgrind"
    assert required_tools(["instructions"])["callgrind_control"] == "valgrind"
    assert "valgrind" not in required_tools(["manifest", "small-blob"])


# -- the server's own count -------------------------------------------------------------------------------


def _line(path: str, method: str = "GET", status: int = 200, agent: str = ins.USER_AGENT) -> str:
    entry = {"ts": "x", "level": "info", "logger": "moorage.access", "msg": f"{method} {path} {status}"}
    entry |= {"method": method, "path": path, "status": status, "user_agent": agent}
    return json.dumps(entry)


def test_the_access_log_counts_only_this_clients_gets_of_the_path():
    path = "/v2/bench/small/blobs/sha256:ab"
    text = "\n".join(
        [
            _line(path),
            _line(path),
            _line(path, method="HEAD"),  # skopeo's checks while pushing
            _line(path, agent="skopeo/1.9.3"),
            _line(path, status=404),
            _line(path + "0"),
            '{"logger": "moorage", "msg": "' + ins.USER_AGENT + '"}',
            "not json " + ins.USER_AGENT,
            _line(path),
        ]
    )
    assert ins.logged_gets(text, path) == 3
    assert ins.logged_gets("", path) == 0


# -- the client: exactly N GETs ---------------------------------------------------------------------------


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    body = b"x" * 4600
    seen: list[str]
    lock: threading.Lock

    def do_GET(self) -> None:
        with self.lock:
            self.seen.append(self.headers.get("User-Agent", ""))
        status, body = (200, self.body) if self.path == "/ok" else (404, b"no")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def counting() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Counting,), {"seen": seen, "lock": threading.Lock()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize(("count", "connections"), [(1, 4), (3, 4), (50, 4), (37, 16)])
def test_the_client_sends_exactly_count_gets(counting, count, connections):
    host, seen = counting
    with ins.Client(host, connections) as client:
        driven = client.get("/ok", {"User-Agent": "counted"}, count, body_length=4600, timeout=30)
    assert driven.requests == count
    assert len(seen) == count and set(seen) == {"counted"}
    assert driven.bytes > count * 4600


def test_the_client_refuses_a_wrong_answer_and_other_hosts(counting):
    host, _ = counting
    with ins.Client(host, 2) as client, pytest.raises(BenchError, match="404"):
        client.get("/missing", {}, 5, timeout=30)
    with ins.Client(host, 2) as client, pytest.raises(BenchError, match="not 4601"):
        client.get("/ok", {}, 5, body_length=4601, timeout=30)
    with pytest.raises(BenchError, match=r"not on 127\.0\.0\.1"):
        ins.Client("localhost:1", 1)


# -- the benchmark for real (slow) -----------------------------------------------------------------------


def _processes_under(path: Path) -> list[str]:
    """Command lines of running processes that mention `path` (the servers under valgrind write there)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


@pytest.mark.slow
def test_the_benchmark_counts_a_manifest_get_on_each_server(tmp_path):
    """A few hundred manifest GETs on each of the three servers, one at a time under callgrind: a count in the
    range an aiohttp server spends on a GET (~100-300k instructions; a window that took in a server's start or its
    connections' setup would be far off), the table and the samples, and no process left behind."""
    require("valgrind", "apt-get install valgrind")
    require("callgrind_control", "apt-get install valgrind")
    require("skopeo", "apt-get install skopeo")
    import dataclasses

    from bench.suite import Bench, Plan

    plan = dataclasses.replace(Plan.quick(1), instr_requests=200, instr_warm=50, instr_idle=1.0, connections=8)
    results = Results(runs=1, quick=True)
    bench = Bench(tmp_path, plan, results)
    try:
        ins.run(bench, route_keys=("manifest",))
    finally:
        bench.close()
    assert results.notes == []
    samples = results.samples["instructions"]
    assert isinstance(samples, dict)
    per_request = samples["per_request"]["manifest"]
    assert set(per_request) == {MOORAGE, MOORAGE_AUTH, BARE}
    for label, values in per_request.items():
        assert len(values) == 1
        assert 50_000 < values[0] < 1_000_000, (label, values)
    # auth on adds work; Moorage and the bare app sent the same bytes
    assert per_request[MOORAGE_AUTH][0] > per_request[MOORAGE][0]
    sizes = samples["bytes_per_response"]["manifest"]
    assert sizes[MOORAGE] == sizes[BARE]
    window = samples["windows"]["manifest"][MOORAGE][0]
    assert window["requests"] == 200
    [table] = [t for t in results.tables if t.title.startswith("Instructions")]
    assert table.rows[0][0] == "manifest GET by tag"
    assert _processes_under(tmp_path) == []
