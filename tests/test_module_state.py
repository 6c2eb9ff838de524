"""No module-level mutable state that two models or SAEs in one process would share.

Read with ``ast``: a module-level name bound to a mutable container (a dict, list or set literal
or comprehension, or a call of a mutable container type) that any function of the package
mutates (a mutating method, an item or slice assignment or deletion, an augmented assignment),
and any name a function rebinds through ``global``, is process-wide state. So is a module-level
function cache (``functools.lru_cache`` / ``cache``). Each one the package keeps is listed in
:data:`ALLOWED` with the reason it cannot leak between models or SAEs; anything else fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sae_lens_maira"

MUTABLE_CALLS = {
    "dict", "list", "set", "bytearray", "OrderedDict", "defaultdict", "deque", "Counter",
    "WeakKeyDictionary", "WeakValueDictionary", "WeakSet", "ChainMap",
}  # fmt: skip
MUTATING_METHODS = {
    "append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault",
    "add", "discard", "sort", "reverse", "move_to_end", "appendleft", "extendleft", "popleft",
    "__setitem__", "__delitem__", "intersection_update", "difference_update",
    "symmetric_difference_update",
}  # fmt: skip
CACHE_DECORATORS = {"lru_cache", "cache"}

#: "module:name" -> why it is not state shared between models or SAEs
ALLOWED: dict[str, str] = {
    "sae_lens_maira.dashboards.schemas:load_schema": (
        "the package's own JSON schema files, read once; only _validator reads the dicts"
    ),
    "sae_lens_maira.dashboards.schemas:_validator": "a validator per schema file (stateless)",
    "sae_lens_maira.kernels.gather:gather_ops": (
        "one immutable OpsBackend (closures over the backend name) per sparse backend"
    ),
    "sae_lens_maira.kernels.layout:small_constant": (
        "read-only constant tensors keyed by their values, dtype and device: equal for every SAE"
    ),
    "sae_lens_maira.processing.tokenizer:_preset_tokenizer_state": (
        "the small preset tokenizer's files as one string; every call builds a fresh tokenizer"
    ),
    "sae_lens_maira.kernels.dispatch:_logged": (
        "which backend choices were logged already: logs each once per process, decides nothing"
    ),
    "sae_lens_maira.registration:_registering": (
        "re-entrancy guard, True only while register() runs (importing our packages calls back)"
    ),
}


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return None


def _is_mutable(value: ast.AST | None) -> bool:
    return isinstance(
        value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp
    ) or (_call_name(value) in MUTABLE_CALLS if value is not None else False)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def containers_bound_in(body: list[ast.stmt]) -> set[str]:
    """Names a statement list binds to a mutable container (plain or annotated assignment)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.Assign) and _is_mutable(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and _is_mutable(node.value)
        ):
            names.add(node.target.id)
    return names


def module_level_containers(tree: ast.Module) -> set[str]:
    return containers_bound_in(tree.body)


def class_level_containers(tree: ast.Module) -> set[str]:
    """Mutable containers bound in a class body (shared by every instance of the class)."""
    names: set[str] = set()
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            names |= containers_bound_in(cls.body)
    return names


def module_level_caches(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                if name in CACHE_DECORATORS:
                    out.add(node.name)
    return out


def _base_name(node: ast.AST) -> str | None:
    """``X`` of ``X``, ``X[...]`` and ``module.X`` (the name a mutation reaches)."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr
    return None


def mutated_names(tree: ast.Module) -> dict[str, int]:
    """Names mutated inside functions (first line), and names rebound through ``global``."""
    out: dict[str, int] = {}
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        for node in ast.walk(func):
            found: list[str | None] = []
            if isinstance(node, ast.Global):
                found += node.names
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in MUTATING_METHODS
            ):
                found.append(_base_name(node.func.value))
            elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
                targets = (
                    node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
                )
                for t in targets:
                    if isinstance(t, ast.Subscript) or isinstance(node, ast.AugAssign):
                        found.append(_base_name(t))
            for name in found:
                if name is not None:
                    out.setdefault(name, node.lineno)
    return out


def process_wide_state() -> dict[str, str]:
    """"module:name" -> what makes it process-wide state, over the whole package."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}
    mutated: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for name, line in mutated_names(tree).items():
            mutated.setdefault(name, []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    out = {}
    for path, tree in trees.items():
        module = _module_name(path)
        for name in module_level_containers(tree):
            if name in mutated:
                out[f"{module}:{name}"] = "mutated at " + ", ".join(mutated[name])
        for name in class_level_containers(tree):
            if name in mutated:
                out[f"{module}:<class>.{name}"] = "class attribute, mutated at " + ", ".join(
                    mutated[name]
                )
        for name in module_level_caches(tree):
            out[f"{module}:{name}"] = "a module-level function cache"
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                for name in node.names:
                    out[f"{module}:{name}"] = f"rebound through global at line {node.lineno}"
    return out


def test_the_scan_finds_each_kind_of_state(tmp_path) -> None:
    tree = ast.parse(
        "import functools\nfrom collections import OrderedDict\n"
        "A = {}\nB = []\nC = OrderedDict()\nD: set[int] = set()\nE = {}\nF = (1, 2)\nG = 0\n"
        "def f(x):\n    A[x] = 1\n    B.append(x)\n    del C[x]\n    D.add(x)\n"
        "    global G\n    G = x\n    local = {}\n    local[x] = 1\n"
        "@functools.lru_cache(maxsize=1)\ndef g():\n    return 1\n"
    )
    containers = module_level_containers(tree)
    assert containers == {"A", "B", "C", "D", "E"}
    assert {"A", "B", "C", "D", "G"} <= set(mutated_names(tree)) and "E" not in mutated_names(tree)
    assert module_level_caches(tree) == {"g"}
    shared = ast.parse("class K:\n    seen: list[int] = []\n    n = 0\n    t = ()\n")
    assert class_level_containers(shared) == {"seen"}


def test_no_new_module_level_mutable_state() -> None:
    found = process_wide_state()
    new = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not new, (
        "module-level mutable state shared by every model / SAE in the process; keep it on the "
        "object that owns it, or add it to ALLOWED with the reason it cannot leak:\n"
        + "\n".join(f"{k}: {v}" for k, v in sorted(new.items()))
    )
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"ALLOWED lists state that is gone: {stale}"
