"""A first look at HookedMaira2 on the small default: one study in, hooks and a generation out.

Runs in seconds on a CPU with random weights; it shows the plumbing (images spliced into the
prompt, every hook firing, per-role statistics, greedy generation), not a trained model.
"""

from __future__ import annotations

import numpy as np
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.prompt import FINDINGS_INSTRUCTION, SYSTEM_PROMPT
from sae_lens_maira.processing.roles import Role
from sae_lens_maira.processing.tokenizer import build_maira2_tokenizer


def _phantom(size: int = 320, seed: int = 0) -> np.ndarray:
    """A crude chest phantom (two dark lungs, a bright heart) so the demo has a picture to read."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.45 * (((x - 0.32) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    img -= 0.45 * (((x - 0.68) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    img += 0.5 * (((x - 0.55) / 0.14) ** 2 + ((y - 0.62) / 0.12) ** 2 < 1)
    return (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 4095).astype(np.uint16)


def run(print_fn=print, max_new_tokens: int = 16) -> dict[str, tuple[int, ...]]:
    torch.manual_seed(0)
    corpus = [
        SYSTEM_PROMPT,
        FINDINGS_INSTRUCTION,
        "INDICATION: TECHNIQUE: COMPARISON: N/A USER: ASSISTANT:",
        "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    ] * 20
    tokenizer = build_maira2_tokenizer(corpus, vocab_size=600)
    model = HookedMaira2.from_config("small", tokenizer=tokenizer, seed=0, device="cpu")
    processor = Maira2Processor(
        tokenizer,
        ImagePreprocessor(size=224, crop_size=224),
        patch_size=14,
        max_length=model.cfg.n_ctx,
    )
    study = Study(
        "phantom",
        frontal=_phantom(),
        lateral=_phantom(seed=1)[:, ::-1].copy(),
        indication="Shortness of breath.",
        technique="PA and lateral views.",
    )
    batch = processor(study)
    print_fn(
        f"small default: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{model.n_patches} patches per image, prompt of {batch.input_ids.shape[1]} tokens"
    )
    with torch.no_grad():
        _, cache = model.run_with_cache(
            batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values
        )
    roles = batch.roles[0]
    print_fn(f"{len(cache)} hooks fired; residual-stream norms by token role:")
    for name in [
        "hook_vision_out",
        "hook_projector_out",
        "hook_embed",
        *[f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)],
    ]:
        act = cache[name]
        line = f"  {name:28s} {str(tuple(act.shape)):18s}"
        if act.shape[:2] == batch.input_ids.shape:
            norms = act[0].norm(dim=-1)
            for role in (Role.BOILERPLATE, Role.IMAGE_FIRST, Role.IMAGE_MIDDLE, Role.INDICATION):
                sel = roles == role
                line += f" {role.name.lower()}={norms[sel].mean():.2f}" if sel.any() else ""
        print_fn(line)
    text = model.generate(
        batch.input_ids,
        max_new_tokens=max_new_tokens,
        pixel_values=batch.pixel_values,
        attention_mask=batch.attention_mask,
        return_type="str",
    )
    print_fn(f"greedy generation (random weights): {text[0]!r}")
    return {k: tuple(v.shape) for k, v in cache.items()}
