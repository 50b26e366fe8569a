"""`python -m bench`: Moorage and CNCF Distribution side by side on this machine (see bench/README.md).

python -m bench                       everything, 3 runs each, results in bench/RESULTS.md (+ .json)
python -m bench --quick               tiny sizes, 1 run, 1 s wrk runs: a smoke test of the harness
python -m bench --only manifest,push  some benchmarks (or groups: headline, backends, scale, cold-start)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import backends, fleet, instructions, pullthrough, render, report, scale, suite
from bench.servers import BenchError, nginx_bin

BENCHMARKS = {
    **suite.BENCHMARKS,
    **pullthrough.BENCHMARKS,
    **backends.BENCHMARKS,
    **instructions.BENCHMARKS,
    **scale.BENCHMARKS,
    **fleet.BENCHMARKS,
}
GROUPS = {
    # both storage backends' numbers in one run
    "headline": [*suite.BENCHMARKS, *pullthrough.BENCHMARKS, *backends.BENCHMARKS, *instructions.BENCHMARKS],
    "backends": list(backends.BENCHMARKS),
    "scale": list(scale.BENCHMARKS),
    "cold-start": list(fleet.BENCHMARKS),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
REQUIRED = {"wrk": "wrk", "skopeo": "skopeo", "docker-registry": "docker-registry"}
# Tools only some benchmarks need (tool: package), required when one of them is selected.
REQUIRED_BY = {"instructions": {"valgrind": "valgrind", "callgrind_control": "valgrind"}}
OPTIONAL = {
    "nginx": "nginx-light"
}  # package of each tool  # the sendfile baseline; without it a Python os.sendfile server stands in


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="Moorage vs Distribution benchmarks")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 run, short wrk durations (smoke test)")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated benchmarks or groups: " + ", ".join([*BENCHMARKS, *GROUPS]),
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown report (raw samples go next to it)")
    p.add_argument("--runs", type=int, default=0, help="runs per measurement (default 3, or 1 with --quick)")
    p.add_argument("--workdir", type=Path, default=None, help="where temp dirs go (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the working directory (data, logs) at the end")
    p.add_argument("--no-install", action="store_true", help="never apt-get install missing tools")
    return p.parse_args(argv)


def selected(only: str) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names: list[str] = []
    for part in (x.strip() for x in only.split(",") if x.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in BENCHMARKS:
            names.append(part)
        else:
            sys.exit(f"bench: unknown benchmark {part!r}; choose from {', '.join([*BENCHMARKS, *GROUPS])}")
    return [n for n in BENCHMARKS if n in names]  # in the usual order


def required_tools(names: list[str]) -> dict[str, str]:
    """The tools the `names` benchmarks need, each with its Debian package."""
    tools = dict(REQUIRED)
    for name in names:
        tools.update(REQUIRED_BY.get(name, {}))
    return tools


def ensure_tools(install: bool, names: list[str]) -> None:
    """Missing tools are installed from Debian when running as root (as `make test` does), else reported."""
    required = required_tools(names)
    missing = sorted({pkg for tool, pkg in required.items() if shutil.which(tool) is None})
    if nginx_bin() is None:
        missing += OPTIONAL.values()
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: installing {' '.join(missing)} (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            env=env,
            check=False,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    still = [tool for tool in required if shutil.which(tool) is None]
    if still:
        packages = sorted({required[t] for t in still})
        sys.exit(f"bench: {', '.join(still)} missing: apt-get install {' '.join(packages)}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = selected(args.only)
    runs = args.runs or (1 if args.quick else 3)
    plan = suite.Plan.quick(runs) if args.quick else suite.Plan.full(runs)
    ensure_tools(install=not args.no_install, names=names)
    nginx = nginx_bin()
    baseline = f"nginx, one process ({report.command_output(nginx, '-v')})" if nginx else "python os.sendfile server"
    results = report.Results(runs=runs, quick=args.quick)
    machine = report.machine_info(baseline)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="moorage-bench-", dir=args.workdir))
    free = shutil.disk_usage(workdir).free
    if not args.quick and free < 10 * 1024**3:
        results.note(f"only {free / 1024**3:.1f} GiB free in {workdir}: the full run needs about 10 GiB")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"bench: {', '.join(names)}; {runs} run(s); working in {workdir}", flush=True)
    # SIGINT too: a shell that starts us in the background sets it to "ignore", and Ctrl-C must still clean up.
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    bench = suite.Bench(workdir, plan, results)
    try:
        for name in names:
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                BENCHMARKS[name](bench)
            except BenchError as e:
                results.note(f"{name}: {e}")
            except KeyboardInterrupt:
                raise
            except Exception as e:
                results.note(f"{name}: {type(e).__name__}: {e}")
                traceback.print_exc()
            print(f"   ({time.monotonic() - t0:.1f} s)", flush=True)
    except KeyboardInterrupt:
        results.interrupted = True
        print("bench: interrupted; stopping servers", file=sys.stderr, flush=True)
    finally:
        for s in old:  # a second Ctrl-C must not leave servers running
            signal.signal(s, signal.SIG_IGN)
        try:
            bench.close()
            if args.keep:
                print(f"bench: kept {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
    text = render.write(results, machine, command, args.out)
    print()
    print(text)
    print(f"bench: wrote {args.out} and {args.out.with_suffix('.json')}", flush=True)
    return 130 if results.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
