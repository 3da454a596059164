"""Schedules as pure functions of the step: the learning rate, and hybrid loss weights (seed 004).

Steps are 0-based optimizer updates: ``lr_at(0, ...)`` is the LR of the first
update. Being pure functions, a resumed run needs only the step to be back on
schedule; there is no scheduler object whose state could be lost (seed 000's
"were optimizer and LR-scheduler state restored?").

LR (``multistep``, seed 001's VLA-Adapter schedule)::

    step < W:                 lr * (f + (1 - f) * step / W)      f = warmup_start_factor (0.1: "from 10%")
    W <= step < D:            lr
    step >= D:                lr * decay_factor                  MultiStepLR, milestone D, gamma 0.1

LR (``cosine``)::

    step < W:                 as above
    step >= W:                lr * (m + (1 - m) * (1 + cos(pi * p)) / 2),  p = (step - W) / (max_steps - W), m = min_lr_factor

Hybrid weight ``w(t)`` from ``start`` (s) to ``end`` (e) over ``updates`` (N), p = min(t / N, 1)::

    linear:       s + (e - s) * p
    cosine:       e + (s - e) * (1 + cos(pi * p)) / 2
    exponential:  s * (e / s) ** p
"""

from __future__ import annotations

import math

from training.config import HybridWeightConfig, ScheduleConfig


def warmup_factor(step: int, warmup_steps: int, start_factor: float) -> float:
    """Linear warmup multiplier from start_factor to 1 over warmup_steps."""
    if step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def lr_at(step: int, base_lr: float, schedule: ScheduleConfig, max_steps: int) -> float:
    """The learning rate of update ``step`` (0-based)."""
    if step < schedule.warmup_steps:
        return base_lr * warmup_factor(step, schedule.warmup_steps, schedule.warmup_start_factor)
    if schedule.kind == "constant":
        return base_lr
    if schedule.kind == "multistep":
        return base_lr * (schedule.decay_factor if step >= schedule.num_steps_before_decay else 1.0)
    span = max(max_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / span, 1.0)
    m = schedule.min_lr_factor
    return base_lr * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def weight_at(step: int, spec: HybridWeightConfig) -> float:
    """The hybrid loss weight w(step) (seed 004's sft_loss_start_weight -> sft_loss_end_weight)."""
    p = min(step / spec.updates, 1.0)
    s, e = spec.start, spec.end
    if spec.kind == "linear":
        return s + (e - s) * p
    if spec.kind == "cosine":
        return e + (s - e) * 0.5 * (1.0 + math.cos(math.pi * p))
    return s * (e / s) ** p
