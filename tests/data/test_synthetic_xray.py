"""Synthetic radiographs: determinism, sizes, and findings that can be measured from pixels."""

from __future__ import annotations

import numpy as np
import pytest
from xray_measures import auc, basal_opacity, bright_line_pixels, cardiothoracic_ratio

from sae_lens_maira.data.synthetic_xray import RenderSpec, SyntheticXrayRenderer, contact_sheet


@pytest.fixture(scope="module")
def renderer():
    return SyntheticXrayRenderer(224)


@pytest.fixture(scope="module")
def cohort(renderer):
    """48 frontal renders with independently random labels (fixed seeds)."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(48):
        labels = {
            k: bool(rng.random() < 0.5) for k in ("cardiomegaly", "pleural_effusion", "devices")
        }
        out.append((labels, renderer.frontal(RenderSpec.from_labels(labels, 500 + i), 500 + i)))
    return out


def test_same_seed_same_pixels_and_views_share_a_patient(renderer):
    spec = RenderSpec(cardiomegaly=True, effusion="left", devices=("pacemaker",))
    a = renderer.render(spec, 11)
    b = renderer.render(spec, 11)
    assert a["frontal"].mode == "L" and a["frontal"].size == (224, 224)
    assert np.array_equal(np.asarray(a["frontal"]), np.asarray(b["frontal"]))
    assert np.array_equal(np.asarray(a["lateral"]), np.asarray(b["lateral"]))
    # rendering one view alone gives the same pixels as rendering both
    assert np.array_equal(np.asarray(renderer.lateral(spec, 11)), np.asarray(a["lateral"]))
    assert not np.array_equal(np.asarray(renderer.frontal(spec, 12)), np.asarray(a["frontal"]))


def test_sizes_and_line_width():
    big = SyntheticXrayRenderer(518)
    assert big.line_px == 3 and SyntheticXrayRenderer(224).line_px == 2
    img = big.frontal(RenderSpec(devices=("central_line",)), 3)
    assert img.size == (518, 518)
    assert bright_line_pixels(img) > 150  # lines survive at full size too
    with pytest.raises(ValueError, match="at least 64"):
        SyntheticXrayRenderer(32)


def test_images_look_like_radiographs(renderer):
    a = np.asarray(renderer.frontal(RenderSpec(), 4), dtype=np.float32) / 255
    h, w = a.shape
    outside = a[int(0.5 * h), :4].mean()
    lung = a[int(0.4 * h), int(0.3 * w)]
    mediastinum = a[int(0.4 * h), w // 2 - 2 : w // 2 + 3].mean()
    abdomen = a[int(0.9 * h), int(0.4 * w) : int(0.6 * w)].mean()
    assert outside < 0.1 < lung < mediastinum  # air black, lungs dark, mediastinum white
    assert abdomen > lung + 0.2
    assert a.std() > 0.15


def test_spec_validation_and_label_round_trip():
    with pytest.raises(ValueError, match="effusion must be"):
        RenderSpec(effusion="middle")
    with pytest.raises(ValueError, match="unknown device kinds"):
        RenderSpec(devices=("stent",))
    with pytest.raises(ValueError, match="effusion_size"):
        RenderSpec(effusion="left", effusion_size="huge")
    labels = {"cardiomegaly": True, "pleural_effusion": True, "devices": True}
    spec = RenderSpec.from_labels(labels, 5)
    assert spec.labels == labels
    assert RenderSpec.from_labels({}, 5).labels == {
        "cardiomegaly": False,
        "pleural_effusion": False,
        "devices": False,
    }
    hinted = RenderSpec.from_labels(
        labels, 5, effusion_side="right", device_kinds=("nasogastric_tube",)
    )
    assert hinted.effusion == "right" and hinted.devices == ("nasogastric_tube",)
    with pytest.raises(ValueError, match="unknown views"):
        SyntheticXrayRenderer(64).render(spec, 1, ("oblique",))


def test_cardiomegaly_is_visible_as_cardiothoracic_ratio(cohort):
    # Effusions hide the heart borders (silhouette sign), as on real films: measure without.
    clear = [(lab, im) for lab, im in cohort if not lab["pleural_effusion"]]
    pos = [cardiothoracic_ratio(im) for lab, im in clear if lab["cardiomegaly"]]
    neg = [cardiothoracic_ratio(im) for lab, im in clear if not lab["cardiomegaly"]]
    assert len(pos) >= 8 and len(neg) >= 8
    assert np.median(pos) > 0.5 > np.median(neg)
    assert auc(pos, neg) > 0.8


def test_effusion_is_visible_as_basal_opacity(cohort):
    pos = [basal_opacity(im) for lab, im in cohort if lab["pleural_effusion"]]
    neg = [basal_opacity(im) for lab, im in cohort if not lab["pleural_effusion"]]
    assert np.median(pos) > np.median(neg) + 0.2
    assert auc(pos, neg) > 0.8


def test_devices_are_visible_as_bright_lines(cohort):
    pos = [bright_line_pixels(im) for lab, im in cohort if lab["devices"]]
    neg = [bright_line_pixels(im) for lab, im in cohort if not lab["devices"]]
    assert auc(pos, neg) > 0.95
    assert min(pos) > np.median(neg)


def test_each_device_kind_is_drawn(renderer):
    base = bright_line_pixels(renderer.frontal(RenderSpec(), 21))
    for kind in ("central_line", "pacemaker", "endotracheal_tube", "nasogastric_tube"):
        views = renderer.render(RenderSpec(devices=(kind,)), 21)
        assert bright_line_pixels(views["frontal"]) > base + 40, kind
        assert bright_line_pixels(views["lateral"]) > 20, kind


def test_lateral_heart_grows_with_cardiomegaly(renderer):
    """On the lateral view the enlarged heart covers the lower retrosternal/retrocardiac lung."""

    def lower_lung_brightness(img):
        a = np.asarray(img, dtype=np.float32) / 255
        return a[
            int(0.5 * a.shape[0]) : int(0.6 * a.shape[0]),
            int(0.3 * a.shape[1]) : int(0.55 * a.shape[1]),
        ].mean()

    pos = [
        lower_lung_brightness(renderer.lateral(RenderSpec(cardiomegaly=True), s)) for s in range(10)
    ]
    neg = [lower_lung_brightness(renderer.lateral(RenderSpec(), s)) for s in range(10)]
    assert auc(pos, neg) > 0.8


def test_contact_sheet(tmp_path):
    sheet = contact_sheet(
        [("normal", RenderSpec(), 1), ("pacemaker", RenderSpec(devices=("pacemaker",)), 2)],
        SyntheticXrayRenderer(96),
        columns=2,
    )
    assert sheet.size == (2 * (2 * 96 + 4 + 6), 96 + 16 + 6)
