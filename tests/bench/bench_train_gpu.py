"""Benchmark: our training loop vs transformers' Trainer (bf16), same ~0.58B policy, same data, same GPU.

Run from the repository root::

    python tests/bench/bench_train_gpu.py                 # one H100: the reference config, both contenders
    python tests/bench/bench_train_gpu.py --tiny          # CPU smoke test: tiny model, fp32, a few steps
    python tests/bench/bench_train_gpu.py --steps 80 --batch 48 --trainer-compile   # variations
    python tests/bench/bench_train_gpu.py --scaling       # 2 GPUs: DDP and FSDP on 1 and 2 GPUs (see below)
    python tests/bench/bench_train_gpu.py --scaling --tiny   # the same on CPU: 2 gloo processes, tiny model
    python tests/bench/bench_train_gpu.py --scaling --dry-run   # print the runs' commands and environment only
    python tests/bench/bench_train_gpu.py --data-only     # the data alone, as --var arguments for a runbook

Needs torch, transformers, safetensors, numpy, pyyaml, pydantic and accelerate
(transformers' Trainer requires it); not TensorFlow, tensorflow-datasets or wandb.

What runs, in this order, each contender in its own process:

1. data: ``training.synth``'s episode generator (64 episodes x 100 steps, two
   128x128 cameras) written straight into the training-cache format with its
   statistics, under ``--work`` (default ``$TMPDIR/agentops-bench``; reused by later
   runs). No TensorFlow: GPU boxes do not carry it, and the cache is what training reads;
2. ours: ``torchrun --standalone --nproc_per_node=1 -m training.train --config
   training/configs/ref_0p5b_h100.yaml`` (batch 64, bf16 autocast, fp32 master
   weights, torch.compile of each transformer block (SDPA keeps is_causal and
   GQA), fused AdamW with the clip factor and the non-finite skip applied in its
   kernel, uint8 images pinned, the next batch copied while the update runs,
   one host sync per step); its ``summary.json`` gives the figures;
3. baseline: the same policy (same config, same seed, same loss) wrapped for
   ``transformers.Trainer`` with ``bf16=True`` and otherwise default arguments
   (its default fused AdamW, no compile unless ``--trainer-compile``), the
   same batch size, DataLoader workers and the same cache dataset.

Figures per contender, over the steps after ``--warmup`` (compilation and
allocator warm-up left out): samples/s; MFU = FLOPs/s / the GPU's dense bf16
peak (H100 SXM: 989.4 TFLOP/s) with FLOPs per sample from
``training.throughput.policy_flops`` (6 x N_matmul x tokens + 12 x layers x d x
tokens^2 for the backbone and the vision encoder, plus the heads; embeddings
excluded); peak GPU memory (``torch.cuda.max_memory_allocated``); data wait =
share of wall time the training loop spent blocked on its data loader.

Goals (issue 6): MFU >= 40%, ours >= 1.3x the Trainer's samples/s, data wait < 5%.
Exit 1 when a goal is missed (never with ``--tiny``). Results are printed as a
table and as JSON, and written to ``$OUT/bench_train_gpu.json`` when ``$OUT`` is set.

``--scaling`` (issue 16) runs only our trainer, four times: DDP and FSDP, each
with ``torchrun --nproc_per_node=1`` and ``=2`` at the same global batch: every
GPU keeps the per-GPU batch (64) and the single GPU accumulates 2 micro-batches,
so both runs train on the same micro-batches (training/sampler.py) and their
losses must agree to bf16 tolerance (``LOSS_RTOL``; the exact version of that
check runs on CPU: tests/test_training_scaling.py). Per run: samples/s per GPU,
MFU, peak memory (rank 0), and from a torch.profiler window on rank 0 the
share of wall time a collective kernel runs (``comm``) and the share during
which no compute kernel runs under it (``exposed comm``: communication that
overlap failed to hide; training/profiling.py). The window lies inside the
warm-up that the throughput figures leave out, so profiling does not slow the
measured steps. Scaling efficiency = samples/s(2 GPUs) / (2 x samples/s(1 GPU)).
Goals: DDP >= 92%, FSDP >= 88%. Every trainer gets ``MULTICAST_OFF``
(``NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1``)
in its environment, and every rank must confirm it in its ``[dist] ... nvls=off``
line. Written to ``$OUT/bench_scaling.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

REFERENCE_CONFIG = ROOT / "training/configs/ref_0p5b_h100.yaml"
TINY_CONFIG = ROOT / "training/configs/tiny_cpu.yaml"
DATA = {"episodes": 64, "steps": 100, "image_size": 128, "seed": 3}
TINY_DATA = {"episodes": 8, "steps": 40, "image_size": 32, "seed": 3}
GOALS = {"mfu": 0.40, "speedup": 1.3, "data_wait": 0.05}
SCALING_GOALS = {"ddp": 0.92, "fsdp": 0.88}
LOSS_RTOL = 0.02  # bf16 keeps 8 significant bits (0.4%); the same steps on another split differ by rounding only


def data_paths(work: Path, spec_args: dict[str, int]) -> tuple[Path, Path]:
    """Where ensure_data puts the (cache dir, stats file) of these parameters."""
    from training.synth import SynthSpec

    base = work / f"cache-{SynthSpec(**spec_args).key()}"
    return base / "cache", base / "dataset_statistics.json"


def ensure_data(work: Path, spec_args: dict[str, int]) -> tuple[Path, Path]:
    """(cache dir, stats file) of synthetic LIBERO-like episodes, written straight into the cache format.

    GPU boxes carry no TensorFlow, so the RLDS -> JPEG -> cache round trip of
    ``training.synth`` + ``training.cache`` is skipped: ``training.synth``'s own
    episode generator (numpy) fills the arrays the cache holds (decoded uint8
    frames, actions, proprio, episode boundaries, instruction ids), with a
    manifest and a statistics file that ``ChunkDataset`` accepts as a pair.
    Built once per parameter set and reused.
    """
    import datetime as dt
    import hashlib

    import numpy as np

    from training.cache import FORMAT, MANIFEST, image_file
    from training.robots import LIBERO
    from training.stats import QUANTILE_METHOD, summarize
    from training.stats_file import FORMAT as STATS_FORMAT
    from training.stats_file import write_json_atomic
    from training.synth import SynthSpec, make_episode

    spec = SynthSpec(**spec_args)
    cache, stats = data_paths(work, spec_args)
    base = cache.parent
    if (cache / MANIFEST).is_file() and stats.is_file():
        return cache, stats
    episodes = [make_episode(spec, i, int(n)) for i, n in enumerate(spec.episode_lengths())]
    table = sorted({e.instruction for e in episodes})
    lengths = np.array([len(e.actions) for e in episodes])
    arrays = {
        "actions": np.concatenate([e.actions for e in episodes]).astype(np.float32),
        "proprio": np.concatenate([e.states for e in episodes]).astype(np.float32),
        "episode_starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "episode_index": np.repeat(np.arange(len(episodes), dtype=np.int32), lengths),
        "instruction_ids": np.concatenate([np.full(len(e.actions), table.index(e.instruction), np.int32)
                                           for e in episodes]),
    }
    images = {"observation/image": np.concatenate([e.images for e in episodes]),
              "observation/wrist_image": np.concatenate([e.wrist_images for e in episodes])}
    digest = hashlib.sha256()
    for value in [*arrays.values(), *images.values()]:
        digest.update(np.ascontiguousarray(value).tobytes())
    content_hash = "sha256:" + digest.hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    specs = {}
    for name, value in [*arrays.items(), *((f"image:{k}", v) for k, v in images.items())]:
        file = image_file(name[6:]) if name.startswith("image:") else f"{name}.npy"
        np.save(cache / file, np.ascontiguousarray(value))  # the cache maps C-order arrays only
        specs[name] = {"file": file, "shape": list(value.shape), "dtype": str(value.dtype)}
    (cache / "instructions.json").write_text(json.dumps(table))
    source = {"dataset_dir": str(base), "dataset_name": spec.name, "split": "train", "content_hash": content_hash,
              "content_hash_method": "bench-arrays/1"}
    write_json_atomic(stats, {spec.name: {
        "action": {**summarize(arrays["actions"]), "mask": list(LIBERO.action_norm_mask or [])},
        "proprio": summarize(arrays["proprio"]),
        "num_transitions": int(lengths.sum()), "num_samples": int(lengths.sum()), "num_trajectories": len(episodes),
        "meta": {"format": STATS_FORMAT, "robot": LIBERO.name, "content_hash": content_hash,
                 "quantile_method": QUANTILE_METHOD, "tool": "bench_train_gpu"}}})
    write_json_atomic(cache / MANIFEST, {  # last: a cache with a manifest is complete
        "format": FORMAT, "robot": LIBERO.to_dict(), "source": source,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "num_transitions": int(lengths.sum()), "num_trajectories": len(episodes),
        "image_keys": list(images), "arrays": specs})
    return cache, stats


def overrides(args: argparse.Namespace, cache: Path, stats: Path, out: Path) -> list[str]:
    """--set values shared by both contenders."""
    sets = [f"data.cache_dir={cache}", f"data.stats={stats}", f"out_dir={out}", f"max_steps={args.steps}",
            f"runtime.timing_warmup_steps={args.warmup}", "wandb.mode=disabled", "checkpoint.save_final=false",
            "checkpoint.save_every=1000000", f"log_every={max(args.steps // 6, 1)}"]
    if args.batch:
        sets.append(f"data.batch_size={args.batch}")
    if args.workers is not None:
        sets.append(f"data.num_workers={args.workers}")
    if args.tiny:
        sets += ["runtime.device=cpu", "runtime.precision=fp32", "runtime.compile=false", "runtime.threads=2"]
    elif args.no_compile:
        sets.append("runtime.compile=false")
    return sets


def our_sets(args: argparse.Namespace) -> list[str]:
    """--set values for our trainer only."""
    if not args.profile:
        return []
    start = max(args.warmup, args.steps - args.profile - 2)  # late in the run: compiled and warm
    return [f"runtime.profile_steps={args.profile}", f"runtime.profile_start={start}"]


def ours_command(config: Path, sets: list[str], nproc: int = 1) -> list[str]:
    """python -m training.train under torchrun, as runbooks launch it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "training.train", "--config", str(config)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_ours(config: Path, sets: list[str], out: Path, timeout: int) -> dict[str, Any]:
    """Our trainer (1 process); its summary.json."""
    return _run(ours_command(config, sets), out, out / "summary.json", timeout, "ours")


def run_trainer(config: Path, sets: list[str], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """This file again, as the Trainer contender, in a fresh process."""
    cmd = [sys.executable, __file__, "--contender", "trainer", "--config", str(config), "--result",
           str(out / "trainer_result.json"), "--warmup", str(args.warmup)]
    if args.trainer_compile:
        cmd.append("--trainer-compile")
    for s in sets:
        cmd += ["--set", s]
    return _run(cmd, out, out / "trainer_result.json", args.timeout, "trainer")


def run_env() -> dict[str, str]:
    """The environment every contender gets: NVLink multicast off (training.distributed says why), quiet TF."""
    from training.distributed import MULTICAST_OFF

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **MULTICAST_OFF}


def _run(cmd: list[str], out: Path, result: Path, timeout: int, name: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}.log"
    start = time.perf_counter()
    env = run_env()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - start
    tail = log.read_text(errors="replace").splitlines()[-15:]
    if rc != 0 or not result.is_file():
        print(f"[bench] {name} failed (rc={rc}); last lines of {log}:", *tail, sep="\n  ", flush=True)
        return {"error": f"rc={rc}", "log": str(log), "wall_s": wall}
    figures = json.loads(result.read_text())
    figures.update(wall_s=wall, log=str(log))
    print(f"[bench] {name}: " + " ".join(line for line in tail if "[train] throughput" in line), flush=True)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("[profile]"):
            print(f"[bench] {name}: {line}", flush=True)
    return figures


# --- the Trainer contender (runs in its own process) -------------------------------------------------


def trainer_contender(config: str, sets: list[str], result: str, warmup: int, compile_model: bool) -> int:
    """Train the same policy with transformers.Trainer and write samples/s, data wait, memory, MFU."""
    import torch
    from torch import nn
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from training.cache_dataset import ChunkConfig, ChunkDataset
    from training.config import load_config
    from training.objectives import flow_matching_inputs
    from training.policy import PolicySpec, build_policy, parameter_counts
    from training.throughput import peak_flops, policy_flops

    cfg = load_config(config, sets)
    cuda = cfg.runtime.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    torch.manual_seed(cfg.seed)
    dataset = ChunkDataset(cfg.data.cache_dir, cfg.data.stats, ChunkConfig(
        future_actions=cfg.data.future_actions, normalization=cfg.data.normalization,
        image_keys=tuple(cfg.data.image_keys) if cfg.data.image_keys else None))
    cameras = tuple(dataset.arrays.images)
    spec = PolicySpec(action_dim=dataset.robot.action_dim, proprio_dim=dataset.robot.proprio_dim,
                      chunk=cfg.data.future_actions + 1, cameras=cameras, objective=cfg.objective.kind)
    policy, tokens, _ = build_policy(cfg.model, spec, dataset.instructions)
    flops = policy_flops(policy).total

    class TrainerPolicy(nn.Module):
        """Trainer calls model(**inputs) and reads outputs["loss"]."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": self.inner(batch).loss}

    noise = torch.Generator().manual_seed(cfg.seed)

    def collate(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # ChunkDataset.__getitems__ already built the whole batch; add tokens (and flow noise).
        ids = batch["instruction_id"]
        out = {k: batch[k] for k in (*cameras, "proprio", "actions", "action_mask")}
        out.update(text_ids=tokens.ids[ids], text_mask=tokens.mask[ids])
        if spec.objective == "flow_matching":
            t = torch.rand(ids.shape[0], generator=noise)
            out["flow_x_t"], out["flow_target"] = flow_matching_inputs(batch["actions"], torch.randn(
                batch["actions"].shape, generator=noise), t)
            out["flow_time"] = t
        return out

    timing = {"t0": None, "t1": None, "data_s": 0.0}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                sync()
                timing["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == args.max_steps:
                sync()
                timing["t1"] = time.perf_counter()

    class TimedTrainer(Trainer):
        def get_batch_samples(self, *args, **kwargs):
            start = time.perf_counter()
            out = super().get_batch_samples(*args, **kwargs)
            if self.state.global_step >= warmup:
                timing["data_s"] += time.perf_counter() - start
            return out

    out_dir = Path(cfg.out_dir) / "trainer"
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.data.batch_size,
        gradient_accumulation_steps=cfg.optim.grad_accum, learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.max_grad_norm or 0.0,
        lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.schedule.warmup_steps,
        bf16=cuda, use_cpu=not cuda, logging_steps=cfg.log_every, save_strategy="no", report_to="none",
        dataloader_num_workers=cfg.data.num_workers, dataloader_pin_memory=cuda, remove_unused_columns=False,
        seed=cfg.seed, disable_tqdm=True, torch_compile=compile_model,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    trainer = TimedTrainer(model=TrainerPolicy(policy), args=args, train_dataset=dataset, data_collator=collate,
                           callbacks=[Timer()])
    trainer.train()
    elapsed = timing["t1"] - timing["t0"]
    measured = cfg.max_steps - warmup
    samples = cfg.data.batch_size * cfg.optim.grad_accum
    sps = samples * measured / elapsed
    peak = peak_flops(device)
    total, trainable = parameter_counts(policy)
    # Trainer versions without get_batch_samples never call the override: no figure rather than a false 0%.
    data_wait = timing["data_s"] / elapsed if hasattr(Trainer, "get_batch_samples") else None
    figures = {
        "samples_per_s": sps, "s_per_step": elapsed / measured, "data_wait": data_wait,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "mfu": flops * sps / peak if peak else None, "flops_per_sample": flops, "steps_measured": measured,
        "params_total": total, "params_trainable": trainable,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
    }
    Path(result).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"[trainer] samples/s={sps:.2f} data_wait={_pct(data_wait)}", flush=True)
    return 0


# --- scaling: 1 GPU vs N GPUs at the same global batch, DDP and FSDP (issue 16) --------------------------


@dataclass(frozen=True)
class ScalingRun:
    """One launch of the scaling matrix: N processes, each accumulating `accum` micro-batches."""

    parallel: str  # ddp | fsdp
    nproc: int
    accum: int

    @property
    def name(self) -> str:
        return f"{self.parallel}-{self.nproc}gpu"


def scaling_runs(gpus: int) -> list[ScalingRun]:
    """DDP and FSDP on 1 and on `gpus` GPUs; the global batch is per-GPU batch x gpus in every run."""
    return [ScalingRun(parallel, n, gpus // n) for parallel in ("ddp", "fsdp") for n in (1, gpus)]


def scaling_sets(args: argparse.Namespace, run: ScalingRun, cache: Path, stats: Path, out: Path) -> list[str]:
    """The --set values of one run: the shared ones, the split, and a profiler window inside the warm-up."""
    sets = overrides(args, cache, stats, out) + [f"runtime.parallel={run.parallel}", f"optim.grad_accum={run.accum}"]
    if args.tiny:
        sets.append("runtime.threads=1")  # 2 processes on a small CPU box: one thread each
    if args.profile:
        # Steps [warmup - profile - 1, warmup - 1): compiled and warm, yet left out of the throughput figures.
        sets += [f"runtime.profile_steps={args.profile}", f"runtime.profile_start={args.warmup - args.profile - 1}"]
    return sets


def run_scaling(config: Path, run: ScalingRun, sets: list[str], out: Path, timeout: int) -> dict[str, Any]:
    """One run: summary.json, profile.json, every logged loss, and whether each rank had multicast off."""
    figures = _run(ours_command(config, sets, run.nproc), out, out / "summary.json", timeout, run.name)
    figures.update(parallel=run.parallel, nproc=run.nproc, accum=run.accum)
    if "error" in figures:
        return figures
    if (out / "profile.json").is_file():
        figures["profile"] = json.loads((out / "profile.json").read_text())
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    figures["losses"] = {m["step"]: m["loss"] for m in logged}
    log = Path(figures["log"]).read_text(errors="replace").splitlines()
    ranks = [line for line in log if line.startswith("[dist] ")]
    figures["ranks_nvls_off"] = len(ranks) == run.nproc and all(line.endswith(" nvls=off") for line in ranks)
    figures["samples_per_s_per_gpu"] = figures["samples_per_s"] / run.nproc
    return figures


def compare(one: dict[str, Any], many: dict[str, Any]) -> dict[str, Any]:
    """Scaling efficiency and the largest relative loss difference of the N-GPU run against the 1-GPU run."""
    if "error" in one or "error" in many:
        return {"error": "a run failed"}
    steps = sorted(one["losses"].keys() & many["losses"].keys())
    diff = max(abs(many["losses"][s] - one["losses"][s]) / max(abs(one["losses"][s]), 1e-12) for s in steps)
    return {"efficiency": many["samples_per_s_per_gpu"] / one["samples_per_s_per_gpu"], "loss_max_rel_diff": diff,
            "loss_steps_compared": len(steps)}


def report_scaling(results: dict[str, Any], tiny: bool) -> int:
    """The table (one row per run), efficiency and loss agreement per mode, the verdicts; exit code."""
    rows = [("run", "batch x accum", "samples/s/GPU", "MFU", "peak mem", "comm", "exposed comm", "nvls")]
    for r in results["runs"]:
        if "error" in r:
            rows.append((f"{r['parallel']} x{r['nproc']}", "failed: " + r["error"], "", "", "", "", "", ""))
            continue
        prof, batch = r.get("profile", {}), r["effective_batch"] // r["accum"] // r["nproc"]
        rows.append((f"{r['parallel']} x{r['nproc']}", f"{batch} x {r['accum']}", f"{r['samples_per_s_per_gpu']:.1f}",
                     _pct(r.get("mfu")), f"{r['peak_mem_gib']:.2f} GiB", _pct(prof.get("comm")),
                     _pct(prof.get("exposed_comm")), "off" if r["ranks_nvls_off"] else "NOT OFF"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    checks: dict[str, bool] = {}
    for parallel, c in results["scaling"].items():
        if "error" in c:
            print(f"{parallel}: {c['error']}")
            checks[parallel] = False
            continue
        goal = SCALING_GOALS[parallel]
        checks[f"{parallel}_efficiency"] = c["efficiency"] >= goal
        checks[f"{parallel}_losses"] = c["loss_max_rel_diff"] <= LOSS_RTOL
        print(f"{parallel}: scaling efficiency {_pct(c['efficiency'])} (goal >= {goal:.0%}); losses of "
              f"{c['loss_steps_compared']} logged steps within {c['loss_max_rel_diff']:.2e} relative (<= {LOSS_RTOL})")
    checks["nvls_off"] = all(r.get("ranks_nvls_off", False) for r in results["runs"])
    results["goals_met"] = checks
    if tiny:  # a CPU smoke test: the figures mean nothing, but the runs, the losses and the environment must hold
        return 0 if all(v for k, v in checks.items() if not k.endswith("_efficiency")) else 1
    return 0 if all(checks.values()) else 1


def scaling_main(args: argparse.Namespace) -> int:
    """Run the matrix (DDP, FSDP) x (1, N GPUs) one launch after another; report; exit code."""
    config = TINY_CONFIG if args.tiny else REFERENCE_CONFIG
    if args.profile and args.profile > args.warmup - 2:
        raise SystemExit(f"--profile {args.profile} does not fit inside --warmup {args.warmup} "
                         f"(needs profile <= warmup - 2)")
    runs_dir = args.work / "runs" / time.strftime("scaling-%Y-%m-%d_%H-%M-%S")
    if args.dry_run:
        cache, stats = data_paths(args.work, TINY_DATA if args.tiny else DATA)
        from training.distributed import MULTICAST_OFF

        print("env " + " ".join(f"{k}={v}" for k, v in MULTICAST_OFF.items()))
        for run in scaling_runs(args.gpus):
            sets = scaling_sets(args, run, cache, stats, runs_dir / run.name)
            print(shlex.join(ours_command(config, sets, run.nproc)))
        return 0
    if not args.tiny:
        import torch

        if torch.cuda.device_count() < args.gpus:
            raise SystemExit(f"--scaling needs {args.gpus} GPUs; torch sees {torch.cuda.device_count()}")
    cache, stats = ensure_data(args.work, TINY_DATA if args.tiny else DATA)
    results: dict[str, Any] = {"config": str(config.relative_to(ROOT)), "steps": args.steps, "warmup": args.warmup,
                               "profile_steps": args.profile, "gpus": args.gpus, "goals": SCALING_GOALS,
                               "loss_rtol": LOSS_RTOL, "runs": []}
    for run in scaling_runs(args.gpus):
        out = runs_dir / run.name
        results["runs"].append(run_scaling(config, run, scaling_sets(args, run, cache, stats, out), out, args.timeout))
    by_name = {(r["parallel"], r["nproc"]): r for r in results["runs"]}
    results["scaling"] = {p: compare(by_name[(p, 1)], by_name[(p, args.gpus)]) for p in ("ddp", "fsdp")}
    code = report_scaling(results, args.tiny)
    text = json.dumps(results, indent=2) + "\n"
    (runs_dir / "bench_scaling.json").write_text(text)
    print(f"[bench] results: {runs_dir / 'bench_scaling.json'}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_scaling.json").write_text(text)
    return code


# --- report ---------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def report(results: dict[str, Any], tiny: bool) -> int:
    """Print the table and the verdicts; exit code."""
    ours, base = results["ours"], results["trainer"]
    rows = [("contender", "samples/s", "s/step", "MFU", "peak mem", "data wait")]
    for name, r in (("ours (training.train)", ours), ("transformers Trainer", base)):
        if "error" in r:
            rows.append((name, "failed: " + r["error"], "", "", "", ""))
            continue
        mem = "n/a" if r.get("peak_mem_gib") is None else f"{r['peak_mem_gib']:.1f} GiB"
        rows.append((name, f"{r['samples_per_s']:.1f}", f"{r['s_per_step']:.3f}", _pct(r.get("mfu")), mem,
                     _pct(r.get("data_wait"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    if "error" in ours or "error" in base:
        return 0 if tiny else 1
    speedup = ours["samples_per_s"] / base["samples_per_s"]
    results["speedup"] = speedup
    checks = {"speedup": speedup >= GOALS["speedup"], "data_wait": ours["data_wait"] < GOALS["data_wait"],
              "mfu": ours.get("mfu") is not None and ours["mfu"] >= GOALS["mfu"]}
    results["goals_met"] = checks
    print(f"speedup {speedup:.2f}x (goal >= {GOALS['speedup']}x); MFU {_pct(ours.get('mfu'))} (goal >= 40%); "
          f"data wait {_pct(ours['data_wait'])} (goal < 5%)")
    print("FLOPs/sample = 6*N_matmul*T + 12*L*d*T^2 (backbone) + vision (same form, P patches x cameras) + heads; "
          f"{ours['flops_per_sample'] / 1e9:.1f} GFLOP/sample")
    return 0 if tiny or all(checks.values()) else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, fp32, few steps")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per contender (default 60; tiny 12)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the figures (default 10; tiny 2)")
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: the config's)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    p.add_argument("--no-compile", action="store_true", help="ours without torch.compile")
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="also profile N of our steps (torch.profiler; <out>/profile.txt; those steps run slower; "
                        "default 0, with --scaling 4, tiny 3)")
    p.add_argument("--trainer-compile", action="store_true", help="Trainer with torch_compile=True")
    p.add_argument("--scaling", action="store_true",
                   help="ours only: DDP and FSDP on 1 and --gpus GPUs at the same global batch (issue 16)")
    p.add_argument("--gpus", type=int, default=2, help="with --scaling: the GPUs (processes) of the larger runs")
    p.add_argument("--dry-run", action="store_true", help="with --scaling: print the commands, run nothing")
    p.add_argument("--data-only", action="store_true",
                   help="build (or find) the data, print it as runbook arguments (--var cache_dir=... --var stats=...)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "agentops-bench")
    p.add_argument("--timeout", type=int, default=420, help="seconds per contender")
    p.add_argument("--contender", choices=["trainer"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Build the data, run both contenders, report."""
    args = _parser().parse_args(argv)
    if args.contender == "trainer":
        return trainer_contender(args.config, args.set, args.result, args.warmup, args.trainer_compile)
    if args.tiny and args.workers is None:
        args.workers = 0
    if args.data_only:  # for runbooks/train_2gpu.yaml on a box without TensorFlow
        cache, stats = ensure_data(args.work, TINY_DATA if args.tiny else DATA)
        print(f"--var cache_dir={cache} --var stats={stats}")
        return 0
    if args.scaling:
        # The profiler window lies inside the warm-up: more warm-up steps than the contenders' comparison.
        args.steps = args.steps or (16 if args.tiny else 50)
        args.warmup = args.warmup if args.warmup is not None else (8 if args.tiny else 20)
        args.profile = args.profile if args.profile is not None else (3 if args.tiny else 4)
        return scaling_main(args)
    args.profile = args.profile or 0
    args.steps = args.steps or (12 if args.tiny else 60)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 10)
    config = TINY_CONFIG if args.tiny else REFERENCE_CONFIG
    start = time.perf_counter()
    cache, stats = ensure_data(args.work, TINY_DATA if args.tiny else DATA)
    print(f"[bench] data ready: {cache} ({time.perf_counter() - start:.1f} s)", flush=True)
    runs = args.work / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    results: dict[str, Any] = {"config": str(config.relative_to(ROOT)), "steps": args.steps, "warmup": args.warmup,
                               "goals": GOALS}
    results["ours"] = run_ours(config, overrides(args, cache, stats, runs / "ours") + our_sets(args), runs / "ours", args.timeout)
    results["trainer"] = run_trainer(config, overrides(args, cache, stats, runs / "trainer"), runs / "trainer", args)
    code = report(results, args.tiny)
    print(json.dumps(results, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_train_gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
