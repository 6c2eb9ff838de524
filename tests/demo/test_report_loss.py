"""report_loss runs the last block on the scored positions only: the same loss and gradients as
TransformerLens's full forward."""

import torch
import torch.nn.functional as F

from sae_lens_maira.demo.lm_training import report_loss
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from tests.model.test_equivalence import _prompt


def _full_forward_loss(model, batch):
    resid = model(batch["input_ids"], pixel_values=batch["pixel_values"],
                  attention_mask=batch["attention_mask"], stop_at_layer=model.cfg.n_layers)  # fmt: skip
    w = batch["target_weights"]
    keep = w > 0
    logits = model.unembed(model.ln_final(resid[:, :-1][keep][None]))[0]
    ce = F.cross_entropy(logits.float(), batch["input_ids"][:, 1:][keep], reduction="none")
    return (ce * w[keep]).sum() / w[keep].sum()


def test_report_loss_equals_the_full_forward(hub_checkpoint, tokenizer):
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    model.train()
    pad = model.tokenizer.pad_token_id
    counts = (1, 2)
    prompts = [_prompt(tokenizer, n, 4 + i) + [5, 6, 7, 8, 9][: 3 + 2 * i] for i, n in enumerate(counts)]
    T = max(map(len, prompts))
    ids = torch.full((2, T), pad)
    mask = torch.zeros(2, T, dtype=torch.long)
    weights = torch.zeros(2, T)
    for b, p in enumerate(prompts):  # right padded; the last 3 / 5 tokens are the "report"
        ids[b, : len(p)] = torch.tensor(p)
        mask[b, : len(p)] = 1
        weights[b, len(p) - 3 - 2 * b : len(p)] = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0][: 3 + 2 * b])
    batch = {
        "input_ids": ids, "attention_mask": mask, "target_weights": weights[:, 1:],
        "pixel_values": torch.randn(sum(counts), 3, 56, 56, generator=torch.Generator().manual_seed(1)),
    }  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for fn in (_full_forward_loss, report_loss):
        model.zero_grad()
        loss = fn(model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() if p.grad is not None else None for p in params]))
    (ref, ref_grads), (got, got_grads) = results
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
    n_compared = 0
    for a, b in zip(got_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert float((a - b).norm()) <= 1e-5 * float(b.norm()) + 1e-9
            n_compared += 1
    assert n_compared > 10
