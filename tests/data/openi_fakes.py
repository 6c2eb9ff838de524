"""A small fake torchxrayvision wheel with Open-I reports in the real XML format."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path

# Real Open-I reports (sections and MeSH terms copied from the collection, trimmed).
FAKE_REPORTS = [
    {
        "uid": "CXR1",
        "COMPARISON": "None.",
        "INDICATION": "Positive TB test",
        "FINDINGS": "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. There is no focal consolidation. There are no XXXX of a pleural effusion. There is no evidence of pneumothorax.",
        "IMPRESSION": "Normal chest x-XXXX.",
        "major": ["normal"],
        "images": ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    },
    {
        "uid": "CXR2",
        "COMPARISON": "Chest radiographs XXXX.",
        "INDICATION": "XXXX-year-old male, chest pain.",
        "FINDINGS": "The cardiomediastinal silhouette is within normal limits for size and contour. The lungs are normally inflated without evidence of focal airspace disease, pleural effusion, or pneumothorax. Stable calcified granuloma within the right upper lung. No acute bone abnormality.",
        "IMPRESSION": "No acute cardiopulmonary process.",
        "major": ["Calcified Granuloma/lung/upper lobe/right"],
        "images": ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"],
    },
    {
        "uid": "CXR10",
        "COMPARISON": "",
        "INDICATION": "dyspnea",
        "FINDINGS": "The heart is again enlarged, stable. The left subclavian ICD is unchanged position. There is a XXXX right upper extremity PICC line, the tip is partially obscured by the pacemaker XXXX. No pneumothorax is seen.",
        "IMPRESSION": "1. Stable cardiomegaly. 2. XXXX right upper extremity PICC line with tip in proximal SVC.",
        "major": ["Cardiomegaly", "Implanted Medical Device/left", "Catheters, Indwelling/right"],
        "images": ["CXR10_IM-0002-1001", "CXR10_IM-0002-2001"],
    },
    {
        "uid": "CXR7",
        "COMPARISON": "XXXX, XXXX",
        "INDICATION": "Shortness of breath",
        "FINDINGS": "Heart size is enlarged. Small bilateral pleural effusions with blunting of the costophrenic angles. Calcified granulomas.",
        "IMPRESSION": "Cardiomegaly with small bilateral effusions.",
        "major": ["Cardiac Shadow/enlarged", "Pleural Effusion/bilateral/small", "Tuberculosis"],
        "images": ["CXR7_IM-2001-1001"],
    },
    {
        "uid": "CXR5",
        "COMPARISON": "None",
        "INDICATION": "Fever",
        "FINDINGS": "",
        "IMPRESSION": "No active disease.",
        "major": ["normal"],
        "images": [],
    },
    {
        "uid": "CXR3",
        "COMPARISON": "None.",
        "INDICATION": "Intubated.",
        "FINDINGS": "Endotracheal tube tip is 4 cm above the carina. Lungs are clear.",
        "IMPRESSION": "Endotracheal tube in good position.",
        "major": ["Tube, Inserted/trachea"],
        "images": ["CXR3_IM-1384-1001", "CXR3_IM-1384-2001"],
    },
]


def report_xml(r: dict) -> str:
    """One report in the collection's XML layout (element names and nesting as in the wheel)."""
    sections = "".join(
        f'\n            <AbstractText Label="{label}">{r[label]}</AbstractText>'
        if r[label]
        else f'\n            <AbstractText Label="{label}"/>'
        for label in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
    )
    mesh = "".join(f"\n      <major>{m}</major>" for m in r["major"])
    images = "".join(
        f'\n   <parentImage id="{i}">\n      <figureId>F1</figureId>\n      <caption>Xray Chest PA and Lateral</caption>'
        f'\n      <panel type="single">\n         <url>/hadoop/storage/radiology/extract/{i}.jpg</url>\n      </panel>\n   </parentImage>'
        for i in r["images"]
    )
    num = r["uid"][3:]
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{r["uid"]}"/>
   <pmcId id="{num}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{num}"/>
   <licenseType>open-access</licenseType>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>{sections}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>{mesh}
      <automatic>Lung</automatic>
   </MeSH>{images}
</eCitation>
"""


def make_tgz(reports: list[dict]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for r in reports:
            data = report_xml(r).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{r['uid'][3:]}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_fake_wheel(path: Path, reports: list[dict] = FAKE_REPORTS) -> Path:
    """A zip laid out like the torchxrayvision 1.5.7 wheel."""
    meta = "imageid,View Position,Rows\nCXR1_1_IM-0001-3001,PA,2048\nCXR1_1_IM-0001-4001,LL,2048\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("torchxrayvision/__init__.py", "")
        z.writestr("torchxrayvision/data/NLMCXR_reports.tgz", make_tgz(reports))
        z.writestr(
            "torchxrayvision/data/nlmcxr_dicom_metadata.csv.gz", gzip.compress(meta.encode())
        )
    return path


def cached_real_wheel() -> Path | None:
    """The real wheel if a developer or CI cached it (never downloaded by tests)."""
    from sae_lens_maira.cache_dirs import openi_wheel_dir

    found = sorted(openi_wheel_dir().glob("torchxrayvision-1.5.7-*.whl"))
    extra = os.environ.get("SAE_LENS_MAIRA_OPENI_WHEEL")
    if extra and Path(extra).exists():
        return Path(extra)
    return found[0] if found else None
