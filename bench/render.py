"""RESULTS.md and RESULTS.json: the tables of bench/report.py, and that of the warm pulls beside their floor, in
the report's order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.report import (
    AUTH_COST,
    BARE_SHARE,
    DISTRIBUTION,
    DISTRIBUTION_TIMES,
    FLOOR,
    MOORAGE,
    REFERENCE_ROWS,
    REFERENCES,
    Results,
    _fmt,
    _md_table,
    _pct,
    backends_table,
    gain_share,
    main_table,
    reference_table,
    reference_verdicts,
)

# The warm pulls beside their floor: (row, backend, Moorage column, Distribution column).
FLOOR_ROWS = [
    *((key, "SQLite + filesystem", MOORAGE, DISTRIBUTION) for key in ("pt-warm", "pt-lean", "pt-lean-8")),
]


def floor_table(results: Results) -> list[str]:
    """Each warm pull through the caches beside the same pull from nginx serving the image (the floor): how far
    above the floor each is, and the share of the possible gain over Distribution Moorage reaches."""
    headers = [
        "benchmark",
        "backend",
        "unit",
        "Moorage cache",
        "Distribution proxy",
        "floor (nginx-static-pull)",
        "ratio",
        "Moorage above the floor",
        "Distribution above the floor",
        "share of the possible gain ((D - M) ÷ (D - floor))",
    ]
    rows = []
    for key, backend, moorage, distribution in FLOOR_ROWS:
        if (row := results.rows.get(key)) is None or FLOOR not in row.values:
            continue
        m, d, f = row.median(moorage), row.median(distribution), row.median(FLOOR)
        ratio = row.ratio(moorage, distribution)
        share = gain_share(m, d, f)
        rows.append(
            [
                row.title,
                backend,
                row.unit,
                *(_fmt(x, row.fmt) for x in (m, d, f)),
                "—" if ratio is None else f"{ratio:.2f}x",
                "—" if m is None or f is None else format(m - f, "+" + row.fmt),
                "—" if d is None or f is None else format(d - f, "+" + row.fmt),
                "— (Distribution within 10% of the floor)" if share is None else _pct(share),
            ]
        )
    return _md_table(headers, rows)


def render(results: Results, machine: dict[str, str], command: str) -> str:
    lines = ["# Moorage vs Distribution: benchmark results", ""]
    if results.quick:
        lines += ["**`--quick` run: tiny sizes, one run, short durations. A smoke test, not a measurement.**", ""]
    if results.interrupted:
        lines += ["**Interrupted: the tables hold what finished.**", ""]
    lines += [f"Command: `{command}`. Duration: {time.time() - results.started:.0f} s.", ""]
    lines += ["## Machine", ""]
    lines += _md_table(["", ""], [[k, v] for k, v in machine.items()])
    lines += ["", f"## Medians of {results.runs} run(s)", ""]
    lines += [
        "Ratio = Moorage ÷ Distribution for rates; Distribution ÷ Moorage for times and counts; so above 1x "
        "always means Moorage did better. `ratio (auth)` compares Moorage with auth on (a token in "
        "`Authorization: Basic`) to Distribution without auth. Peak RSS is the largest VmRSS sampled every "
        "20 ms during the runs, summed over a server's processes (Moorage runs its default `workers = 0`: a "
        "supervisor and one worker per CPU).",
        "",
    ]
    if any(not row.section for row in results.rows.values()):
        lines += main_table(results)
    else:
        lines.append("(no benchmark rows)")
    if any(label in row.values for key in REFERENCE_ROWS if (row := results.rows.get(key)) for label in REFERENCES):
        processes = results.samples.get("reference_processes", "?")
        lines += ["", f"## Reference lines: manifest and small-blob GET (medians of {results.runs} run(s))", ""]
        lines += [
            f"In the same runs as the table above, interleaved with it: `bare-aiohttp` is a bare aiohttp app on uvloop "
            "(bench/bare_server.py: two routes, no middleware, no access log, no auth) answering from memory with "
            "the very bytes and header fields Moorage sent for the same GET; `nginx-static` is nginx serving those "
            "bytes as static files (open_file_cache, no access log): the least a GET costs on this machine. Both "
            f"run {processes} serving process(es), as Moorage does here (`workers = 0`: one per usable CPU, up to "
            "4), on one shared listening socket. Targets (from the performance issue): Moorage ≥ "
            f"{BARE_SHARE:.0%} of bare-aiohttp, ≥ {DISTRIBUTION_TIMES:g}x Distribution, and with auth on (a "
            f"token on every request) at least {1 - AUTH_COST:.0%} of its req/s with auth off. Bytes per response "
            "(headers and body, from wrk) show what each sent: Moorage and bare-aiohttp the same bytes; nginx adds "
            "`Last-Modified` and its own `Server`.",
            "",
        ]
        lines += reference_table(results)
    if any(row.section == "backends" for row in results.rows.values()):
        lines += [
            "",
            f"## Storage backends: SQLite + filesystem vs PostgreSQL + S3 (medians of {results.runs} run(s))",
            "",
        ]
        lines += [
            "Moorage (auth off, its default workers) on its default backend, SQLite and the data dir's filesystem, "
            "beside Moorage on PostgreSQL (a local cluster, fsync on) and S3 (a local SeaweedFS), all in this "
            "run on this machine. `PG + S3, redirect` is a second replica on the same database and bucket whose "
            "blob GETs answer 307 to a presigned URL, which the client follows (measured end to end). Ratio = "
            "PostgreSQL + S3 ÷ SQLite for rates, SQLite ÷ PostgreSQL + S3 for times: above 1x means the shared "
            "backend did better.",
            "",
        ]
        lines += backends_table(results)
    if any(row and FLOOR in row.values for key, *_ in FLOOR_ROWS if (row := results.rows.get(key))):
        lines += ["", f"## Warm pull-through beside its floor (medians of {results.runs} run(s))", ""]
        lines += [
            "The floor is the same pull from nginx serving an image of the same shape as static files at a "
            "registry's paths (`nginx-static-pull`: `/v2/`, the manifest by tag with Moorage's header fields, the "
            "blobs; as many worker processes as Moorage's): the fastest any registry could make that client's "
            "pull here. What lies between a cache and the floor is the cache's own cost; the share of the possible "
            "gain is how much of Distribution's distance to the floor Moorage removes (100%: as fast as the floor). "
            "The skopeo pull is mostly skopeo's own work; the lean client's pull (bench/lean.py) shows the server.",
            "",
        ]
        lines += floor_table(results)
    for table in results.tables:
        lines += ["", f"## {table.title}", ""]
        if table.note:
            lines += [table.note, ""]
        lines += _md_table(table.headers, table.rows)
    if results.notes:
        lines += ["", "## Notes and errors", ""]
        lines += [f"- {n}" for n in results.notes]
    return "\n".join(lines) + "\n"


def write(results: Results, machine: dict[str, str], command: str, out: Path) -> str:
    text = render(results, machine, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw = {
        "machine": machine,
        "command": command,
        "runs": results.runs,
        "quick": results.quick,
        "interrupted": results.interrupted,
        "rows": {
            k: {
                "title": r.title,
                "unit": r.unit,
                "better": r.better,
                "section": r.section,
                "values": r.values,
                "rss_mib": r.rss,
            }
            for k, r in results.rows.items()
        },
        "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows} for t in results.tables],
        "samples": results.samples,
        "reference_targets": reference_verdicts(results),
        "notes": results.notes,
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    return text
