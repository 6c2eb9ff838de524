"""Tokens per second of our activation cache against a plain transformers forward pass.

Baseline: transformers' LLaVA (Dinov2Backbone tower + MAIRA-2's 4-layer projector, the test
reference) run over the same studies with ``output_hidden_states=True``, keeping the hook layer's
hidden states — the way people cache activations without TransformerLens. Ours: ``cache_activations``
(stop at the hook, study token selection, arrow shards on disk). Both get the same weights, the
same studies, the same batch size and thread count, in one run; tokens are prompt tokens processed.

    python benchmarks/cache_throughput.py                         # CPU, small default
    python benchmarks/cache_throughput.py --preset maira-2 --device cuda --dtype bfloat16 --n-studies 32
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae_lens_maira.activations.cache import CacheConfig, cache_activations  # noqa: E402
from sae_lens_maira.checkpoint_config import Maira2Config  # noqa: E402
from sae_lens_maira.data.study import Study  # noqa: E402
from sae_lens_maira.model.hooked_maira2 import HookedMaira2  # noqa: E402
from sae_lens_maira.processing.images import ImagePreprocessor  # noqa: E402
from sae_lens_maira.processing.processor import Maira2Processor  # noqa: E402
from sae_lens_maira.processing.tokenizer import build_maira2_tokenizer  # noqa: E402
from tests.model.reference import build_reference, hub_layout_state_dict  # noqa: E402

REPORT = ("The heart size is normal. The lungs are clear without focal consolidation. No pleural effusion "
          "or pneumothorax. Right internal jugular central venous catheter tip in the lower SVC.")  # fmt: skip


def make_studies(n: int, size: int, seed: int = 0) -> list[Study]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = (rng.random((size + 40, size)) * 4000).astype(np.uint16)
        lateral = (rng.random((size, size)) * 4000).astype(np.uint16) if i % 2 else None
        out.append(Study(f"s{i}", frontal=img, lateral=lateral, indication="Shortness of breath for "
                         f"{i % 7 + 1} days, evaluate for pneumonia.", findings=REPORT))  # fmt: skip
    return out


def build(preset: str, device: str, dtype: torch.dtype, workdir: Path):
    tokenizer = build_maira2_tokenizer(
        [REPORT] * 50, vocab_size=2000 if preset == "small" else 32000
    )
    cfg = Maira2Config.preset(preset, text_vocab_size=len(tokenizer),
                              image_token_id=tokenizer.convert_tokens_to_ids("<image>"))  # fmt: skip
    hub = cfg.to_hf_dict()
    hub["text_config"]["rope_scaling"] = hub["text_config"].get("rope_scaling") or {
        "type": "linear",
        "factor": 1.0,
    }
    reference = build_reference(hub, seed=0, init_std=0.02).to(device=device, dtype=dtype)
    folder = _save(reference, hub, tokenizer, workdir)
    model = HookedMaira2.from_pretrained(folder, device=device, dtype=dtype)
    size = cfg.image_size
    processor = Maira2Processor(tokenizer, ImagePreprocessor(size=size, crop_size=size), patch_size=cfg.patch_size,
                                max_length=model.cfg.n_ctx)  # fmt: skip
    return reference.to(device=device, dtype=dtype).eval(), model, processor


def _save(reference, hub, tokenizer, workdir: Path) -> Path:
    from safetensors.torch import save_file

    folder = workdir / "ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hub_layout_state_dict(reference), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hub))
    tokenizer.save_pretrained(str(folder))
    return folder


@torch.no_grad()
def baseline(
    reference, processor, studies, layer: int, batch_size: int, device: str, dtype
) -> tuple[float, int]:
    """Plain transformers: forward with output_hidden_states=True, keep the hook layer's states."""
    tokens = 0
    kept = []
    start = time.perf_counter()
    for i in range(0, len(studies), batch_size):
        batch = processor(studies[i : i + batch_size], with_report=True, padding_side="right")
        out = reference(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                        pixel_values=batch.pixel_values.to(device=device, dtype=dtype), output_hidden_states=True)  # fmt: skip
        hidden = out.hidden_states[layer + 1]
        kept.append(hidden[batch.attention_mask.bool().to(device)].float().cpu())
        tokens += int(batch.attention_mask.sum())
    _sync(device)
    return time.perf_counter() - start, tokens


def ours(model, processor, studies, hook: str, batch_size: int, out: Path) -> tuple[float, int]:
    cfg = CacheConfig(hook_name=hook, output_dir=str(out), context_size=128, batch_size=batch_size,
                      shard_studies=max(batch_size * 4, 16))  # fmt: skip
    start = time.perf_counter()
    cache_activations(model, processor, studies, cfg, show_progress=False)
    _sync(str(model.cfg.device))
    elapsed = time.perf_counter() - start
    tokens = sum(len(processor.encode_study(s, with_report=True)) for s in studies)
    return elapsed, tokens


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", choices=("small", "maira-2"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--layer", type=int, default=None, help="hook layer (default: the middle block)")
    p.add_argument("--n-studies", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference, model, processor = build(args.preset, args.device, dtype, work)
        layer = args.layer if args.layer is not None else model.cfg.n_layers // 2 - 1
        hook = f"blocks.{layer}.hook_resid_post"
        studies = make_studies(args.n_studies, model.maira_config.image_size)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for r in range(args.repeats):
            t_base, n_base = baseline(
                reference, processor, studies, layer, args.batch_size, args.device, dtype
            )
            t_ours, n_ours = ours(
                model, processor, studies, hook, args.batch_size, work / f"cache{r}"
            )
            assert n_base == n_ours, (n_base, n_ours)
            runs.append({"baseline_s": t_base, "ours_s": t_ours, "tokens": n_ours})
            print(f"run {r}: baseline {n_base / t_base:,.0f} tok/s, ours {n_ours / t_ours:,.0f} tok/s, "
                  f"ratio {t_base / t_ours:.2f}x")  # fmt: skip
    best_base = min(r["baseline_s"] for r in runs)
    best_ours = min(r["ours_s"] for r in runs)
    tokens = runs[0]["tokens"]
    result = {
        "benchmark": "cache_throughput",
        "baseline": "transformers LLaVA forward, output_hidden_states=True",
        "preset": args.preset,
        "hook": hook,
        "n_layers": model.cfg.n_layers,
        "n_studies": args.n_studies,
        "batch_size": args.batch_size,
        "tokens": tokens,
        "baseline_tokens_per_s": tokens / best_base,
        "ours_tokens_per_s": tokens / best_ours,
        "speedup": best_base / best_ours,
        "runs": runs,
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "dtype": args.dtype,
        "threads": args.threads,
        "torch": torch.__version__,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30
        if args.device.startswith("cuda")
        else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"speedup (best of {args.repeats}): {result['speedup']:.2f}x  "
          f"({result['ours_tokens_per_s']:,.0f} vs {result['baseline_tokens_per_s']:,.0f} tokens/s)")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (
        f"cache_throughput_{args.preset}_{'cuda' if args.device.startswith('cuda') else 'cpu'}.json"
    )
    (out / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
