"""`moorage export` and `moorage import`: images leave one registry as an OCI layout, an OCI archive (or arrive as
a `docker save` tarball) and come back out of another registry that never talked to the first, byte for byte.

Every command runs as a real `moorage` subprocess against a data dir a real server is serving at the same time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from tests.layouts import (
    REF_NAME,
    LayoutImage,
    LayoutIndex,
    make_layer,
    write_multi_platform_image,
    write_single_image,
)
from tests.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    Image,
    descriptor,
    digest_of,
    get_blob,
    get_manifest,
    make_image,
)
from tests.server import AUTH_OFF, MoorageServer, blob_file, moorage_cli
from tests.skopeo import Skopeo, assert_layout_matches, inspect_raw

MakeServer = Callable[..., MoorageServer]
REPOSITORY_ANNOTATION = "io.moorage.repository"
OCI_INDEX_FOR = "io.moorage.oci-index-for"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SIGNATURE = "application/vnd.example.signature.v1"


# -- helpers -----------------------------------------------------------------------------------------------


def ok(p: subprocess.CompletedProcess[str]) -> dict:
    """A successful command: exit 0, nothing on stderr (not a terminal: no progress), a JSON summary on stdout."""
    assert p.returncode == 0, f"{p.args}\nexit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert p.stderr == "", p.stderr
    return json.loads(p.stdout)


def failed(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A refused command: exit 1, one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert p.returncode == 1, f"{p.args}\nexit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moorage: "), p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert p.stdout == "", p.stdout
    return lines[0]


def concurrently(commands: list[list[object]]) -> list[subprocess.CompletedProcess[str]]:
    """Run `moorage` commands side by side (they are independent); their results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "registry", *map(str, c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def imp(srv: MoorageServer, source: Path, *ref: str) -> subprocess.CompletedProcess[str]:
    return moorage_cli("import", "--config", srv.config_path, "--data-dir", srv.data_dir, source, *ref)


def exp(srv: MoorageServer, *args: object) -> subprocess.CompletedProcess[str]:
    return moorage_cli("export", "--config", srv.config_path, "--data-dir", srv.data_dir, *args)


def catalog(srv: MoorageServer) -> list[str]:
    return requests.get(f"{srv.url}/v2/_catalog", timeout=10).json()["repositories"]


def assert_pulls_back(
    skopeo: Skopeo, srv: MoorageServer, ref: str, image: LayoutImage | LayoutIndex, tmp_path: Path
) -> None:
    """`ref` comes out of `srv` byte-exact: the raw manifest, and every blob through a skopeo copy (--all)."""
    top = image.index if isinstance(image, LayoutIndex) else image.manifest
    assert inspect_raw(skopeo, f"docker://{srv.host}/{ref}") == top
    dst = tmp_path / f"pulled-{ref.replace('/', '_').replace(':', '_')}-{time.monotonic_ns()}"
    skopeo(
        "copy", "--all", "--src-tls-verify=false", "--preserve-digests", f"docker://{srv.host}/{ref}", f"oci:{dst}:x"
    )
    assert_layout_matches(dst, "x", image.digest, image.blobs)


def assert_signature(srv: MoorageServer, repo: str, origin: Origin) -> None:
    """The image's referrer came along: listed by the referrers API, manifest and blobs byte-exact."""
    r = requests.get(f"{srv.url}/v2/{repo}/referrers/{origin.app.digest}", timeout=10)
    assert r.status_code == 200, r.text
    assert [(m["digest"], m.get("artifactType")) for m in r.json()["manifests"]] == [
        (origin.signature.digest, SIGNATURE)
    ]
    assert get_manifest(srv, repo, origin.signature.digest).content == origin.signature.manifest
    for blob in origin.signature.blobs:
        assert get_blob(srv, repo, digest_of(blob)).content == blob


def blob_path(root: Path, digest: str) -> Path:
    alg, _, hexd = digest.partition(":")
    return root / "blobs" / alg / hexd


def private_files(srv: MoorageServer) -> list[str]:
    return sorted(p.name for p in (srv.data_dir / "uploads").iterdir())


# -- fixtures ----------------------------------------------------------------------------------------------


@dataclass
class Origin:
    """Registry A, with images pushed by skopeo from layouts."""

    srv: MoorageServer
    app: LayoutImage  # team/app:v1 and team/app:stable
    multi: LayoutIndex  # team/multi:v2 (amd64 + arm64)
    signature: Image  # an untagged referrer of team/app:v1 (subject = its manifest)

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every blob an export of team/app and team/multi:v2 holds."""
        sig = {digest_of(b): b for b in [*self.signature.blobs, self.signature.manifest]}
        return {**self.app.blobs, **self.multi.blobs, **sig}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, skopeo: Skopeo) -> Iterator[Origin]:
    root = tmp_path_factory.mktemp("origin")
    srv = MoorageServer(root / "data", AUTH_OFF).start()
    app = write_single_image(root / "app", "v1", n_layers=3)
    multi = write_multi_platform_image(root / "multi", "v2")
    push = ["copy", "--all", "--dest-tls-verify=false", "--preserve-digests"]
    skopeo(*push, f"oci:{root / 'app'}:v1", f"docker://{srv.host}/team/app:v1")
    skopeo(*push, f"oci:{root / 'app'}:v1", f"docker://{srv.host}/team/app:stable")
    skopeo(*push, f"oci:{root / 'multi'}:v2", f"docker://{srv.host}/team/multi:v2")
    signature = make_image(1, subject=descriptor(OCI_MANIFEST, app.manifest), artifact_type=SIGNATURE)
    Client(srv.url).push_image("team/app", signature.digest, signature)
    yield Origin(srv, app, multi, signature)
    srv.stop()


@pytest.fixture(scope="module")
def exported(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything of team/app and team/multi:v2, exported from A (while it serves) into a layout directory."""
    dest = tmp_path_factory.mktemp("exported") / "layout"
    summary = ok(exp(origin.srv, "team/app", "team/multi:v2", dest))
    assert summary["format"] == "oci-layout"
    assert {(i["repository"], i["tag"], i["digest"]) for i in summary["images"]} == {
        ("team/app", "v1", origin.app.digest),
        ("team/app", "stable", origin.app.digest),
        ("team/multi", "v2", origin.multi.digest),
    }
    assert summary["referrers"] == 1
    assert summary["blobsWritten"] == summary["blobs"] == len(origin.blobs)
    return dest


# == 1. a layout from A into B, which never talked to A ====================================================


def test_layout_export_and_import_into_another_registry(
    origin: Origin, exported: Path, make_server: MakeServer, skopeo: Skopeo, tmp_path: Path
):
    index = json.loads((exported / "index.json").read_bytes())
    entries = {m["annotations"][REF_NAME]: m for m in index["manifests"] if REF_NAME in m["annotations"]}
    assert set(entries) == {"team/app:v1", "team/app:stable", "team/multi:v2"}
    assert entries["team/multi:v2"]["annotations"][REPOSITORY_ANNOTATION] == "team/multi"
    assert entries["team/multi:v2"]["mediaType"] == OCI_INDEX
    assert entries["team/app:v1"]["mediaType"] == OCI_MANIFEST
    # Every file is its digest's bytes, exactly as pushed (manifests never re-serialised); nothing else is there.
    files = {f"sha256:{p.name}": p.read_bytes() for p in (exported / "blobs" / "sha256").iterdir()}
    assert files == origin.blobs
    # The signature is listed untagged, with its artifact type.
    (sig,) = [m for m in index["manifests"] if REF_NAME not in m["annotations"]]
    assert sig["digest"] == origin.signature.digest and sig["artifactType"] == SIGNATURE
    # Another client reads the layout as it is.
    assert inspect_raw(skopeo, f"oci:{exported}:team/multi:v2") == origin.multi.index

    b = make_server()
    summary = ok(imp(b, exported))  # no REPOSITORY: the names the export recorded
    assert {(i["repository"], tuple(sorted(i["tags"])), i["referrers"]) for i in summary["images"]} == {
        ("team/app", ("stable", "v1"), 1),
        ("team/multi", ("v2",), 0),
    }
    assert summary["blobsStored"] == summary["blobs"] and summary["blobsSkipped"] == 0
    assert_signature(b, "team/app", origin)
    assert_pulls_back(skopeo, b, "team/app:v1", origin.app, tmp_path)
    assert_pulls_back(skopeo, b, "team/app:stable", origin.app, tmp_path)
    assert_pulls_back(skopeo, b, "team/multi:v2", origin.multi, tmp_path)
    for child in origin.multi.children:  # every platform, by digest
        r = get_manifest(b, "team/multi", child.digest)
        assert r.status_code == 200 and r.content == child.manifest

    again = ok(imp(b, exported))  # idempotent: everything is there already
    assert again["blobsStored"] == 0 and again["blobsSkipped"] == again["blobs"]


# == 2. OCI archives and docker save tarballs ==============================================================


def test_archive_round_trip(origin: Origin, make_server: MakeServer, skopeo: Skopeo, tmp_path: Path):
    b = make_server()
    for name, target in (("images.tar.gz", "mirror/gz"), ("images.tar", "mirror/plain")):
        archive = tmp_path / name
        summary = ok(exp(origin.srv, "team/app:v1", "team/multi:v2", archive))
        assert summary["format"] == "oci-archive" and archive.is_file()
        assert not list(tmp_path.glob(f"{name}.partial*"))
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names
        assert {f"blobs/sha256/{d.split(':')[1]}" for d in {**origin.app.blobs, **origin.multi.blobs}} <= names
        assert inspect_raw(skopeo, f"oci-archive:{archive}:team/multi:v2") == origin.multi.index

        summary = ok(imp(b, archive, f"{target}:v2"))  # several images: picked by tag, imported under a new name
        assert [(i["repository"], i["tags"], i["digest"]) for i in summary["images"]] == [
            (target, ["v2"], origin.multi.digest)
        ]
        ok(imp(b, archive, f"{target}:v1"))
    assert_pulls_back(skopeo, b, "mirror/gz:v2", origin.multi, tmp_path)
    assert_pulls_back(skopeo, b, "mirror/plain:v1", origin.app, tmp_path)
    assert inspect_raw(skopeo, f"docker://{b.host}/mirror/gz:v1") == origin.app.manifest
    assert inspect_raw(skopeo, f"docker://{b.host}/mirror/plain:v2") == origin.multi.index


def _entries(layout: Path) -> list[dict]:
    return json.loads((layout / "index.json").read_bytes())["manifests"]


def _skopeo_push(skopeo: Skopeo, src: str, srv: MoorageServer, ref: str, *extra: str) -> bytes:
    """skopeo copy `src` into `srv` as `ref` (digests kept, unless `extra` converts); the manifest `ref` then has
    there, raw."""
    keep = [] if "--format" in extra else ["--preserve-digests"]
    skopeo("copy", *extra, *keep, "--dest-tls-verify=false", src, f"docker://{srv.host}/{ref}")
    return get_manifest(srv, *ref.split(":")).content


def test_docker_media_types_export_for_skopeo_and_import_byte_exact(
    origin: Origin, make_server: MakeServer, skopeo: Skopeo, tmp_path: Path
):
    """Images pushed with Docker media types (a schema 2 manifest, a manifest list) export so that skopeo's oci:
    transport finds them by name, also skopeo 1.9 (Debian 12), which takes only OCI-typed entries of index.json:
    beside each one's own entry stands an OCI index made for it. `moorage import` restores the Docker manifests
    themselves, byte-exact, and never the made index; layouts without those indexes (older exports) still import."""
    single = write_single_image(tmp_path / "src-single", "1", n_layers=2, arch="arm64")  # not this host's platform
    multi = write_multi_platform_image(tmp_path / "src-multi", "1")
    a = origin.srv
    docker_image = _skopeo_push(skopeo, f"oci:{tmp_path / 'src-single'}:1", a, "docker/app:1", "--format", "v2s2")
    docker_list = _skopeo_push(
        skopeo, f"oci:{tmp_path / 'src-multi'}:1", a, "docker/list:1", "--all", "--format", "v2s2"
    )
    assert (
        json.loads(docker_image)["mediaType"] == DOCKER_MANIFEST and json.loads(docker_list)["mediaType"] == DOCKER_LIST
    )
    children = {
        m["digest"]: get_manifest(a, "docker/list", m["digest"]).content for m in json.loads(docker_list)["manifests"]
    }
    assert all(json.loads(c)["mediaType"] == DOCKER_MANIFEST for c in children.values())
    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    native = next(m["digest"] for m in json.loads(docker_list)["manifests"] if m["platform"]["architecture"] == host)

    layout, archive = tmp_path / "layout", tmp_path / "images.tar.gz"
    refs = ["team/app:v1", "team/multi:v2", "docker/app:1", "docker/list:1"]
    summary = ok(exp(a, *refs, layout))
    ok(exp(a, *refs, archive))
    made = {i["digest"]: i.get("ociIndex") for i in summary["images"]}
    assert made[origin.app.digest] is None and made[origin.multi.digest] is None  # OCI types need nothing made
    for top, body in ((digest_of(docker_image), docker_image), (digest_of(docker_list), docker_list)):
        assert made[top] and blob_path(layout, top).read_bytes() == body  # the Docker manifest as stored
    # index.json: the Docker manifest's own entry first (skopeo 1.19+ and import take it), then the made index
    # under the same name (older skopeo skips the first). OCI-typed images have their one entry.
    by_name: dict[str, list[dict]] = {}
    for m in _entries(layout):
        if REF_NAME in m["annotations"]:  # not the signature of team/app:v1 (a referrer, untagged)
            by_name.setdefault(m["annotations"][REF_NAME], []).append(m)
    assert [m["mediaType"] for m in by_name["team/app:v1"]] == [OCI_MANIFEST]
    assert [m["mediaType"] for m in by_name["team/multi:v2"]] == [OCI_INDEX]
    for name, top, media_type in (
        ("docker/app:1", docker_image, DOCKER_MANIFEST),
        ("docker/list:1", docker_list, DOCKER_LIST),
    ):
        own, made_entry = by_name[name]
        assert (own["mediaType"], own["digest"], own["size"]) == (media_type, digest_of(top), len(top))
        assert OCI_INDEX_FOR not in own["annotations"]
        assert made_entry["mediaType"] == OCI_INDEX and made_entry["annotations"][OCI_INDEX_FOR] == digest_of(top)
        assert made_entry["annotations"][REPOSITORY_ANNOTATION] == name.split(":")[0]
        index = json.loads(blob_path(layout, made_entry["digest"]).read_bytes())
        assert index["mediaType"] == OCI_INDEX and index["annotations"] == {OCI_INDEX_FOR: digest_of(top)}
        expected = (
            json.loads(top)["manifests"]  # a list's own entries, platforms and all
            if media_type == DOCKER_LIST
            else [{"mediaType": DOCKER_MANIFEST, "digest": digest_of(top), "size": len(top)}]  # no platform
        )
        assert index["manifests"] == expected

    # The real skopeo copies every image out of the layout and the archive by name, digests kept.
    b = make_server()
    for transport, where in (("oci", layout), ("oci-archive", archive)):
        prefix = transport.replace("-", "")
        for name, want in (("team/app:v1", origin.app.manifest), ("team/multi:v2", origin.multi.index)):
            got = _skopeo_push(skopeo, f"{transport}:{where}:{name}", b, f"{prefix}/{name}", "--all")
            assert got == want, name
        # A Docker image: the manifest itself, whichever entry skopeo took (on any host: no platform to match).
        got = _skopeo_push(skopeo, f"{transport}:{where}:docker/app:1", b, f"{prefix}/docker/app:1")
        assert got == docker_image
        for blob in single.layers:
            assert get_blob(b, f"{prefix}/docker/app", digest_of(blob)).content == blob
        # A manifest list, this host's platform: that child, byte-exact.
        got = _skopeo_push(skopeo, f"{transport}:{where}:docker/list:1", b, f"{prefix}/docker/list:1")
        assert got == children[native]
    # --all: every child byte-exact. skopeo 1.19+ copies the list itself; older ones the index made for it.
    got = _skopeo_push(skopeo, f"oci:{layout}:docker/list:1", b, "all/docker/list:1", "--all")
    assert got == docker_list or json.loads(got)["manifests"] == json.loads(docker_list)["manifests"]
    for digest, body in children.items():
        assert get_manifest(b, "all/docker/list", digest).content == body
    for child in multi.children:
        for blob in child.layers:
            assert get_blob(b, "all/docker/list", digest_of(blob)).content == blob

    # moorage import: every image under its own name and digest, the Docker ones byte-exact; no made index.
    older = tmp_path / "older"  # as Moorage exported before it made indexes: the Docker entries alone
    shutil.copytree(layout, older)
    index = json.loads((older / "index.json").read_bytes())
    index["manifests"] = [m for m in index["manifests"] if OCI_INDEX_FOR not in m["annotations"]]
    (older / "index.json").write_text(json.dumps(index))
    only_made = tmp_path / "only-made"  # a layout that kept only the made entries still means the Docker manifests
    shutil.copytree(layout, only_made)
    index = json.loads((only_made / "index.json").read_bytes())
    index["manifests"] = [m for m in index["manifests"] if m["mediaType"] not in (DOCKER_MANIFEST, DOCKER_LIST)]
    (only_made / "index.json").write_text(json.dumps(index))
    for source in (layout, archive, older, only_made):
        c = make_server()
        summary = ok(imp(c, source))
        assert {(i["repository"], tuple(i["tags"]), i["digest"], i["mediaType"]) for i in summary["images"]} == {
            ("team/app", ("v1",), origin.app.digest, OCI_MANIFEST),
            ("team/multi", ("v2",), origin.multi.digest, OCI_INDEX),
            ("docker/app", ("1",), digest_of(docker_image), DOCKER_MANIFEST),
            ("docker/list", ("1",), digest_of(docker_list), DOCKER_LIST),
        }, source
        for repo, tag, body in (("docker/app", "1", docker_image), ("docker/list", "1", docker_list)):
            r = get_manifest(c, repo, tag)
            assert r.status_code == 200 and r.content == body
            assert r.headers["Content-Type"].startswith(json.loads(body)["mediaType"])
            assert r.headers["Docker-Content-Digest"] == digest_of(body)
        for digest, body in children.items():
            assert get_manifest(c, "docker/list", digest).content == body
        for m in _entries(layout):
            if OCI_INDEX_FOR in m["annotations"]:  # the made index is nowhere in the registry
                assert get_manifest(c, m["annotations"][REPOSITORY_ANNOTATION], m["digest"]).status_code == 404
        assert_pulls_back(skopeo, c, "team/multi:v2", origin.multi, tmp_path)
        by_tag = ok(imp(c, source, "again/docker/app:1"))  # one tag, several images: named by REPOSITORY:TAG
        assert [i["digest"] for i in by_tag["images"]] == [digest_of(docker_image)] and by_tag["blobsStored"] == 0


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


def test_docker_save_tarball(make_server: MakeServer, skopeo: Skopeo, tmp_path: Path):
    """A `docker save` tarball (legacy format): manifest.json, config, one directory per layer with layer.tar
    (uncompressed, as docker writes them; one here is gzip-compressed) and a layer shared by symlink."""
    gz, plain1, _ = make_layer()
    _, plain2, _ = make_layer()
    layer1 = plain1
    layer2 = gz  # compressed: its diff_id is the digest of the uncompressed tar
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(plain1), digest_of(gzip.decompress(gz))]},
        },
        indent=1,
    ).encode()
    other_config = json.dumps(
        {"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest_of(plain2)]}}
    ).encode()
    cfg_name, other_cfg_name = (
        digest_of(config).split(":")[1] + ".json",
        digest_of(other_config).split(":")[1] + ".json",
    )
    manifest = [
        {
            "Config": cfg_name,
            "RepoTags": ["example/app:v1", "example/app:latest"],
            "Layers": ["l1/layer.tar", "l2/layer.tar"],
        },
        {"Config": other_cfg_name, "RepoTags": ["docker.io/example/other:v1"], "Layers": ["l3/layer.tar"]},
    ]
    saved = tmp_path / "saved.tar"
    _tar(
        saved,
        {
            "manifest.json": json.dumps(manifest).encode(),
            "repositories": b"{}",
            cfg_name: config,
            other_cfg_name: other_config,
            "l1/VERSION": b"1.0",
            "l1/layer.tar": layer1,
            "l2/layer.tar": layer2,
            "l4/layer.tar": plain2,
        },
        {"l3/layer.tar": "../l4/layer.tar"},
    )

    b = make_server()
    summary = ok(imp(b, saved))  # no REPOSITORY: RepoTags name them (the registry host dropped)
    images = {i["repository"]: i for i in summary["images"]}
    assert set(images) == {"example/app", "example/other"}
    assert sorted(images["example/app"]["tags"]) == ["latest", "v1"]
    assert images["example/app"]["mediaType"] == DOCKER_MANIFEST

    r = get_manifest(b, "example/app", "v1")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith(DOCKER_MANIFEST)
    doc = r.json()
    assert r.headers["Docker-Content-Digest"] == images["example/app"]["digest"] == digest_of(r.content)
    assert doc["config"] == {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": digest_of(config)}
    assert [(x["mediaType"], x["digest"], x["size"]) for x in doc["layers"]] == [
        (DOCKER_LAYER, digest_of(layer1), len(layer1)),
        (DOCKER_LAYER_GZIP, digest_of(layer2), len(layer2)),
    ]
    assert get_blob(b, "example/app", digest_of(config)).content == config  # the same config and layer bytes
    assert get_blob(b, "example/app", digest_of(layer1)).content == layer1
    assert get_blob(b, "example/app", digest_of(layer2)).content == layer2
    assert get_blob(b, "example/other", digest_of(plain2)).content == plain2
    # A real client takes it, layers and all.
    skopeo("copy", "--src-tls-verify=false", f"docker://{b.host}/example/app:v1", f"oci:{tmp_path / 'out'}:v1")
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{b.host}/example/other:v1").stdout)
    assert info["Architecture"] == "arm64" and info["Layers"] == [digest_of(plain2)]

    # The manifest is made deterministically: importing again gives the same digest and stores nothing.
    again = ok(imp(b, saved, "example/app:v1"))
    assert again["images"][0]["digest"] == images["example/app"]["digest"] and again["blobsStored"] == 0

    # Docker 25+ writes an OCI layout with manifest.json beside it: the layout wins (the image keeps its digest)...
    new = write_single_image(tmp_path / "d25", "v1", n_layers=2)
    config_path, *layer_paths = [f"blobs/sha256/{digest_of(x).split(':')[1]}" for x in (new.config, *new.layers)]
    entry = {"Config": config_path, "RepoTags": ["example/new:v1"], "Layers": layer_paths}
    (tmp_path / "d25" / "manifest.json").write_text(json.dumps([entry]))
    with tarfile.open(tmp_path / "d25.tar", "w") as tar:
        tar.add(tmp_path / "d25", arcname=".")
    summary = ok(imp(b, tmp_path / "d25.tar", "example/new:v1"))
    assert summary["format"] == "oci-archive" and summary["images"][0]["digest"] == new.digest
    # ...unless it lacks content (docker saves only some platforms of an image): then manifest.json is used.
    blob_path(tmp_path / "d25", new.digest).unlink()
    with tarfile.open(tmp_path / "d25-partial.tar", "w") as tar:
        tar.add(tmp_path / "d25", arcname=".")
    summary = ok(imp(b, tmp_path / "d25-partial.tar", "example/new:v2"))
    assert summary["format"] == "docker-archive"
    doc = get_manifest(b, "example/new", "v2").json()
    assert [(x["mediaType"], x["digest"]) for x in doc["layers"]] == [
        (DOCKER_LAYER_GZIP, digest_of(layer)) for layer in new.layers
    ]
    assert doc["config"]["digest"] == digest_of(new.config)

    # A docker-archive written by skopeo (a real `docker save` format writer) imports too.
    src = write_single_image(tmp_path / "src", "v1", n_layers=2)
    skopeo("copy", f"oci:{tmp_path / 'src'}:v1", f"docker-archive:{tmp_path / 'sk.tar'}:example/sk:v1")
    summary = ok(imp(b, tmp_path / "sk.tar"))
    assert [(i["repository"], i["tags"]) for i in summary["images"]] == [("example/sk", ["v1"])]
    doc = get_manifest(b, "example/sk", "v1").json()
    assert json.loads(get_blob(b, "example/sk", doc["config"]["digest"]).content) == json.loads(src.config)
    # docker-archive holds uncompressed layers: their digests are the config's diff_ids.
    assert [x["digest"] for x in doc["layers"]] == src.diff_ids
    for layer, compressed in zip(doc["layers"], src.layers, strict=True):
        assert get_blob(b, "example/sk", layer["digest"]).content == gzip.decompress(compressed)


# == 3. pre-warming an offline pull-through cache ==========================================================


def test_import_prewarms_offline_pull_through_cache(
    origin: Origin, exported: Path, make_server: MakeServer, skopeo: Skopeo, tmp_path: Path
):
    config = (
        AUTH_OFF + '[pull_through]\noffline = true\nallowed_upstreams = ["127.0.0.1"]\n'
        '[[pull_through.rules]]\necr_repository_prefix = "hub"\nupstream_registry_url = "http://127.0.0.1:9"\n'
    )
    b = make_server(config)
    # The layout has team/app:v1 and :stable and team/multi:v2: the tag and the repository pick the image.
    summary = ok(imp(b, exported, "hub/team/app:v1"))
    assert [(i["repository"], i["tags"], i["digest"]) for i in summary["images"]] == [
        ("hub/team/app", ["v1"], origin.app.digest)
    ]
    ok(imp(b, exported, "hub/team/multi:v2"))
    assert_pulls_back(skopeo, b, "hub/team/app:v1", origin.app, tmp_path)
    assert_signature(b, "hub/team/app", origin)  # the referrer went along
    assert_pulls_back(skopeo, b, "hub/team/multi:v2", origin.multi, tmp_path)

    for repo, ref in (("hub/team/other", "v1"), ("hub/team/app", "stable"), ("hub/team/app", "sha256:" + "0" * 64)):
        started = time.monotonic()
        r = get_manifest(b, repo, ref)
        assert time.monotonic() - started < 2
        assert r.status_code == 404 and "offline" in r.text, (r.status_code, r.text)


def test_export_from_a_pull_through_cache_completes_what_was_not_pulled(
    origin: Origin, make_server: MakeServer, tmp_path: Path
):
    """On the connected side, exporting `<prefix>/<repo>:<tag>` fetches through the cache whatever it lacks."""
    config = (
        AUTH_OFF
        + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
        + f'[[pull_through.rules]]\necr_repository_prefix = "up"\nupstream_registry_url = "{origin.srv.url}"\n'
    )
    cache = make_server(config)
    summary = ok(exp(cache, "up/team/multi:v2", tmp_path / "out"))  # nothing pulled yet
    assert summary["images"][0]["digest"] == origin.multi.digest
    files = {f"sha256:{p.name}": p.read_bytes() for p in (tmp_path / "out" / "blobs" / "sha256").iterdir()}
    assert files == origin.multi.blobs


# == 4. resuming ===========================================================================================


def test_export_resumes_after_damage(origin: Origin, skopeo: Skopeo, tmp_path: Path):
    dest = tmp_path / "layout"
    first = ok(exp(origin.srv, "team/multi:v2", dest))
    child = origin.multi.children[0]
    gone, cut = blob_path(dest, digest_of(child.layers[0])), blob_path(dest, digest_of(child.layers[1]))
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[: len(child.layers[1]) // 2])
    leftover = cut.with_name(cut.name + ".partial")  # as a killed export leaves it
    leftover.write_bytes(b"junk")

    second = ok(exp(origin.srv, "team/multi:v2", dest))
    assert second["blobsWritten"] == 2 and second["blobsSkipped"] == first["blobs"] - 2
    assert not list(dest.rglob("*.partial"))
    skopeo("copy", "--all", "--preserve-digests", f"oci:{dest}:team/multi:v2", f"oci:{tmp_path / 'copy'}:v2")
    assert_layout_matches(tmp_path / "copy", "v2", origin.multi.digest, origin.multi.blobs)


def _big_layout(path: Path, size: int) -> tuple[bytes, bytes, bytes]:
    """A layout tagged `big` whose one layer is `size` random bytes: (manifest, config, layer)."""
    layer = os.urandom(size)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(layer), "size": size}
            ],
        },
        indent=2,
    ).encode()
    for blob in (layer, config, manifest):
        blob_path(path, digest_of(blob)).parent.mkdir(parents=True, exist_ok=True)
        blob_path(path, digest_of(blob)).write_bytes(blob)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {"mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest)}
    (path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [{**entry, "annotations": {REF_NAME: "big"}}]})
    )
    return manifest, config, layer


def _kill_when(proc: subprocess.Popen[bytes], predicate: Callable[[], bool], what: str) -> None:
    wait_for(lambda: proc.poll() is not None or predicate(), 60, what, interval=0.001)
    assert proc.poll() is None, f"{what} finished before it could be killed (exit {proc.poll()})"
    proc.kill()
    proc.wait()


def test_killed_import_and_export_leave_nothing_partial_and_resume(make_server: MakeServer, tmp_path: Path):
    manifest, _, layer = _big_layout(tmp_path / "big", 96 * 1024 * 1024)
    b = make_server()

    # Import, killed (SIGKILL) while the big layer streams into the store.
    cmd = [sys.executable, "-m", "registry", "import", "--data-dir", str(b.data_dir), str(tmp_path / "big"), "big/app"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def writing_layer() -> bool:
        return any(p.stat().st_size > (1 << 20) for p in (b.data_dir / "uploads").glob(".ingest-*"))

    _kill_when(proc, writing_layer, "the import")
    assert not blob_file(b, digest_of(layer)).exists()  # no partial blob
    assert get_manifest(b, "big/app", "big").status_code == 404 and "big/app" not in catalog(b)

    summary = ok(imp(b, tmp_path / "big", "big/app"))  # run again: completes
    assert summary["blobsSkipped"] == 1 and summary["blobsStored"] == 1  # the config was in before the kill
    # The killed run's spool file is invisible, and left alone until stale (it could belong to a live writer);
    # garbage collection removes it then.
    leftovers = list((b.data_dir / "uploads").glob(".ingest-*"))
    for path in leftovers:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    gc = subprocess.run(
        [sys.executable, "-m", "registry", "gc", "--data-dir", str(b.data_dir), "--config", str(b.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    assert not [p for p in private_files(b) if p.startswith(".ingest-")]
    r = get_manifest(b, "big/app", "big")
    assert r.status_code == 200 and r.content == manifest
    assert hashlib.sha256(get_blob(b, "big/app", digest_of(layer)).content).digest() == hashlib.sha256(layer).digest()

    # Export to an archive, killed mid-layer: DEST never appears, and the re-run resumes after the last member.
    archive = tmp_path / "big.tar"
    partial, journal = tmp_path / "big.tar.partial", tmp_path / "big.tar.partial.json"
    cmd = [sys.executable, "-m", "registry", "export", "--data-dir", str(b.data_dir), "big/app:big", str(archive)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def writing_big_member() -> bool:
        try:
            return partial.stat().st_size > json.loads(journal.read_bytes())["offset"] + (1 << 20)
        except (OSError, ValueError):
            return False

    _kill_when(proc, writing_big_member, "the export")
    assert not archive.exists()
    summary = ok(moorage_cli("export", "--data-dir", b.data_dir, "big/app:big", archive))
    assert summary["blobsSkipped"] == 2 and summary["blobsWritten"] == 1  # manifest and config were complete
    assert not partial.exists() and not journal.exists()
    with tarfile.open(archive) as tar:
        fh = tar.extractfile(f"blobs/sha256/{digest_of(layer).split(':')[1]}")
        assert fh is not None and hashlib.sha256(fh.read()).hexdigest() == digest_of(layer).split(":")[1]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert [m["digest"] for m in index["manifests"]] == [digest_of(manifest)]
    again = ok(imp(b, archive, "big/copy:v1"))
    assert again["blobsStored"] == 0 and again["images"][0]["digest"] == digest_of(manifest)


def test_corrupt_blob_is_refused_then_a_fixed_layout_completes(make_server: MakeServer, skopeo: Skopeo, tmp_path: Path):
    img = write_single_image(tmp_path / "src", "v1", n_layers=3)
    bad = blob_path(tmp_path / "src", digest_of(img.layers[2]))
    damaged = bytearray(img.layers[2])
    damaged[len(damaged) // 2] ^= 0xFF
    bad.write_bytes(bytes(damaged))  # same size, other content
    b = make_server()

    failed(imp(b, tmp_path / "src", "team/fixme"), digest_of(img.layers[2]), "does not match its digest")
    assert get_manifest(b, "team/fixme", "v1").status_code == 404 and catalog(b) == []  # nothing visible
    assert not blob_file(b, digest_of(img.layers[2])).exists() and private_files(b) == []

    bad.write_bytes(img.layers[2])
    summary = ok(imp(b, tmp_path / "src", "team/fixme"))
    assert summary["images"][0]["tags"] == ["v1"]  # the layout's one tag
    assert summary["blobsStored"] + summary["blobsSkipped"] == 4 and summary["blobsStored"] >= 1
    assert_pulls_back(skopeo, b, "team/fixme:v1", img, tmp_path)


# == 5. alongside a running server =========================================================================


def test_running_server_serves_a_moved_tag_at_once(
    origin: Origin, exported: Path, make_server: MakeServer, tmp_path: Path
):
    b = make_server()
    ok(imp(b, exported, "team/app:v1"))
    assert get_manifest(b, "team/app", "v1").content == origin.app.manifest  # the server has it cached now
    only_multi = tmp_path / "multi"
    ok(exp(origin.srv, "team/multi:v2", only_multi))  # exported while A serves
    started = time.monotonic()
    ok(imp(b, only_multi, "team/app:v1"))  # one image in the layout: it becomes team/app:v1
    wait_for(lambda: get_manifest(b, "team/app", "v1").content == origin.multi.index, 2.5, "the server to see the tag")
    assert time.monotonic() - started < 5


# == 6. bad input ==========================================================================================


def test_bad_input_is_one_line_and_exit_1(origin: Origin, exported: Path, make_server: MakeServer, tmp_path: Path):
    b = make_server()
    random_file = tmp_path / "random.bin"
    random_file.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "truncated.tar.gz"
    ok(exp(origin.srv, "team/app:v1", tmp_path / "whole.tar.gz"))
    truncated.write_bytes((tmp_path / "whole.tar.gz").read_bytes()[:5000])
    untagged = tmp_path / "untagged"
    write_single_image(untagged, "v1")
    index = json.loads((untagged / "index.json").read_bytes())
    del index["manifests"][0]["annotations"]
    (untagged / "index.json").write_text(json.dumps(index))
    missing_blob = tmp_path / "missing-blob"
    img = write_single_image(missing_blob, "v1")
    blob_path(missing_blob, digest_of(img.config)).unlink()
    bad_index = tmp_path / "bad-index"
    shutil.copytree(untagged, bad_index)
    (bad_index / "index.json").write_text("{not json")
    docker_missing = tmp_path / "docker-missing.tar"
    _tar(docker_missing, {"manifest.json": b'[{"Config": "c.json", "RepoTags": ["a/b:v1"], "Layers": ["x/layer.tar"]}]',
                          "c.json": b"{}"})  # fmt: skip

    cases: list[tuple[tuple[object, ...], tuple[str, ...]]] = [
        ((tmp_path / "nope", "team/x"), ("no such file or directory",)),
        ((random_file, "team/x"), ("not an OCI image layout",)),
        ((empty, "team/x"), ("not an OCI image layout",)),
        ((truncated, "team/x"), ("corrupt or truncated",)),
        ((untagged, "team/x"), ("give REPOSITORY:TAG",)),
        ((untagged,), ("give REPOSITORY",)),
        ((missing_blob, "team/x"), (digest_of(img.config), "missing")),
        ((bad_index, "team/x:v1"), ("index.json",)),
        ((docker_missing,), ("x/layer.tar", "missing")),
        ((exported, "Team/X:v1"), ("repository name",)),
        ((exported, "team/x:v9"), ("no image is tagged v9",)),
    ]
    runs = concurrently([["import", "--data-dir", b.data_dir, *args] for args, _ in cases])
    for run, (_, needles) in zip(runs, cases, strict=True):
        failed(run, *needles)
    assert catalog(b) == [] and not [p for p in (b.data_dir / "blobs").rglob("*") if p.is_file()]

    not_layout = tmp_path / "not-layout"
    not_layout.mkdir()
    (not_layout / "keep.txt").write_text("mine")
    dest = tmp_path / "never"
    a = ["export", "--data-dir", origin.srv.data_dir]
    cases = [
        ((*a, "team/nope", dest), ("repository team/nope does not exist",)),
        ((*a, "team/app:v1", "team/app:nope", dest), ("team/app:nope",)),
        ((*a, "team/app:v1", not_layout), ("not an OCI image layout",)),
        ((*a, "team/app:v1", random_file), ("not a directory",)),
        ((*a, "team/app:v1", random_file / "sub"), ("Not a directory",)),
        ((*a, "team/App:v1", dest), ("repository name",)),
        (("export", "--data-dir", tmp_path / "no-data", "team/app", dest), ("holds no registry data",)),
    ]
    for run, (_, needles) in zip(concurrently([args for args, _ in cases]), cases, strict=True):
        failed(run, *needles)
    assert not dest.exists() and not (tmp_path / "no-data").exists()  # nothing partial, nothing created
    assert sorted(p.name for p in not_layout.iterdir()) == ["keep.txt"]
