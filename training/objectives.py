"""Training objectives as pure functions of tensors (no modules, no state, no process group).

- action chunks: masked L1 of the current action and the next K, reported
  separately as seed 001's ``Curr Action L1 Loss`` / ``Next Actions L1 Loss``;
- flow matching (openpi's action expert): ``x_t = t * noise + (1 - t) * actions``,
  target velocity ``u = noise - actions``, masked MSE;
- next-token cross entropy (the VLM mode);
- CRaFT (seed 001): retention loss against a frozen anchor's features, the dual
  update ``lambda <- max(0, lambda + eta * (L_ret - eps))``, the per-tensor
  conflict ratio (share of tensors with ``<g_act, g_ret> < 0``), conflict-aware
  projection of the action gradient, and the anchor feature selection;
- hybrid losses (seed 004): ``primary + w(t) * secondary`` (w from training.schedules);
- PPO's clipped objective with seed 000's ratio guard (``if torch.any(ratio > 10)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ChunkL1:
    """Masked L1 over an action chunk, and its two logged parts."""

    total: torch.Tensor  # mean over every valid (step, dim) of the chunk
    current: torch.Tensor  # chunk index 0
    future: torch.Tensor  # chunk indices 1..K (0 when K = 0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values [B, T, D] over positions where mask [B, T] is True (0 if none)."""
    weights = mask.to(values.dtype).unsqueeze(-1).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def l1_chunk_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> ChunkL1:
    """L1 between predicted and true chunks [B, K+1, A]; mask [B, K+1] drops padding past an episode's end."""
    err = (pred.float() - target.float()).abs()
    future = _masked_mean(err[:, 1:], mask[:, 1:]) if err.shape[1] > 1 else err.new_zeros(())
    return ChunkL1(total=_masked_mean(err, mask), current=_masked_mean(err[:, :1], mask[:, :1]), future=future)


def flow_matching_inputs(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, u): the noised chunk at time t [B] and the velocity the model must predict."""
    t = t.to(actions.dtype).view(-1, *([1] * (actions.dim() - 1)))
    return t * noise + (1.0 - t) * actions, noise - actions


def flow_matching_loss(velocity: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE between predicted and target velocity [B, K+1, A]."""
    return _masked_mean((velocity.float() - target.float()).pow(2), mask)


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross entropy of logits [B, T, V] against labels [B, T] already aligned (position i predicts labels[i])."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index)


def hybrid_loss(primary: torch.Tensor, secondary: torch.Tensor, weight: float) -> torch.Tensor:
    """primary + w * secondary (seed 004: GRPO + w(t) * SFT)."""
    return primary + weight * secondary


# --- CRaFT -------------------------------------------------------------------------------------------


def select_anchor_features(hidden: torch.Tensor, vision: slice, prompt: slice, queries: slice,
                           anchor: str, tokens: str) -> torch.Tensor:
    """The features CRaFT keeps near the anchor, from one layer's hidden states [B, T, H].

    ``raw_only``: the observation tokens (vision, plus the prompt for ``vision_plus_prompt``);
    ``aq_only``: the action-query tokens; ``concat``: both, along the token axis.
    """
    raw = hidden[:, vision] if tokens == "vision_only" else torch.cat([hidden[:, vision], hidden[:, prompt]], dim=1)
    if anchor == "raw_only":
        return raw
    if anchor == "aq_only":
        return hidden[:, queries]
    if anchor == "concat":
        return torch.cat([raw, hidden[:, queries]], dim=1)
    raise ValueError(f"anchor type {anchor!r}; expected concat | aq_only | raw_only")


def retention_loss(features: torch.Tensor, anchor_features: torch.Tensor) -> torch.Tensor:
    """L_ret = ||f_theta - f_anchor||^2 as a mean over samples, tokens and feature dims (budget is per element)."""
    return (features.float() - anchor_features.float().detach()).pow(2).mean()


def dual_update(lam: float, retention: float, budget: float, dual_lr: float) -> float:
    """lambda <- max(0, lambda + eta * (L_ret - epsilon))."""
    return max(0.0, lam + dual_lr * (retention - budget))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() * b.float()).sum()


def conflict_ratio(g_act: list[torch.Tensor | None], g_ret: list[torch.Tensor | None]) -> float:
    """Share of parameter tensors (with both gradients) whose gradients point against each other."""
    dots = [_dot(a, r) for a, r in zip(g_act, g_ret, strict=True) if a is not None and r is not None]
    if not dots:
        return 0.0
    return float((torch.stack(dots) < 0).float().mean())


def project_conflicting(g_act: list[torch.Tensor | None], g_ret: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Per tensor: where <g_act, g_ret> < 0, remove g_act's component along g_ret (PCGrad-style)."""
    out: list[torch.Tensor | None] = []
    for a, r in zip(g_act, g_ret, strict=True):
        if a is None or r is None:
            out.append(a)
            continue
        dot, norm2 = _dot(a, r), _dot(r, r)
        if dot < 0 and norm2 > 0:
            a = a - (dot / norm2).to(a.dtype) * r
        out.append(a)
    return out


# --- PPO -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PPOResult:
    """The clipped surrogate loss and what to log about it."""

    loss: torch.Tensor
    ratio_max: float
    clip_fraction: float
    approx_kl: float
    guarded: bool  # the ratio guard fired: the loss is zero and the update must be skipped


def ppo_clipped_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                     clip: float = 0.1, ratio_guard: float | None = 10.0) -> PPOResult:
    """-E[min(r A, clip(r, 1-c, 1+c) A)], r = exp(logp_new - logp_old); seed 000 used clip 0.1.

    When any ratio exceeds ``ratio_guard`` (seed 000's ``torch.any(ratio > 10)``) the
    old and new policies have drifted too far for the surrogate to be trusted: the
    loss is returned as a graph-connected zero and ``guarded`` is True.
    """
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages.detach()
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    loss = -surrogate.mean()
    with torch.no_grad():
        ratio_max = float(ratio.max())
        clip_fraction = float(((ratio - 1.0).abs() > clip).float().mean())
        approx_kl = float((ratio - 1.0 - torch.log(ratio)).mean())
    guarded = ratio_guard is not None and bool(torch.any(ratio > ratio_guard))
    if guarded:
        loss = (logp_new * 0.0).sum()  # not loss * 0: an overflowed ratio makes that NaN
    return PPOResult(loss=loss, ratio_max=ratio_max, clip_fraction=clip_fraction, approx_kl=approx_kl, guarded=guarded)
