"""What Neuronpedia's routes and importer accept, checked here so nothing is sent that would fail.

The facts come from Neuronpedia's code (see ``shared/reference/neuronpedia.md``): the yup schemas of
``model/new``, ``source-set/new`` and ``feature/upload-batch``, the registered explanation types and
explanation models (a name the server has not registered makes the route throw: an opaque 500), the
body limit of its hosting (4.5 MB, HTTP 413) and the importer's creator id.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

# the seeded 'bot' user: default creator of Neuronpedia's own uploads, DEFAULT_CREATOR_ID's fallback
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
EXPLANATION_TYPES = (
    "oai_token-act-pair", "oai_attention-head", "np_max-act-logits", "np_max-act",
    "np_acts-logits-general", "python-code", "eleuther_acts_top20",
)  # fmt: skip
EXPLANATION_MODELS = (
    "gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano", "gpt-5-mini-2025-08-07", "gpt-5-nano-2025-08-07",
    "gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-2.5-flash", "gemini-2.5-flash-lite",
    "openai/gpt-oss-120b", "google/gemini-2.5-flash-lite",
)  # fmt: skip
# our explainer shows top-activating contexts (and logits): Neuronpedia's max-activation method
DEFAULT_EXPLANATION_TYPE = "np_max-act-logits"
MAX_BODY_BYTES = 4_500_000  # the hosting's request limit (413 above it)
DEFAULT_MAX_BODY_BYTES = 4_000_000  # what we plan batches to (headers and rounding margin)
MAX_FEATURES_PER_BATCH = 128
MAX_TOKENS = 1024
MAX_LOGITS = 20
MAX_EXPLANATION_CHARS = 512
MAX_FEATURE_INDEX = 10_000_000
MAX_QUANTILE = 99_999_999
EMPTY_TOKEN = "<empty>"  # the routes refuse "" as a token (yup string().required())

_MODEL_ID = re.compile(r"^[a-z][a-z0-9.-]*[a-z0-9]$|^[a-z]$")
_SOURCE_SET = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$")
_CUID_ISH = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NeuronpediaRuleError(ValueError):
    """A value Neuronpedia would refuse (or choke on); the message names the rule and the fix."""


def check_model_id(model_id: str) -> str:
    """``model/new``'s id rule: 2..32 chars, lowercase letters, digits, '-', '.'; no '--' or '..'."""
    ok = (
        isinstance(model_id, str) and 1 <= len(model_id) <= 32 and bool(_MODEL_ID.match(model_id))
        and "--" not in model_id and ".." not in model_id
    )  # fmt: skip
    if not ok:
        raise NeuronpediaRuleError(
            f"model id {model_id!r} is not one Neuronpedia accepts: at most 32 characters, lowercase "
            "letters, digits, '-' and '.', starting with a letter, not ending with '-' or '.', no "
            "'--' or '..' (e.g. 'maira-2'); set meta.model_id in the statistics"
        )
    return model_id


def check_source_set(name: str) -> str:
    """``source-set/new``'s name rule: lowercase letters, digits and single '-'; not 'neurons'."""
    ok = (
        isinstance(name, str) and bool(_SOURCE_SET.match(name)) and "--" not in name
        and name != "neurons"
    )  # fmt: skip
    if not ok:
        raise NeuronpediaRuleError(
            f"source set name {name!r} is not one Neuronpedia accepts: lowercase letters, digits "
            "and single hyphens, starting with a letter, not ending with '-', not 'neurons' "
            "(e.g. 'res-mat'); set meta.source_set in the statistics"
        )
    return name


def check_layer(layer: Any, n_layers: int | None = None) -> int:
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise NeuronpediaRuleError(f"layer {layer!r} must be a non-negative integer")
    if n_layers is not None and not layer < n_layers <= 127:
        raise NeuronpediaRuleError(
            f"layer {layer} does not fit a model of {n_layers} layers (Neuronpedia allows 1..127 "
            "layers and creates one source per layer); pass the model's real layer count"
        )
    return layer


def check_creator_id(creator: str) -> str:
    if not isinstance(creator, str) or not _CUID_ISH.match(creator):
        raise NeuronpediaRuleError(
            f"creator id {creator!r} is not a Neuronpedia user id (e.g. {DEFAULT_CREATOR_ID!r}, the "
            "default); the importer needs an existing User id, not a name"
        )
    return creator


def safe_name(name: str, what: str) -> str:
    """A single folder-name component built from metadata: no separators, no '..', no control."""
    bad = (
        not isinstance(name, str) or not name or name in (".", "..") or ".." in name
        or any(c in name for c in "/\\:\0") or any(ord(c) < 32 for c in name)
    )  # fmt: skip
    if bad:
        raise NeuronpediaRuleError(
            f"{what} {name!r} cannot be a folder name (path separators, '..' or control "
            "characters); fix it in the statistics' stats.json"
        )
    return name


def _closest(name: str, choices: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def check_explanation_type(name: str) -> str:
    if name not in EXPLANATION_TYPES:
        raise NeuronpediaRuleError(
            f"explanation method {name!r} is not registered on Neuronpedia{_closest(name, EXPLANATION_TYPES)}: "
            f"the upload would fail with an opaque 500; use one of {', '.join(EXPLANATION_TYPES)}"
        )
    return name


def check_explanation_model(name: str) -> str:
    if name not in EXPLANATION_MODELS:
        raise NeuronpediaRuleError(
            f"explanation model {name!r} is not registered on Neuronpedia"
            f"{_closest(name, EXPLANATION_MODELS)}: use one of {', '.join(EXPLANATION_MODELS)} "
            "(--explanation-model, if your explanations were written by it), or keep explanations "
            "local: `dashboards export` without --explanations, `dashboards upload --no-explanations`"
        )
    return name


def upload_token(token: str) -> str:
    return token if token else EMPTY_TOKEN


def check_upload_batch(body: dict[str, Any]) -> None:
    """The checks ``feature/upload-batch`` makes (schema, then its thrown errors), in one pass.

    Raises :class:`NeuronpediaRuleError` naming the first few problems.
    """
    problems: list[str] = []
    add = problems.append
    if not isinstance(body.get("modelId"), str) or not body["modelId"]:
        add("modelId must be a non-empty string")
    if not isinstance(body.get("source"), str) or not body["source"]:
        add("source must be a non-empty string")
    feats = body.get("features")
    if not isinstance(feats, list) or not 1 <= len(feats) <= MAX_FEATURES_PER_BATCH:
        add(f"features must be a list of 1..{MAX_FEATURES_PER_BATCH}")
        feats = []
    seen: set[object] = set()  # the indices so far (None for a feature that is not a dict)
    for f in feats:
        _check_feature(f, add)
        if isinstance(f, dict) and f.get("index") in seen:
            add(f"feature {f.get('index')}: index appears twice in the batch")
        seen.add(f.get("index") if isinstance(f, dict) else None)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise NeuronpediaRuleError(
            "feature/upload-batch would be refused: " + "; ".join(problems[:5]) + more
        )


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_feature(f: Any, add) -> None:
    if not isinstance(f, dict):
        return add("a feature is not an object")
    i = f.get("index")
    where = f"feature {i}"
    if not isinstance(i, int) or not 0 <= i <= MAX_FEATURE_INDEX:
        add(f"{where}: index must be an integer in 0..{MAX_FEATURE_INDEX}")
    if "density" in f and not (_num(f["density"]) and 0 <= f["density"] <= 1):
        add(f"{where}: density must be in 0..1")
    for key in ("topLogits", "bottomLogits"):
        logits = f.get(key) or []
        if len(logits) > MAX_LOGITS:
            add(f"{where}: {key} has {len(logits)} entries (at most {MAX_LOGITS})")
        for lg in logits:
            if not (isinstance(lg.get("token"), str) and lg["token"]) or not _num(lg.get("value")):
                add(f"{where}: {key} entries need a non-empty token and a number")
                break
    for e in f.get("explanations") or []:
        text = e.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_EXPLANATION_CHARS:
            add(f"{where}: explanation text must be 1..{MAX_EXPLANATION_CHARS} characters")
        for key, known in (("methodName", EXPLANATION_TYPES), ("modelName", EXPLANATION_MODELS)):
            if e.get(key) is not None and e[key] not in known:
                add(f"{where}: {key} {e[key]!r} is not registered (use one of {', '.join(known)})")
    acts = f.get("activations")
    if not isinstance(acts, list) or not acts:
        return add(f"{where}: needs at least one activation record")
    for a in acts:
        tokens, values = a.get("tokens"), a.get("values")
        if not isinstance(tokens, list) or not 1 <= len(tokens) <= MAX_TOKENS:
            add(f"{where}: an activation has {len(tokens or [])} tokens (1..{MAX_TOKENS})")
        elif not all(isinstance(t, str) and t for t in tokens):
            add(f"{where}: an activation has an empty or non-string token")
        if not isinstance(values, list) or not all(_num(v) for v in values):
            add(f"{where}: activation values must be finite numbers")
        elif isinstance(tokens, list) and len(values) != len(tokens):
            add(f"{where}: an activation has {len(tokens)} tokens but {len(values)} values")
        for key in ("quantileMin", "quantileMax"):
            if a.get(key) is not None and not (_num(a[key]) and a[key] <= MAX_QUANTILE):
                add(f"{where}: {key} must be a number <= {MAX_QUANTILE}")
        q = a.get("quantileFraction")
        if q is not None and not (_num(q) and 0 <= q <= 1):
            add(f"{where}: quantileFraction must be in 0..1")
