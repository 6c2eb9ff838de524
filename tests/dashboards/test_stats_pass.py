"""The vectorised statistics pass against a plain reference computed from all activations at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_lens_maira.dashboards.sequence_batch import SequenceBatch
from sae_lens_maira.dashboards.stats_pass import FeatureStatsCollector, FeatureStatsConfig
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, ROLE_FEATURE, TOKEN_FEATURE
from sae_lens_maira.processing.roles import Role


def _reference(synthetic):
    """Counted activations of every sequence, padded to one length: [N, T, F] plus side tensors."""
    t = max(b.token_ids.shape[1] for b in synthetic.batches)

    def pad(x, fill):
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=fill)

    acts, ids, roles, img, patch, counted = [], [], [], [], [], []
    for b in synthetic.batches:
        keep = b.mask & (b.roles != int(Role.BOILERPLATE)) & (b.roles != int(Role.PAD))
        a = b.feature_acts * keep[..., None]
        acts.append(torch.nn.functional.pad(a, (0, 0, 0, t - a.shape[1])))
        ids.append(pad(b.token_ids, 0))
        roles.append(pad(b.roles, int(Role.PAD)))
        img.append(pad(b.image_index, -1))
        patch.append(pad(b.patch_index, -1))
        counted.append(pad(keep, False))
    return (
        torch.cat(acts),
        torch.cat(ids),
        torch.cat(roles),
        torch.cat(img),
        torch.cat(patch),
        torch.cat(counted),
    )


def test_density_top_examples_and_histogram_match_reference(synthetic, stats):
    acts, _, _, _, _, counted = _reference(synthetic)
    n_tokens = int(counted.sum())
    assert stats.n_tokens == n_tokens
    ref_density = (acts > 0).sum(dim=(0, 1)).double() / n_tokens
    torch.testing.assert_close(stats.density, ref_density)
    seq_max = acts.amax(dim=1)  # [N, F]
    n_top = stats.config["n_top"]
    for f in range(synthetic.d_sae):
        ref = seq_max[:, f].sort(descending=True).values
        ref = ref[ref > 0][:n_top]
        got = stats.tensors["top.value"][f][: len(ref)]
        torch.testing.assert_close(got, ref)
        assert (stats.tensors["top.value"][f][len(ref) :] < 0).all()
        # histogram: 2**exp is the smallest power of two above the max; bins of equal width
        nz = acts[..., f][acts[..., f] > 0]
        e = int(stats.tensors["hist_exp"][f])
        if nz.numel():
            assert 2.0 ** (e - 1) <= float(nz.max()) < 2.0**e
            n_bins = stats.config["n_hist_bins"]
            ref_hist = torch.bincount((nz / 2.0**e * n_bins).long().clamp(max=n_bins - 1),
                                      minlength=n_bins)  # fmt: skip
            assert torch.equal(stats.tensors["hist"][f], ref_hist)


def test_top_example_windows_and_text_context(synthetic, stats):
    acts, ids, roles, img, patch, counted = _reference(synthetic)
    namer = synthetic.namer
    f = TOKEN_FEATURE
    for ex in stats.top_examples(f, 5):
        seq = ex.seq
        pos = int(acts[seq, :, f].argmax())
        assert ex.study_id == f"s{seq:05d}"
        assert ex.tokens[ex.max_index] == "effusion"
        assert ex.values[ex.max_index] == pytest.approx(float(acts[seq, pos, f]), abs=1e-4)
        lo, hi = max(pos - 6, 0), pos + 4
        ref = []
        for p in range(lo, min(hi, int((roles[seq] != int(Role.PAD)).sum()))):
            did = ids[seq, p] if img[seq, p] < 0 else -2 - (img[seq, p] * 64 + patch[seq, p])
            ref.append(namer(int(did)))
        assert ex.tokens == ref  # text max: the window alone, no text context appended
    # an image max: window of patch pseudo-tokens, a gap marker, then the prompt's last text tokens
    ex = stats.top_examples(REGION_FEATURE, 1)[0]
    assert ex.tokens[ex.max_index].startswith("<img0:")
    assert "…" in ex.tokens
    tail = ex.tokens[ex.tokens.index("…") + 1 :]
    n_real = int((roles[ex.seq] != int(Role.PAD)).sum())
    ref_tail = [namer(int(i)) for i in ids[ex.seq, n_real - len(tail) : n_real]]
    assert tail == ref_tail and len(tail) == 8


def test_heatmaps_follow_the_planted_region(synthetic, stats):
    acts, _, _, img, patch, _ = _reference(synthetic)
    rows, cols = synthetic.region
    examples = stats.top_examples(REGION_FEATURE, stats.config["n_heatmaps"])
    assert len(examples) == stats.config["n_heatmaps"]
    for ex in examples:
        hm = ex.heatmap
        assert hm is not None and hm.slot == "frontal" and (hm.rows, hm.cols) == (8, 8)
        grid = torch.tensor(hm.values).view(8, 8)
        ref = torch.zeros(64)
        sel = img[ex.seq] == 0
        ref[patch[ex.seq][sel]] = acts[ex.seq, sel, REGION_FEATURE]
        torch.testing.assert_close(grid.flatten(), ref.half().float(), atol=1e-3, rtol=1e-3)
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[rows, cols] = True
        assert (grid[inside] > 0).all() and (grid[~inside] == 0).all()
        assert ex.thumbnail is not None and ex.thumbnail.size == (224, 224)
    # thumbnails are kept only for prompts some heatmap slot still shows (bounded memory)
    h = stats.config["n_heatmaps"]
    shown = {int(s) for s in stats.tensors["top.seq"][:, :h].flatten() if s >= 0}
    assert set(stats.thumbnails) <= shown and len(stats.thumbnails) < len(synthetic.batches) * 10
    # a feature that never fires on an image keeps no heatmap
    assert all(e.heatmap is None for e in stats.top_examples(ROLE_FEATURE, 3))


def test_quantile_reservoir_counts_and_bounds(synthetic, stats):
    acts, *_, counted = _reference(synthetic)
    seq_max = acts.amax(dim=1)
    q = stats.tensors["qcount"].shape[1]
    for f in (TOKEN_FEATURE, REGION_FEATURE, 5):
        e = int(stats.tensors["hist_exp"][f])
        v = seq_max[:, f][seq_max[:, f] > 0]
        ref = torch.bincount((v / 2.0**e * q).long().clamp(max=q - 1), minlength=q)
        assert torch.equal(stats.tensors["qcount"][f], ref)
        kept = stats.tensors["quant.value"][f]
        kept_seq = stats.tensors["quant.seq"][f]
        for val, seq in zip(kept[kept > 0], kept_seq[kept > 0], strict=False):
            assert float(val) == pytest.approx(float(seq_max[seq, f]))
        per = stats.config["n_per_quantile_bin"]
        kept_bins = torch.bincount(
            (kept[kept > 0] / 2.0**e * q).long().clamp(max=q - 1), minlength=q
        )
        assert torch.equal(kept_bins, ref.clamp(max=per))  # every bin keeps min(count, per)
        groups = stats.quantile_groups(f, n_groups=5, per_group=3)
        assert groups
        for g in groups:
            assert 0 < len(g.examples) <= 3
            for ex in g.examples:
                assert g.bin_min < ex.max_value <= g.bin_max + 1e-6
            # bin_contains (SAE-Dashboard's): share of ALL counted tokens in [bin_min, bin_max]
            tok = acts[..., f][counted]
            ref_share = float(((tok >= g.bin_min) & (tok <= g.bin_max)).float().mean())
            assert g.bin_contains == pytest.approx(ref_share, rel=0.15, abs=3e-4)


def test_non_activating_examples_do_not_fire(synthetic, stats):
    acts, *_ = _reference(synthetic)
    negs = stats.non_activating_examples(TOKEN_FEATURE)
    assert len(negs) >= 10
    for ex in negs:
        assert "effusion" not in ex.tokens
    assert stats.non_activating_examples(ROLE_FEATURE) == []  # fires in every prompt's report


def test_correlations_match_numpy_corrcoef(synthetic, stats):
    acts, *_, counted = _reference(synthetic)
    x = acts[counted].numpy().astype(np.float64)  # all positions were sampled (large reservoir)
    assert stats.n_corr_positions == x.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.nan_to_num(np.corrcoef(x.T))
    for f in (TOKEN_FEATURE, 4, 10):
        row = ref[f].copy()
        row[f] = -np.inf
        top = stats.correlated(f)
        assert [i for i, _, _ in top][:3] == list(np.argsort(-row, kind="stable")[:3])
        for i, p, c in top:
            assert p == pytest.approx(row[i], abs=1e-4)
            cos = x[:, f] @ x[:, i] / (np.linalg.norm(x[:, f]) * np.linalg.norm(x[:, i]))
            assert c == pytest.approx(cos, abs=1e-4)


def test_logit_effects_and_alignment(synthetic, stats, decoder):
    W_dec, W_U = decoder
    logits = W_dec @ W_U
    for f in (0, 7):
        top, bot = stats.logits(f)
        ref_top = logits[f].topk(10).indices.tolist()
        assert [s for s, _ in top] == [synthetic.vocab[i] for i in ref_top]
        assert top[0][1] == pytest.approx(float(logits[f].max()), rel=1e-5)
        assert bot[0][1] == pytest.approx(float(logits[f].min()), rel=1e-5)
        centres, heights = stats.logit_histogram(f)
        assert sum(heights) == len(synthetic.vocab)
    l1 = stats.tensors["align_l1"][3]
    ref = W_dec[3].abs().sort(descending=True).values[:10] / W_dec[3].abs().sum()
    torch.testing.assert_close(l1, ref)


def test_batching_does_not_change_results(synthetic):
    """Statistics from the same prompts in other batch sizes are identical (range growth is exact)."""
    from sae_lens_maira.dashboards.synthetic import make_synthetic

    cfg = FeatureStatsConfig(n_top=8, n_random_contexts=0, n_corr_positions=0)
    whole = make_synthetic(n_studies=48, batch_size=48, d_sae=24, grid=(8, 8), seed=1,
                           with_images=False).batches[0]  # fmt: skip
    results = []
    for bs in (48, 7):
        c = FeatureStatsCollector(24, (8, 8), cfg)
        for i in range(0, 48, bs):
            sl = slice(i, i + bs)
            c.update(SequenceBatch(whole.study_ids[sl], whole.token_ids[sl], whole.feature_acts[sl],
                                   whole.mask[sl], whole.roles[sl], whole.image_index[sl],
                                   whole.patch_index[sl], whole.grid))  # fmt: skip
        results.append(c)
    a, b = results
    assert torch.equal(a.hist, b.hist) and torch.equal(a.nonzero, b.nonzero)
    assert torch.equal(a.qcount, b.qcount)
    sa, sb = a.top.sorted_state("t"), b.top.sorted_state("t")  # slots are an unordered set
    torch.testing.assert_close(sa["t.value"], sb["t.value"])
    assert torch.equal(sa["t.win_ids"], sb["t.win_ids"]) and torch.equal(sa["t.seq"], sb["t.seq"])


def test_bf16_activations_are_accepted(synthetic):
    c = FeatureStatsCollector(24, (8, 8), FeatureStatsConfig(n_top=4))
    b = synthetic.batches[0]
    c.update(SequenceBatch(b.study_ids, b.token_ids, b.feature_acts.bfloat16(), b.mask, b.roles,
                           b.image_index, b.patch_index, b.grid, None))  # fmt: skip
    st = c.finalize(synthetic.namer)
    assert st.max_act[0] == pytest.approx(float(b.feature_acts[..., 0].bfloat16().max()), rel=1e-2)


def test_bad_batches_give_clear_errors(synthetic):
    b = synthetic.batches[0]
    c = FeatureStatsCollector(24, (8, 8))
    with pytest.raises(ValueError, match="d_sae=24"):
        c.update(SequenceBatch(b.study_ids, b.token_ids, b.feature_acts[..., :10], b.mask, b.roles,
                               b.image_index, b.patch_index, b.grid))  # fmt: skip
    with pytest.raises(ValueError, match="mask must be"):
        c.update(SequenceBatch(b.study_ids, b.token_ids, b.feature_acts, b.mask.long(), b.roles,
                               b.image_index, b.patch_index, b.grid))  # fmt: skip
    with pytest.raises(ValueError, match="study_ids"):
        c.update(SequenceBatch(b.study_ids[:-1], b.token_ids, b.feature_acts, b.mask, b.roles,
                               b.image_index, b.patch_index, b.grid))  # fmt: skip
    with pytest.raises(ValueError, match="grid"):
        c.update(SequenceBatch(b.study_ids, b.token_ids, b.feature_acts, b.mask, b.roles,
                               b.image_index, b.patch_index, (4, 4)))  # fmt: skip
    with pytest.raises(ValueError, match="update"):
        FeatureStatsCollector(24, (8, 8)).finalize(synthetic.namer)
    with pytest.raises(ValueError, match="1024"):
        FeatureStatsConfig(ctx_left=1000, text_context=100)


def test_save_and_load_round_trip(stats, tmp_path):
    from sae_lens_maira.dashboards.feature_stats import FeatureStats

    stats.save(tmp_path / "st")
    back = FeatureStats.load(tmp_path / "st")
    for k, v in stats.tensors.items():
        assert torch.equal(back.tensors[k], v), k
    a, b = stats.top_examples(REGION_FEATURE, 1)[0], back.top_examples(REGION_FEATURE, 1)[0]
    assert a.tokens == b.tokens and a.heatmap == b.heatmap
    assert np.array_equal(np.asarray(a.thumbnail), np.asarray(b.thumbnail))
    with pytest.raises(FileNotFoundError, match="no feature statistics"):
        FeatureStats.load(tmp_path)


def test_privacy_hides_study_text(stats):
    ex = stats.top_examples(TOKEN_FEATURE, 1, private=True)[0]
    assert "effusion" not in ex.tokens
    assert ex.tokens[ex.max_index] in ("<report>", "<indication>")
    assert ex.study_id.startswith("study-")
    img = stats.top_examples(REGION_FEATURE, 1, private=True)[0]
    assert img.thumbnail is None and img.heatmap is not None


def test_window_values_and_random_context_maxima_match_reference(synthetic, stats):
    """Every stored window value is the counted activation at that position (zero outside)."""
    acts, *_ = _reference(synthetic)
    t = acts.shape[1]
    left = stats.config["ctx_left"]
    for prefix in ("top", "quant"):
        seq, pos = stats.tensors[f"{prefix}.seq"], stats.tensors[f"{prefix}.pos"]
        vals = stats.tensors[f"{prefix}.win_vals"]
        for f in range(synthetic.d_sae):
            for s in torch.nonzero(seq[f] >= 0).flatten().tolist():
                p = torch.arange(vals.shape[2]) + int(pos[f, s]) - left
                ok = (p >= 0) & (p < t)
                ref = torch.zeros(vals.shape[2])
                ref[ok] = acts[int(seq[f, s]), p[ok], f]
                torch.testing.assert_close(vals[f, s], ref)
    # non-activating examples are chosen by each feature's max over the shown window (+ context)
    rseq, rpos = stats.tensors["rand_seq"], stats.tensors["rand_pos"]
    for r in torch.nonzero(rseq >= 0).flatten().tolist():
        lo = max(int(rpos[r]) - left, 0)
        hi = int(rpos[r]) + stats.config["ctx_right"] + 1
        window_max = acts[int(rseq[r]), lo:hi].amax(dim=0)
        assert (stats.tensors["rand_max"][r] >= window_max).all()


def test_sparse_input_gives_identical_statistics(synthetic, decoder):
    """Sparse COO codes (a top-k SAE's output) and the same activations dense agree exactly."""
    from sae_lens_maira.dashboards.sequence_batch import topk_feature_acts

    cfg = FeatureStatsConfig(n_top=6, ctx_left=4, ctx_right=2, text_context=5, n_random_contexts=20)
    out = []
    for sparse in (False, True):
        c = FeatureStatsCollector(synthetic.d_sae, synthetic.grid, cfg)
        for b in synthetic.batches:
            acts = b.feature_acts
            if sparse:  # as a top-k SAE hands them over: k largest per token, zeros included
                v, i = acts.topk(8, dim=-1)
                acts = topk_feature_acts(i, v, synthetic.d_sae)
            c.update(SequenceBatch(b.study_ids, b.token_ids, acts, b.mask, b.roles, b.image_index,
                                   b.patch_index, b.grid, b.images))  # fmt: skip
        out.append(c.finalize(synthetic.namer, W_dec=decoder[0], W_U=decoder[1]))
    assert max(int((b.feature_acts > 0).sum(-1).max()) for b in synthetic.batches) <= 8
    dense, sparse = out
    assert dense.tensors.keys() == sparse.tensors.keys()
    for k, v in dense.tensors.items():
        torch.testing.assert_close(sparse.tensors[k], v, msg=k, equal_nan=True)


def test_topk_feature_acts_rejects_bad_codes():
    from sae_lens_maira.dashboards.sequence_batch import topk_feature_acts

    i = torch.zeros(2, 3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[batch, tokens, k\]"):
        topk_feature_acts(i, torch.zeros(2, 3, 5), 10)
    with pytest.raises(ValueError, match="d_sae=10"):
        topk_feature_acts(i + 10, torch.zeros(2, 3, 4), 10)
    b = SequenceBatch(["a"], torch.zeros(1, 3, dtype=torch.long),
                      torch.zeros(1, 3, 10).to_sparse_csr(dense_dim=1), torch.ones(1, 3, dtype=torch.bool),
                      torch.full((1, 3), int(Role.REPORT)), torch.full((1, 3), -1), torch.full((1, 3), -1),
                      (2, 2))  # fmt: skip
    with pytest.raises(ValueError, match="sparse COO"):
        b.validate(10)
