"""The trainer runbooks launch: ``torchrun ... -m training.train --config FILE``.

Usage::

    torchrun --standalone --nproc_per_node=2 -m training.train --config training/configs/tiny_cpu.yaml
    torchrun ... -m training.train --config FILE --resume                 # newest complete checkpoint in out_dir
    torchrun ... -m training.train --config FILE --resume OUT/checkpoint-000200   # exactly this one (rollback)
    python -m training.train --config FILE --set max_steps=20 --set wandb.mode=disabled   # one process
    python -m training.train --help      # every config key --set accepts, with type, default and description

Reads a training cache (``python -m training.cache``) and its statistics, builds
the policy (training.policy), and runs the loop below under DDP (gloo on CPU,
NCCL on GPU) or FSDP, with bf16 autocast on GPU, gradient accumulation,
clipping, a non-finite guard, LR from training.schedules, CRaFT (training.craft),
checkpoints (training.checkpoint), wandb (training.tracking) and the collapse
watchdog (training.watchdog). Log lines: training.progress and training/LOGS.md.

Exit codes: 0 done; 2 bad input (config, paths, checkpoint refused; nothing
trained); 3 collapse (watchdog, on_collapse=stop); 4 too many non-finite steps.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import save_request
from training.config import ConfigError, TrainConfig, load_config

if TYPE_CHECKING:  # torch is imported only once a run starts: --help and config errors need none
    from training.update import DeviceUpdate, HostUpdate

EXIT_BAD_INPUT, EXIT_COLLAPSE, EXIT_NONFINITE = 2, 3, 4


@dataclass
class TrainState:
    """Loop state that a checkpoint carries besides weights, optimizer and RNG."""

    step: int = 0  # updates done = index of the next update
    lam: float = 0.0
    nonfinite_total: int = 0
    nonfinite_since_save: int = 0
    last_loss: float = float("nan")
    wandb_run_id: str | None = None


@dataclass
class Run:
    """Everything the loop touches, set up once by ``setup``."""

    cfg: TrainConfig
    ctx: Any  # training.distributed.DistContext
    policy: Any  # the Policy (sharded in place under FSDP)
    model: Any  # what forward is called on: policy, DDP(policy), or compiled
    anchor: Any  # frozen copy of the initial policy (CRaFT) or None
    optimizer: Any
    loader: Any  # training.cache_dataset.CacheLoader
    batches: Iterator[dict[str, Any]]
    tokens: Any  # training.instructions.TokenTable on the device
    noise: Any  # torch.Generator for flow-matching noise (per rank, checkpointed)
    craft: Any  # training.craft.CraftGradients or None
    watchdog: Any
    tracker: Any
    log: Any  # training.progress.Progress
    state: TrainState
    bf16: bool
    stats_path: str | None
    flops_per_sample: float


@dataclass
class StepOutcome:
    """What one update produced: what the guard, the log lines, metrics and the watchdog read."""

    step: int
    loss: float  # mean over ranks and accumulation micro-batches
    grad_norm: float  # before clipping
    seconds: float
    logs: dict[str, Any]  # the objective's terms, on the device; averaged over ranks only when logged
    aux_weight: float | None  # the hybrid schedule's w(t), None without objective.aux_ce
    craft: Any  # training.craft.CraftStep or None


def train_loop(run: Run) -> int:
    """Update until max_steps: accumulate, sync, clip, guard, step, log, watch, checkpoint."""
    import torch

    from training.profiling import StepProfiler
    from training.schedules import weight_at
    from training.throughput import StepTimer
    from training.update import HostScalars

    cfg, ctx, st = run.cfg, run.ctx, run.state
    save_request.install()
    timer = StepTimer(warmup=min(cfg.runtime.timing_warmup_steps, max(cfg.max_steps - st.step - 1, 0)))
    profiler = StepProfiler(cfg.runtime.profile_steps, cfg.runtime.profile_start, Path(cfg.out_dir), ctx.is_main, run.log)
    feed = BatchFeed(run, timer)
    update = make_update(run, feed)
    while st.step < cfg.max_steps:
        step = st.step
        profiler.before(step)
        set_lr(run, step)
        aux_w = weight_at(step, cfg.objective.aux_ce) if cfg.objective.aux_ce else None
        timer.start()
        loss_sum, logs = accumulate(run, feed, aux_w)
        craft = craft_step(run)
        norm = update.grad_norm()
        # One small all-reduce and one host sync per step: a NaN loss on any rank (whose gradient can be
        # finite: |x - nan| has a zero subgradient) or a non-finite norm makes every rank skip together.
        # The same all-reduce carries a save request (SIGUSR1 on any rank): every rank sees it at this step.
        asked = torch.tensor(float(save_request.requested()), device=loss_sum.device)
        summed = ctx.all_reduce_sum(torch.stack([loss_sum.float(), norm.to(loss_sum.device), asked]))
        scalars = HostScalars(torch.cat([summed, norm.view(1).to(summed.device)]))
        update.queue(summed[:2], norm)  # fused: the update runs on the GPU while the host waits for the copy
        total, norm_sum, save_asked, gn = scalars.get()
        finite = math.isfinite(total) and math.isfinite(norm_sum)
        update.apply(finite)
        run.optimizer.zero_grad(set_to_none=True)
        seconds = timer.stop()
        profiler.after(step)
        st.step += 1
        done = StepOutcome(step, total / ctx.world_size, gn, seconds, logs, aux_w, craft)
        if not finite and skip_nonfinite(run, done):
            return EXIT_NONFINITE
        if step % cfg.log_every == 0 or st.step == cfg.max_steps:
            metrics = log_step(run, done)
            if collapse_stops(run, metrics, step):
                return EXIT_COLLAPSE
        if save_asked or st.step % cfg.checkpoint.save_every == 0 or (st.step == cfg.max_steps and cfg.checkpoint.save_final):
            save(run)
        if save_asked:
            run.log(f"[train] stopped on request ({save_request.SIGNAL.name}) after saving step={st.step}")
            return 0
    run.log(f"[train] done step={st.step} final_loss={st.last_loss:.4f}")
    report_throughput(run, timer)
    return 0


class BatchFeed:
    """Device batches in order; one may be copied ahead while the fused update runs. Waits count as data time."""

    def __init__(self, run: Run, timer: Any) -> None:
        self.run, self.timer = run, timer
        self.pending: dict[str, Any] | None = None  # the next step's first micro-batch, already on the device

    def next(self) -> dict[str, Any]:
        """The next batch on the device: the one copied ahead, else drawn now."""
        t0 = time.perf_counter()
        batch = self.pending if self.pending is not None else prepare_batch(next(self.run.batches), self.run)
        self.pending = None
        self.timer.waited(time.perf_counter() - t0)
        return batch

    def prefetch(self) -> None:
        """Copy the next step's first batch now, unless a checkpoint is saved first."""
        st, cfg = self.run.state, self.run.cfg
        if st.step + 1 < cfg.max_steps and (st.step + 1) % cfg.checkpoint.save_every:
            # Not before a checkpoint: the saved data cursor and noise RNG must not run a batch ahead.
            t0 = time.perf_counter()
            self.pending = prepare_batch(next(self.run.batches), self.run)
            self.timer.waited(time.perf_counter() - t0)


def make_update(run: Run, feed: BatchFeed) -> DeviceUpdate | HostUpdate:
    """The update this run takes: fused on the device where it can, else from the host (training.update)."""
    from training.update import DeviceUpdate, HostUpdate

    cfg = run.cfg
    params = [p for p in run.policy.parameters() if p.requires_grad]
    # Fused AdamW can skip a non-finite update and apply the clip factor inside its kernel, so the update
    # is queued before the host reads the loss, and the next batch is copied while it runs: the one host
    # sync per step then leaves the GPU a queue, not an idle gap. (CRaFT combines its gradients on the
    # host; FSDP's sharded parameters take the plain path.)
    on_device = run.optimizer.defaults.get("fused") and run.craft is None and cfg.runtime.parallel != "fsdp"
    if on_device:
        return DeviceUpdate(run.optimizer, params, cfg.optim.max_grad_norm, feed.prefetch)
    return HostUpdate(run.optimizer, params, cfg.optim.max_grad_norm)


def set_lr(run: Run, step: int) -> None:
    """Every parameter group takes the step's LR: a pure function of the step, so a resume needs no scheduler state."""
    from training.schedules import lr_at

    cfg = run.cfg
    lr = fault_lr(lr_at(step, cfg.optim.lr, cfg.schedule, cfg.max_steps), step, cfg, run.log)
    for group in run.optimizer.param_groups:
        group["lr"] = lr


def accumulate(run: Run, feed: BatchFeed, aux_w: float | None) -> tuple[Any, dict[str, Any]]:
    """Forward and backward over grad_accum micro-batches; their mean loss and logs, still on the device."""
    import torch

    from training.distributed import gradient_sync
    from training.objectives import hybrid_loss

    cfg, ctx = run.cfg, run.ctx
    accum, layer = cfg.optim.grad_accum, cfg.craft.anchor_layer if run.craft else None
    loss_sum, logs_sum = torch.zeros((), device=ctx.device), {}
    for micro in range(accum):
        batch = feed.next()
        # Only the last micro-batch all-reduces: the others would pay a collective for nothing.
        with gradient_sync(run.model, micro == accum - 1):
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=run.bf16):
                out = run.model(batch, hidden_layer=layer)
                loss = hybrid_loss(out.loss, out.aux_ce, aux_w) if out.aux_ce is not None else out.loss
            if run.craft is None:
                (loss / accum).backward()
            else:
                craft_backward(run, batch, out, loss, layer)
        loss_sum += loss.detach() / accum
        for key, value in out.logs.items():
            logs_sum[key] = logs_sum.get(key, 0.0) + value / accum
    return loss_sum, logs_sum


def craft_backward(run: Run, batch: dict[str, Any], out: Any, loss: Any, layer: int) -> None:
    """CRaFT: the action and retention gradients of one micro-batch, kept apart until the step combines them."""
    import torch

    from training.objectives import retention_loss

    cfg, ctx = run.cfg, run.ctx
    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        _, anchor_hidden = run.anchor.encode(batch, layer)
    ret = retention_loss(run.policy.features(out.features, cfg.craft.anchor, cfg.craft.anchor_tokens),
                         run.policy.features(anchor_hidden, cfg.craft.anchor, cfg.craft.anchor_tokens))
    run.craft.backward(loss, ret, 1.0 / cfg.optim.grad_accum)


def craft_step(run: Run) -> Any:
    """CRaFT: write the combined (projected, lambda-weighted) gradient and move the dual variable; None when off."""
    if run.craft is None:
        return None
    craft = run.craft.finish(run.craft.lam(run.state.lam))
    if run.cfg.craft.dual:
        run.state.lam = craft.lambda_after
    return craft


def skip_nonfinite(run: Run, done: StepOutcome) -> bool:
    """The non-finite guard: count and report the skipped update; True when too many say stop (exit 4)."""
    from training.progress import skip_line, stop_nonfinite_line

    st, limit = run.state, run.cfg.runtime.max_nonfinite_steps
    st.nonfinite_total += 1
    st.nonfinite_since_save += 1  # the next checkpoint is not HEALTHY
    run.log(skip_line(done.step, done.loss, done.grad_norm, st.nonfinite_total, limit))
    if st.nonfinite_total < limit:
        return False
    run.log(stop_nonfinite_line(st.nonfinite_total, limit))
    return True


def log_step(run: Run, done: StepOutcome) -> dict[str, float]:
    """The step line (and CRaFT's console line), metrics.jsonl and the tracker; returns the metrics."""
    import torch

    from training.progress import craft_line, step_line

    cfg, log, craft = run.cfg, run.log, done.craft
    keys = sorted(done.logs)
    parts = run.ctx.all_reduce_mean(torch.stack([done.logs[k] for k in keys]).float()).tolist() if keys else []
    run.state.last_loss = done.loss
    lr = run.optimizer.param_groups[0]["lr"]  # the LR the update used, read back from the optimizer
    log(step_line(done.step, cfg.max_steps, done.loss, lr, done.grad_norm, done.seconds, done.aux_weight))
    metrics = {"step": done.step, "loss": done.loss, "lr": lr, "grad_norm": done.grad_norm, "s_per_step": done.seconds,
               **dict(zip(keys, parts, strict=True))}
    if done.aux_weight is not None:
        metrics["aux_weight"] = done.aux_weight
    if craft is not None:
        log(craft_line(done.step, cfg.max_steps, done.loss, craft.retention, cfg.craft.retention_budget,
                       craft.lambda_before, craft.lambda_after, craft.conflict_ratio, done.grad_norm, lr))
        metrics.update(retention=craft.retention, retention_nonfinite=int(craft.nonfinite),
                       lambda_before=craft.lambda_before, lambda_after=craft.lambda_after,
                       conflict_ratio=craft.conflict_ratio)
    log.metrics(metrics)
    run.tracker.log(tracked(metrics), step=done.step)
    return metrics


def collapse_stops(run: Run, metrics: dict[str, float], step: int) -> bool:
    """The collapse watchdog: report a collapsed loss or grad norm; True when on_collapse=stop ends the run (exit 3)."""
    cfg = run.cfg
    if not cfg.watchdog.enabled:
        return False
    for name in ("loss", "grad_norm"):
        collapse = run.watchdog.observe(name, metrics[name], step)
        if collapse is None:
            continue
        run.log(collapse.line())
        withdraw_suspects(run, collapse)
        if cfg.watchdog.on_collapse == "stop":
            run.log("[train] stopping after collapse: nothing saved; roll back to the newest HEALTHY checkpoint")
            return True
    return False


def fault_lr(lr: float, step: int, cfg: TrainConfig, log: Any) -> float:
    """The scheduled LR, amplified while above ``fault.unstable_lr`` (test-only fault injection, off by default)."""
    from training.progress import fault_line
    from training.schedules import lr_at

    limit = cfg.fault.unstable_lr
    if limit is None or lr <= limit:
        return lr
    if step == 0 or lr_at(step - 1, cfg.optim.lr, cfg.schedule, cfg.max_steps) <= limit:  # said once per crossing
        log(fault_line(step, lr, limit, cfg.fault.amplify))
    return lr * cfg.fault.amplify


def withdraw_suspects(run: Run, collapse: Any) -> None:
    """Rank 0: checkpoints newer than the collapsed metric's last in-bound step lose HEALTHY (the EMA lagged the damage)."""
    from training.checkpoint import withdraw_healthy
    from training.progress import withdrawn_line

    if not run.ctx.is_main or collapse.last_good is None:
        return
    withdrawn = withdraw_healthy(Path(run.cfg.out_dir), collapse.last_good)
    if withdrawn:
        run.log(withdrawn_line([p.name for p in withdrawn], collapse.last_good, collapse.metric))


def prepare_batch(batch: dict[str, Any], run: Run) -> dict[str, Any]:
    """Host batch -> device tensors the policy reads (tokens looked up, flow-matching noise drawn)."""
    import torch

    from training.objectives import flow_matching_inputs

    device, spec = run.ctx.device, run.policy.spec
    move = {"non_blocking": device.type == "cuda"}  # pinned host memory: the copy overlaps compute
    out = {key: batch[key].to(device, **move) for key in spec.cameras}
    out["proprio"] = batch["proprio"].to(device, **move)
    out["action_mask"] = batch["action_mask"].to(device, **move)
    ids = batch["instruction_id"].to(device, **move)
    out["text_ids"], out["text_mask"] = run.tokens.ids[ids], run.tokens.mask[ids]
    actions = batch["actions"]
    if spec.objective == "flow_matching":
        # Drawn on the CPU from a per-rank generator: identical on any device, and checkpointed.
        noise = torch.randn(actions.shape, generator=run.noise)
        time_ = torch.rand(actions.shape[0], generator=run.noise)
        x_t, target = flow_matching_inputs(actions, noise, time_)
        out.update(flow_x_t=x_t.to(device, **move), flow_target=target.to(device, **move),
                   flow_time=time_.to(device, **move))
    out["actions"] = actions.to(device, **move)
    return out


TRACKED_NAMES = {
    "loss": "VLA Train/Loss", "curr_l1": "Curr Action L1 Loss", "next_l1": "Next Actions L1 Loss",
    "grad_norm": "VLA Train/Gradient Norm", "lr": "VLA Train/Learning Rate", "retention": "CRaFT/Retention Loss",
    "retention_nonfinite": "CRaFT/Retention NonFinite", "lambda_after": "CRaFT/Lambda",
    "lambda_before": "CRaFT/Lambda Before", "conflict_ratio": "CRaFT/Conflict Ratio", "flow_mse": "Flow Matching MSE",
    "ce_loss": "VLM Train/CE Loss", "aux_ce": "Aux CE Loss", "aux_weight": "Aux CE Weight", "s_per_step": "Train/s per step",
}


def tracked(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as seed 001's dashboards know them."""
    out = {TRACKED_NAMES.get(k, k): v for k, v in metrics.items() if k != "step"}
    if "lambda_after" in metrics:
        out["CRaFT/Lambda After"] = metrics["lambda_after"]
    return out


def training_state(run: Run) -> dict[str, Any]:
    """trainer_state.json."""
    st, cfg = run.state, run.cfg
    return {**dataclasses.asdict(st), "schedule_position": st.step, "world_size": run.ctx.world_size,
            "batch_size": cfg.data.batch_size, "grad_accum": cfg.optim.grad_accum, "seed": cfg.seed,
            "objective": cfg.objective.kind, "watchdog": run.watchdog.state_dict(),
            "last_loss": st.last_loss if math.isfinite(st.last_loss) else None}


def save(run: Run) -> None:
    """Write checkpoint-<step> (every rank takes part), prune old ones, print the line."""
    from training.checkpoint import CheckpointContents, capture_rng, finalize, gather_state, prepare_temp, prune, temp_dir, write_rank_state

    ctx, st, out = run.ctx, run.state, Path(run.cfg.out_dir)
    model_state, optim_state = gather_state(run.policy, run.optimizer)
    # Rank 0 writes every rank's small state: the ranks of another node cannot reach rank 0's disk (multi-node
    # training needs no shared filesystem to checkpoint).
    states = ctx.all_gather_object({"rank": ctx.rank, "rng": capture_rng(run.noise, ctx.device), "data": run.loader.state_dict()})
    if ctx.is_main:
        prepare_temp(out, st.step)
        for state in states:
            write_rank_state(temp_dir(out, st.step), state["rank"], state)
        healthy = run.watchdog.healthy and st.nonfinite_since_save == 0
        final = finalize(out, st.step, ctx.world_size, CheckpointContents(
            model_state=model_state, optimizer_state=optim_state, trainer_state=training_state(run),
            config=run.cfg.model_dump(mode="json"), stats_path=run.stats_path, healthy=healthy))
        prune(out, run.cfg.checkpoint.keep_last)
        run.log(f"[ckpt] saved {final} step={st.step}" + ("" if healthy else " (not HEALTHY)"))
    st.nonfinite_since_save = 0
    ctx.barrier()


def report_throughput(run: Run, timer: Any) -> None:
    """The throughput line and summary.json (rank 0)."""
    import torch

    from training.throughput import peak_flops

    ctx, cfg = run.ctx, run.cfg
    samples = cfg.data.batch_size * ctx.world_size * cfg.optim.grad_accum
    sps = samples / timer.step_seconds if timer.measured_steps else float("nan")
    if ctx.device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    else:  # max resident set size of this process (KiB on Linux)
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak = peak_flops(ctx.device)
    mfu = run.flops_per_sample * sps / (peak * ctx.world_size) if peak and math.isfinite(sps) else None
    run.log(f"[train] throughput samples/s={sps:.2f} s/step={timer.step_seconds:.4f} "
            f"data_wait={timer.data_wait * 100:.1f}% peak_mem={peak_mem:.2f}GiB "
            f"mfu={'n/a' if mfu is None else f'{mfu * 100:.1f}%'}")
    if ctx.is_main:
        summary = {"steps_measured": timer.measured_steps, "samples_per_s": sps, "s_per_step": timer.step_seconds,
                   "data_wait": timer.data_wait, "peak_mem_gib": peak_mem, "mfu": mfu,
                   "flops_per_sample": run.flops_per_sample, "peak_flops_per_gpu": peak,
                   "effective_batch": samples, "world_size": ctx.world_size, "final_loss": run.state.last_loss,
                   "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"}
        (Path(cfg.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _resolve_resume(cfg: TrainConfig, resume: str | None, ctx: Any, log: Any) -> Path | None:
    """The checkpoint to continue from, or None to start at step 0 (CheckpointError when refused)."""
    from training.checkpoint import CheckpointError, find_latest, list_checkpoints, set_aside, verify

    out = Path(cfg.out_dir)
    if resume is None:
        complete = [p for _, p in list_checkpoints(out) if (p / "COMPLETE").is_file()]
        if complete:
            raise CheckpointError(f"{out}: already holds checkpoints (newest {complete[0].name}); pass --resume to "
                                  f"continue, or choose another out_dir")
        return None
    if resume == "auto":
        path = find_latest(out, log)
        if path is None:
            log(f"[train] no complete checkpoint in {out}; starting at step=0")
        return path
    path = Path(resume)
    verify(path)  # explicit path: refused, not skipped, when incomplete or damaged
    newer = [p for step, p in list_checkpoints(out) if step > int(path.name.split("-")[-1])]
    if newer and path.parent.resolve() == out.resolve() and ctx.is_main:
        # A rollback: the newer checkpoints are from the run that collapsed; --resume must never pick them again.
        aside = set_aside(out, newer)
        log(f"[ckpt] rolled back: moved {', '.join(p.name for p in newer)} aside to {aside}")
    ctx.barrier()
    return path


def setup(cfg: TrainConfig, ctx: Any, log: Any, resume: str | None) -> Run:
    """Data, policy, optimizer, resume state, tracking; prints the start-up lines in their fixed order."""
    import numpy as np
    import torch

    from training.cache_dataset import CacheLoader, ChunkConfig, ChunkDataset, LoaderConfig
    from training.checkpoint import check_compatible, read_rank_state, read_trainer_state, restore_rng, restore_state
    from training.craft import CraftGradients
    from training.distributed import wrap_model
    from training.policy import PolicySpec, build_policy, compile_blocks, parameter_counts
    from training.progress import batch_line, data_line, params_line, weights_line
    from training.sampler import SamplerState
    from training.throughput import policy_flops
    from training.tracking import start_tracking
    from training.watchdog import CollapseWatchdog

    checkpoint = _resolve_resume(cfg, resume, ctx, log)
    torch.manual_seed(cfg.seed)  # same on every rank: identical initial weights
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    chunk_cfg = ChunkConfig(future_actions=cfg.data.future_actions, normalization=cfg.data.normalization,
                            image_keys=tuple(cfg.data.image_keys) if cfg.data.image_keys is not None else None,
                            require_matching_stats=cfg.data.require_matching_stats)
    dataset = ChunkDataset(cfg.data.cache_dir, cfg.data.stats, chunk_cfg)
    arrays = dataset.arrays
    cameras = tuple(arrays.images)
    if not cameras:
        raise ConfigError(f"{cfg.data.cache_dir}: the cache holds no images (built with --no-images); the policy needs them")
    log(data_line(arrays.manifest["source"]["dataset_name"], int(arrays.manifest["num_trajectories"]),
                  dataset.num_samples, cfg.data.future_actions, cfg.data.batch_size))
    spec = PolicySpec(action_dim=dataset.robot.action_dim, proprio_dim=dataset.robot.proprio_dim,
                      chunk=cfg.data.future_actions + 1, cameras=cameras, objective=cfg.objective.kind,
                      aux_ce=cfg.objective.aux_ce is not None)
    policy, tokens, report = build_policy(cfg.model, spec, dataset.instructions)
    log(weights_line(report.loaded, report.skipped, bool(report.sources)))
    total, trainable = parameter_counts(policy)
    log(params_line(total, trainable))
    log(batch_line(cfg.data.batch_size, ctx.world_size, cfg.optim.grad_accum))
    own_shapes = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    flops = policy_flops(policy).total
    policy.to(ctx.device)
    anchor = None
    if cfg.craft.enabled:  # the frozen "pretrained" features: the weights before any update
        anchor = copy.deepcopy(policy).requires_grad_(False).eval()
    bf16 = cfg.runtime.precision == "bf16" or (cfg.runtime.precision == "auto" and ctx.device.type == "cuda")
    model = wrap_model(policy, ctx, cfg.runtime, bf16, manual_sync=cfg.craft.enabled)
    optimizer = build_optimizer(policy, cfg, ctx.device)
    state = TrainState(lam=cfg.craft.initial_lambda)
    watchdog = CollapseWatchdog(cfg.watchdog.watch)
    noise = torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank)
    data_state: dict[str, int] | None = None
    if checkpoint is not None:
        check_compatible(checkpoint, own_shapes)
        restore_state(checkpoint, policy, optimizer, distributed=ctx.backend is not None)
        saved = read_trainer_state(checkpoint)
        fields = {f.name for f in dataclasses.fields(TrainState)}
        state = TrainState(**{k: v for k, v in saved.items() if k in fields})
        state.last_loss = float("nan") if state.last_loss is None else state.last_loss
        watchdog.load_state_dict(saved.get("watchdog", {}))
        mine = read_rank_state(checkpoint, ctx.rank, ctx.world_size)
        if mine is not None and saved.get("batch_size") == cfg.data.batch_size:
            restore_rng(mine["rng"], noise, ctx.device)
            data_state = mine["data"]
        else:
            data_state = _rescaled_cursor(checkpoint, saved, ctx.world_size)
            log(f"[ckpt] warning: world_size/batch changed ({saved.get('world_size')}x{saved.get('batch_size')} -> "
                f"{ctx.world_size}x{cfg.data.batch_size}): data order continues approximately, not bitwise")
        log(f"[train] resumed from {checkpoint} at step={state.step}")
    loader = CacheLoader(dataset, LoaderConfig(batch_size=cfg.data.batch_size, seed=cfg.seed, rank=ctx.rank,
                                               world_size=ctx.world_size, epochs=None, num_workers=cfg.data.num_workers,
                                               pin_memory=ctx.device.type == "cuda", grad_accum=cfg.optim.grad_accum),
                         state=SamplerState.from_dict(data_state) if data_state else None)
    tracker = start_tracking(cfg, state.wandb_run_id, ctx.is_main, log)
    state.wandb_run_id = tracker.run_id
    if cfg.watchdog.enabled:
        for line in watchdog.armed_lines():
            log(line)
    if cfg.runtime.compile and cfg.runtime.compile_scope == "model":
        model = torch.compile(model)
    elif cfg.runtime.compile:
        log(f"[train] compile: {compile_blocks(policy)} transformer blocks (torch.compile each)")
    craft = CraftGradients(list(policy.parameters()), cfg.craft, ctx.world_size) if cfg.craft.enabled else None
    batches = iter(loader)
    if checkpoint is not None and cfg.data.skip_updates:
        skip_batches(batches, cfg, log)
    return Run(cfg=cfg, ctx=ctx, policy=policy, model=model, anchor=anchor, optimizer=optimizer, loader=loader,
               batches=batches, tokens=tokens.to(ctx.device), noise=noise, craft=craft, watchdog=watchdog,
               tracker=tracker, log=log, state=state, bf16=bf16, stats_path=cfg.data.stats, flops_per_sample=flops)


def skip_batches(batches: Any, cfg: TrainConfig, log: Any) -> None:
    """Draw and drop the batches of `data.skip_updates` updates: a rollback does not replay what went wrong.

    Drawn, not jumped over: the loader's cursor then says exactly where the data stands, across epochs,
    and the next checkpoint records it.
    """
    count = cfg.data.skip_updates * cfg.optim.grad_accum
    for _ in range(count):
        next(batches)
    log(f"[train] skipped {count} batches after resume (data.skip_updates={cfg.data.skip_updates})")


def _rescaled_cursor(checkpoint: Path, saved: dict[str, Any], world_size: int) -> dict[str, int]:
    """Rank 0's (epoch, cursor) mapped to a new world size: samples consumed so far / new world size."""
    from training.checkpoint import rank_file

    first = json.loads((checkpoint / rank_file(0)).read_text())["data"]
    consumed = first["cursor"] * int(saved.get("world_size") or 1)
    return {"epoch": first["epoch"], "cursor": consumed // world_size}


def build_optimizer(policy: Any, cfg: TrainConfig, device: Any) -> Any:
    """AdamW; weight decay on matrices only (not on norms, biases, queries' scale), nanoGPT style."""
    import torch

    params = [p for p in policy.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # Fused: one kernel for all tensors instead of a Python loop over them (CPU fused kernels since torch 2.4).
    fused = cfg.optim.fused if cfg.optim.fused is not None else (
        device.type == "cuda" or tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4))
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused or None)


def apply_environment(cfg: TrainConfig, log: Any) -> None:
    """Process-wide settings that must precede CUDA initialisation."""
    if cfg.runtime.cuda_alloc_conf is not None:
        # Read once, when CUDA's caching allocator starts: later changes are ignored (seed 003 issue 7 fix).
        current = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        if current and current != cfg.runtime.cuda_alloc_conf:
            log(f"[train] PYTORCH_CUDA_ALLOC_CONF={current} (from the environment; config's "
                f"{cfg.runtime.cuda_alloc_conf} not applied)")
        else:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = cfg.runtime.cuda_alloc_conf
            log(f"[train] PYTORCH_CUDA_ALLOC_CONF={cfg.runtime.cuda_alloc_conf}")


def _parser() -> argparse.ArgumentParser:
    from training.config_help import help_text

    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0],
                                epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML or JSON TrainConfig, or a packaged config name (tiny_cpu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (YAML value); the keys are listed below")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the newest complete checkpoint in out_dir, or from this checkpoint dir")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"[train] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    is_main = int(os.environ.get("RANK", "0")) == 0
    from training.progress import Progress

    log = Progress(Path(cfg.out_dir), is_main)
    apply_environment(cfg, log)
    import torch

    from training.cache import CacheError
    from training.checkpoint import CheckpointError
    from training.distributed import init_distributed
    from training.policy import ModelPathError

    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    torch.backends.cuda.matmul.allow_tf32 = cfg.runtime.tf32
    torch.backends.cudnn.allow_tf32 = cfg.runtime.tf32
    ctx = init_distributed(cfg.runtime)
    code = 0
    run = None
    clean = False  # the loop returned 0 (an exception on its way out is not a clean end: no peer to meet)
    try:
        run = setup(cfg, ctx, log, args.resume)
        code = train_loop(run)
        clean = code == 0
    except (ConfigError, CacheError, CheckpointError, ModelPathError) as exc:
        log.error(str(exc))
        code = EXIT_BAD_INPUT
    finally:
        if run is not None:
            run.tracker.finish(exit_code=code)
        log.close()
        ctx.close(clean=clean)
    return code


def _leave(code: int) -> None:
    """Exit a rank of a torchrun job without the interpreter's and the C++ runtime's teardown. By then the loop
    has ended, the tracker, log and metrics files are closed and the process group is destroyed; what is left are
    torch's C++ threads (gloo's workers and transport loop, the store client). Torn down at interpreter exit
    they can still die in C++ (`terminate called without an active exception`, SIGABRT), failing a run that
    finished and saved: seen twice in CI on CPU/gloo runs, once after ranks already met and destroyed the group
    (pytorch/pytorch#179291 describes the same finalisation race). A rank of a one-process torchrun job joined a
    group too, so it leaves the same way; a process started without torchrun exits normally."""
    from training.distributed import launched_by_torchrun

    sys.stdout.flush()
    sys.stderr.flush()
    if launched_by_torchrun(os.environ):
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _leave(main())
