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
    "_rotary_base", "init_kwargs", "_forward_hooks", "_backward_hooks", "_forward_pre_hooks",
    "_version", "_buffers", "_parameters", "_modules",
}  # fmt: skip
#: attributes of upstream objects we must not assign to outside compat
ASSIGNED = {"__class__", "evaluator", "save_checkpoint", "save_final_sae", "get_data_loader",
            "get_pretrained_saes_directory", "run_trainer_with_interruption_handling",
            "activations_store"}  # fmt: skip
#: methods of upstream base classes we must not override outside compat
OVERRIDDEN = {"_apply"}


def violations(source: str, where: str) -> list[str]:
    tree = ast.parse(source, where)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_NAMES:
            out.append(f"{where}:{node.lineno} uses .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.startswith("transformers.models."):
                out.append(f"{where}:{node.lineno} imports from {module} (use transformers' top level)")
            for alias in node.names:
                if alias.name in INTERNAL_NAMES:
                    out.append(f"{where}:{node.lineno} imports {alias.name}")
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
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "t._version\nm.__class__ = B\nsetattr(r, 'save_checkpoint', 1)\nsetattr(r, 'x', 1)\n"
        "class A:\n    def _apply(self, fn):\n        pass\n"
    )
    found = violations(source, "probe.py")
    assert len(found) == 6, found


def test_no_upstream_internal_outside_compat() -> None:
    found = [
        v
        for path in sorted(PACKAGE.rglob("*.py"))
        if COMPAT not in path.parents
        for v in violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert not found, "move these into sae_lens_maira/compat/:\n" + "\n".join(found)
