"""Study sources (Open-I reports, MIMIC-CXR-JPG, manifests), synthetic radiographs and a report
labeller. Every source yields :class:`Study` records."""

from .labeller import (
    DEFAULT_FINDINGS,
    FINDING_RULES,
    FindingRule,
    Mention,
    Status,
    find_mentions,
    label_report,
    label_reports,
    mention_rates,
)
from .loaded import LoadResult
from .manifest import ManifestError, load_manifest
from .mimic_cxr import load_mimic_cxr, parse_report_sections
from .openi import (
    MESH_LABEL_RULES,
    OpenIReport,
    ensure_openi_wheel,
    load_openi_reports,
    mesh_labels,
    openi_studies,
)
from .splits import hash_split, split_studies
from .study import ImageRef, Study
from .synthetic_xray import RenderSpec, SyntheticXrayRenderer, contact_sheet

__all__ = [
    "DEFAULT_FINDINGS",
    "FINDING_RULES",
    "FindingRule",
    "ImageRef",
    "LoadResult",
    "MESH_LABEL_RULES",
    "ManifestError",
    "Mention",
    "OpenIReport",
    "RenderSpec",
    "Status",
    "Study",
    "SyntheticXrayRenderer",
    "contact_sheet",
    "ensure_openi_wheel",
    "find_mentions",
    "hash_split",
    "label_report",
    "label_reports",
    "load_manifest",
    "load_mimic_cxr",
    "load_openi_reports",
    "mention_rates",
    "mesh_labels",
    "openi_studies",
    "parse_report_sections",
    "split_studies",
]
