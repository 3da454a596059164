"""Normalising actions and proprio with a stats file's bounds (q01/q99 -> [-1, 1], or mean/std)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.stats_file import MIN_SPREAD

Mode = Literal["q99", "mean_std", "none"]
MODES: tuple[str, ...] = ("q99", "mean_std", "none")


@dataclass(frozen=True)
class Normalizer:
    """An affine map per dimension; dims where mask is False pass through unchanged."""

    mode: str
    offset: np.ndarray  # subtract this
    scale: np.ndarray  # then divide by this
    mask: np.ndarray  # bool per dim

    @classmethod
    def from_stats(cls, stats: dict, mode: str, mask: list[bool] | None = None) -> Normalizer:
        """Build from one role's stats dict (mean/std/q01/q99)."""
        if mode not in MODES:
            raise ValueError(f"normalization mode {mode!r}; expected one of {MODES}")
        dim = len(stats["mean"])
        mask_arr = np.ones(dim, bool) if mask is None else np.asarray(mask, bool)
        if mode == "q99":
            lo, hi = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
            offset, scale = (lo + hi) / 2, np.maximum((hi - lo) / 2, MIN_SPREAD)
        elif mode == "mean_std":
            offset = np.asarray(stats["mean"], np.float32)
            scale = np.maximum(np.asarray(stats["std"], np.float32), MIN_SPREAD)
        else:
            offset, scale, mask_arr = np.zeros(dim, np.float32), np.ones(dim, np.float32), np.zeros(dim, bool)
        offset = np.where(mask_arr, offset, 0).astype(np.float32)
        scale = np.where(mask_arr, scale, 1).astype(np.float32)
        return cls(mode=mode, offset=offset, scale=scale, mask=mask_arr)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Raw -> normalised; q99 mode clips to [-1, 1] (outliers beyond the 1%/99% quantiles)."""
        y = (x - self.offset) / self.scale
        if self.mode == "q99":
            y = np.where(self.mask, np.clip(y, -1.0, 1.0), y)
        return y.astype(np.float32, copy=False)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        """Normalised -> raw (a policy's output back to robot units)."""
        return (y * self.scale + self.offset).astype(np.float32, copy=False)
