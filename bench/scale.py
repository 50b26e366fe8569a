"""Scale curves: manifest GET from 1 to 64 concurrent clients, and the registry from 10 to 10,000 repositories
and up to 100,000 tags in one repository.

Seeding is cheap and identical on both registries: the small image is pushed once (skopeo) to `bench/small`;
each new repository gets its blobs by cross-repository mount (`POST .../blobs/uploads/?mount=&from=`) and the
manifest by `PUT .../manifests/v1`; the tag repository gets the same manifest PUT under each new tag. Requests
go out concurrently from one aiohttp client; every seeding step is bounded in time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench.content import ACCEPT, OCI_MANIFEST, Image
from bench.load import latencies, walk_pages
from bench.report import DISTRIBUTION, MOORAGE, MOORAGE_AUTH, Table
from bench.rss import sampling
from bench.servers import BenchError, Server
from bench.suite import HEADLINE, Bench

TAG_REPO = "scale/tags"


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f}"


def _ratio(m: float | None, d: float | None) -> str:
    return f"{m / d:.2f}x" if m and d else "—"


def concurrency(b: Bench) -> None:
    table = Table(
        "Manifest GET by tag vs concurrent clients (wrk -c N)",
        [
            "clients",
            "Moorage req/s",
            "p50 / p99 ms",
            "Moorage (auth) req/s",
            "p50 / p99 ms",
            "Distribution req/s",
            "p50 / p99 ms",
            "ratio",
            "ratio (auth)",
            "peak RSS MiB (M / M auth / D)",
        ],
        note=(
            f"Medians of {b.plan.runs} run(s) of {b.plan.curve_seconds:g} s each; latency is wrk's per-request "
            "latency (p50 / p99)."
        ),
    )
    b.results.tables.append(table)
    targets = {}
    for label in HEADLINE:
        server, _ = b.small_on(label)
        targets[label] = (server, f"{server.url}/v2/bench/small/manifests/v1", {"Accept": ACCEPT, **server.headers})
    for c in b.plan.curve_connections:
        rps: dict[str, list[float]] = {}
        p50: dict[str, list[float]] = {}
        p99: dict[str, list[float]] = {}
        rss: dict[str, float] = {}
        for _ in range(b.plan.runs):
            for label, (server, url, headers) in targets.items():
                with sampling(server) as sampler:
                    r = b.wrk.run(url, duration=b.plan.curve_seconds, connections=c, headers=headers)
                rps.setdefault(label, []).append(r.rps)
                p50.setdefault(label, []).append(r.p50_ms)
                p99.setdefault(label, []).append(r.p99_ms)
                rss[label] = max(rss.get(label, 0.0), sampler.peak.get(label, 0.0))
        med = {label: statistics.median(v) for label, v in rps.items()}
        cells = [str(c)]
        for label in HEADLINE:
            cells += [
                f"{med[label]:,.0f}",
                f"{statistics.median(p50[label]):.2f} / {statistics.median(p99[label]):.2f}",
            ]
        cells += [_ratio(med[MOORAGE], med[DISTRIBUTION]), _ratio(med[MOORAGE_AUTH], med[DISTRIBUTION])]
        cells.append(" / ".join(f"{rss.get(label, 0):.0f}" for label in HEADLINE))
        table.rows.append(cells)
        print(f"  -c{c}: " + ", ".join(f"{lb} {v:,.0f} req/s" for lb, v in med.items()), flush=True)


# -- seeding ------------------------------------------------------------------------------------------------


async def _run_bounded(
    names: list[str],
    one: Callable[[aiohttp.ClientSession, str], Awaitable[None]],
    concurrency: int,
    budget: float,
) -> int:
    """`one(session, name)` for every name with `concurrency` workers, until done or `budget` seconds pass;
    how many finished. The first failure stops everything and is raised."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)
    done = 0
    deadline = time.monotonic() + budget

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            try:
                name = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(session, name)
            done += 1

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return done


async def _check(resp: aiohttp.ClientResponse, *expected: int) -> None:
    if resp.status not in expected:
        raise BenchError(f"{resp.method} {resp.url.path_qs}: {resp.status} {(await resp.text())[:300]}")


def _mount_and_put(server: Server, image: Image) -> Callable[[aiohttp.ClientSession, str], Awaitable[None]]:
    headers = server.headers

    async def one(session: aiohttp.ClientSession, repo: str) -> None:
        for digest in image.blob_digests:
            url = f"{server.url}/v2/{repo}/blobs/uploads/?mount={digest}&from=bench/small"
            async with session.post(url, headers=headers) as r:
                await _check(r, 201, 202)
                location = r.headers.get("Location", "")
                mounted = r.status == 201
            if not mounted:  # the registry declined the mount: upload the (small) blob instead
                target = location if location.startswith("http") else server.url + location
                sep = "&" if "?" in target else "?"
                data = image.blob_path(digest).read_bytes()
                async with session.put(f"{target}{sep}digest={digest}", data=data, headers=headers) as r:
                    await _check(r, 201)
        await _put_manifest(session, server, image, repo, "v1")

    return one


async def _put_manifest(session: aiohttp.ClientSession, server: Server, image: Image, repo: str, tag: str) -> None:
    url = f"{server.url}/v2/{repo}/manifests/{tag}"
    async with session.put(url, data=image.manifest, headers={**server.headers, "Content-Type": OCI_MANIFEST}) as r:
        await _check(r, 201)


def _seed(server: Server, image: Image, names: list[str], one_factory, b: Bench) -> tuple[int, float]:
    one = one_factory(server, image)
    t0 = time.perf_counter()
    done = asyncio.run(_run_bounded(names, one, b.plan.seed_concurrency, b.plan.seed_budget))
    return done, time.perf_counter() - t0


def _tag_put(server: Server, image: Image) -> Callable[[aiohttp.ClientSession, str], Awaitable[None]]:
    async def one(session: aiohttp.ClientSession, tag: str) -> None:
        await _put_manifest(session, server, image, TAG_REPO, tag)

    return one


def _pages(server: Server, path: str, key: str) -> str:
    pages, items, seconds = walk_pages(server.url + path, key, server.headers)
    return f"{seconds:.2f} ({pages} p, {items:,})"


def _page_ms(server: Server, path: str, key: str) -> str:
    times, body = latencies(server.url + path, server.headers, count=5, budget=60)
    return f"{_ms(times)} ({len(body.get(key) or []):,})"


def repositories(b: Bench) -> None:
    table = Table(
        "Scale: repositories",
        [
            "repositories",
            "server",
            "seeded/s",
            "_catalog n=100 first page ms (items)",
            "deep page ms (items)",
            "full walk n=1000 s (pages, items)",
            "manifest GET req/s",
            "peak RSS MiB",
        ],
        note=(
            "Each step adds repositories (blob mounts + one manifest PUT each, "
            f"{b.plan.seed_concurrency} concurrent requests). Page latencies are medians of 5 sequential GETs; the "
            f"deep page starts 50 names before the end (`last=`); manifest GET is wrk -c{b.plan.connections} "
            f"for {b.plan.scale_wrk_seconds:g} s on a repository in the middle."
        ),
    )
    b.results.tables.append(table)
    image = b.small()
    servers = {label: b.small_on(label)[0] for label in (MOORAGE, DISTRIBUTION)}
    seeded = {label: 0 for label in servers}
    for step in b.plan.repo_steps:
        for label, server in servers.items():
            names = [f"scale/r{i:05d}" for i in range(seeded[label], step)]
            with sampling(server) as sampler:
                done, seconds = _seed(server, image, names, _mount_and_put, b)
            seeded[label] += done
            if done < len(names):
                b.results.note(f"scale: seeding {label} stopped at {seeded[label]} repositories after {seconds:.0f}s")
                return
            n = seeded[label]
            middle = f"scale/r{n // 2:05d}"
            with sampling(server) as during:
                first = _page_ms(server, "/v2/_catalog?n=100", "repositories")
                deep = _page_ms(server, f"/v2/_catalog?n=100&last=scale/r{max(0, n - 50):05d}", "repositories")
                walk = _pages(server, "/v2/_catalog?n=1000", "repositories")
                r = b.wrk.run(
                    f"{server.url}/v2/{middle}/manifests/v1",
                    duration=b.plan.scale_wrk_seconds,
                    connections=b.plan.connections,
                    headers={"Accept": ACCEPT, **server.headers},
                )
            peak = max(sampler.peak.get(label, 0.0), during.peak.get(label, 0.0))
            rate = f"{len(names) / seconds:,.0f}" if names else "—"
            table.rows.append([f"{n:,}", label, rate, first, deep, walk, f"{r.rps:,.0f}", f"{peak:.0f}"])
            print(f"  {label} @ {n} repositories: seed {rate}/s, manifest GET {r.rps:,.0f} req/s", flush=True)


def tags(b: Bench) -> None:
    table = Table(
        f"Scale: tags in one repository ({TAG_REPO})",
        [
            "tags",
            "server",
            "seeded/s",
            "tags/list n=100 first page ms (items)",
            "deep page ms (items)",
            "full list s (pages, items)",
            "manifest GET req/s",
            "peak RSS MiB",
        ],
        note=(
            "Each step PUTs the same manifest under more tags. The full list is `tags/list` without `n`, "
            "following `Link` headers (Moorage pages at 1,000; Distribution 2.8 may answer everything at once)."
        ),
    )
    b.results.tables.append(table)
    image = b.small()
    servers = {label: b.small_on(label)[0] for label in (MOORAGE, DISTRIBUTION)}
    seeded = {label: 0 for label in servers}
    for server in servers.values():  # the repository and its blobs, once
        asyncio.run(_run_bounded([TAG_REPO], _mount_and_put(server, image), 1, 60))
    for step in b.plan.tag_steps:
        for label, server in servers.items():
            names = [f"t{i:06d}" for i in range(seeded[label], step)]
            with sampling(server) as sampler:
                done, seconds = _seed(server, image, names, _tag_put, b)
            seeded[label] += done
            if done < len(names):
                b.results.note(f"scale: tagging on {label} stopped at {seeded[label]} tags after {seconds:.0f}s")
                return
            n = seeded[label]
            with sampling(server) as during:
                first = _page_ms(server, f"/v2/{TAG_REPO}/tags/list?n=100", "tags")
                deep = _page_ms(server, f"/v2/{TAG_REPO}/tags/list?n=100&last=t{max(0, n - 50):06d}", "tags")
                walk = _pages(server, f"/v2/{TAG_REPO}/tags/list", "tags")
                r = b.wrk.run(
                    f"{server.url}/v2/{TAG_REPO}/manifests/t{n // 2:06d}",
                    duration=b.plan.scale_wrk_seconds,
                    connections=b.plan.connections,
                    headers={"Accept": ACCEPT, **server.headers},
                )
            peak = max(sampler.peak.get(label, 0.0), during.peak.get(label, 0.0))
            rate = f"{len(names) / seconds:,.0f}" if names else "—"
            table.rows.append([f"{n:,}", label, rate, first, deep, walk, f"{r.rps:,.0f}", f"{peak:.0f}"])
            print(f"  {label} @ {n} tags: seed {rate}/s, manifest GET {r.rps:,.0f} req/s", flush=True)


BENCHMARKS = {
    "concurrency": concurrency,
    "repositories": repositories,
    "tags": tags,
}
