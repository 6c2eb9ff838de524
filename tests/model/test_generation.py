"""model/generation.py: the one greedy-findings loop the demo's evaluations and the steering sweeps share."""

from contextlib import contextmanager

import numpy as np
import pytest

from sae_lens_maira.data.study import Study
from sae_lens_maira.model.generation import generate_findings
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.steering.sweep import generate_reports


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = HookedMaira2.from_config("small", tokenizer=tokenizer, seed=0, device="cpu")
    processor = Maira2Processor(tokenizer, ImagePreprocessor(size=224, crop_size=224), patch_size=14,
                                max_length=model.cfg.n_ctx)  # fmt: skip
    rng = np.random.default_rng(0)
    studies = [Study(f"s{i}", frontal=rng.integers(0, 255, (240, 224)).astype(np.uint8),
                     indication="Cough.") for i in range(3)]  # fmt: skip
    return model, processor, studies


def test_completions_in_study_order_whatever_the_batch_size(setup):
    model, processor, studies = setup
    batch = processor(studies, padding_side="left")
    tokens = model.generate(batch.input_ids, pixel_values=batch.pixel_values,
                            attention_mask=batch.attention_mask, max_new_tokens=5, return_type="tokens")  # fmt: skip
    # the completion only, decoded as the processor decodes it (prompt and special tokens dropped)
    expected = [processor.decode(row) for row in tokens[:, batch.input_ids.shape[1] :]]
    assert generate_findings(model, processor, studies, max_new_tokens=5, batch_size=3) == expected
    assert generate_findings(model, processor, studies, max_new_tokens=5, batch_size=2) == expected


def test_during_is_entered_around_each_batch(setup):
    model, processor, studies = setup
    seen: list[tuple[str, list[str]]] = []

    @contextmanager
    def during(batch):
        seen.append(("enter", list(batch.study_ids)))
        yield
        seen.append(("exit", list(batch.study_ids)))

    generate_findings(model, processor, studies, max_new_tokens=2, batch_size=2, during=during)
    assert seen == [("enter", ["s0", "s1"]), ("exit", ["s0", "s1"]), ("enter", ["s2"]), ("exit", ["s2"])]


def test_the_steering_sweep_generates_through_it(setup):
    model, processor, studies = setup
    bare = generate_findings(model, processor, studies, max_new_tokens=4, batch_size=4)
    assert generate_reports(model, processor, studies, max_new_tokens=4) == bare
