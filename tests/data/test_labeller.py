"""Report labeller on real Open-I sentences, and against MeSH labels on the real collection."""

from __future__ import annotations

import pytest

from sae_lens_maira.data.labeller import (
    FindingRule,
    Status,
    find_mentions,
    label_report,
    mention_rates,
    split_sentences,
)

P, N, U, A = Status.POSITIVE, Status.NEGATED, Status.UNCERTAIN, Status.ABSENT

# Real sentences from the Open-I collection (torchxrayvision 1.5.7 wheel), with the labels a
# radiologist would give: (cardiomegaly, pleural_effusion, devices).
REAL_SENTENCES = [
    ("The cardiac silhouette and mediastinum size are within normal limits.", (N, A, A)),
    ("There are no XXXX of a pleural effusion.", (A, N, A)),
    (
        "The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.",
        (A, N, A),
    ),
    (
        "No focal consolidation, suspicious pulmonary opacity, pneumothorax or definite pleural effusion.",
        (A, N, A),
    ),
    ("Heart size is enlarged.", (P, A, A)),
    ("The heart is again enlarged, stable.", (P, A, A)),
    ("Stable moderate cardiomegaly is demonstrated.", (P, A, A)),
    ("Heart is not enlarged.", (N, A, A)),
    ("The heart is not significantly enlarged.", (N, A, A)),
    ("Normal heart size and mediastinal contours.", (N, A, A)),
    ("Heart size is upper limits of normal.", (U, A, A)),
    ("Borderline cardiomegaly without heart failure.", (U, A, A)),
    ("Mild cardiomegaly without pulmonary edema.", (P, A, A)),
    ("Small bilateral pleural effusions.", (A, P, A)),
    ("Possible XXXX right pleural effusion.", (A, U, A)),
    (
        "There is blunting of the right lateral costophrenic sulcus which could be secondary to a small effusion versus scarring.",
        (A, U, A),
    ),
    (
        "No pneumothorax or pleural effusion. Mild degenerative changes of the thoracic spine.",
        (A, N, A),
    ),
    ("Costophrenic XXXX are sharp.", (A, A, A)),
    ("The left subclavian ICD is unchanged position.", (A, A, P)),
    (
        "There is a XXXX right upper extremity PICC line, the tip is partially obscured by the pacemaker XXXX.",
        (A, A, P),
    ),
    ("Right IJ catheter tip in proximal right atrium.", (A, A, P)),
    (
        "Frontal and lateral views of the chest with overlying external cardiac monitor leads show an unchanged cardiomediastinal silhouette.",
        (A, A, P),
    ),
    (
        "There is interval removal of the tracheostomy tube and right subclavian central venous catheter.",
        (A, A, N),
    ),
    ("Positive TB test", (A, A, A)),  # tuberculosis is not a tube
    ("The trachea is midline.", (A, A, A)),
    ("There is no pericardial effusion.", (A, A, A)),  # pericardial is not pleural
]


@pytest.mark.parametrize("text,expected", REAL_SENTENCES)
def test_real_sentences(text, expected):
    got = label_report(text)
    assert (got["cardiomegaly"], got["pleural_effusion"], got["devices"]) == expected, got


def test_positive_beats_negated_across_sentences():
    text = "No pleural effusion on the right. Small left pleural effusion. Heart size is normal."
    assert label_report(text) == {"cardiomegaly": N, "pleural_effusion": P, "devices": A}


def test_scope_ends_at_terminators():
    assert (
        label_report("No pneumothorax, but there is a small left effusion.")["pleural_effusion"]
        is P
    )
    assert label_report("No pneumothorax; small right pleural effusion.")["pleural_effusion"] is P
    assert label_report("Effusion cannot be excluded.")["pleural_effusion"] is U
    assert label_report("The previously seen left effusion has resolved.")["pleural_effusion"] is N


def test_sentence_split_and_mentions():
    assert split_sentences("1. Stable cardiomegaly. 2. No effusion.\nPacemaker.") == [
        "1. Stable cardiomegaly.",
        "2. No effusion.",
        "Pacemaker.",
    ]
    mentions = find_mentions("No effusion. Stable cardiomegaly.")
    assert [(m.finding, m.status, m.text) for m in mentions] == [
        ("pleural_effusion", N, "effusion"),
        ("cardiomegaly", P, "cardiomegaly"),
    ]
    assert mentions[0].trigger == "no"


def test_custom_findings_and_errors():
    rule = FindingRule("pneumothorax", mentions=(r"\bpneumothorax\b",))
    assert label_report("No pneumothorax.", [rule]) == {"pneumothorax": N}
    with pytest.raises(ValueError, match="unknown finding 'nodule'"):
        label_report("x", ["nodule"])
    with pytest.raises(ValueError, match="at least one"):
        mention_rates([])


def test_mention_rates():
    rates = mention_rates(
        ["Stable cardiomegaly.", "No cardiomegaly.", "Pacemaker in place.", "Lungs clear."]
    )
    assert rates["cardiomegaly"] == {
        "positive": 0.25,
        "negated": 0.25,
        "uncertain": 0.0,
        "absent": 0.5,
    }
    assert rates["devices"]["positive"] == 0.25
    assert sum(rates["pleural_effusion"].values()) == pytest.approx(1.0)


def test_agreement_with_mesh_on_real_collection(real_reports):
    """Labels from FINDINGS + IMPRESSION against the indexers' MeSH labels (3,425 reports).
    Skipped unless the real wheel is cached."""
    reports = [r for r in real_reports if r.findings]
    for name, min_sens in (("cardiomegaly", 0.8), ("pleural_effusion", 0.85), ("devices", 0.75)):
        tp = fn = fp = tn = 0
        for r in reports:
            got = label_report(f"{r.findings} {r.impression or ''}", [name])[name]
            pred, truth = got is Status.POSITIVE, r.labels[name]
            tp += pred and truth
            fn += truth and not pred
            fp += pred and not truth
            tn += not pred and not truth
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        assert sens >= min_sens, (name, sens)
        assert spec >= 0.98, (name, spec)
