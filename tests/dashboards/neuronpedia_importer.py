"""An in-memory replay of Neuronpedia's importer, to check our export rows against its rules offline.

From Neuronpedia (github.com/hijohnnylin/neuronpedia, commit ebb8426):
- ``apps/webapp/app/api/admin/import/route.ts``: release (errors only logged), model, source set and
  source rows through ``prisma.<table>.create({data: line})`` (skipped when the key exists), then
  every ``features/*.jsonl.gz``, ``activations/*.jsonl.gz``, ``explanations/*.jsonl.gz`` (S3 key
  order) through ``importJsonlString``;
- ``apps/webapp/lib/db/import.ts`` ``importJsonlString``: the columns are the FIRST line's keys that
  name a column (other keys dropped), rows go through ``jsonb_to_recordset`` (a key missing from a
  row is NULL; NULL in a NOT NULL column fails even where the column has a default) and
  ``INSERT ... ON CONFLICT DO NOTHING``;
- ``apps/webapp/prisma/schema.prisma``: the columns, which are required, and the foreign keys.
Prisma's ``create`` refuses an unknown field, a missing required field and null for a required one.
Users and the registered explanation names are seeded as on the public site
(``shared/reference/neuronpedia.md``).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOT_USER = "clkht01d40000jv08hvalcvly"
EXPLANATION_TYPES = ["oai_token-act-pair", "oai_attention-head", "np_max-act-logits", "np_max-act",
                     "np_acts-logits-general", "python-code", "eleuther_acts_top20"]  # fmt: skip
EXPLANATION_MODELS = ["gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano", "gpt-5-mini-2025-08-07",
                      "gpt-5-nano-2025-08-07", "gemini-2.0-flash", "gemini-2.0-flash-lite",
                      "gemini-2.5-flash", "gemini-2.5-flash-lite", "openai/gpt-oss-120b",
                      "google/gemini-2.5-flash-lite"]  # fmt: skip
VISIBILITY = {"PUBLIC", "UNLISTED", "PRIVATE"}


@dataclass
class Col:
    type: str  # str, int, float, bool, json, str[], int[], float[], datetime, visibility, vector
    required: bool = False  # NOT NULL (Prisma: no '?')
    default: bool = False  # has @default / @updatedAt / is a list (Prisma create may omit it)


def _cols(spec: str) -> dict[str, Col]:
    """``name:type[!][=]`` items: ``!`` NOT NULL, ``=`` has a default."""
    out = {}
    for item in spec.split():
        name, t = item.split(":")
        out[name] = Col(t.rstrip("!="), "!" in t, "=" in t or t.rstrip("!=").endswith("[]"))
    return out


# schema.prisma models, scalar columns only (relations are the FKS below)
TABLES: dict[str, dict[str, Col]] = {
    "SourceRelease": _cols(
        "name:str! visibility:visibility!= isNewUi:bool!= featured:bool!= description:str! "
        "descriptionShort:str urls:str[]! creatorEmail:str creatorName:str! creatorNameShort:str "
        "creatorId:str! defaultSourceSetName:str defaultSourceId:str defaultUmapSourceIds:str[]!= "
        "createdAt:datetime!="
    ),
    "Model": _cols(
        "id:str! displayNameShort:str!= displayName:str!= creatorId:str! tlensId:str "
        "openRouterId:str dimension:int thinking:bool!= visibility:visibility!= "
        "defaultSourceSetName:str defaultSourceId:str defaultGraphSourceSetName:str "
        "inferenceEnabled:bool!= instruct:bool!= layers:int! neuronsPerLayer:int! "
        "createdAt:datetime!= owner:str! updatedAt:datetime!= website:str"
    ),
    "SourceSet": _cols(
        "modelId:str! name:str! hasDashboards:bool!= allowInferenceSearch:bool!= "
        "visibility:visibility!= description:str! type:str!= creatorName:str! urls:str[]! "
        "creatorEmail:str creatorId:str! releaseName:str hasGraphs:bool!= graphEnabled:bool!= "
        "similarityMatrixEnabled:bool!= defaultOfModelId:str defaultGraphModelId:str "
        "defaultRange:int!= defaultShowBreaks:bool!= showDfa:bool!= showCorrelated:bool!= "
        "showHeadAttribution:bool!= showUmap:bool!= createdAt:datetime!="
    ),
    "Source": _cols(
        "id:str! modelId:str! hasDashboards:bool!= inferenceEnabled:bool!= saelensConfig:json "
        "saelensRelease:str saelensSaeId:str hfRepoId:str hfFolderId:str visibility:visibility!= "
        "defaultOfModelId:str setName:str! creatorId:str! hasUmap:bool!= hasUmapLogSparsity:bool!= "
        "hasUmapClusters:bool!= num_prompts:int num_tokens_in_prompt:int dataset:str notes:str "
        "cosSimMatchModelId:str cosSimMatchSourceId:str createdAt:datetime!="
    ),
    "Neuron": _cols(
        "modelId:str! layer:str! index:str! sourceSetName:str creatorId:str createdAt:datetime!= "
        "maxActApprox:float= hasVector:bool!= vector:float[]!= vectorLabel:str "
        "vectorDefaultSteerStrength:float= hookName:str topkCosSimIndices:int[]!= "
        "topkCosSimValues:float[]!= neuron_alignment_indices:int[]!= "
        "neuron_alignment_values:float[]!= neuron_alignment_l1:float[]!= "
        "correlated_neurons_indices:int[]!= correlated_neurons_pearson:float[]!= "
        "correlated_neurons_l1:float[]!= correlated_features_indices:int[]!= "
        "correlated_features_pearson:float[]!= correlated_features_l1:float[]!= neg_str:str[]!= "
        "neg_values:float[]!= pos_str:str[]!= pos_values:float[]!= frac_nonzero:float!= "
        "freq_hist_data_bar_heights:float[]!= freq_hist_data_bar_values:float[]!= "
        "logits_hist_data_bar_heights:float[]!= logits_hist_data_bar_values:float[]!= "
        "decoder_weights_dist:float[]!= umap_cluster:int umap_log_feature_sparsity:float "
        "umap_x:float umap_y:float"
    ),
    "Activation": _cols(
        "id:str!= tokens:str[]! dataIndex:str index:str! layer:str! modelId:str! dataSource:str "
        "maxValue:float! maxValueTokenIndex:int! minValue:float! values:float[]! dfaValues:float[]!= "
        "dfaTargetIndex:int dfaMaxValue:float zQIndices:int[]!= zKIndices:int[]!= zValues:float[]!= "
        "creatorId:str! createdAt:datetime!= lossValues:float[]!= logitContributions:str "
        "binMin:float binMax:float binContains:float qualifyingTokenIndex:int"
    ),
    "Explanation": _cols(
        "id:str!= modelId:str! layer:str! index:str! embedding:vector description:str! "
        "authorId:str! triggeredByUserId:str notes:str scoreV1:float!= scoreV2:float "
        "umap_x:float= umap_y:float= umap_cluster:int= umap_log_feature_sparsity:float= "
        "typeName:str explanationModelName:str createdAt:datetime!= updatedAt:datetime!="
    ),
}
KEYS = {  # primary key / the unique key "create if absent" and "on conflict" look at
    "SourceRelease": ("name",), "Model": ("id",), "SourceSet": ("modelId", "name"),
    "Source": ("modelId", "id"), "Neuron": ("modelId", "layer", "index"), "Activation": ("id",),
    "Explanation": ("id",), "User": ("id",), "ExplanationType": ("name",),
    "ExplanationModelType": ("name",),
}  # fmt: skip
# (table, local columns, referenced table, referenced columns); checked when no local column is null
FKS = [
    ("SourceRelease", ("creatorId",), "User", ("id",)),
    ("Model", ("creatorId",), "User", ("id",)),
    ("Model", ("defaultSourceSetName", "id"), "SourceSet", ("name", "modelId")),
    ("Model", ("defaultSourceId", "id"), "Source", ("id", "modelId")),
    ("Model", ("defaultGraphSourceSetName", "id"), "SourceSet", ("name", "modelId")),
    ("SourceSet", ("modelId",), "Model", ("id",)),
    ("SourceSet", ("creatorId",), "User", ("id",)),
    ("SourceSet", ("releaseName",), "SourceRelease", ("name",)),
    ("Source", ("modelId", "setName"), "SourceSet", ("modelId", "name")),
    ("Source", ("creatorId",), "User", ("id",)),
    ("Neuron", ("modelId",), "Model", ("id",)),
    ("Neuron", ("modelId", "layer"), "Source", ("modelId", "id")),
    ("Neuron", ("modelId", "sourceSetName"), "SourceSet", ("modelId", "name")),
    ("Neuron", ("creatorId",), "User", ("id",)),
    ("Activation", ("modelId", "layer", "index"), "Neuron", ("modelId", "layer", "index")),
    ("Activation", ("creatorId",), "User", ("id",)),
    ("Explanation", ("modelId", "layer", "index"), "Neuron", ("modelId", "layer", "index")),
    ("Explanation", ("authorId",), "User", ("id",)),
    ("Explanation", ("triggeredByUserId",), "User", ("id",)),
    ("Explanation", ("typeName",), "ExplanationType", ("name",)),
    ("Explanation", ("explanationModelName",), "ExplanationModelType", ("name",)),
]


class ImportError_(Exception):
    """What the real import would answer with an error (Prisma or Postgres)."""


def _type_ok(col: Col, v: Any) -> bool:
    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def ints(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    checks = {
        "str": lambda: isinstance(v, str), "int": lambda: ints(v), "float": lambda: num(v),
        "bool": lambda: isinstance(v, bool), "json": lambda: True,
        "datetime": lambda: isinstance(v, str), "visibility": lambda: v in VISIBILITY,
        "vector": lambda: isinstance(v, list) and len(v) == 256 and all(map(num, v)),
        "str[]": lambda: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "int[]": lambda: isinstance(v, list) and all(map(ints, v)),
        "float[]": lambda: isinstance(v, list) and all(map(num, v)),
    }  # fmt: skip
    return checks[col.type]()


@dataclass
class Database:
    users: tuple[str, ...] = (BOT_USER,)
    rows: dict[str, dict[tuple, dict]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # what the route only logs
    dropped: dict[str, set[str]] = field(default_factory=dict)  # keys the importer ignored

    def __post_init__(self) -> None:
        for t in (*TABLES, "User", "ExplanationType", "ExplanationModelType"):
            self.rows.setdefault(t, {})
        for u in self.users:
            self.rows["User"][(u,)] = {"id": u}
        for n in EXPLANATION_TYPES:
            self.rows["ExplanationType"][(n,)] = {"name": n}
        for n in EXPLANATION_MODELS:
            self.rows["ExplanationModelType"][(n,)] = {"name": n}

    def key(self, table: str, row: dict) -> tuple:
        return tuple(row.get(c) for c in KEYS[table])

    def _check_fks(self, table: str, row: dict) -> None:
        for t, local, ref, cols in FKS:
            if t != table:
                continue
            vals = tuple(row.get(c) for c in local)
            if any(v is None for v in vals):
                continue
            if not any(tuple(r.get(c) for c in cols) == vals for r in self.rows[ref].values()):
                raise ImportError_(
                    f"{table}_{'_'.join(local)}_fkey: {dict(zip(local, vals, strict=True))} "
                    f"names no {ref} row"
                )

    def prisma_create(self, table: str, data: dict) -> None:
        cols = TABLES[table]
        unknown = sorted(set(data) - set(cols))
        if unknown:
            raise ImportError_(f"prisma.{table}.create: Unknown argument {unknown[0]!r}")
        for name, col in cols.items():
            v = data.get(name)
            if v is None and col.required and (name in data or not col.default):
                raise ImportError_(f"prisma.{table}.create: argument {name!r} is missing or null")
            if v is not None and not _type_ok(col, v):
                raise ImportError_(f"prisma.{table}.create: {name!r} has the wrong type: {v!r}")
        self._check_fks(table, data)
        self.rows[table][self.key(table, data)] = data

    def import_jsonl(self, table: str, lines: list[str]) -> None:
        """``importJsonlString``: first line's known keys are the columns; on conflict do nothing."""
        lines = [ln for ln in lines if ln.strip()]
        if not lines:
            return
        cols = TABLES[table]
        first = json.loads(lines[0])
        columns = [k for k in first if k in cols]
        self.dropped.setdefault(table, set()).update(k for k in first if k not in cols)
        for line in lines:
            raw = json.loads(line)
            self.dropped[table].update(k for k in raw if k not in columns)
            row = {c: raw.get(c) for c in columns}
            for c in columns:
                if row[c] is None and cols[c].required:
                    raise ImportError_(f"null value in column {c!r} of relation {table!r}")
                if row[c] is not None and not _type_ok(cols[c], row[c]):
                    raise ImportError_(f"{table}.{c}: invalid input {row[c]!r}")
            for c in cols:
                if c not in row and cols[c].required and not cols[c].default:
                    raise ImportError_(f"null value in column {c!r} of relation {table!r}")
            self._check_fks(table, row)
            self.rows[table].setdefault(self.key(table, row), row)  # ON CONFLICT DO NOTHING


def _jsonl(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read().split("\n")


def import_export(db: Database, export_dir: str | Path) -> Database:
    """The route's order for ``exports/<modelId>/<sourceId>/``."""
    d = Path(export_dir)
    model_id = d.parent.name
    try:
        for line in filter(str.strip, _jsonl(d / "release.jsonl")):
            row = json.loads(line)
            if (row.get("name"),) not in db.rows["SourceRelease"]:
                db.prisma_create("SourceRelease", row)
    except ImportError_ as err:  # route.ts: console.error('Error importing release:', error)
        db.log.append(f"release: {err}")
    for fname, table in (("model.jsonl", "Model"), ("sourceset.jsonl", "SourceSet"),
                         ("source.jsonl", "Source")):  # fmt: skip
        for line in filter(str.strip, _jsonl(d / fname)):
            row = json.loads(line)
            if table == "SourceSet":
                row = {**row, "urls": row.get("urls") or []}
                exists = (model_id, row.get("name")) in db.rows[table]
            elif table == "Source":
                exists = (model_id, row.get("id")) in db.rows[table]
            else:
                exists = (row.get("id"),) in db.rows[table]
            if not exists:
                db.prisma_create(table, row)
    for sub, table in (("features", "Neuron"), ("activations", "Activation"),
                       ("explanations", "Explanation")):  # fmt: skip
        for path in sorted((d / sub).glob("*.jsonl.gz"), key=lambda p: p.name):  # S3 key order
            db.import_jsonl(table, _jsonl(path))
    return db
