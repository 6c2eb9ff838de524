"""JSON Schemas of every file and payload we write for SAE-Dashboard and Neuronpedia, and a validator.

The schemas (``schemas/*.schema.json``) state required fields, types and lengths; what JSON Schema
cannot say (``tokens`` and ``values`` of equal length, the qualifying index inside them) is checked
here too.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_NAMES = (
    "saedashboard_batch", "saedashboard_skipped", "saedashboard_extras", "np_activation", "np_explanation", "np_feature",
    "np_model", "np_release", "np_sourceset", "np_source", "upload_model_new",
    "upload_source_set_new", "upload_feature_batch",
)  # fmt: skip


@cache
def load_schema(name: str) -> dict[str, Any]:
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files("sae_lens_maira.dashboards").joinpath(f"schemas/{name}.schema.json")
    return json.loads(text.read_text())


@cache
def _validator(name: str):
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(obj: Any, name: str) -> None:
    """Raise ValueError listing what in ``obj`` breaks schema ``name`` (first five problems)."""
    errors = sorted(_validator(name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {_short(e)}" for e in errors]
    problems += _aligned(obj)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"{name} record does not match its schema: " + "; ".join(problems[:5]) + more
        )


def _short(error) -> str:
    """jsonschema's message, or (when it quotes a long instance) the rule that failed."""
    if len(error.message) <= 160:
        return error.message
    return f"fails {error.validator}={error.validator_value!r}"


def _aligned(obj: Any, path: str = "") -> list[str]:
    """tokens/values pairs of equal length, qualifying indices inside them (anywhere in obj)."""
    out = []
    if isinstance(obj, dict):
        if isinstance(obj.get("tokens"), list) and isinstance(obj.get("values"), list):
            n = len(obj["tokens"])
            if len(obj["values"]) != n:
                out.append(f"{path or '<root>'}: {n} tokens but {len(obj['values'])} values")
            for key in ("qualifying_token_index", "qualifyingTokenIndex", "maxValueTokenIndex"):
                if isinstance(obj.get(key), int) and not 0 <= obj[key] < n:
                    out.append(f"{path or '<root>'}: {key} {obj[key]} outside {n} tokens")
        for k, v in obj.items():
            out += _aligned(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _aligned(v, f"{path}/{i}")
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def validate_neuronpedia_export(directory: str | Path) -> dict[str, int]:
    """Validate every row of a Neuronpedia export folder; return the row count per kind."""
    d = Path(directory)
    counts: dict[str, int] = {}
    for fname, schema in (("model.jsonl", "np_model"), ("release.jsonl", "np_release"),
                          ("sourceset.jsonl", "np_sourceset"), ("source.jsonl", "np_source")):  # fmt: skip
        if not (d / fname).is_file():
            raise FileNotFoundError(f"{d} is not a Neuronpedia export: {fname} is missing")
        rows = read_jsonl(d / fname)
        for row in rows:
            validate(row, schema)
        counts[fname] = len(rows)
    for sub, schema in (("features", "np_feature"), ("activations", "np_activation"),
                        ("explanations", "np_explanation")):  # fmt: skip
        n = 0
        for path in sorted((d / sub).glob("batch-*.jsonl.gz")):
            for row in read_jsonl(path):
                validate(row, schema)
                n += 1
        counts[sub] = n
    return counts


def validate_saedashboard_dir(directory: str | Path) -> int:
    """Validate an SAE-Dashboard output folder (batches and their sidecars, aligned feature by
    feature and record by record); return the number of features."""
    d = Path(directory)
    validate(json.loads((d / "skipped_indexes.json").read_text()), "saedashboard_skipped")
    n = 0
    for path in sorted(d.glob("batch-*.json")):
        data = json.loads(path.read_text())
        validate(data, "saedashboard_batch")
        n += len(data["features"])
        side_path = d / ("extras-" + path.name.removeprefix("batch-"))
        if not side_path.is_file():
            continue  # a batch written by SAE-Dashboard itself has no sidecar
        side = json.loads(side_path.read_text())
        validate(side, "saedashboard_extras")
        shape = [(f["feature_index"], len(f["activations"])) for f in data["features"]]
        if side["batch"] != path.name or shape != [
            (f["feature_index"], len(f["activations"])) for f in side["features"]
        ]:
            raise ValueError(f"{side_path.name} does not line up with {path.name}: rewrite both")
        for feat, sf in zip(data["features"], side["features"], strict=True):
            for act, sa in zip(feat["activations"], sf["activations"], strict=True):
                if len(sa["roles"]) != len(act["tokens"]):
                    raise ValueError(
                        f"{side_path.name}: feature {feat['feature_index']} has "
                        f"{len(sa['roles'])} roles for {len(act['tokens'])} tokens"
                    )
                if sa["thumbnail"] and not (d / sa["thumbnail"]).is_file():
                    raise ValueError(f"{side_path.name}: {sa['thumbnail']} is missing")
    return n
