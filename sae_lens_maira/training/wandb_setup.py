"""Whether and where a training run logs to Weights & Biases.

W&B is off unless ``train.wandb: true``. When asked for without a W&B login (no
``WANDB_API_KEY``, no netrc entry for the W&B host) the run logs offline instead of failing with
wandb's ``UsageError``; either way the run says where its logs went (``wandb sync`` uploads an
offline run later). Logs go under ``train.wandb_dir`` unless ``WANDB_DIR`` is set.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

_OFFLINE_MODES = ("offline", "dryrun", "disabled")


@dataclass
class WandbStatus:
    mode: str  # "off", "online", "offline" or "disabled"
    dir: Path | None  # the folder wandb writes its run folders under (``<dir>/wandb``)
    reason: str

    @property
    def enabled(self) -> bool:
        return self.mode in ("online", "offline")

    def latest_run_dir(self) -> Path | None:
        """The newest run folder wandb wrote (``.../wandb/offline-run-*`` or ``run-*``)."""
        if self.dir is None:
            return None
        runs = [p for p in (self.dir / "wandb").glob("*run-*") if p.is_dir()]
        return max(runs, key=lambda p: p.stat().st_mtime) if runs else None

    def describe(self) -> str:
        if not self.enabled:
            return f"wandb: {self.mode} ({self.reason})"
        run = self.latest_run_dir()
        where = run or (self.dir / "wandb" if self.dir else "wandb's default folder")
        text = f"wandb: {self.mode} ({self.reason}); logs in {where}"
        if self.mode == "offline" and run is not None:
            text += f"; upload with `wandb sync {run}`"
        return text


def has_wandb_login() -> bool:
    """A W&B API key in the environment or in netrc for the W&B host (no network)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else []
    paths += [os.path.expanduser("~/.netrc"), os.path.expanduser("~/_netrc")]
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            auth = netrc.netrc(path).authenticators(host or "api.wandb.ai")
        except (netrc.NetrcParseError, OSError):
            continue
        if auth and auth[2]:
            return True
    return False


def resolve_wandb(requested: bool, log_dir: Path | None) -> WandbStatus:
    """Decide the run's W&B mode from the config, ``WANDB_MODE`` and the presence of a login."""
    env_dir = os.environ.get("WANDB_DIR")
    folder = Path(env_dir) if env_dir else log_dir
    if not requested:
        return WandbStatus("off", None, "set train.wandb: true to log to Weights & Biases")
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in _OFFLINE_MODES:
        return WandbStatus(
            "disabled" if mode == "disabled" else "offline", folder, f"WANDB_MODE={mode}"
        )
    if has_wandb_login():
        return WandbStatus("online", folder, "logged in")
    return WandbStatus("offline", folder, "no W&B login found; run `wandb login` to log online")


@contextmanager
def wandb_environment(status: WandbStatus) -> Iterator[WandbStatus]:
    """Set WANDB_MODE / WANDB_DIR for the run (SAELens's ``wandb.init`` reads them), then restore."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR")}
    try:
        if status.enabled:
            import wandb

            wandb.teardown()  # wandb reads its settings once per process: re-read them for this run
            os.environ["WANDB_MODE"] = status.mode
            if status.dir is not None:
                status.dir.mkdir(parents=True, exist_ok=True)
                os.environ["WANDB_DIR"] = str(status.dir)
        yield status
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
