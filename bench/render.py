"""RESULTS.md and RESULTS.json: the tables of bench/report.py, and those of the performance issue's targets on
PostgreSQL + S3 and of the warm pulls beside their floor, in the report's order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.report import (
    AUTH_COST,
    BARE,
    BARE_SHARE,
    DIST_PROXY_S3,
    DIST_S3,
    DISTRIBUTION,
    DISTRIBUTION_TIMES,
    FLOOR,
    MOORAGE,
    PG_S3,
    PG_S3_AUTH,
    PG_S3_CACHE,
    PULL_TIMES,
    PUSH_TIMES,
    REFERENCE_ROWS,
    REFERENCES,
    SUBJECT_HEADERS,
    Results,
    _bytes_per_response,
    _fmt,
    _md_table,
    _pct,
    _rss,
    _share,
    _word,
    backends_table,
    gain_share,
    main_table,
    reference_table,
    reference_verdicts,
)

# The targets on PostgreSQL + S3: per row, its Moorage column, its Distribution column, the ratio it must
# reach (the GET rows have the reference targets instead: bare-aiohttp, Distribution, auth).
PG_GET_ROWS = ("backend-manifest", "backend-small-blob")
PG_RATIO_ROWS = {
    "backend-push": (PG_S3, DIST_S3, PUSH_TIMES),
    "pg-pt-cold": (PG_S3_CACHE, DIST_PROXY_S3, None),
    "pg-pt-warm": (PG_S3_CACHE, DIST_PROXY_S3, PULL_TIMES),
    "pg-pt-lean": (PG_S3_CACHE, DIST_PROXY_S3, PULL_TIMES),
    "pg-pt-lean-8": (PG_S3_CACHE, DIST_PROXY_S3, None),
}


def pg_verdicts(results: Results) -> dict[str, dict[str, float | bool | None]]:
    """Per row of the PostgreSQL + S3 targets: the shares and ratios, each target met (True), missed (False) or not
    measured (None)."""
    out: dict[str, dict[str, float | bool | None]] = {}
    for key in PG_GET_ROWS:
        if (row := results.rows.get(key)) is None or PG_S3 not in row.values:
            continue
        share, ratio, auth = _share(row, PG_S3, BARE), row.ratio(PG_S3, DIST_S3), _share(row, PG_S3_AUTH, PG_S3)
        out[key] = {
            "moorage_of_bare": share,
            "moorage_auth_of_bare": _share(row, PG_S3_AUTH, BARE),
            "ratio_to_distribution": ratio,
            "ratio_auth_to_distribution": row.ratio(PG_S3_AUTH, DIST_S3),
            "auth_of_auth_off": auth,
            "bare_target_met": None if share is None else share >= BARE_SHARE,
            "distribution_target_met": None if ratio is None else ratio >= DISTRIBUTION_TIMES,
            "auth_target_met": None if auth is None else auth >= 1 - AUTH_COST,
        }
    for key, (moorage, distribution, minimum) in PG_RATIO_ROWS.items():
        if (row := results.rows.get(key)) is None or moorage not in row.values:
            continue
        ratio = row.ratio(moorage, distribution)
        met = None if ratio is None or minimum is None else ratio >= minimum
        out[key] = {"ratio_to_distribution": ratio, "target": minimum, "target_met": met}
    return out


def pg_table(results: Results) -> list[str]:
    """The issue's targets on PostgreSQL + S3: the GETs against bare-aiohttp and distribution-s3 (with auth), the
    push against distribution-s3, the warm pulls through moorage-pg-s3-cache against distribution-proxy-s3."""
    headers = [
        *SUBJECT_HEADERS,
        "bare-aiohttp",
        f"Moorage ÷ bare-aiohttp (target ≥ {BARE_SHARE:.0%})",
        "ratio to Distribution",
        f"auth on ÷ off (target ≥ {1 - AUTH_COST:.0%})",
        "target",
        "met",
        "bytes per response (M / M auth / D / bare)",
        "peak RSS MiB (M / M auth / D / bare)",
        "notes",
    ]
    rows = []
    for key, v in pg_verdicts(results).items():
        row = results.rows[key]
        ratio = v["ratio_to_distribution"]
        ratio_text = "—" if ratio is None else f"{ratio:.2f}x"
        if key in PG_GET_ROWS:
            labels = (PG_S3, PG_S3_AUTH, DIST_S3, BARE)
            auth_ratio = v["ratio_auth_to_distribution"]
            cells = [
                f"{_pct(v['moorage_of_bare'])} (auth {_pct(v['moorage_auth_of_bare'])})",
                ratio_text + ("" if auth_ratio is None else f" (auth {auth_ratio:.2f}x)"),
                _pct(v["auth_of_auth_off"]),
                f"≥ {BARE_SHARE:.0%} of bare, ≥ {DISTRIBUTION_TIMES:g}x, auth ≥ {1 - AUTH_COST:.0%}",
                f"bare: {_word(v['bare_target_met'])} / {DISTRIBUTION_TIMES:g}x: "
                f"{_word(v['distribution_target_met'])} / auth: {_word(v['auth_target_met'])}",
                _bytes_per_response(results, key, labels),
            ]
        else:
            moorage, distribution, minimum = PG_RATIO_ROWS[key]
            labels = (moorage, "", distribution, "")
            target = "" if minimum is None else f"≥ {minimum:g}x"
            met = "" if minimum is None else _word(v["target_met"])
            cells = ["—", ratio_text, "—", target, met, "—"]
        values = [_fmt(row.median(lb), row.fmt) if lb else "—" for lb in labels]
        rows.append([row.title, row.unit, *values, *cells, _rss(row, labels), "; ".join(row.notes)])
    return _md_table(headers, rows)


# The warm pulls beside their floor: (row, backend, Moorage column, Distribution column).
FLOOR_ROWS = [
    *(
        (key, "SQLite + filesystem", MOORAGE, DISTRIBUTION)
        for key in ("pt-warm", "pt-lean", "pt-lean-8", "pt-lean-wan", "pt-lean-wan-8")
    ),
    *((key, "PostgreSQL + S3", PG_S3_CACHE, DIST_PROXY_S3) for key in ("pg-pt-warm", "pg-pt-lean", "pg-pt-lean-8")),
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
    if pg_verdicts(results):
        lines += ["", f"## The performance issue's targets on PostgreSQL + S3 (medians of {results.runs} run(s))", ""]
        lines += [
            "The same targets as on the default backend, in the same run: `Moorage` is `moorage-pg-s3` (auth off), "
            "`Moorage (auth)` a second replica on the same database and bucket with auth on (a token on every "
            "request), `Distribution` is Distribution on its s3 storage driver on the same SeaweedFS bucket "
            "(`distribution-s3`, its own root directory, blob GETs streamed), and `bare-aiohttp` the reference app "
            "answering with the bytes Moorage sent (the bytes per response show it; the GET rows are the storage "
            "backends' table's, measured together). For the pull rows, `Moorage` is `moorage-pg-s3-cache`, a "
            "pull-through cache on PostgreSQL (a database of its own in the same cluster) and the bucket, and "
            "`Distribution` is `distribution-proxy-s3`, Distribution in proxy mode on its s3 driver; both in front "
            "of the same upstream.",
            "",
        ]
        lines += pg_table(results)
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
        "pg_s3_targets": pg_verdicts(results),
        "notes": results.notes,
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    return text
