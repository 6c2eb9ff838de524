"""No module outside ``sae_lens_maira/compat/`` uses an upstream internal (read with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sae_lens_maira"
COMPAT = PACKAGE / "compat"

#: attributes / names that are upstream internals (compat holds their one use each)
INTERNAL_NAMES = {
    "_consolidate_shards", "SAE_CLASS_REGISTRY", "SAE_TRAINING_CLASS_REGISTRY",
    "NAMED_PRETRAINED_SAE_LOADERS", "NAMED_PRETRAINED_SAE_CONFIG_GETTERS",
    "_iterate_tokenized_sequences", "_rotary_base", "init_kwargs", "_forward_hooks",
    "_backward_hooks", "_forward_pre_hooks", "_version", "_buffers", "_parameters", "_modules",
}  # fmt: skip
#: attributes of upstream objects we must not assign to outside compat
ASSIGNED = {"__class__", "evaluator", "save_checkpoint", "save_final_sae", "get_data_loader",
            "get_pretrained_saes_directory", "run_trainer_with_interruption_handling",
            "activations_store", "iterable_sequences"}  # fmt: skip
#: methods of upstream base classes we must not override outside compat
OVERRIDDEN = {"_apply"}
#: upstreams whose submodules are not imported outside compat (their top level exports all we use)
TOP_LEVEL_ONLY = ("transformers",)
#: private-looking modules that are not an upstream's internals: typeshed's stub-only helpers
#: (imported under ``TYPE_CHECKING``, never at run time)
NOT_INTERNAL_MODULES = {"_typeshed"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_names(trees: list[ast.Module]) -> set[str]:
    """Every name the package itself defines or binds (functions, classes, attributes it
    assigns, import aliases): a private attribute outside this set is an upstream's."""
    out: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                out.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                out.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                out.add(node.attr)
            elif isinstance(node, ast.arg):
                out.add(node.arg)
            elif isinstance(node, ast.alias):
                out.add(node.asname or node.name.split(".")[-1])
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setattr"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                out.add(str(node.args[1].value))
    return out


def violations(source: str, where: str, own: set[str] | None = None) -> list[str]:
    """What in ``source`` uses an upstream internal; ``own``: the package's own names (a private
    attribute not among them is an upstream's; ``None`` skips that check)."""
    tree = ast.parse(source, where)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_NAMES:
            out.append(f"{where}:{node.lineno} uses .{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and own is not None
            and is_private(node.attr)
            and node.attr not in own
        ):
            out.append(f"{where}:{node.lineno} uses .{node.attr}, a private name of an upstream")
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            parts = module.split(".")
            if parts[0] in TOP_LEVEL_ONLY and len(parts) > 1:
                out.append(f"{where}:{node.lineno} imports from {module} (use {parts[0]}' top level)")
            elif (
                parts[0] not in ("sae_lens_maira", *NOT_INTERNAL_MODULES)
                and any(is_private(p) for p in parts)
            ):
                out.append(f"{where}:{node.lineno} imports from the private module {module}")
            for alias in node.names:
                if alias.name in INTERNAL_NAMES:
                    out.append(f"{where}:{node.lineno} imports {alias.name}")
                elif parts[0] not in ("sae_lens_maira", *NOT_INTERNAL_MODULES) and is_private(
                    alias.name
                ):
                    out.append(f"{where}:{node.lineno} imports the private {alias.name} from {module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in TOP_LEVEL_ONLY and len(parts) > 1:
                    out.append(f"{where}:{node.lineno} imports {alias.name} (use {parts[0]}' top level)")
                elif parts[0] not in ("sae_lens_maira", *NOT_INTERNAL_MODULES) and any(
                    is_private(p) for p in parts
                ):
                    out.append(f"{where}:{node.lineno} imports the private module {alias.name}")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in ASSIGNED:
                    out.append(f"{where}:{node.lineno} assigns .{target.attr}")
        elif isinstance(node, ast.FunctionDef) and node.name in OVERRIDDEN:
            out.append(f"{where}:{node.lineno} overrides {node.name}")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "setattr"
            and len(node.args) > 1
            and getattr(node.args[1], "value", None) in ASSIGNED
        ):
            out.append(f"{where}:{node.lineno} sets .{node.args[1].value} with setattr")
    return out


def test_the_checker_finds_each_kind_of_use() -> None:
    source = (
        "from transformers.models.bit import X\n"
        "from transformers.image_processing_utils import Y\n"
        "import transformers.utils\n"
        "from sae_lens.training._interruption import Z\n"
        "from torch.nn.modules.module import _global_forward_hooks\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "t._version\nm.__class__ = B\nsetattr(r, 'save_checkpoint', 1)\nsetattr(r, 'x', 1)\n"
        "store.iterable_sequences = store._iterate_tokenized_sequences()\n"
        "class A:\n    def _apply(self, fn):\n        pass\n"
        "self._mine = 1\nother._mine\nother._theirs\nother.__dict__\n"
        "from sae_lens_maira.saes import _complete\n"
        "import transformers\nfrom transformers import AutoTokenizer\n"
        "from _typeshed import DataclassInstance\n"
    )
    found = violations(source, "probe.py", own={"_mine"})
    assert len(found) == 13, "\n".join(found)
    assert sum("_theirs" in v for v in found) == 1 and not any("_mine" in v for v in found)
    assert not any(n in v for v in found for n in ("_complete", "AutoTokenizer", "_typeshed"))


def test_no_upstream_internal_outside_compat() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    own = own_names([ast.parse(p.read_text(), str(p)) for p in paths])
    found = [
        v
        for path in paths
        if COMPAT not in path.parents
        for v in violations(path.read_text(), str(path.relative_to(PACKAGE.parent)), own)
    ]
    assert not found, "move these into sae_lens_maira/compat/:\n" + "\n".join(found)
