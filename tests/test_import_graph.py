"""The package's import graph: no cycles between its parts, and ``demo`` used only by the CLI.

Imports are read with ``ast`` from every module, at any depth (function-level and
``TYPE_CHECKING`` imports count: a cycle hidden inside a function is still a cycle). A *part* is a
subpackage (``model``, ``processing``, ...) or a top-level module (``registration``, ``cli``, ...);
the package's ``__init__`` is the part ``<root>``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sae_lens_maira"
ROOT = "<root>"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _imported(node: ast.AST, package: str, modules: dict) -> list[str]:
    """The package modules an import statement loads (``from x import y`` is ``x.y`` when that is
    a module, else ``x``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [
            f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
            for a in node.names
        ]
    else:
        return []
    out = []
    for name in names:
        if name.split(".")[0] != PACKAGE.name:
            continue
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing part, imported part) -> the imports behind that edge, as ``file:line``."""
    modules = _modules()
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, (path, is_package) in sorted(modules.items()):
        package = module if is_package else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, package, modules):
                if _part(target) != _part(module):
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}"
                    edges[(_part(module), _part(target))].append(where)
    return edges


def find_cycle(edges: dict[tuple[str, str], list[str]]) -> list[str] | None:
    """One cycle of parts ``[a, b, ..., a]``, or None (depth-first search)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_reader_sees_function_level_imports() -> None:
    edges = import_edges()
    # cli imports its commands inside functions; they must show up
    assert ("cli", "demo") in edges
    assert any("sae_lens_maira/cli.py" in where for where in edges[("cli", "demo")])


def test_a_cycle_is_found_and_named() -> None:
    edges = {("a", "b"): ["x"], ("b", "c"): ["y"], ("c", "a"): ["z"], ("c", "d"): ["w"]}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"): ["x"], ("b", "c"): ["y"]}) is None


def test_no_import_cycle_between_parts_of_the_package() -> None:
    edges = import_edges()
    cycle = find_cycle(edges)
    if cycle:
        lines = [f"{a} -> {b}: " + "; ".join(edges[(a, b)]) for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle " + " -> ".join(cycle) + "\n" + "\n".join(lines))


def test_demo_is_imported_only_by_the_cli() -> None:
    edges = import_edges()
    others = [w for (a, b), where in edges.items() if b == "demo" and a != "cli" for w in where]
    assert not others, "only cli.py may import sae_lens_maira.demo:\n" + "\n".join(others)


def test_registration_alone_writes_sae_lens_registries() -> None:
    """saes/ and loading/ define what is registered; registration.py imports them, never back."""
    edges = import_edges()
    back = edges.get(("saes", "registration"), []) + edges.get(("loading", "registration"), [])
    assert not back, "\n".join(back)
