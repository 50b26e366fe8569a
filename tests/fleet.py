"""A CI fleet pulling at once: many async clients, each pulling a list of images and verifying every digest.

Used by the cold-start tests (tests/test_cold_start.py) and the fleet benchmark (bench/fleet.py), so both
measure the same client behaviour: a manifest GET by tag (an index: each child by digest), then every blob,
each hashed as it streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field

import aiohttp

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


@dataclass
class FleetResult:
    errors: list[str] = field(default_factory=list)
    pull_seconds: list[float] = field(default_factory=list)  # one per (puller, image) pull that succeeded
    wall_seconds: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.pull_seconds:
            return float("nan")
        ordered = sorted(self.pull_seconds)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def pull(session: aiohttp.ClientSession, base: str, repo: str, ref: str, errors: list[str]) -> bool:
    """Pull one reference (an index: each child too), verifying every digest; False if anything failed."""
    async with session.get(f"{base}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT}) as r:
        body = await r.read()
        if r.status != 200:
            errors.append(f"{repo}:{ref} manifest {r.status} {body[:200]!r}")
            return False
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if r.headers.get("Docker-Content-Digest") != digest or (ref.startswith("sha256:") and digest != ref):
        errors.append(
            f"{repo}:{ref} manifest arrived as {digest}, headers say {r.headers.get('Docker-Content-Digest')}"
        )
        return False
    doc = json.loads(body)
    if "manifests" in doc:
        results = await asyncio.gather(*(pull(session, base, repo, m["digest"], errors) for m in doc["manifests"]))
        return all(results)
    ok = True
    for d in [doc["config"], *doc["layers"]]:
        h = hashlib.sha256()
        async with session.get(f"{base}/v2/{repo}/blobs/{d['digest']}") as b:
            if b.status != 200:
                errors.append(f"{repo} blob {d['digest']} {b.status} {(await b.read())[:200]!r}")
                ok = False
                continue
            async for chunk in b.content.iter_chunked(1 << 16):
                h.update(chunk)
        if f"sha256:{h.hexdigest()}" != d["digest"]:
            errors.append(f"{repo} blob {d['digest']} arrived as sha256:{h.hexdigest()}")
            ok = False
    return ok


async def fleet(
    base: str, pulls: list[tuple[str, str]], pullers: int, headers: dict[str, str] | None = None, limit: float = 300
) -> FleetResult:
    """`pullers` clients start together, each pulling every (repository, reference) in `pulls`, starting at a
    different one (runners in a fleet don't all begin with the same image)."""
    result = FleetResult()
    start = asyncio.Event()
    client_timeout = aiohttp.ClientTimeout(total=limit)  # per request

    async def puller(i: int) -> None:
        async with aiohttp.ClientSession(timeout=client_timeout, headers=headers or {}) as session:
            await start.wait()
            order = pulls[i % len(pulls) :] + pulls[: i % len(pulls)]
            for repo, ref in order:
                began = time.monotonic()
                try:
                    ok = await pull(session, base, repo, ref, result.errors)
                except (aiohttp.ClientError, TimeoutError) as e:
                    result.errors.append(f"{repo}:{ref} {type(e).__name__}: {e}")
                    ok = False
                if ok:
                    result.pull_seconds.append(time.monotonic() - began)

    tasks = [asyncio.ensure_future(puller(i)) for i in range(pullers)]
    await asyncio.sleep(0.05)  # every client is waiting at the start line
    began = time.monotonic()
    start.set()
    await asyncio.gather(*tasks)
    result.wall_seconds = time.monotonic() - began
    return result


def run_fleet(
    base: str, pulls: list[tuple[str, str]], pullers: int, headers: dict[str, str] | None = None
) -> FleetResult:
    return asyncio.run(fleet(base, pulls, pullers, headers))
