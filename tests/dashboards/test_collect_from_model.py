"""The dashboards' model driver: HookedMaira2 + an SAE over studies -> feature statistics."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_maira.dashboards.collect import collect_dashboard_stats, sequence_batches
from sae_lens_maira.experiment import Experiment

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(experiment_yaml):
    exp = Experiment.from_yaml(experiment_yaml("unused"))
    model = exp.load_model("cpu")
    torch.manual_seed(0)
    sae = StandardSAE(
        StandardSAEConfig(d_in=model.cfg.d_model, d_sae=32, metadata=SAEMetadata(hook_name=HOOK))
    )
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.fill_(-0.5)
    return model, sae, exp.load_processor(), exp.load_studies()


def test_batches_hold_sae_codes_of_every_position(setup):
    model, sae, processor, studies = setup
    skipped = {}
    batches = list(sequence_batches(model, sae, processor, studies, batch_size=3, skipped=skipped))
    assert list(skipped) == ["s4"] and sum(len(b.study_ids) for b in batches) == 8
    b = batches[0]
    b.validate(d_sae=32)
    enc = processor.encode_study(studies[0], with_report=True)
    batch = processor.collate([enc], padding_side="right")
    with torch.no_grad():
        _, c = model.run_with_cache(
            batch.input_ids, pixel_values=batch.pixel_values, names_filter=[HOOK]
        )
        expected = sae.encode(c[HOOK])[0]
    n = len(enc)
    assert torch.allclose(b.feature_acts[0, :n], expected, atol=1e-5)
    assert b.mask[0, :n].all() and (b.patch_index[0] >= 0).sum() == 16
    assert b.images is not None and b.images[0][0].mode == "L"


def test_statistics_and_their_heatmaps(setup, tmp_path):
    model, sae, processor, studies = setup
    stats = collect_dashboard_stats(model, sae, processor, studies, batch_size=4)
    assert stats.meta.hook_name == HOOK and stats.meta.layer == 1 and stats.meta.d_sae == 32
    assert stats.n_sequences == 8 and stats.grid == (4, 4)
    path = stats.save(tmp_path / "stats")
    # the model's own shape, saved with the statistics, is what exports' model row defaults to
    from sae_lens_maira.dashboards.feature_stats import FeatureStats

    shape = (model.cfg.n_layers, model.cfg.d_model)
    assert (stats.meta.n_layers, stats.meta.d_model) == shape != (32, 4096)
    loaded = FeatureStats.load(path)
    assert (loaded.meta.n_layers, loaded.meta.d_model) == shape
    from sae_lens_maira.dashboards.commands import viewer

    page = viewer(path, tmp_path / "view")
    assert (
        page.name == "index.html"
        and page.is_file()
        and len(list(page.parent.glob("**/*.html"))) > 2
    )


def test_mismatched_sae_is_refused(setup):
    model, _, processor, studies = setup
    wide = StandardSAE(StandardSAEConfig(d_in=48, d_sae=8, metadata=SAEMetadata(hook_name=HOOK)))
    with pytest.raises(
        ValueError, match="reads d_in=48 but blocks.1.hook_resid_post of this model has width 64"
    ):
        next(sequence_batches(model, wide, processor, studies))
    other = StandardSAE(
        StandardSAEConfig(
            d_in=64, d_sae=8, metadata=SAEMetadata(hook_name="blocks.9.hook_resid_post")
        )
    )
    with pytest.raises(ValueError, match="has no hook 'blocks.9.hook_resid_post'"):
        next(sequence_batches(model, other, processor, studies))
