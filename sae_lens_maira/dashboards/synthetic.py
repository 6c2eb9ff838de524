"""Synthetic batches with planted features whose truth is known (tests, benchmark, offline demos).

Prompts look like MAIRA-2's: boilerplate, one or two image runs (patch pseudo-tokens), then
indication and report text. Planted features:
- ``TOKEN_FEATURE`` fires on the word "effusion" (and weakly on the next token);
- ``REGION_FEATURE`` fires on frontal-image patches of a lower-left block, in studies labelled
  with cardiomegaly, and nowhere else;
- ``ROLE_FEATURE`` fires weakly on every report token;
- every other feature fires at random, sparsely, with small values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from sae_lens_maira.dashboards.sequence_batch import DashboardMeta, SequenceBatch, TokenNamer
from sae_lens_maira.processing.roles import Role

TOKEN_FEATURE, REGION_FEATURE, ROLE_FEATURE = 0, 1, 2
SYSTEM = "you are an expert radiology assistant . USER : given the current frontal image".split()
WORDS = (
    "the lungs are clear . no acute cardiopulmonary process . heart size is normal . there is a "
    "small left pleural effusion . pacemaker leads terminate in the right ventricle . mild "
    "cardiomegaly is present . no pneumothorax . stable mediastinal contours . chest pain cough"
).split()
IMAGE_TOKEN = "<image>"


@dataclass
class SyntheticData:
    batches: list[SequenceBatch]
    namer: TokenNamer
    meta: DashboardMeta
    vocab: list[str]
    region: tuple[slice, slice]  # rows, cols of REGION_FEATURE's block on the frontal image
    d_sae: int
    grid: tuple[int, int]


def make_synthetic(
    n_studies: int = 64,
    batch_size: int = 16,
    d_sae: int = 32,
    grid: tuple[int, int] = (8, 8),
    text_len: int = 24,
    n_images: int = 2,
    with_images: bool = True,
    noise_density: float = 0.02,
    seed: int = 0,
) -> SyntheticData:
    """Build ``n_studies`` prompts in batches (padded on the right) with planted features."""
    g = torch.Generator().manual_seed(seed)
    vocab: list[str] = [*sorted(set(SYSTEM) | set(WORDS)), IMAGE_TOKEN]
    tok = {w: i for i, w in enumerate(vocab)}
    image_id = tok[IMAGE_TOKEN]
    rows, cols = grid
    n_p = rows * cols
    region = (slice(rows // 2, rows), slice(0, max(1, cols // 3)))
    batches = []
    for start in range(0, n_studies, batch_size):
        b = min(batch_size, n_studies - start)
        seqs = []
        for i in range(b):
            # (token id, role, image index, patch index) per position
            seq: list[tuple[int, Role, int, int]] = [
                (tok[w], Role.BOILERPLATE, -1, -1) for w in SYSTEM
            ]
            k = 1 + (start + i) % n_images
            for im in range(k):
                for p in range(n_p):
                    role = (
                        Role.IMAGE_FIRST
                        if p == 0
                        else Role.IMAGE_LAST
                        if p == n_p - 1
                        else Role.IMAGE_MIDDLE
                    )
                    seq.append((image_id, role, im, p))
            n_text = text_len - int(torch.randint(0, 6, (1,), generator=g))
            words = torch.randint(0, len(WORDS), (n_text,), generator=g).tolist()
            for j, w in enumerate(words):
                role = Role.INDICATION if j < 4 else Role.REPORT
                seq.append((tok[WORDS[w]], role, -1, -1))
            cardio = (start + i) % 3 == 0
            ids, roles, img_idx, patch_idx = (list(column) for column in zip(*seq))
            seqs.append((ids, roles, img_idx, patch_idx, cardio))
        t = max(len(s[0]) for s in seqs)
        token_ids = torch.zeros(b, t, dtype=torch.long)
        mask = torch.zeros(b, t, dtype=torch.bool)
        role_t = torch.full((b, t), int(Role.PAD), dtype=torch.long)
        img_t = torch.full((b, t), -1, dtype=torch.long)
        patch_t = torch.full((b, t), -1, dtype=torch.long)
        for i, (ids, roles, im, pa, _) in enumerate(seqs):
            n = len(ids)
            token_ids[i, :n] = torch.tensor(ids)
            mask[i, :n] = True
            role_t[i, :n] = torch.tensor([int(r) for r in roles])
            img_t[i, :n] = torch.tensor(im)
            patch_t[i, :n] = torch.tensor(pa)
        noise = torch.rand(b, t, d_sae, generator=g)
        acts = torch.where(noise < noise_density, torch.rand(b, t, d_sae, generator=g) * 0.5,
                           torch.zeros(b, t, d_sae))  # fmt: skip
        acts[..., :3] = 0
        strength = 2.0 + 3.0 * torch.rand(b, t, generator=g)
        is_eff = token_ids == tok["effusion"]
        acts[..., TOKEN_FEATURE] = torch.where(is_eff, strength, acts[..., TOKEN_FEATURE])
        after = torch.zeros_like(is_eff)
        after[:, 1:] = is_eff[:, :-1]
        acts[..., TOKEN_FEATURE] = torch.where(after, 0.3 * strength, acts[..., TOKEN_FEATURE])
        r_ = patch_t // cols
        c_ = patch_t % cols
        in_region = (img_t == 0) & (r_ >= region[0].start) & (c_ < region[1].stop)
        cardio = torch.tensor([s[4] for s in seqs])[:, None]
        acts[..., REGION_FEATURE] = torch.where(in_region & cardio, strength, 0.0)
        acts[..., ROLE_FEATURE] = torch.where(role_t == int(Role.REPORT), 0.2 + 0.1 * strength, 0.0)
        acts = acts * mask[..., None]
        images: list[list[Image.Image | None]] | None = None
        if with_images:
            images = [
                [_xray(seed * 1000 + start + i, im) for im in range(1 + (start + i) % n_images)]
                for i in range(b)
            ]
        batches.append(
            SequenceBatch(
                study_ids=[f"s{start + i:05d}" for i in range(b)],
                token_ids=token_ids,
                feature_acts=acts,
                mask=mask,
                roles=role_t,
                image_index=img_t,
                patch_index=patch_t,
                grid=grid,
                images=images,
            )
        )
    namer = TokenNamer(vocab, grid)
    meta = DashboardMeta(model_id="maira-2-synthetic", layer=3, hook_name="blocks.3.hook_resid_post",
                         sae_set="synthetic", d_sae=d_sae, source_set="res-syn", dataset="synthetic",
                         n_layers=8, d_model=12)  # fmt: skip
    return SyntheticData(batches, namer, meta, vocab, region, d_sae, grid)


def _xray(seed: int, view: int, size: int = 128) -> Image.Image:
    """A cartoon chest X-ray (two dark lungs in a bright body), different per study."""
    g = torch.Generator().manual_seed(seed)
    im = Image.new("L", (size, size + 16 * view), 40)
    d = ImageDraw.Draw(im)
    d.ellipse((8, 10, size - 8, size - 4), fill=170)
    jitter = int(torch.randint(0, 8, (1,), generator=g))
    d.ellipse((18 + jitter, 20, size // 2 - 6, size - 20), fill=70)
    d.ellipse((size // 2 + 6, 20, size - 18 - jitter, size - 20), fill=70)
    d.ellipse((size // 2 - 18, size // 2, size // 2 + 22, size - 14), fill=200)
    return im
