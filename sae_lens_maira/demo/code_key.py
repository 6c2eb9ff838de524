"""The package files a module's code reaches: its import closure, read with ``ast``.

The demo model's cache key must change when any code that trains it changes, also code outside
the folders it names (training's validation reads ``steering/fluency.py``). Module-level and
function-level imports count; a parent package's ``__init__`` is not followed (importing
``sae_lens_maira.x`` runs the package's ``__init__``, but that does not shape what ``x`` does).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "sae_lens_maira"


def module_file(root: Path, module: str) -> Path | None:
    """The source of ``sae_lens_maira.a.b`` under the package folder ``root``; None if none."""
    parts = module.split(".")[1:]
    path = root.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if parts and path.with_suffix(".py").is_file() else None


def _imports(root: Path, path: Path, module: str) -> list[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [target] + [f"{target}.{alias.name}" for alias in node.names]
    return [m for m in found if m.split(".")[0] == PACKAGE and module_file(root, m)]


def import_closure(root: Path, *modules: str) -> list[Path]:
    """Every package file that ``modules`` import, directly or not (sorted, themselves included)."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(root, module)
        if path is None:
            raise ValueError(f"{module} is not a module of the package at {root}")
        seen[module] = path
        todo += _imports(root, path, module)
    return sorted(set(seen.values()))
