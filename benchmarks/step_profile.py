"""Where a training step's time goes: named regions, GPU idle time and host syncs (``--profile``).

``sae_step.py --profile`` runs three steps per side under the torch profiler with these regions
marked (by wrapping the functions for the duration of the profile only) and prints, per step:

* each region's host time and the device time of the kernels it launched (kernels launched from
  autograd's backward thread, e.g. inside gradient hooks, are not attributed to a region: they
  appear in the op table);
* how long the GPU sat idle between the first and last kernel, and the largest gaps;
* host syncs: device-to-host copies and stream/device synchronisations.

The top-ops table that follows is torch's own. Idle GPU time in a step that is timed with a sync
at each end is time the GPU waited for Python: syncs inside the step expose it.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

PREFIX = "§ "


def _wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(PREFIX + label):
            return fn(*args, **kwargs)

    return wrapped


def _targets() -> list[tuple[Any, str, str]]:
    """(owner, attribute, label) for every function worth a region, on either side."""
    import sae_lens.saes.matryoshka_batchtopk_sae as theirs

    import sae_lens_maira.kernels as kernels
    import sae_lens_maira.saes.decoder_constraint as constraint
    import sae_lens_maira.saes.matryoshka_sae as ours

    out: list[tuple[Any, str, str]] = [
        (torch.Tensor, "backward", "backward"),
        (torch.nn.utils, "clip_grad_norm_", "clip_grad_norm_"),
        (ours.MatryoshkaTrainingSAE, "training_forward_pass", "ours: forward"),
        (ours, "batch_topk", "ours: batch_topk"),
        (ours, "dead_topk", "ours: dead_topk"),
        (ours.MatryoshkaTrainingSAE, "_update_dead_counters", "ours: dead counters"),
        (ours.MatryoshkaTrainingSAE, "_encode_selected", "ours: sparse encode"),
        (kernels, "grouped_sparse_decode_csr", "ours: grouped decode"),
        (kernels, "matryoshka_prefix_mse", "ours: prefix losses"),
        (ours.MatryoshkaTrainingSAE, "_sparse_batch_tensor", "ours: COO feature_acts"),
        (constraint, "remove_parallel_component_", "ours: grad projection"),
        (constraint, "renormalize_rows_", "ours: decoder renorm"),
        (theirs.MatryoshkaBatchTopKTrainingSAE, "training_forward_pass", "saelens: forward"),
    ]
    return [t for t in out if hasattr(t[0], t[1])]


@contextlib.contextmanager
def regions() -> Iterator[None]:
    """Wrap the target functions in named profiler ranges; restore them afterwards."""
    saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, own value or _INHERITED)
    for owner, attr, label in _targets():
        saved.append((owner, attr, vars(owner).get(attr, _INHERITED)))
        setattr(owner, attr, _wrap(label, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if original is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


_INHERITED = object()


def _is_range(name: str) -> bool:
    return name.startswith(PREFIX) or name.startswith("Optimizer.")


def _device_events(prof: Any) -> list[Any]:
    """Kernels, copies and memsets on the device (not the device-side mirrors of named ranges)."""
    return [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
        and e.time_range.end > 0
        and not _is_range(e.name)
    ]


def summarize(prof: Any, steps: int) -> str:
    """Regions, GPU idle time and host syncs per step, as printable text."""
    lines = []
    per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU and _is_range(e.name):
            row = per[e.name.removeprefix(PREFIX)]
            row[0] += 1 / steps
            row[1] += e.cpu_time_total / steps / 1e3
            row[2] += getattr(e, "device_time_total", 0.0) / steps / 1e3
    if per:
        lines.append(f"{'region (per step)':32s} {'calls':>6s} {'host ms':>9s} {'device ms':>10s}")
        for name, (count, cpu_ms, dev_ms) in sorted(per.items(), key=lambda kv: -kv[1][2]):
            lines.append(f"{name:32s} {count:6.1f} {cpu_ms:9.2f} {dev_ms:10.2f}")

    kernels = sorted(_device_events(prof), key=lambda e: e.time_range.start)
    if kernels:
        busy, gaps, end = 0.0, [], kernels[0].time_range.start
        for prev, e in zip([None, *kernels[:-1]], kernels, strict=True):
            start, stop = e.time_range.start, e.time_range.end
            if start > end and prev is not None:
                gaps.append((start - end, prev.name, e.name))
            busy += max(0.0, stop - max(start, end))
            end = max(end, stop)
        span = end - kernels[0].time_range.start
        lines.append(
            f"GPU per step: span {span / steps / 1e3:.2f} ms, busy {busy / steps / 1e3:.2f} ms, "
            f"idle {(span - busy) / steps / 1e3:.2f} ms (idle gaps over 20 us: "
            f"{sum(1 for g in gaps if g[0] > 20) / steps:.1f})"
        )
        for gap, before, after in sorted(gaps, reverse=True)[:8]:
            lines.append(f"  gap {gap:8.1f} us  after {before[:48]:48s} before {after[:48]}")

    syncs: dict[str, int] = defaultdict(int)
    callers: dict[str, int] = defaultdict(int)
    for e in prof.events():
        name = e.name
        if name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs[name] += 1
            callers[_caller(e)] += 1
        elif name.startswith("Memcpy DtoH") or name == "aten::_local_scalar_dense":
            syncs[name] += 1
            if e.device_type == torch.autograd.DeviceType.CPU:
                callers[_caller(e)] += 1
    if syncs:
        listing = ", ".join(f"{k} {v / steps:.1f}" for k, v in sorted(syncs.items()))
        lines.append(f"host syncs per step: {listing}")
        for where, count in sorted(callers.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {count / steps:4.1f} x  {where}")
    return "\n".join(lines)


def _caller(event: Any) -> str:
    """The op that synchronised, with the innermost source line of ours or SAELens's above it."""
    ops, where, e = [], "", event.cpu_parent
    while e is not None:
        if e.name.startswith("aten::") and len(ops) < 2:
            ops.append(e.name)
        # Python frames are events of their own ("path.py(line): function") with with_stack
        if not where and ".py(" in e.name and "torch/" not in e.name:
            where = e.name
        if where and ops:
            break
        e = e.cpu_parent
    return f"{' <- '.join(ops) or '?'} @ {where or '?'}"
