"""Throughput accounting: FLOPs per sample, MFU, time spent waiting for data.

FLOP count (fwd + bwd, PaLM appendix B convention, no credit for activation
recomputation; the attention term counts the full T x T score matrix, as PaLM does)::

    per sample = 6 * N_lm * T + 12 * L * d * T^2                         language backbone, T tokens
               + 6 * N_vis * P * C + 12 * L_v * d_v * P^2 * C            vision, P patches x C cameras
                 (2 and 4 instead of 6 and 12 when the vision encoder is frozen: no backward there)
               + 6 * N_head * n_head_tokens                              projector, proprio, action head, lm_head if scored

N counts the weights of matrix multiplications (nn.Linear and the patch
convolution) only: embedding tables do no multiply-adds and an unused lm_head
does no work, so neither is in N. MFU = FLOPs/s achieved / the GPU's dense
bf16 peak (H100 SXM 989.4 TFLOP/s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100": 989.4e12,  # SXM / HBM3
    "H200": 989.4e12,
    "H800": 989.4e12,
    "GH200": 989.4e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "RTX PRO 6000": 503.8e12,
    "B200": 2250e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this GPU, None when unknown (or on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in name:
            return PEAK_BF16[key]
    return None


def matmul_params(module: nn.Module) -> int:
    """Weights that take part in matrix multiplications (Linear, Conv) inside ``module``."""
    total = 0
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            total += m.weight.numel()
    return total


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per sample, by part."""

    language: float
    vision: float
    heads: float

    @property
    def total(self) -> float:
        """All parts."""
        return self.language + self.vision + self.heads


def policy_flops(policy: nn.Module) -> FlopCount:
    """FLOPs per sample of a training.policy.Policy (see the module docstring for the formula)."""
    spec, layout = policy.spec, policy.layout
    lcfg, vcfg = policy.language.config, policy.vision.config
    seq = policy.seq_len
    d_attn = int(lcfg.num_attention_heads) * int(getattr(lcfg, "head_dim", None) or lcfg.hidden_size // lcfg.num_attention_heads)
    language = 6 * matmul_params(policy.language.model) * seq + 12 * int(lcfg.num_hidden_layers) * d_attn * seq ** 2
    cameras = len(spec.cameras)
    patches = (layout.vision.stop - layout.vision.start) // cameras
    trainable = any(p.requires_grad for p in policy.vision.parameters())
    mm, attn = (6, 12) if trainable else (2, 4)
    vision = cameras * (mm * matmul_params(policy.vision) * patches
                        + attn * int(vcfg.num_hidden_layers) * int(vcfg.hidden_size) * patches ** 2)
    heads = 6 * policy.projector.weight.numel() * patches * cameras + 6 * policy.proprio_proj.weight.numel()
    queries = layout.queries.stop - layout.queries.start
    for name in ("action_out", "action_in"):
        if hasattr(policy, name):
            heads += 6 * getattr(policy, name).weight.numel() * queries
    if hasattr(policy, "time_mlp"):
        heads += 6 * matmul_params(policy.time_mlp)
    if spec.objective == "next_token_ce" or spec.aux_ce:
        text = layout.prompt.stop - layout.prompt.start
        heads += 6 * policy.language.lm_head.weight.numel() * text
    return FlopCount(language=float(language), vision=float(vision), heads=float(heads))


@dataclass
class StepTimer:
    """Wall time per step and the part of it spent waiting for the next batch (after ``warmup`` steps)."""

    warmup: int = 0
    steps: int = 0
    measured_steps: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    _start: float = 0.0
    _data: float = 0.0
    last_step_seconds: float = 0.0

    def start(self) -> None:
        """A step begins."""
        self._start = time.perf_counter()
        self._data = 0.0

    def waited(self, seconds: float) -> None:
        """Add time spent blocked on the data loader."""
        self._data += seconds

    def stop(self) -> float:
        """A step ends; returns its wall time."""
        elapsed = time.perf_counter() - self._start
        self.last_step_seconds = elapsed
        if self.steps >= self.warmup:
            self.measured_steps += 1
            self.seconds += elapsed
            self.data_seconds += self._data
        self.steps += 1
        return elapsed

    @property
    def step_seconds(self) -> float:
        """Mean measured seconds per step."""
        return self.seconds / self.measured_steps if self.measured_steps else float("nan")

    @property
    def data_wait(self) -> float:
        """Fraction of measured time spent waiting for data."""
        return self.data_seconds / self.seconds if self.seconds else float("nan")
