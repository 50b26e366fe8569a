"""Print the import cycles among Moorage's modules, and among its folders.

Every module under registry/ and storage/ is parsed with `ast` (nothing is imported). An import anywhere in a
module counts, at the top or inside a function, except under `if TYPE_CHECKING:` (those never run). Two graphs:

- modules: `registry.service.ecr` -> `registry.proxy.rules`;
- folders: each sub-package (`registry/auth`, `registry/proxy`, `storage`, ...) is one node, and each module
  directly in `registry/` is its own node (`registry/config.py`), so `registry/auth` -> `registry/config.py`
  -> `registry/auth` is a cycle even when no two modules form one.

Every strongly connected component with more than one node is a cycle; for each, the edges that close it are
printed with the file and line of the import. Exit status 1 when there is any cycle.

    python tools/import_graph.py            # from the repository's root
    python tools/import_graph.py --graph    # also print every edge
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("registry", "storage")

Edge = tuple[str, str]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, top level or nested, skipping `if TYPE_CHECKING:` bodies (their `else:` runs)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The most specific known module `name` is, or is in (`registry.proxy.rules.match` -> registry.proxy.rules)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def module_edges(known: dict[str, Path]) -> dict[Edge, list[str]]:
    """(importer, imported) -> where (file:line), for imports of our own modules."""
    edges: dict[Edge, list[str]] = defaultdict(list)
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                # `from registry.proxy import rules` imports the module registry.proxy.rules
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for target in targets:
                resolved = _resolve(target, known)
                if resolved is not None and resolved != name and where not in edges[(name, resolved)]:
                    edges[(name, resolved)].append(where)
    return edges


def folder_of(module: str, known: dict[str, Path]) -> str:
    """A sub-package's folder (registry/auth, storage), or a module directly in registry/ (registry/config.py)."""
    path = known[module].relative_to(ROOT)
    if len(path.parts) == 2 and path.parts[0] == "registry":
        return path.as_posix()
    return path.parent.as_posix()


def folder_edges(edges: dict[Edge, list[str]], known: dict[str, Path]) -> dict[Edge, list[str]]:
    out: dict[Edge, list[str]] = defaultdict(list)
    for (a, b), where in edges.items():
        fa, fb = folder_of(a, known), folder_of(b, known)
        if fa != fb:
            out[(fa, fb)] += [f"{w} ({a} -> {b})" for w in where]
    return out


def components(edges: dict[Edge, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan's algorithm, iterative)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return sorted(found)


def report(title: str, edges: dict[Edge, list[str]]) -> int:
    cycles = components(edges)
    if not cycles:
        print(f"{title}: no cycles")
        return 0
    print(f"{title}: {len(cycles)} cycle(s)")
    for members in cycles:
        inside = set(members)
        print(f"  cycle among {', '.join(members)}:")
        for (a, b), where in sorted(edges.items()):
            if a in inside and b in inside:
                print(f"    {a} -> {b}")
                for w in where:
                    print(f"        {w}")
    return len(cycles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="also print every edge of both graphs")
    args = parser.parse_args(argv)
    known = modules()
    by_module = module_edges(known)
    by_folder = folder_edges(by_module, known)
    if args.graph:
        for title, edges in (("modules", by_module), ("folders", by_folder)):
            print(f"{title}:")
            for a, b in sorted(edges):
                print(f"  {a} -> {b}")
    found = report("modules", by_module) + report("folders", by_folder)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
