"""Experiment tracking through wandb: online, offline (the default), or disabled; rank 0 only.

The run id is made once and stored in every checkpoint, so a resumed run
continues the same wandb run (``resume="allow"``). Keys come from
``WANDB_API_KEY`` or ``~/.netrc``; ``wandb login`` is never called (seed 003:
it rejects the new 86-character keys). ``disabled`` never imports wandb.

Metric names follow seed 001: ``VLA Train/Loss``, ``Curr Action L1 Loss``,
``Next Actions L1 Loss``, ``VLA Train/Gradient Norm``, ``VLA Train/Learning Rate``,
``CRaFT/Retention Loss``, ``CRaFT/Retention NonFinite``, ``CRaFT/Lambda``,
``CRaFT/Lambda Before``, ``CRaFT/Lambda After``, ``CRaFT/Conflict Ratio``.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any

from training.config import TrainConfig

ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """An 8-character id in wandb's alphabet."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(8))


class Tracker:
    """A wandb run, or nothing."""

    def __init__(self, run: Any, run_id: str, mode: str) -> None:
        self.run = run
        self.run_id = run_id
        self.mode = mode

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log one step's metrics."""
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (offline runs are flushed to disk)."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def start_tracking(cfg: TrainConfig, run_id: str | None, is_main: bool, log=print) -> Tracker:
    """Start (or continue, with the same id) the wandb run on rank 0; other ranks get a no-op tracker."""
    run_id = run_id or new_run_id()
    if not is_main or cfg.wandb.mode == "disabled":
        return Tracker(None, run_id, "disabled")
    import wandb

    directory = Path(cfg.out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.wandb.name, tags=cfg.wandb.tags,
        id=run_id, resume="allow", mode=cfg.wandb.mode, dir=str(directory),
        config=cfg.model_dump(mode="json"),
        # console="off": wandb would otherwise wrap stdout, and gates read stdout.
        settings=wandb.Settings(console="off", init_timeout=120),
    )
    if cfg.wandb.mode == "offline":
        log(f"[wandb] offline run id={run_id} dir={directory / 'wandb'} (sync later: wandb sync {directory / 'wandb'})")
    else:
        log(f"[wandb] online run id={run_id}")
    return Tracker(run, run_id, cfg.wandb.mode)
