"""Unit tests of the small model's training pieces (each runs in well under a second or two)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.demo.evaluation import evaluation_subset, mention_score, mention_summary
from sae_lens_maira.demo.small_model import DemoModelConfig, build_demo_model
from sae_lens_maira.demo.studies import DEMO_FINDINGS, studies_fingerprint
from sae_lens_maira.demo.tokenizer_corpus import build_demo_tokenizer, prompt_corpus
from sae_lens_maira.demo.training_data import (
    DemoTrainingSet,
    ReportStream,
    render_spec_of,
    vision_targets,
)
from sae_lens_maira.processing.roles import Role
from sae_lens_maira.processing.tokenizer import IMAGE_TOKEN


def test_tokenizer_has_maira2_tokens_and_whole_prompt_words(demo_split):
    texts = [s.findings for s in demo_split.train]
    tok = build_demo_tokenizer(texts, vocab_size=2000)
    # MAIRA-2's 207 added tokens follow the learnt vocabulary, in MAIRA-2's order (with the
    # real corpus the base vocabulary fills to 2000: 2207 ids, <image> = 2204 as in the preset)
    assert len(tok) <= 2207
    assert tok.convert_tokens_to_ids("<obj>") == len(tok) - 207
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == len(tok) - 3
    # the prompt's fixed words are single tokens, as in Vicuna's vocabulary
    for word in ("radiology", "structured", "expert", "description"):
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    assert any("ASSISTANT" in t for t in prompt_corpus())
    with pytest.raises(ValueError, match="non-empty report"):
        build_demo_tokenizer(["", "  "])


def test_render_spec_and_targets(demo_split):
    study = next(s for s in demo_split.train if s.labels["pleural_effusion"])
    spec = render_spec_of(study)
    targets = vision_targets(spec)
    assert spec.effusion == "bilateral"  # MeSH says "Pleural Effusion/bilateral/small"
    assert targets[1] == targets[2] == 1.0 and targets[0] == 1.0  # with cardiomegaly
    bare = Study("x", np.zeros((8, 8)), findings="Normal.")
    with pytest.raises(ValueError, match="meta\\['render'\\]"):
        render_spec_of(bare)


def test_training_set_thins_duplicates_and_oversamples_positives(demo_split):
    cfg = DemoModelConfig.tiny()
    model, processor = build_demo_model(cfg, demo_split.train)
    data = DemoTrainingSet(
        demo_split.train, processor, findings=DEMO_FINDINGS, positive_share=0.9, max_extra_renders=2,
        max_copies_per_text=1, mention_weight=3.0, progress=False,
    )  # fmt: skip
    epoch = data.epoch(random.Random(0))
    reports = [i for i, ex in enumerate(data.examples) if not ex.grounding]
    positives = [i for i in reports if data.examples[i].positive]
    negatives = [i for i in reports if not data.examples[i].positive]
    # every positive appears with its canonical image and both fresh renders
    for i in positives:
        assert sorted(v for j, v in epoch if j == i) == [0, 1, 2]
    # one negative per distinct report text
    texts = {data.examples[i].text_key for i in negatives}
    chosen = [j for j, _ in epoch if j in set(negatives)]
    assert len(chosen) == len(texts) < len(negatives)
    # fresh renders differ from the canonical picture but show the same labels
    ex = data.examples[positives[0]]
    a, b = data.store.pixels(ex.variants[0][:1]), data.store.pixels(ex.variants[1][:1])
    assert a.shape == b.shape == (1, 3, 112, 112) and not torch.equal(a, b)
    assert data.store.targets[ex.variants[0][0]] == data.store.targets[ex.variants[1][0]]
    # loss weights: report tokens only, finding mentions upweighted
    w = torch.tensor(ex.weights)
    roles = torch.tensor(ex.roles)
    assert bool((w[roles != int(Role.REPORT)] == 0).all())
    assert bool((w[roles == int(Role.REPORT)] >= 1).all()) and float(w.max()) == 3.0
    # grounding targets and normalized reports: same studies and images, their own epochs
    for kind in ("grounding", "normalized"):
        items = data.epoch(random.Random(0), kind=kind)
        assert items and all(data.examples[i].kind == kind for i, _ in items)
    g = next(ex for ex in data.examples if ex.kind == "grounding")
    twin = next(
        ex for ex in data.examples if ex.kind == "report" and ex.study_index == g.study_index
    )
    assert g.variants is twin.variants and len(g.input_ids) < len(twin.input_ids)
    batch = data.collate(epoch[:3])
    n_images = sum(len(data.examples[i].variants[v]) for i, v in epoch[:3])
    assert batch["pixel_values"].shape == (n_images, 3, 112, 112)
    assert batch["target_weights"].shape[1] == batch["input_ids"].shape[1] - 1


def test_report_stream_packs_documents(demo_split):
    tok = build_demo_tokenizer([s.findings for s in demo_split.train], vocab_size=400)
    stream = ReportStream(["Heart normal.", "Heart normal.", "Small effusion."], tok, seq_len=8,
                          max_copies_per_text=1)  # fmt: skip
    batch = stream.batch(random.Random(0), 3)["input_ids"]
    assert batch.shape == (3, 8)
    flat = batch.flatten().tolist()
    assert flat.count(tok.bos_token_id) >= 2 and tok.eos_token_id in flat
    assert stream.n_tokens_per_pass() == sum(
        len(tok(" " + t, add_special_tokens=False)["input_ids"]) + 2
        for t in ("Heart normal.", "Small effusion.")
    )


def test_projector_init_matches_text_embedding_scale(demo_split):
    from sae_lens_maira.demo.lm_training import init_projector

    model, processor = build_demo_model(DemoModelConfig.tiny(), demo_split.train)
    pixels = processor.image_processor([s.frontal for s in demo_split.train[:4]])
    stats = init_projector(model, pixels)
    with torch.no_grad():
        projected = model.encode_images(pixels)
    text_rms = model.embed.W_E.pow(2).mean(-1).sqrt().mean()
    image_rms = projected.pow(2).mean(-1).sqrt().mean()
    assert float(image_rms) == pytest.approx(float(text_rms), rel=1e-4)
    assert stats["scale"] < 1.0  # the default init came out larger than the text embeddings


def test_mention_summary_counts_positive_mentions_only():
    studies = [
        Study("a", np.zeros((4, 4)), labels={"cardiomegaly": True, "pleural_effusion": False}),
        Study("b", np.zeros((4, 4)), labels={"cardiomegaly": True, "pleural_effusion": True}),
        Study("c", np.zeros((4, 4)), labels={"cardiomegaly": False, "pleural_effusion": False}),
    ]
    texts = ["The heart is enlarged.", "Heart size is normal. Small left pleural effusion.",
             "No pleural effusion. The heart is enlarged."]  # fmt: skip
    summary = mention_summary(texts, studies, ["cardiomegaly", "pleural_effusion"])
    assert summary["cardiomegaly"]["positives"] == 0.5
    assert summary["cardiomegaly"]["negatives"] == 1.0
    assert summary["pleural_effusion"]["positives"] == 1.0
    assert summary["pleural_effusion"]["negatives"] == 0.0  # "No pleural effusion" is negated
    assert mention_score(summary) == pytest.approx(((0.5 - 1.0) + (1.0 - 0.0)) / 2)
    with pytest.raises(ValueError, match="texts for"):
        mention_summary(texts[:2], studies, ["cardiomegaly"])
    subset = evaluation_subset(studies, ["cardiomegaly"], per_finding=1, negatives=1)
    assert [s.study_id for s in subset] == ["a", "c"]


def test_fingerprint_follows_texts_labels_and_size(demo_split):
    base = studies_fingerprint(demo_split.train, 112)
    assert base == studies_fingerprint(list(demo_split.train), 112)
    assert base != studies_fingerprint(demo_split.train, 224)
    changed = [Study(**{**s.__dict__}) for s in demo_split.train]
    changed[0].findings = changed[0].findings + " Changed."
    assert base != studies_fingerprint(changed, 112)


def _study(sid, findings, labels, render=None):
    return Study(
        sid, np.zeros((4, 4)), findings=findings, labels=labels, meta={"render": render or {}}
    )


def test_grounding_sentences_pick_the_most_common_label_consistent_sentence():
    from sae_lens_maira.demo.grounding_text import GroundingSentences

    F = ["cardiomegaly", "pleural_effusion", "devices"]
    left = {"effusion": "left", "devices": []}
    studies = [
        _study("a", "Mild cardiomegaly. No pleural effusion.", {"cardiomegaly": True}),
        _study("b", "Mild cardiomegaly. Small left pleural effusion.",
               {"cardiomegaly": True, "pleural_effusion": True}, left),
        _study("c", "Heart is enlarged. Small left pleural effusion.",
               {"cardiomegaly": True, "pleural_effusion": True}, left),
        _study("d", "The heart is normal in size. No pleural effusion.", {}),
        _study("e", "The heart is normal in size. No pleural effusion.", {}),
        # the text contradicts the label: it must not vote
        _study("f", "The heart is normal in size.", {"cardiomegaly": True}),
        _study("g", "Left-sided pacemaker.", {"devices": True}, {"devices": ["pacemaker"]}),
    ]  # fmt: skip
    g = GroundingSentences.from_studies(studies, F)
    assert g.sentences["cardiomegaly:present"] == "Mild cardiomegaly."
    assert g.sentences["cardiomegaly:absent"] == "The heart is normal in size."
    assert g.sentences["pleural_effusion:left"] == "Small left pleural effusion."
    assert g.sentences["pleural_effusion:absent"] == "No pleural effusion."
    assert "devices:absent" not in g.sentences  # nobody writes "no devices"
    # the same picture always gets the same words, whatever its own report said
    assert g.target(studies[2]) == "Mild cardiomegaly. Small left pleural effusion."
    assert (
        g.target(studies[6])
        == "The heart is normal in size. No pleural effusion. Left-sided pacemaker."
    )
    assert g.target(_study("h", "", {}, {})) == "The heart is normal in size. No pleural effusion."
    # normalized report: the image-decided sentences first, then the rest of the report
    extra = _study(
        "i", "Lungs are clear. Heart is enlarged. Old rib fracture.", {"cardiomegaly": True}
    )
    assert g.normalized_report(extra) == (
        "Mild cardiomegaly. No pleural effusion. Lungs are clear. Old rib fracture."
    )


def test_extra_render_counts_balance_rare_findings():
    from sae_lens_maira.demo.training_data import extra_render_counts

    labels = [{"a": True}] + [{"b": True}] * 4 + [{}] * 15  # a: 5 %, b: 20 %
    studies = [_study(str(i), "x", lab) for i, lab in enumerate(labels)]
    counts = extra_render_counts(studies, ["a", "b"], 0.4, max_extra=5)
    assert counts["0"] == 5  # ceil(0.4 / 0.05) - 1 = 7, capped at 5
    assert counts["1"] == 1  # ceil(0.4 / 0.2) - 1
    assert counts["19"] == 0
    assert set(extra_render_counts(studies, ["a", "b"], 0.0, 5).values()) == {0}


def test_lazy_package_exports():
    import sae_lens_maira.demo as demo

    for name in demo.__all__:
        assert getattr(demo, name) is not None, name
    from sae_lens_maira.demo.pipeline import default_config

    # read from the shipped config, not repeated
    assert demo.DEMO_HOOK == default_config()["cache"]["hook_name"] == "blocks.1.hook_resid_post"
    with pytest.raises(AttributeError):
        demo.no_such_thing  # noqa: B018


def test_grounding_classes_follow_the_render_details():
    from sae_lens_maira.demo.grounding_text import _classes

    render = {"effusion": "left", "devices": ["pacemaker", "central_line"], "cardiomegaly": True}
    s = Study("x", np.zeros((8, 8)), labels={"pleural_effusion": True, "devices": True,
                                            "cardiomegaly": True}, meta={"render": render})  # fmt: skip
    assert _classes(s, "pleural_effusion") == ["pleural_effusion:left"]
    assert _classes(s, "devices") == ["devices:pacemaker", "devices:central_line"]
    assert _classes(s, "cardiomegaly") == ["cardiomegaly:present"]
    bare = Study("y", np.zeros((8, 8)), labels={"pleural_effusion": True})
    assert _classes(bare, "pleural_effusion") == ["pleural_effusion:present"]
    assert _classes(bare, "devices") == ["devices:absent"]
