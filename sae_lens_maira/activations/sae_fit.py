"""Does an SAE fit a model? One check used wherever an SAE meets HookedMaira2."""

from __future__ import annotations

from typing import Any

from sae_lens_maira.model.hooked_maira2 import HookedMaira2


def check_sae_fits(sae_cfg: Any, model: HookedMaira2, hook_name: str | None = None) -> str:
    """The hook the SAE reads; raises a ValueError with the fix when width or hook do not match.

    ``sae_cfg`` is an SAE's ``cfg`` (inference or training): ``d_in`` and ``metadata.hook_name``.
    """
    sae_hook = getattr(getattr(sae_cfg, "metadata", None), "hook_name", None)
    hook = hook_name or sae_hook
    if not hook:
        raise ValueError(
            "the SAE's metadata names no hook; pass hook_name=... (e.g. blocks.15.hook_resid_post)"
        )
    if sae_hook and sae_hook != hook:
        raise ValueError(
            f"the SAE was made for {sae_hook} but {hook} was asked for; use the SAE of that hook"
        )
    if hook not in model.hook_dict:
        raise ValueError(
            f"the model has no hook {hook!r}; it has {model.cfg.n_layers} blocks "
            f"(e.g. blocks.{model.cfg.n_layers // 2}.hook_resid_post)"
        )
    if int(sae_cfg.d_in) != model.cfg.d_model:
        raise ValueError(
            f"the SAE reads d_in={sae_cfg.d_in} but {hook} of this model has width {model.cfg.d_model}; "
            "use an SAE trained on this model (or set sae.d_in to match)"
        )
    return hook
