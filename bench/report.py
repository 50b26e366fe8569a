"""Results: rows of samples per server, their medians and Moorage/Distribution ratios, targets met or missed,
the scale curves, and the machine they ran on; the main, reference and storage backends' tables in Markdown
(bench/render.py puts RESULTS.md and the JSON of raw samples together).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MOORAGE, MOORAGE_AUTH, DISTRIBUTION = "moorage", "moorage-auth", "distribution"
# Moorage on PostgreSQL + S3 (bench/backends.py), beside `moorage` (SQLite + filesystem): streamed blob GETs, and
# a second replica on the same database and bucket whose blob GETs answer 307 to a presigned URL.
PG_S3, PG_S3_REDIRECT = "moorage-pg-s3", "moorage-pg-s3-redirect"
BACKENDS = (MOORAGE, PG_S3, PG_S3_REDIRECT)
# The issue's targets on PostgreSQL + S3 (bench/backends.py): a replica with auth on, Distribution on its s3 driver
# on the same SeaweedFS, and a pull-through cache of each on them.
PG_S3_AUTH, DIST_S3 = "moorage-pg-s3-auth", "distribution-s3"
PG_S3_CACHE, DIST_PROXY_S3 = "moorage-pg-s3-cache", "distribution-proxy-s3"
# The floor of a warm pull (bench/pullthrough.py): nginx serving the image as static files at a registry's paths.
FLOOR = "nginx-static-pull"
SUBJECTS = (MOORAGE, MOORAGE_AUTH)  # what targets are checked for
# The reference lines of the manifest and small-blob GETs (bench/bare_server.py; nginx serving the same bytes as
# static files), with as many processes as Moorage runs, and the performance issue's targets for those rows:
# Moorage ≥ 70% of the bare aiohttp app, ≥ 10x Distribution, and auth on within 10% of auth off.
BARE, NGINX_STATIC = "bare-aiohttp", "nginx-static"
REFERENCES = (BARE, NGINX_STATIC)
REFERENCE_ROWS = ("manifest", "small-blob")
BARE_SHARE, DISTRIBUTION_TIMES, AUTH_COST = 0.70, 10.0, 0.10
# The issue's other targets: a 256 MiB push ≥ 1.3x Distribution, a warm pull-through pull ≥ 1.5x its proxy mode.
PUSH_TIMES, PULL_TIMES = 1.3, 1.5
REPO_ROOT = Path(__file__).resolve().parent.parent


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def gain_share(moorage: float | None, distribution: float | None, floor: float | None) -> float | None:
    """The share of the possible gain over Distribution Moorage reaches, of times with a floor below both:
    (Distribution - Moorage) ÷ (Distribution - floor). None when Distribution is within 10% of the floor: there is
    too little to gain for a share to mean anything."""
    if moorage is None or distribution is None or floor is None or distribution - floor < 0.1 * floor:
        return None
    return (distribution - moorage) / (distribution - floor)


@dataclass
class Target:
    """A target for a row: `text` says what it is; `check(row, label)` says whether `label` meets it (None:
    not measured)."""

    text: str
    check: Callable[[Row, str], bool | None]


def ratio_target(minimum: float) -> Target:
    def check(row: Row, label: str) -> bool | None:
        r = row.ratio(label)
        return None if r is None else r >= minimum

    return Target(f"≥ {minimum:g}x", check)


@dataclass
class Row:
    key: str
    title: str
    unit: str
    better: str = "higher"  # "higher" (rates), "lower" (times, counts) or "none" (no ratio): how it is taken
    fmt: str = ",.0f"
    values: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[float]] = field(default_factory=dict)  # peak MiB per run
    target: Target | None = None
    notes: list[str] = field(default_factory=list)
    section: str = ""  # "": the main table (vs Distribution); "backends": the storage backends' table

    def add(self, label: str, value: float, rss: float | None = None) -> None:
        self.values.setdefault(label, []).append(value)
        if rss is not None:
            self.rss.setdefault(label, []).append(rss)

    def median(self, label: str) -> float | None:
        return median(self.values.get(label, []))

    def ratio(self, label: str = MOORAGE, base: str = DISTRIBUTION) -> float | None:
        """How many times better `label` did than `base`: value ratio for throughput, time ratio inverted."""
        m, d = self.median(label), self.median(base)
        if self.better == "none" or m is None or d is None or m == 0 or d == 0:
            return None
        return m / d if self.better == "higher" else d / m

    def verdict(self) -> str:
        if self.target is None:
            return ""
        parts = []
        for label in SUBJECTS:
            if label not in self.values:
                continue
            ok = self.target.check(self, label)
            word = "n/a" if ok is None else ("met" if ok else "**missed**")
            parts.append(word if label == MOORAGE else f"auth: {word}")
        return " / ".join(parts)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


@dataclass
class Results:
    runs: int
    quick: bool
    rows: dict[str, Row] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, object] = field(default_factory=dict)  # extra raw numbers for the JSON
    started: float = field(default_factory=time.time)
    interrupted: bool = False

    def row(self, key: str, title: str, unit: str, **kw: object) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, title, unit, **kw)  # type: ignore[arg-type]
        return self.rows[key]

    def note(self, text: str) -> None:
        print(f"bench: {text}", flush=True)
        self.notes.append(text)


# -- the machine ------------------------------------------------------------------------------------------


def command_output(*args: str) -> str:
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    out = (p.stdout.strip() or p.stderr.strip()).splitlines()
    return out[0].strip() if out else "?"


def _proc_field(path: str, key: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_info(baseline: str) -> dict[str, str]:
    mem_kb = _proc_field("/proc/meminfo", "MemTotal").split()[0]
    try:
        import aiohttp

        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "?"
    commit = command_output("git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD")
    dirty = command_output("git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "cores": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        "memory": f"{int(mem_kb) / 1024**2:.1f} GiB" if mem_kb.isdigit() else "?",
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version() + f" (aiohttp {aiohttp_version}, uvloop {_version('uvloop')})",
        "moorage commit": commit + (" + uncommitted changes" if dirty not in ("", "?") else ""),
        "distribution": command_output("docker-registry", "--version"),
        "wrk": command_output("wrk", "-v"),
        "skopeo": command_output("skopeo", "--version"),
        "sendfile baseline": baseline,
    }


# -- rendering --------------------------------------------------------------------------------------------


def _fmt(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


# The columns every table against Distribution begins with (the reference and PostgreSQL + S3 GET tables add
# bare-aiohttp's after them).
SUBJECT_HEADERS = ("benchmark", "unit", "Moorage", "Moorage (auth)", "Distribution")


def _rss(row: Row, labels: tuple[str, ...]) -> str:
    """The peak RSS cell: each label's largest peak over its runs, in MiB, or — where it has none."""
    return " / ".join(_fmt(max(row.rss[lb]), ".0f") if row.rss.get(lb) else "—" for lb in labels)


def _bytes_per_response(results: Results, key: str, labels: tuple[str, ...]) -> str:
    """The bytes per response cell: what each label's server sent per response in row `key` (from wrk), or —."""
    sizes = results.samples.get("bytes_per_response", {})
    size = sizes.get(key, {}) if isinstance(sizes, dict) else {}
    return " / ".join(str(size.get(lb, "—")) for lb in labels)


def main_table(results: Results) -> list[str]:
    headers = [
        *SUBJECT_HEADERS,
        "ratio",
        "ratio (auth)",
        "target",
        "met",
        "peak RSS MiB (M / M auth / D)",
        "notes",
    ]
    rows = []
    for row in results.rows.values():
        if row.section:
            continue
        ratio, ratio_auth = row.ratio(MOORAGE), row.ratio(MOORAGE_AUTH)
        rss = _rss(row, (*SUBJECTS, DISTRIBUTION))
        runs = {lb: len(v) for lb, v in row.values.items()}
        notes = list(row.notes)
        if any(n != results.runs for n in runs.values()):
            notes.append("runs: " + ", ".join(f"{lb} {n}" for lb, n in runs.items()))
        rows.append(
            [
                row.title,
                row.unit,
                _fmt(row.median(MOORAGE), row.fmt),
                _fmt(row.median(MOORAGE_AUTH), row.fmt),
                _fmt(row.median(DISTRIBUTION), row.fmt),
                "—" if ratio is None else f"{ratio:.2f}x",
                "—" if ratio_auth is None else f"{ratio_auth:.2f}x",
                row.target.text if row.target else "",
                row.verdict(),
                rss,
                "; ".join(notes),
            ]
        )
    return _md_table(headers, rows)


def _word(ok: object) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _share(row: Row, label: str, base: str) -> float | None:
    value, reference = row.median(label), row.median(base)
    return None if value is None or not reference else value / reference


def reference_verdicts(results: Results) -> dict[str, dict[str, float | bool | None]]:
    """Per reference row: Moorage's share of bare-aiohttp (and of nginx-static), its ratio to Distribution, auth on
    ÷ auth off, each issue target met (True), missed (False) or not measured (None)."""
    out: dict[str, dict[str, float | bool | None]] = {}
    for key in REFERENCE_ROWS:
        row = results.rows.get(key)
        if row is None:
            continue
        share, ratio, auth = _share(row, MOORAGE, BARE), row.ratio(MOORAGE), _share(row, MOORAGE_AUTH, MOORAGE)
        out[key] = {
            "moorage_of_bare": share,
            "moorage_auth_of_bare": _share(row, MOORAGE_AUTH, BARE),
            "moorage_of_nginx_static": _share(row, MOORAGE, NGINX_STATIC),
            "bare_of_nginx_static": _share(row, BARE, NGINX_STATIC),
            "ratio_to_distribution": ratio,
            "ratio_auth_to_distribution": row.ratio(MOORAGE_AUTH),
            "auth_of_auth_off": auth,
            "bare_target_met": None if share is None else share >= BARE_SHARE,
            "distribution_target_met": None if ratio is None else ratio >= DISTRIBUTION_TIMES,
            "auth_target_met": None if auth is None else auth >= 1 - AUTH_COST,
        }
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def reference_table(results: Results) -> list[str]:
    """The manifest and small-blob GETs beside the reference servers, with the issue's targets."""
    headers = [
        *SUBJECT_HEADERS,
        "bare-aiohttp",
        "nginx-static",
        f"Moorage ÷ bare-aiohttp (target ≥ {BARE_SHARE:.0%})",
        f"ratio to Distribution (target ≥ {DISTRIBUTION_TIMES:g}x)",
        f"auth on ÷ off (target ≥ {1 - AUTH_COST:.0%})",
        "Moorage ÷ nginx-static",
        "bare-aiohttp ÷ nginx-static",
        "peak RSS MiB (bare / nginx)",
        "bytes per response (M / M auth / D / bare / nginx)",
    ]
    verdicts = reference_verdicts(results)
    rows = []
    for key, v in verdicts.items():
        row = results.rows[key]
        ratio, ratio_auth = v["ratio_to_distribution"], v["ratio_auth_to_distribution"]
        labels = (*SUBJECTS, DISTRIBUTION, *REFERENCES)
        rows.append(
            [
                row.title,
                row.unit,
                *(_fmt(row.median(label), row.fmt) for label in labels),
                f"{_pct(v['moorage_of_bare'])} {_word(v['bare_target_met'])} (auth {_pct(v['moorage_auth_of_bare'])})",
                ("—" if ratio is None else f"{ratio:.2f}x ")
                + _word(v["distribution_target_met"])
                + ("" if ratio_auth is None else f" (auth {ratio_auth:.2f}x)"),
                f"{_pct(v['auth_of_auth_off'])} {_word(v['auth_target_met'])}",
                _pct(v["moorage_of_nginx_static"]),
                _pct(v["bare_of_nginx_static"]),
                _rss(row, REFERENCES),
                _bytes_per_response(results, key, labels),
            ]
        )
    return _md_table(headers, rows)


def backends_table(results: Results) -> list[str]:
    """The backends' rows: Moorage on SQLite + filesystem (the default) beside PostgreSQL + S3, streamed and
    redirected; ratios are PostgreSQL + S3 against the default, above 1x meaning the shared backend did better."""
    headers = [
        "benchmark",
        "unit",
        "SQLite + filesystem",
        "PostgreSQL + S3",
        "PG + S3, redirect",
        "ratio",
        "ratio (redirect)",
        "target",
        "met",
        "peak RSS MiB (SQLite / PG+S3 / redirect)",
        "notes",
    ]
    rows = []
    for row in results.rows.values():
        if row.section != "backends":
            continue
        ratios = [row.ratio(label, MOORAGE) for label in (PG_S3, PG_S3_REDIRECT)]
        verdicts = []
        for label in (PG_S3, PG_S3_REDIRECT):
            if row.target is not None and label in row.values:
                ok = row.target.check(row, label)
                word = "n/a" if ok is None else ("met" if ok else "**missed**")
                verdicts.append(word if label == PG_S3 else f"redirect: {word}")
        rss = _rss(row, BACKENDS)
        runs = {lb: len(v) for lb, v in row.values.items()}
        notes = list(row.notes)
        if any(n != results.runs for n in runs.values()):
            notes.append("runs: " + ", ".join(f"{lb} {n}" for lb, n in runs.items()))
        rows.append(
            [
                row.title,
                row.unit,
                *(_fmt(row.median(label), row.fmt) for label in BACKENDS),
                *("—" if r is None else f"{r:.2f}x" for r in ratios),
                row.target.text if row.target else "",
                " / ".join(verdicts),
                rss,
                "; ".join(notes),
            ]
        )
    return _md_table(headers, rows)
