"""The code's shape, read from the source with `ast` (nothing is imported): modules stay small, nothing imports in
a circle (module to module, or folder to folder), `storage` never imports `registry`, and only the HTTP layer
uses aiohttp's server."""

from __future__ import annotations

import ast
import collections
import itertools
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("registry", "storage")
MAX_LINES = 650
# Where aiohttp's server (aiohttp.web and its web_* modules) may be imported: the HTTP layer, and the module
# that builds the application from it.
AIOHTTP_WEB_ALLOWED = ("registry/web/", "registry/app.py")


@dataclass(frozen=True)
class Module:
    name: str  # "registry.web.auth"; a package's __init__ is the package's name ("registry.web")
    path: Path
    is_package: bool

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def package(self) -> str:
        """The package the module is in (a package's __init__ is in the package itself)."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    module: Module  # the importing module
    target: str  # the absolute name imported ("registry.errors", "aiohttp.web")
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:` (no run-time import)


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name, path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement anywhere in the module (top level, functions, classes, try blocks), and whether it
    is under `if TYPE_CHECKING:` (its `else:` runs)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _import_nodes_of(child, True)
            for child in node.orelse:
                yield from _import_nodes_of(child, type_checking)
        else:
            yield from _import_nodes_of(node, type_checking)


def _import_nodes_of(node: ast.AST, type_checking: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_checking
    yield from _import_nodes(node, type_checking)


@cache
def imports(name: str) -> tuple[Import, ...]:
    module = modules()[name]
    return read_imports(module, module.path.read_text(encoding="utf-8"), modules().keys())


def read_imports(module: Module, source: str, known: Set[str]) -> tuple[Import, ...]:
    """What `module` imports, relative imports resolved. `from package import name` imports the module
    `package.name` when there is one (in `known`, for packages of ours), else `package` itself."""
    tree = ast.parse(source, str(module.path))
    out: list[Import] = []
    for node, type_checking in _import_nodes(tree):
        targets: list[str]
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.package.split(".")
                assert node.level - 1 < len(base), f"{module.rel}:{node.lineno}: relative import beyond the top"
                base = base[: len(base) - (node.level - 1)]
                package = ".".join([*base, node.module] if node.module else base)
            else:
                package = node.module or ""
            ours = package.split(".")[0] in PACKAGES
            targets = [
                f"{package}.{alias.name}" if not ours or f"{package}.{alias.name}" in known else package
                for alias in node.names
            ]
        out += [Import(module, target, node.lineno, type_checking) for target in targets]
    for attr in ast.walk(tree):  # `import aiohttp`, then `aiohttp.web.Request`
        if isinstance(attr, ast.Attribute) and isinstance(attr.value, ast.Name) and attr.value.id == "aiohttp":
            out.append(Import(module, f"aiohttp.{attr.attr}", attr.lineno, False))
    return tuple(out)


def _ours(target: str) -> str | None:
    """The module of ours that importing `target` names (the longest known prefix), or None."""
    while target and target not in modules():
        target = target.rpartition(".")[0]
    return target or None


# -- sizes -------------------------------------------------------------------------------------------------


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {m.rel: len(m.path.read_text(encoding="utf-8").splitlines()) for m in modules().values()}
    over = sorted(((n, rel) for rel, n in sizes.items() if n > MAX_LINES), reverse=True)
    if over:
        pytest.fail(f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(f"  {rel}: {n}" for n, rel in over))


# -- import cycles -----------------------------------------------------------------------------------------

Edges = Mapping[str, Mapping[str, list[Import]]]  # importer -> imported -> the imports that make the edge


def module_graph() -> Edges:
    """Module -> modules it imports at run time (anywhere in it; not under TYPE_CHECKING)."""
    graph: dict[str, dict[str, list[Import]]] = {name: {} for name in modules()}
    for name in modules():
        for imp in imports(name):
            target = _ours(imp.target)
            if target is not None and target != name and not imp.type_checking:
                graph[name].setdefault(target, []).append(imp)
    return graph


def folder(name: str) -> str:
    """A module's folder: its package ("registry.proxy"). The modules directly in a top-level package
    (`registry/`, `storage/`) are each a folder of their own ("registry.config", "storage.factory"): such a
    package holds both the entry points that import every folder (app, cli, factory) and the leaves that every
    folder imports (errors, oci, records), so as one node it would close a cycle with every folder by
    construction and hide the cycles worth cutting."""
    module = modules()[name]
    package = module.package
    return name if package in ("registry", "storage") and not module.is_package else package


def folder_graph() -> Edges:
    """Folder -> folders it imports: an edge for each module edge that crosses folders. (A module importing its
    own package's __init__ stays in its folder, so makes no edge.)"""
    graph: dict[str, dict[str, list[Import]]] = {folder(name): {} for name in modules()}
    for source, targets in module_graph().items():
        for target, imps in targets.items():
            if modules()[target].is_package and modules()[source].package == target:
                continue
            if folder(source) != folder(target):
                graph[folder(source)].setdefault(folder(target), []).extend(imps)
    return graph


def strongly_connected(graph: Edges) -> list[list[str]]:
    """The components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def shortest_cycle(graph: Edges, start: str, within: Set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in within:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


def describe_cycles(graph: Edges) -> str:
    lines: list[str] = []
    for component in strongly_connected(graph):
        lines.append(f"cycle among {', '.join(component)}:")
        # one shortest cycle through each member, without repeating the same cycle
        seen: set[tuple[str, ...]] = set()
        for member in component:
            cycle = shortest_cycle(graph, member, set(component))
            rotation = cycle[:-1].index(min(cycle[:-1]))
            key = tuple(cycle[rotation:-1] + cycle[:rotation])
            if key in seen:
                continue
            seen.add(key)
            lines.append("  " + " -> ".join(cycle))
            for source, target in itertools.pairwise(cycle):
                lines.append(f"    {source} -> {target}: " + "; ".join(_where(graph[source][target])))
    return "\n".join(lines)


def _where(imps: Iterable[Import]) -> list[str]:
    return sorted({f"{imp.module.rel}:{imp.line} imports {imp.target}" for imp in imps})


def test_no_import_cycle_between_modules() -> None:
    cycles = describe_cycles(module_graph())
    if cycles:
        pytest.fail("modules import each other in a circle (TYPE_CHECKING imports don't count):\n" + cycles)


def test_no_import_cycle_between_folders() -> None:
    cycles = describe_cycles(folder_graph())
    if cycles:
        pytest.fail("folders import each other in a circle:\n" + cycles)


# -- who may import what -----------------------------------------------------------------------------------


def test_storage_never_imports_registry() -> None:
    found = [
        f"{imp.module.rel}:{imp.line} imports {imp.target}"
        for name in modules()
        if name.split(".")[0] == "storage"
        for imp in imports(name)
        if imp.target.split(".")[0] == "registry"
    ]
    if found:
        pytest.fail(
            "storage/ imports registry (even for types: the dependency runs the other way):\n" + "\n".join(found)
        )


def _is_aiohttp_web(target: str) -> bool:
    parts = target.split(".")
    return parts[0] == "aiohttp" and len(parts) > 1 and (parts[1] == "web" or parts[1].startswith("web_"))


def test_only_the_http_layer_imports_aiohttp_web() -> None:
    found = sorted(
        {
            f"{imp.module.rel}:{imp.line} imports {imp.target}"
            for name, module in modules().items()
            if not module.rel.startswith(AIOHTTP_WEB_ALLOWED)
            for imp in imports(name)
            if _is_aiohttp_web(imp.target)
        }
    )
    if found:
        pytest.fail(f"aiohttp's server used outside {', '.join(AIOHTTP_WEB_ALLOWED)}:\n" + "\n".join(found))


# -- the checks check --------------------------------------------------------------------------------------


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
import os.path
from typing import TYPE_CHECKING
import registry.errors as errors
from registry import jobs, __version__
from . import auth
from .. import glob
from ..proxy.rules import Rule
from aiohttp import web
import aiohttp

if TYPE_CHECKING:
    from registry.app import App
else:
    from registry import oci

def f():
    from storage import base
    return aiohttp.web_request

class C:
    try:
        import registry.logs
    except ImportError:
        pass
"""
    known = {"registry", "registry.errors", "registry.jobs", "registry.web", "registry.web.auth", "registry.glob"}
    known |= {"registry.proxy.rules", "registry.app", "registry.oci", "storage", "storage.base", "registry.logs"}
    module = Module("registry.web.fake", ROOT / "registry" / "web" / "fake.py", is_package=False)
    found = {(imp.target, imp.type_checking) for imp in read_imports(module, source, known)}
    assert found == {
        ("__future__.annotations", False),
        ("os.path", False),
        ("typing.TYPE_CHECKING", False),
        ("registry.errors", False),
        ("registry.jobs", False),
        ("registry", False),  # __version__: a name in registry/__init__.py
        ("registry.web.auth", False),
        ("registry.glob", False),
        ("registry.proxy.rules", False),
        ("aiohttp.web", False),
        ("aiohttp", False),
        ("registry.app", True),
        ("registry.oci", False),
        ("storage.base", False),
        ("aiohttp.web_request", False),
        ("registry.logs", False),
    }
    package = Module("registry.web", ROOT / "registry" / "web" / "__init__.py", is_package=True)
    assert {imp.target for imp in read_imports(package, "from . import auth\nfrom .. import glob", known)} == {
        "registry.web.auth",
        "registry.glob",
    }
    assert _is_aiohttp_web("aiohttp.web") and _is_aiohttp_web("aiohttp.web_protocol")
    assert not _is_aiohttp_web("aiohttp") and not _is_aiohttp_web("aiohttp.abc")


def test_cycle_finder() -> None:
    def graph(edges: dict[str, str]) -> Edges:
        nodes = {n for edge in edges.items() for n in edge}
        return {n: {t: [] for s, t in edges.items() if s == n} for n in nodes}

    assert strongly_connected(graph({"a": "b", "b": "c"})) == []
    cyclic = graph({"a": "b", "b": "c", "c": "a", "d": "a"})
    assert strongly_connected(cyclic) == [["a", "b", "c"]]
    assert shortest_cycle(cyclic, "b", {"a", "b", "c"}) == ["b", "c", "a", "b"]
