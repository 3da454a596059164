"""One optimizer update, two ways: fused AdamW queued on the device, or clipped and stepped from the host.

Every step of :func:`training.train.train_loop` ends the same way: the gradient
norm (:meth:`grad_norm`), one small all-reduce of (loss, norm), a copy of both
to the host (:class:`HostScalars`), :meth:`queue`, the host reads the copy,
:meth:`apply` with whether the step was finite. What differs is when the
optimizer runs:

- :class:`DeviceUpdate` (fused AdamW, DDP or one process): fused AdamW can skip
  a non-finite update and apply the clip factor inside its kernel, so the
  update is queued *before* the host reads the loss, and the next batch is
  copied while it runs: the one host sync per step then leaves the GPU a
  queue, not an idle gap.
- :class:`HostUpdate` (CRaFT, FSDP, unfused AdamW): clip, then step once the
  host knows the step was finite. CRaFT combines its gradients on the host;
  FSDP's sharded parameters take this plain path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class HostScalars:
    """A few device values copied to the host as soon as they exist, read later.

    The copy is queued where the values are computed and an event marks it, so
    reading waits for that point of the stream only, not for the optimizer step
    queued after it: the GPU still has the update to run while the host logs
    and queues the next forward, instead of idling from the sync until then.
    """

    def __init__(self, values: Any) -> None:
        self.event = None
        if values.device.type == "cuda":
            self.values = values.to("cpu", non_blocking=True)  # lands in pinned memory
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.values = values

    def get(self) -> list[float]:
        """The values (waits for the copy)."""
        if self.event is not None:
            self.event.synchronize()
        return self.values.tolist()


def queue_update(optimizer: Any, summed: Any, norm: Any, max_norm: float | None) -> None:
    """Queue fused AdamW's step without reading anything on the host.

    ``found_inf`` (a non-finite loss sum or norm) makes the kernel leave weights,
    moments and step counts as they were; ``grad_scale`` divides the gradients
    by max(norm / max_norm, 1), the same factor ``clip_grad_norm_`` multiplies
    by, applied in the kernel instead of a separate pass over every gradient.
    These are the attributes ``torch.amp.GradScaler`` sets on fused optimizers.
    """
    optimizer.found_inf = (~torch.isfinite(summed).all()).float()  # 0-dim, as the step counts are
    scale = None
    if max_norm:
        scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)  # clip_grad_norm_'s 1e-6
        scale = torch.nan_to_num(scale, nan=1.0, posinf=1.0)  # the step is skipped then anyway
    optimizer.grad_scale = scale
    optimizer.step()


class DeviceUpdate:
    """Fused AdamW queued before the host sync, so the GPU runs the update while the host logs."""

    def __init__(self, optimizer: Any, params: list[Any], max_norm: float | None,
                 prefetch: Callable[[], None]) -> None:
        self.optimizer, self.params, self.max_norm, self.prefetch = optimizer, params, max_norm, prefetch

    def grad_norm(self) -> Any:
        """Total norm before clipping (the kernel clips), left on the device."""
        return torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]).detach().float()

    def queue(self, summed: Any, norm: Any) -> None:
        """The update and the next batch's copy, queued behind the host copy of (loss, norm)."""
        queue_update(self.optimizer, summed, norm, self.max_norm)
        self.prefetch()

    def apply(self, finite: bool) -> None:
        """Nothing left: the kernel already skipped a non-finite update."""


class HostUpdate:
    """Clip, then step from the host once the loss is known finite (CRaFT, FSDP, unfused AdamW)."""

    def __init__(self, optimizer: Any, params: list[Any], max_norm: float | None) -> None:
        self.optimizer, self.params, self.max_norm = optimizer, params, max_norm

    def grad_norm(self) -> Any:
        """Total norm before clipping; the gradients are clipped in place."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm or float("inf"))
        return (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).detach().float()

    def queue(self, summed: Any, norm: Any) -> None:
        """Nothing to queue: the step waits for the host to see the loss."""

    def apply(self, finite: bool) -> None:
        """Step unless the guard skips this update."""
        if finite:
            self.optimizer.step()
