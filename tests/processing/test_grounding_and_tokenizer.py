import pytest

from sae_lens_maira.processing.grounding import parse_grounded_output
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.tokenizer import (
    MAIRA2_ADDED_TOKENS,
    build_maira2_tokenizer,
    check_tokenizer,
)


def test_parse_phrases_and_boxes_in_original_coordinates(tokenizer):
    text = (
        "<obj>Left pleural effusion<box><x60><y70><x90><y95></box></obj>"
        "<obj>Cardiomegaly</obj> No pneumothorax. "
        "<obj>Bilateral lines<box><x10><y10><x20><y30></box><box><x80><y10><x89><y30></box></obj>"
    )
    proc = Maira2Processor(tokenizer, ImagePreprocessor(size=518, crop_size=518))
    phrases = proc.parse_grounded(
        text, (1000, 800)
    )  # landscape: square of side 800 centred at x=100..900
    assert [p.text for p in phrases] == [
        "Left pleural effusion",
        "Cardiomegaly",
        "No pneumothorax.",
        "Bilateral lines",
    ]
    assert [len(p.boxes) for p in phrases] == [1, 0, 0, 2]
    x0, y0, x1, y1 = phrases[0].boxes[0]
    assert x0 == pytest.approx(100 + 0.605 * 800) and y0 == pytest.approx(0.705 * 800)
    assert x1 == pytest.approx(100 + 0.905 * 800) and y1 == pytest.approx(0.955 * 800)
    rel = parse_grounded_output(text)
    assert rel[3].boxes[1] == pytest.approx((0.805, 0.105, 0.895, 0.305))


def test_generated_grounded_text_round_trips_through_tokenizer(tokenizer):
    text = "<obj>Small effusion<box><x1><y2><x3><y4></box></obj>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert parse_grounded_output(tokenizer.decode(ids))[0].boxes == [(0.015, 0.025, 0.035, 0.045)]


def test_bad_bins_are_errors():
    with pytest.raises(ValueError, match="coordinate bin"):
        parse_grounded_output("<obj>x<box><x1><y200><x3><y4></box></obj>")


def test_tokenizer_layout_and_checks(tmp_path):
    tok = build_maira2_tokenizer(["a b c the heart"] * 10, vocab_size=320)
    vocab = tok.get_vocab()
    assert vocab["<unk>"] == 0 and vocab["<s>"] == 1 and vocab["</s>"] == 2 and vocab["<0x00>"] == 3
    added = [vocab[t] for t in MAIRA2_ADDED_TOKENS]
    assert added == list(range(added[0], added[0] + 207))  # contiguous, in MAIRA-2's order
    from transformers import LlamaTokenizer

    plain = LlamaTokenizer(vocab={"<unk>": 0, "<s>": 1, "</s>": 2}, merges=[])
    with pytest.raises(ValueError, match="no '<image>' token"):
        check_tokenizer(plain)
    with pytest.raises(ValueError, match="too small"):
        build_maira2_tokenizer(["x"], vocab_size=100)
