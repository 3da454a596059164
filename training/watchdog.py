"""Collapse watchdog (seed 000): notices when a watched metric falls far from its best and says so in one line.

Lines (matched by the known-issue catalog's ``policy-collapse`` entry, whose
remedy rolls back to the newest ``checkpoint-*`` holding ``HEALTHY``)::

    [watchdog] armed: reports COLLAPSE when metric=loss rises above 400% of its best
    [watchdog] armed: reports COLLAPSE when metric=success_rate drops below 50% of its best
    [watchdog] COLLAPSE metric=<name> value=<v> best=<b> drop=<fraction> step=<n>

``drop`` is how much worse than the best the (smoothed) value is, as a fraction
of the best's magnitude: ``(best - value) / |best|`` for higher-is-better metrics
(success 0.60 -> 0.02: drop=0.97) and ``(value - best) / |best|`` for
lower-is-better ones (loss 0.10 -> 0.50: drop=4.00). A metric collapses when
``drop > threshold`` after its warm-up. Values are smoothed with an EMA when
configured (per-batch loss and grad norm are noisy); evaluation metrics such as
success rate are usually watched raw. The trainer feeds ``loss`` and
``grad_norm`` at every logged step; other code (RL loops, evaluation) feeds its
own metrics through :meth:`CollapseWatchdog.observe`.

Detection lags the damage (the EMA needs a few bad values to move), so a
checkpoint saved in between was marked HEALTHY on weights that were already
wrecked. Each track therefore remembers ``last_good``: the last step whose raw
value was within the threshold of the best. A checkpoint newer than that step
was never measured healthy; the trainer withdraws its HEALTHY marker when the
collapse is reported, so the rollback never picks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from training.config import WatchConfig

TINY = 1e-12


@dataclass
class Collapse:
    """One collapse report."""

    metric: str
    value: float
    best: float
    drop: float
    step: int
    last_good: int | None = None  # the last step whose raw value was within the threshold (None: none seen)

    def line(self) -> str:
        """The fixed signature line."""
        return (f"[watchdog] COLLAPSE metric={self.metric} value={self.value:.4g} best={self.best:.4g} "
                f"drop={self.drop:.2f} step={self.step}")


@dataclass
class _Track:
    spec: WatchConfig
    smoothed: float | None = None
    best: float | None = None
    seen: int = 0
    last_good: int | None = None


@dataclass
class CollapseWatchdog:
    """Tracks the best value of each watched metric; reports collapses."""

    watches: list[WatchConfig]
    tracks: dict[str, _Track] = field(default_factory=dict)
    collapses: list[Collapse] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tracks = {w.metric: _Track(w) for w in self.watches}

    def armed_lines(self) -> list[str]:
        """One line per watched metric saying when it fires."""
        lines = []
        for w in self.watches:
            if w.direction == "max":
                rule = f"drops below {max(0.0, 1 - w.threshold) * 100:.0f}% of its best"
            else:
                rule = f"rises above {(1 + w.threshold) * 100:.0f}% of its best"
            lines.append(f"[watchdog] armed: reports COLLAPSE when metric={w.metric} {rule}"
                         + (f" (after {w.warmup_steps} steps)" if w.warmup_steps else ""))
        return lines

    def observe(self, metric: str, value: float, step: int) -> Collapse | None:
        """Feed one value; returns the collapse it reveals, if any. Unwatched metrics are ignored."""
        track = self.tracks.get(metric)
        if track is None or not math.isfinite(value):
            return None  # non-finite values are the non-finite guard's business
        w = track.spec
        track.seen += 1
        track.smoothed = value if track.smoothed is None or w.ema == 0 else w.ema * track.smoothed + (1 - w.ema) * value
        current = track.smoothed
        if track.best is None or (current > track.best if w.direction == "max" else current < track.best):
            track.best = current
        if self._drop(w, value, track.best) <= w.threshold:  # raw, not smoothed: the EMA lags the damage
            track.last_good = step
        if step < w.warmup_steps:
            return None
        drop = self._drop(w, current, track.best)
        if drop > w.threshold:
            report = Collapse(metric, current, track.best, drop, step, track.last_good)
            self.collapses.append(report)
            return report
        return None

    @staticmethod
    def _drop(w: WatchConfig, value: float, best: float) -> float:
        """How much worse than the best `value` is, as a fraction of the best's magnitude."""
        worse = (best - value) if w.direction == "max" else (value - best)
        return worse / max(abs(best), TINY)

    @property
    def healthy(self) -> bool:
        """No collapse seen in this run."""
        return not self.collapses

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (so a resumed run compares against the same best)."""
        return {m: {"smoothed": t.smoothed, "best": t.best, "seen": t.seen, "last_good": t.last_good}
                for m, t in self.tracks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of state_dict; metrics no longer watched are ignored."""
        for metric, values in state.items():
            if metric in self.tracks:
                track = self.tracks[metric]
                track.smoothed, track.best, track.seen = values["smoothed"], values["best"], values["seen"]
                track.last_good = values.get("last_good")  # absent in checkpoints written before it existed
