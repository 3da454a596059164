"""Objectives and schedules as pure functions: each checked against its formula; CRaFT on a toy problem."""
from __future__ import annotations

import math
import statistics

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from training.config import CraftConfig, HybridWeightConfig, ScheduleConfig  # noqa: E402
from training.craft import CraftGradients  # noqa: E402
from training.objectives import (  # noqa: E402
    conflict_ratio,
    dual_update,
    flow_matching_inputs,
    flow_matching_loss,
    hybrid_loss,
    l1_chunk_loss,
    next_token_ce,
    ppo_clipped_loss,
    project_conflicting,
    retention_loss,
    select_anchor_features,
)
from training.schedules import lr_at, weight_at  # noqa: E402

pytestmark = pytest.mark.train


def test_l1_chunk_splits_current_and_next_actions_and_ignores_padding() -> None:
    target = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]],
                         [[3.0, 3.0], [4.0, 4.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])  # sample 0's last step is past its episode
    parts = l1_chunk_loss(pred, target, mask)
    assert parts.current.item() == pytest.approx((1 + 3) / 2)
    assert parts.future.item() == pytest.approx((2 + 4 + 5) / 3)
    assert parts.total.item() == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)
    assert l1_chunk_loss(pred[:, :1], target[:, :1], mask[:, :1]).future.item() == 0.0


def test_flow_matching_interpolates_noise_and_actions_and_targets_their_difference() -> None:
    actions, noise = torch.randn(4, 5, 7), torch.randn(4, 5, 7)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5])
    x_t, u = flow_matching_inputs(actions, noise, t)
    torch.testing.assert_close(x_t[0], actions[0])
    torch.testing.assert_close(x_t[1], noise[1])
    torch.testing.assert_close(x_t[2], 0.25 * noise[2] + 0.75 * actions[2])
    torch.testing.assert_close(u, noise - actions)
    mask = torch.ones(4, 5, dtype=torch.bool)
    assert flow_matching_loss(u, u, mask).item() == 0.0
    assert flow_matching_loss(u + 2.0, u, mask).item() == pytest.approx(4.0)


def test_next_token_ce_matches_torch_and_skips_ignored_labels() -> None:
    logits = torch.randn(2, 4, 11)
    labels = torch.tensor([[1, 2, -100, 4], [5, -100, -100, 10]])
    expected = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(next_token_ce(logits, labels), expected)


def test_hybrid_loss_weights_the_secondary_term() -> None:
    assert hybrid_loss(torch.tensor(2.0), torch.tensor(3.0), 0.5).item() == pytest.approx(3.5)


@pytest.mark.parametrize(("anchor", "tokens", "width"), [
    ("raw_only", "vision_only", 4), ("raw_only", "vision_plus_prompt", 7),
    ("aq_only", "vision_plus_prompt", 2), ("concat", "vision_only", 6), ("concat", "vision_plus_prompt", 9)])
def test_anchor_features_select_the_documented_tokens(anchor: str, tokens: str, width: int) -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(1, 12, 1).expand(2, 12, 3)
    out = select_anchor_features(hidden, slice(0, 4), slice(4, 7), slice(8, 10), anchor, tokens)
    assert out.shape == (2, width, 3)
    if anchor == "aq_only":
        assert out[0, :, 0].tolist() == [8.0, 9.0]
    with pytest.raises(ValueError, match="anchor type"):
        select_anchor_features(hidden, slice(0, 4), slice(4, 7), slice(8, 10), "both", tokens)


def test_retention_loss_and_dual_update_follow_their_formulas() -> None:
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert retention_loss(f, f).item() == 0.0
    assert retention_loss(f, f + 1.0).item() == pytest.approx(1.0)
    assert dual_update(0.5, retention=0.3, budget=0.1, dual_lr=0.01) == pytest.approx(0.502)
    assert dual_update(0.001, retention=0.0, budget=0.1, dual_lr=0.1) == 0.0  # max(0, ...)


def test_conflict_ratio_counts_tensors_whose_gradients_disagree() -> None:
    g_act = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([-1.0]), None]
    g_ret = [torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor([2.0]), torch.tensor([1.0])]
    assert conflict_ratio(g_act, g_ret) == pytest.approx(2 / 3)  # the None tensor is not counted
    assert conflict_ratio([None], [None]) == 0.0


def test_projection_removes_only_the_conflicting_component() -> None:
    a, r = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.0])
    agree = torch.tensor([3.0, 1.0])
    projected = project_conflicting([a, agree, None], [r, torch.tensor([1.0, 0.0]), torch.tensor([1.0])])
    torch.testing.assert_close(projected[0], torch.tensor([0.0, 1.0]))  # orthogonal to r now
    assert torch.equal(projected[1], agree) and projected[2] is None


def _toy_craft(budget: float, craft: bool, projection: bool = False, steps: int = 300) -> tuple[float, float, float]:
    """A linear encoder W whose frozen readout v forces W away from W0 to fit the targets.

    Returns (mean retention over the last 50 steps, final lambda, mean conflict ratio).
    """
    g = torch.Generator().manual_seed(0)
    d = 8
    w0 = torch.randn(d, d, generator=g) / math.sqrt(d)
    v, u = torch.randn(d, generator=g), 2.0 * torch.randn(d, generator=g)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([w], lr=0.02)
    grads = CraftGradients([w], CraftConfig(enabled=True, retention_budget=budget, dual_lr=2.0, projection=projection), 1)
    lam, rets, ratios = 0.0, [], []
    for _ in range(steps):
        x = torch.randn(64, d, generator=g)
        features = x @ w.T
        action = ((features @ v) - x @ u).pow(2).mean()
        ret = retention_loss(features, x @ w0.T)
        if craft:
            grads.backward(action, ret, 1.0)
            step = grads.finish(lam)
            lam = step.lambda_after
            ratios.append(step.conflict_ratio)
        else:
            action.backward()
        opt.step()
        opt.zero_grad()
        rets.append(ret.item())
    return statistics.mean(rets[-50:]), lam, statistics.mean(ratios) if ratios else 0.0


def test_craft_keeps_retention_near_its_budget_where_the_unconstrained_run_drifts_past_it() -> None:
    drift, _, _ = _toy_craft(budget=1.0, craft=False)
    budget = drift / 4
    held, lam, ratio = _toy_craft(budget, craft=True)
    projected, _, projected_ratio = _toy_craft(budget, craft=True, projection=True)
    print(f"\n[craft toy] unconstrained retention {drift:.4f}; budget {budget:.4f}; dual {held:.4f} (lambda {lam:.2f}); "
          f"dual + projection {projected:.4f}; conflict ratio {ratio:.2f} / {projected_ratio:.2f}")
    assert drift > 3 * budget
    assert abs(held - budget) < 0.35 * budget and lam > 0
    assert projected < 1.2 * budget  # projection never lets the action gradient push retention up
    assert 0.0 < ratio <= 1.0 and 0.0 < projected_ratio <= 1.0


def test_craft_drops_a_non_finite_retention_gradient_and_flags_it() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    grads = CraftGradients([w], CraftConfig(enabled=True, dual_lr=0.5), 1)
    grads.backward((w * 2.0).sum(), (w * float("nan")).sum(), 1.0)
    step = grads.finish(0.3)
    assert step.nonfinite and step.lambda_after == 0.3  # no dual update from a NaN
    torch.testing.assert_close(w.grad, torch.full((3,), 2.0))


def test_fixed_lambda_combines_with_the_configured_value() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    grads = CraftGradients([w], CraftConfig(enabled=True, dual=False, fixed_lambda=0.1, projection=False), 1)
    grads.backward((w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([0.0, 10.0])).sum(), 1.0)
    step = grads.finish(grads.lam(0.0))
    assert step.lambda_before == step.lambda_after == 0.1
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 1.0]))


# --- schedules ------------------------------------------------------------------------------------------


def test_multistep_lr_warms_up_from_ten_percent_then_decays_tenfold() -> None:
    s = ScheduleConfig(kind="multistep", warmup_steps=100, num_steps_before_decay=1000)
    lr = 2e-4
    assert lr_at(0, lr, s, 2000) == pytest.approx(2e-5)  # 10% at the first step
    assert lr_at(50, lr, s, 2000) == pytest.approx(lr * (0.1 + 0.9 * 50 / 100))
    assert lr_at(100, lr, s, 2000) == pytest.approx(lr)
    assert lr_at(999, lr, s, 2000) == pytest.approx(lr)
    assert lr_at(1000, lr, s, 2000) == pytest.approx(lr * 0.1)  # MultiStepLR, gamma 0.1
    assert lr_at(1999, lr, s, 2000) == pytest.approx(lr * 0.1)


def test_cosine_lr_follows_its_formula() -> None:
    s = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_factor=0.1)
    lr, total = 1e-3, 110
    assert lr_at(5, lr, s, total) == pytest.approx(lr * (0.1 + 0.9 * 0.5))
    assert lr_at(10, lr, s, total) == pytest.approx(lr)
    assert lr_at(60, lr, s, total) == pytest.approx(lr * (0.1 + 0.9 * 0.5))  # halfway: cos(pi/2) = 0
    assert lr_at(35, lr, s, total) == pytest.approx(lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))))
    assert lr_at(110, lr, s, total) == pytest.approx(lr * 0.1)
    assert lr_at(7, lr, ScheduleConfig(kind="constant"), total) == lr


@pytest.mark.parametrize(("kind", "expected"), [
    ("linear", {0: 1.0, 100: 0.75, 200: 0.5, 400: 0.5}),
    ("cosine", {0: 1.0, 100: 0.75, 50: 0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 4)), 200: 0.5, 999: 0.5}),
    ("exponential", {0: 1.0, 100: 0.5 ** 0.5, 200: 0.5, 300: 0.5}),
])
def test_hybrid_weight_schedules_match_their_formulas(kind: str, expected: dict[int, float]) -> None:
    spec = HybridWeightConfig(start=1.0, end=0.5, updates=200, kind=kind)  # seed 004's defaults
    for step, value in expected.items():
        assert weight_at(step, spec) == pytest.approx(value), (kind, step)


def test_exponential_weight_needs_positive_ends() -> None:
    with pytest.raises(ValueError, match="exponential needs"):
        HybridWeightConfig(start=1.0, end=0.0, kind="exponential")


# --- PPO --------------------------------------------------------------------------------------------------


def test_ppo_clips_the_ratio_to_one_plus_minus_clip() -> None:
    logp_old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    same = ppo_clipped_loss(torch.zeros(4, requires_grad=True), logp_old, adv, clip=0.1)
    assert same.loss.item() == pytest.approx(0.0) and same.clip_fraction == 0.0 and not same.guarded
    logp_new = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5])).requires_grad_()
    out = ppo_clipped_loss(logp_new, logp_old, adv, clip=0.1)
    # min(r A, clip(r) A): 1.1, 0.5, -1.5, -0.9
    assert out.loss.item() == pytest.approx(-(1.1 + 0.5 - 1.5 - 0.9) / 4)
    assert out.clip_fraction == 1.0 and out.ratio_max == pytest.approx(1.5)


def test_ppo_ratio_guard_zeroes_the_update() -> None:
    logp_new = torch.tensor([0.0, math.log(12.0)], requires_grad=True)  # ratio 12 > 10 (seed 000's guard)
    out = ppo_clipped_loss(logp_new, torch.zeros(2), torch.ones(2), clip=0.1, ratio_guard=10.0)
    assert out.guarded and out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(logp_new.grad, torch.zeros(2))
    assert not ppo_clipped_loss(logp_new, torch.zeros(2), torch.ones(2), ratio_guard=None).guarded


def test_profile_kernel_shares_split_kernel_time_by_name() -> None:
    from training.profiling import kernel_shares

    rows = [("sm90_xmma_gemm_bf16bf16_bf16f32", 600.0), ("nvjet_tst_128x256", 100.0),
            ("pytorch_flash::flash_fwd_kernel", 200.0), ("triton_poi_fused_add_mul_0", 100.0)]
    shares = kernel_shares(rows)
    assert shares["kernel_s"] == pytest.approx(1000.0 / 1e6)  # device times are in microseconds
    assert (shares["matmul"], shares["attention"], shares["other"]) == pytest.approx((0.7, 0.2, 0.1))


def test_exposed_communication_is_collective_time_with_no_compute_under_it() -> None:
    from types import SimpleNamespace

    from training.profiling import comm_intervals, exposed_time

    # Two all-reduces: 10-30 overlaps compute 0-20 (10 exposed), 40-50 has nothing under it (10 exposed);
    # compute kernels overlapping each other (0-20 and 5-15) count once; a copy hides nothing.
    def event(name: str, start: float, end: float, device: str = "CUDA") -> SimpleNamespace:
        return SimpleNamespace(name=name, device_type=f"DeviceType.{device}", thread=1, cpu_parent=None,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [event("sm90_xmma_gemm_bf16", 0, 20), event("triton_poi_fused_mul_0", 5, 15),
              event("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 10, 30),
              event("Memcpy HtoD (Pinned -> Device)", 40, 50), event("ncclKernel_AllGather_RING_LL", 40, 50),
              event("aten::mm", 0, 60, device="CPU")]  # a host op: with kernels present, only kernels count
    comm, compute = comm_intervals(events)
    assert sorted(comm) == [(10, 30), (40, 50)] and sorted(compute) == [(0, 20), (5, 15)]
    assert exposed_time(comm, compute) == (30, 20)
    assert exposed_time([(0, 10), (5, 12)], [(2, 3), (4, 6), (11, 20)]) == (12, 12 - 1 - 2 - 1)
    assert exposed_time([], [(0, 1)]) == (0, 0)
    # CPU (gloo): collectives run on gloo's threads; compute is the top-level ops of the other threads.
    host = [SimpleNamespace(name=n, device_type="DeviceType.CPU", thread=t, cpu_parent=parent,
                            time_range=SimpleNamespace(start=a, end=b))
            for n, t, parent, a, b in [("gloo:all_reduce", 2, None, 10, 30), ("aten::addmm", 1, None, 0, 20),
                                       ("aten::mm", 1, "addmm", 0, 20), ("c10d::allreduce_", 1, None, 9, 10)]]
    assert comm_intervals(host) == ([(10, 30)], [(0, 20)])
