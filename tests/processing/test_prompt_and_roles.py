"""MAIRA-2's prompt wording, image expansion and the role of every position."""

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.roles import Role

SYSTEM = "You are an expert radiology assistant tasked with interpreting a chest X-ray study."
INSTR = (
    "Provide a structured description of the findings in the radiology study in comparison to the "
    "prior frontal image."
)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return Maira2Processor(tokenizer, ImagePreprocessor(size=56, crop_size=56), patch_size=14)


def _img(seed=0, shape=(80, 64)):
    return np.random.default_rng(seed).integers(0, 4096, shape).astype(np.uint16)


def _text(processor, pieces):
    return "".join("<image>" if p.is_image else p.text for p in pieces)


def test_findings_prompt_wording_all_images(processor):
    s = Study(
        "a",
        frontal=_img(),
        lateral=_img(1),
        prior_frontal=_img(2),
        indication="Dyspnea.",
        technique="PA and lateral.",
        comparison="None.",
        prior_report="Clear lungs.",
    )
    text = _text(processor, processor.findings_pieces(s))
    assert text == (
        f"{SYSTEM} USER: Given the current frontal image<image> the current lateral image<image> and the prior "
        f"frontal image<image> PRIOR_REPORT: Clear lungs. {INSTR} INDICATION: Dyspnea. TECHNIQUE: PA and "
        "lateral. COMPARISON: None. ASSISTANT:"
    )


def test_findings_prompt_frontal_only_missing_sections(processor):
    text = _text(processor, processor.findings_pieces(Study("b", frontal=_img())))
    assert text == (
        f"{SYSTEM} USER: Given the current frontal image only<image> {INSTR} INDICATION: N/A "
        "TECHNIQUE: N/A COMPARISON: N/A ASSISTANT:"
    )


@pytest.mark.parametrize(
    "lateral,prior,phrase",
    [
        (
            True,
            False,
            "Given the current frontal image<image> and the current lateral image<image> ",
        ),
        (
            False,
            True,
            "Given the current frontal image<image> and the prior frontal image<image> PRIOR_REPORT: N/A ",
        ),
    ],
)
def test_image_phrases(processor, lateral, prior, phrase):
    s = Study(
        "c",
        frontal=_img(),
        lateral=_img(1) if lateral else None,
        prior_frontal=_img(2) if prior else None,
    )
    assert phrase in _text(processor, processor.findings_pieces(s))


def test_grounded_and_phrase_grounding_prompts(processor):
    grounded = _text(
        processor, processor.findings_pieces(Study("d", frontal=_img()), grounded=True)
    )
    assert (
        f"{INSTR} Each finding should be described as a self-contained plain-text sentence."
        in grounded
    )
    assert (
        "Otherwise, generate just the ungrounded finding without bounding boxes. INDICATION:"
        in grounded
    )
    pg = _text(processor, processor.phrase_grounding_pieces("Left pleural effusion"))
    assert pg.endswith(
        "USER: Given the current frontal image<image> Repeat the following finding as a grounded "
        "phrase with bounding boxes indicating all locations where it can be seen in the given "
        "chest X-ray image. Finding: Left pleural effusion ASSISTANT:"
    )


def test_roles_and_image_expansion(processor, tokenizer):
    s = Study(
        "e",
        frontal=_img(),
        lateral=_img(1),
        indication="Chest pain after fall.",
        comparison="Prior study.",
        findings="No effusion.",
    )
    enc = processor.encode_study(s, with_report=True)
    ids, roles = torch.tensor(enc.input_ids), torch.tensor(enc.roles)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (ids == image_id).sum() == 2 * 16
    assert ids[0] == tokenizer.bos_token_id and roles[0] == Role.BOILERPLATE
    assert ids[-1] == tokenizer.eos_token_id and roles[-1] == Role.REPORT
    for slot in (0, 1):
        run = [i for i, sl in enumerate(enc.image_slot) if sl == slot]
        assert len(run) == 16 and run == list(range(run[0], run[0] + 16))
        assert [enc.roles[i] for i in run] == [Role.IMAGE_FIRST] + [Role.IMAGE_MIDDLE] * 14 + [
            Role.IMAGE_LAST
        ]
        assert [enc.patch_index[i] for i in run] == list(range(16))

    def decoded(role):
        return tokenizer.decode([t for t, r in zip(enc.input_ids, enc.roles) if r == role]).strip()

    assert decoded(Role.INDICATION) == "Chest pain after fall."
    assert decoded(Role.COMPARISON) == "Prior study."
    assert decoded(Role.TECHNIQUE) == "N/A"
    assert decoded(Role.REPORT).startswith("No effusion.")
    assert "INDICATION:" in decoded(Role.BOILERPLATE) and "Chest pain" not in decoded(
        Role.BOILERPLATE
    )


def test_batch_left_padding_and_pixels_in_order(processor):
    studies = [Study("f", frontal=_img(3)), Study("g", frontal=_img(4), lateral=_img(5))]
    batch = processor(studies, padding_side="left")
    assert batch.n_images == [1, 2] and batch.pixel_values.shape == (3, 3, 56, 56)
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[:, -1].all()
    assert (batch.roles[batch.attention_mask == 0] == Role.PAD).all()
    single = processor.image_processor([_img(5)])
    assert torch.equal(batch.pixel_values[2], single[0])


def test_context_length_error(tokenizer):
    p = Maira2Processor(
        tokenizer, ImagePreprocessor(size=56, crop_size=56), patch_size=14, max_length=50
    )
    with pytest.raises(ValueError, match="more than the model's context of 50"):
        p.encode_study(Study("h", frontal=_img()))


def test_image_count_error(processor):
    pieces = processor.findings_pieces(Study("i", frontal=_img(), lateral=_img()))
    with pytest.raises(ValueError, match="2 image placeholders but 1 images"):
        processor.encode(pieces, [_img()])
