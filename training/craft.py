"""CRaFT's update (seed 001): two gradients per step, synchronised, projected where they conflict, combined.

Per micro-batch the action loss and the retention loss are differentiated
separately (``torch.autograd.grad``) and summed into two buffers. At the end of
the step both are averaged over ranks, so the conflict ratio, the projection
and the dual update see the global gradients and every rank applies the same
update. The parameter gradient is then ``g_act' + lambda * g_ret`` where
``g_act'`` is ``g_act`` with conflicting components removed per tensor.

This replaces DDP's reducer (which all-reduces one gradient, during backward):
the trainer does not wrap the model in DDP when CRaFT is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from training.config import CraftConfig
from training.objectives import conflict_ratio, dual_update, project_conflicting


@dataclass(frozen=True)
class CraftStep:
    """What one CRaFT update did (for the console line and tracking)."""

    retention: float  # global mean retention loss of the step
    nonfinite: bool  # the retention loss was NaN/inf on some rank: its gradient was dropped
    lambda_before: float
    lambda_after: float
    conflict_ratio: float  # share of parameter tensors with <g_act, g_ret> < 0


class CraftGradients:
    """Accumulates per-objective gradients over micro-batches and writes the combined gradient."""

    def __init__(self, params: list[nn.Parameter], cfg: CraftConfig, world_size: int) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.cfg = cfg
        self.world_size = world_size
        self._act: list[torch.Tensor | None] = [None] * len(self.params)
        self._ret: list[torch.Tensor | None] = [None] * len(self.params)
        self._retention = torch.zeros(())
        self._nonfinite = torch.zeros(())

    def lam(self, current: float) -> float:
        """The lambda this step combines with: the dual variable, or the fixed value."""
        return current if self.cfg.dual else self.cfg.fixed_lambda

    def backward(self, action_loss: torch.Tensor, retention: torch.Tensor, scale: float) -> None:
        """Add this micro-batch's two gradients (each loss multiplied by ``scale``, e.g. 1/accum)."""
        finite = bool(torch.isfinite(retention.detach()))
        self._retention = self._retention.to(retention.device) + (retention.detach() * scale if finite else 0.0)
        self._nonfinite = self._nonfinite.to(retention.device) + (0.0 if finite else 1.0)
        g_act = torch.autograd.grad(action_loss * scale, self.params, retain_graph=finite, allow_unused=True)
        self._act = [_add(a, g) for a, g in zip(self._act, g_act, strict=True)]
        if finite:  # a non-finite retention loss must not poison the update (CRaFT/Retention NonFinite = 1)
            g_ret = torch.autograd.grad(retention * scale, self.params, allow_unused=True)
            self._ret = [_add(r, g) for r, g in zip(self._ret, g_ret, strict=True)]

    def finish(self, lam: float) -> CraftStep:
        """Average over ranks, measure conflicts, project, write p.grad; returns the step's CRaFT values."""
        g_act, g_ret = self._sync(self._act), self._sync(self._ret)
        scalars = torch.stack([self._retention.float(), self._nonfinite.float()])
        if self.world_size > 1:
            dist.all_reduce(scalars)
            scalars[0] /= self.world_size
        retention, nonfinite = float(scalars[0]), bool(scalars[1] > 0)
        ratio = conflict_ratio(g_act, g_ret)
        if self.cfg.projection:
            g_act = project_conflicting(g_act, g_ret)
        use = self.lam(lam)
        for p, a, r in zip(self.params, g_act, g_ret, strict=True):
            grad = a if r is None else (r * use if a is None else a + use * r)
            p.grad = None if grad is None else grad.to(p.dtype)
        after = dual_update(lam, retention, self.cfg.retention_budget, self.cfg.dual_lr) \
            if self.cfg.dual and math.isfinite(retention) and not nonfinite else use
        self._act = [None] * len(self.params)
        self._ret = [None] * len(self.params)
        self._retention = torch.zeros(())
        self._nonfinite = torch.zeros(())
        return CraftStep(retention=retention, nonfinite=nonfinite, lambda_before=use, lambda_after=after,
                         conflict_ratio=ratio)

    def _sync(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if self.world_size == 1:
            return grads
        # Every rank must send the same tensors in the same order: fill absent gradients with zeros.
        full = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        # One flat buffer per dtype: one collective instead of one per tensor (hundreds of them).
        flat = _flatten_dense_tensors(full)
        dist.all_reduce(flat)
        flat /= self.world_size
        return list(_unflatten_dense_tensors(flat, full))


def _add(acc: torch.Tensor | None, grad: torch.Tensor | None) -> torch.Tensor | None:
    if grad is None:
        return acc
    return grad.detach().clone() if acc is None else acc + grad.detach()
