"""The trainer end to end, as runbooks launch it: torchrun, 2 gloo processes, the synthetic RLDS data.

One 200-step reference run (module fixture) is checked for falling losses, the
start-up lines and their order, the per-step line format and the checkpoints;
a run killed with SIGKILL and resumed must reproduce its per-step losses bit
for bit (torchtune-style). CRaFT, FSDP, the other objectives, the non-finite
guard and the collapse watchdog run their own short jobs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
torch = pytest.importorskip("torch")

from training.cache import build_cache  # noqa: E402
from training.robots import LIBERO  # noqa: E402
from training.stats import compute_stats  # noqa: E402
from training.stats_file import write_json_atomic  # noqa: E402
from training.synth import SynthSpec, ensure_dataset  # noqa: E402

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "tiny_cpu.yaml"
# The same spec as the data and cache tests: written once per session under the base temp dir.
SPEC = SynthSpec(episodes=12, total_steps=600, image_size=32, seed=7, shards=2)
STEPS = 200
STEP_LINE = re.compile(r"^\[train\] step=(\d+)/(\d+) loss=(\d+\.\d{4}) lr=(\d\.\d{3}e[-+]\d\d) "
                       r"grad_norm=(\d+\.\d{3}) s/step=(\d+\.\d{3})$")
CRAFT_LINE = re.compile(r"^Step (\d+)/(\d+) \| Loss: (\d+\.\d{4}) \| Ret: (\d+\.\d{4})/(\d+\.\d{4}) \| "
                        r"λ: (\d+\.\d{3})->(\d+\.\d{3}) \| Conflict: (\d+\.\d{2})% \| GradNorm: (\d+\.\d{2}) \| "
                        r"LR: (\d\.\d{2}e[-+]\d\d)$")


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic RLDS data -> stats file -> training cache."""
    libero = ensure_dataset(tmp_path_factory.getbasetemp() / SPEC.key(), SPEC)
    base = tmp_path_factory.mktemp("train-data")
    stats = base / "dataset_statistics.json"
    write_json_atomic(stats, compute_stats(libero, LIBERO))
    cache = build_cache(libero, LIBERO, base / "cache", log=lambda line: None)
    return {"stats": stats, "cache": cache}


def command(data: dict[str, Path], out: Path, *sets: str, nproc: int | None = 2, resume: str | None = None) -> list[str]:
    """The training command line: torchrun with nproc processes, or plain python (nproc=None)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc else [sys.executable])
    cmd = [*launcher, "-m", "training.train", "--config", str(CONFIG),
           "--set", f"data.cache_dir={data['cache']}", "--set", f"data.stats={data['stats']}", "--set", f"out_dir={out}",
           "--set", "data.batch_size=8"]  # half the demo's batch: the tests' 2 shared cores
    for s in sets:
        cmd += ["--set", s]
    if resume:
        cmd += ["--resume"] + ([] if resume == "auto" else [resume])
    return cmd


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}


def train(data: dict[str, Path], out: Path, *sets: str, nproc: int | None = 2, resume: str | None = None,
          expect: int = 0) -> subprocess.CompletedProcess:
    """Run to completion; assert the exit code."""
    proc = subprocess.run(command(data, out, *sets, nproc=nproc, resume=resume), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(out: Path) -> list[dict]:
    """Every logged step's values, in the order written (a resumed run appends)."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def gate_lines(stdout: str) -> list[str]:
    """Rank 0's lines only (torchrun and wandb print their own; every rank prints a `[dist]` line)."""
    return [line for line in stdout.splitlines() if line.startswith(("[", "Step ")) and not line.startswith("[dist] ")]


def rank_lines(stdout: str) -> list[str]:
    """The `[dist]` line of every rank, in the order printed."""
    return [line for line in stdout.splitlines() if line.startswith("[dist] ")]


REFERENCE = ("log_every=1", f"max_steps={STEPS}", "checkpoint.save_every=40", "checkpoint.keep_last=2")


@pytest.fixture(scope="module")
def reference(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 200-step run on 2 processes, uninterrupted."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    start = time.perf_counter()
    proc = train(data, out, *REFERENCE)
    print(f"\n[train test] 200 steps x 2 processes: {time.perf_counter() - start:.1f} s wall")
    return {"out": out, "stdout": proc.stdout, "metrics": metrics(out)}


def test_losses_fall_over_200_steps(reference: dict) -> None:
    losses = [m["loss"] for m in reference["metrics"]]
    assert [m["step"] for m in reference["metrics"]] == list(range(STEPS))
    first, last = float(np.mean(losses[:20])), float(np.mean(losses[-20:]))
    print(f"\n[train test] mean loss steps 0-19: {first:.4f}; steps 180-199: {last:.4f}")
    assert last < 0.8 * first


def test_startup_lines_come_in_their_fixed_order_and_every_step_line_parses(reference: dict, data: dict) -> None:
    # Every rank's own line first, in rank order.
    ranks = rank_lines(reference["stdout"])
    assert [r.split()[1] for r in ranks] == ["rank=0/2", "rank=1/2"]
    rank_re = r"\[dist\] rank=\d/2 local_rank=\d device=cpu backend=gloo host=\S+ pid=\d+ nvls=(off|default)"
    assert all(re.fullmatch(rank_re, r) for r in ranks)
    assert reference["stdout"].index(ranks[-1]) < reference["stdout"].index("[data] dataset=")
    lines = gate_lines(reference["stdout"])
    expected_start = [
        "[data] dataset=libero_synth episodes=12 transitions=600 chunk=4 batch=8",
        "[model] initialised from config (random weights)",
        None,  # parameter counts, checked by regex below
        "[train] effective_batch=16 (batch=8 x world=2 x accum=1)",
    ]
    for want, got in zip(expected_start, lines[:4], strict=True):
        assert want is None or got == want
    assert re.fullmatch(r"\[model\] Model: \d+\.\dM total, \d+\.\dM trainable", lines[2])
    steps = [STEP_LINE.match(line) for line in lines if line.startswith("[train] step=")]
    assert all(steps) and [int(m.group(1)) for m in steps] == list(range(STEPS))
    assert all(int(m.group(2)) == STEPS for m in steps)
    assert float(steps[0].group(4)) == pytest.approx(2e-4)  # the optimizer's LR: warm-up starts at 10%
    assert lines.index("[train] effective_batch=16 (batch=8 x world=2 x accum=1)") < lines.index(steps[0].group(0))
    out = reference["out"]
    saved = [line for line in lines if line.startswith("[ckpt] saved")]
    assert saved == [f"[ckpt] saved {out}/checkpoint-{s:06d} step={s}" for s in (40, 80, 120, 160, 200)]
    assert re.fullmatch(r"\[train\] done step=200 final_loss=\d+\.\d{4}", lines[-2])
    assert re.fullmatch(r"\[train\] throughput samples/s=\S+ s/step=\S+ data_wait=\S+% peak_mem=\S+GiB mfu=n/a",
                        lines[-1])
    assert (out / "train_progress.log").read_text().splitlines() == lines


def test_checkpoints_are_complete_healthy_pruned_and_carry_the_run_state(reference: dict, data: dict) -> None:
    out = reference["out"]
    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-000160", "checkpoint-000200"]  # keep_last=2
    last = out / "checkpoint-000200"
    for name in ("COMPLETE", "HEALTHY", "rank-00000.json", "rank-00001.json", "model.safetensors", "optimizer.pt"):
        assert (last / name).is_file(), name
    assert (last / "dataset_statistics.json").read_bytes() == data["stats"].read_bytes()
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == state["schedule_position"] == 200 and state["world_size"] == 2
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert run_dirs and all(d.name.endswith(state["wandb_run_id"]) for d in run_dirs)
    cursors = [json.loads((last / f"rank-{r:05d}.json").read_text())["data"] for r in (0, 1)]
    assert cursors[0] == cursors[1]  # equal shards, lockstep


def _children(pid: int) -> list[int]:
    """PIDs whose parent is pid (torchrun starts its workers in their own sessions: killing its group misses them)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_sigkill_mid_training_then_resume_reproduces_every_loss_bitwise(reference: dict, data: dict,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(data, out, *REFERENCE), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoint-000120").is_dir() and (out / "metrics.jsonl").is_file() \
                    and metrics(out)[-1]["step"] >= 125:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        workers = _children(proc.pid)
        for pid in [*workers, proc.pid]:
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = metrics(out)[-1]["step"]
    run_id = json.loads((out / "checkpoint-000120" / "trainer_state.json").read_text())["wandb_run_id"]
    resumed = train(data, out, *REFERENCE, resume="auto")
    assert f"[train] resumed from {out}/checkpoint-000120 at step=120" in gate_lines(resumed.stdout)
    ref = {m["step"]: m for m in reference["metrics"]}
    got = metrics(out)
    assert len(got) == STEPS + killed_at + 1 - 120  # steps 120..killed_at were logged twice
    for m in got:
        assert (m["loss"], m["grad_norm"], m["lr"]) == (ref[m["step"]]["loss"], ref[m["step"]]["grad_norm"],
                                                        ref[m["step"]]["lr"]), m["step"]
    assert [m["step"] for m in got[-(STEPS - 120):]] == list(range(120, STEPS))
    state = json.loads((out / "checkpoint-000200" / "trainer_state.json").read_text())
    assert state["wandb_run_id"] == run_id  # the same wandb run continues
    print(f"\n[train test] killed at step {killed_at}, resumed from 120: {len(got)} logged losses, all equal")


def test_fresh_start_into_a_directory_with_checkpoints_is_refused(reference: dict, data: dict) -> None:
    proc = train(data, reference["out"], *REFERENCE, nproc=None, expect=2)
    assert "already holds checkpoints (newest checkpoint-000200); pass --resume" in proc.stderr


def test_explicit_resume_of_an_incomplete_checkpoint_is_refused(reference: dict, data: dict, tmp_path: Path) -> None:
    broken = tmp_path / "run" / "checkpoint-000160"
    shutil.copytree(reference["out"] / "checkpoint-000160", broken)
    (broken / "COMPLETE").unlink()
    proc = train(data, tmp_path / "run", *REFERENCE, nproc=None, resume=str(broken), expect=2)
    assert f"[train] error: {broken}: incomplete (no COMPLETE marker" in proc.stderr
    assert not list((tmp_path / "run").glob("checkpoint-0002*"))


def test_craft_logs_seed_001s_console_line_with_the_conflict_ratio(data: dict, tmp_path: Path) -> None:
    from agent_ops.known_issues.diagnose import diagnose

    out = tmp_path / "craft"
    proc = train(data, out, "craft.enabled=true", "max_steps=12", "log_every=3", "wandb.mode=disabled",
                 "craft.retention_budget=0.0001", "craft.dual_lr=1.0")
    lines = [CRAFT_LINE.match(line) for line in gate_lines(proc.stdout) if line.startswith("Step ")]
    assert all(lines) and [int(m.group(1)) for m in lines] == [0, 3, 6, 9, 11]
    assert float(lines[-1].group(5)) == 0.0001 and float(lines[-1].group(7)) > 0  # lambda rose: over budget
    logged = metrics(out)
    assert all(0.0 <= m["conflict_ratio"] <= 1.0 for m in logged) and any(m["conflict_ratio"] > 0 for m in logged)
    assert all(m["retention_nonfinite"] == 0 for m in logged)
    text = (out / "train_progress.log").read_text()
    assert "Step 11/12 | Loss:" in text
    # The catalog's remedy for a retention loss far over budget recognises the line.
    assert [m.issue_id for m in diagnose(text, tags=["train"]).matches][:1] == ["craft-retention-over-budget"]


def test_fsdp_trains_checkpoints_and_resumes_exactly(data: dict, tmp_path: Path) -> None:
    sets = ("runtime.parallel=fsdp", "max_steps=10", "log_every=1", "checkpoint.save_every=5", "wandb.mode=disabled")
    first = tmp_path / "fsdp"
    train(data, first, *sets)
    again = tmp_path / "fsdp-resumed"
    train(data, again, *sets, resume=str(first / "checkpoint-000005"))
    ref = {m["step"]: m["loss"] for m in metrics(first)}
    got = metrics(again)
    assert [m["step"] for m in got] == [5, 6, 7, 8, 9]
    assert all(m["loss"] == ref[m["step"]] for m in got)


def test_block_compiled_training_matches_eager_and_its_checkpoints_need_no_compile(data: dict, tmp_path: Path) -> None:
    # runtime.compile with the default scope compiles each transformer block in place (the GPU
    # reference config's path): same losses as eager, and parameter names without `_orig_mod.`.
    sets = ("max_steps=6", "log_every=1", "checkpoint.save_every=3", "wandb.mode=disabled")
    compiled = train(data, tmp_path / "compiled", *sets, "runtime.compile=true")
    # 1 SigLIP encoder layer + 2 Qwen2 decoder layers in the tiny config.
    assert "[train] compile: 3 transformer blocks (torch.compile each)" in gate_lines(compiled.stdout)
    train(data, tmp_path / "eager", *sets)
    eager_losses = [(m["step"], m["loss"]) for m in metrics(tmp_path / "eager")]
    compiled_losses = [(m["step"], m["loss"]) for m in metrics(tmp_path / "compiled")]
    assert [s for s, _ in compiled_losses] == list(range(6))
    assert [c for _, c in compiled_losses] == pytest.approx([e for _, e in eager_losses], rel=1e-4)
    resumed = tmp_path / "resumed-eager"
    train(data, resumed, *sets, resume=str(tmp_path / "compiled" / "checkpoint-000003"))
    assert [m["step"] for m in metrics(resumed)] == [3, 4, 5]


def test_flow_matching_and_next_token_ce_objectives_train(data: dict, tmp_path: Path) -> None:
    extra = {"flow_matching": ["runtime.cuda_alloc_conf=expandable_segments:True"],
             "next_token_ce": ["optim.grad_accum=2", "data.batch_size=4"]}
    jobs = {kind: subprocess.Popen(command(data, tmp_path / kind, f"objective.kind={kind}", "max_steps=25",
                                           "log_every=1", "wandb.mode=disabled", "optim.lr=3e-3", *extra[kind],
                                           nproc=None),
                                   cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for kind in extra}
    outputs = {}
    for kind, job in jobs.items():
        outputs[kind] = job.communicate(timeout=300)[0]
        assert job.returncode == 0, outputs[kind][-3000:]
        losses = [m["loss"] for m in metrics(tmp_path / kind)]
        assert len(losses) == 25 and np.mean(losses[-5:]) < np.mean(losses[:5]), (kind, losses)
    # Set before anything could start CUDA: the first line the trainer prints.
    assert gate_lines(outputs["flow_matching"])[0] == "[train] PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    assert "[train] effective_batch=8 (batch=4 x world=1 x accum=2)" in gate_lines(outputs["next_token_ce"])
    ce = metrics(tmp_path / "next_token_ce")
    assert ce[0]["loss"] == pytest.approx(np.log(259), rel=0.1)  # uniform over the byte vocabulary at init


def test_a_hybrid_schedule_appends_its_weight_to_the_step_line(data: dict, tmp_path: Path) -> None:
    from training.config import HybridWeightConfig
    from training.schedules import weight_at

    out = tmp_path / "hybrid"
    proc = train(data, out, "objective.aux_ce={start: 1.0, end: 0.2, updates: 4, kind: linear}", "max_steps=6",
                 "log_every=1", "wandb.mode=disabled", nproc=None)
    lines = [line for line in gate_lines(proc.stdout) if line.startswith("[train] step=")]
    spec = HybridWeightConfig(start=1.0, end=0.2, updates=4)
    logged = metrics(out)
    assert len(lines) == len(logged) == 6
    for step, (line, m) in enumerate(zip(lines, logged, strict=True)):
        before, sep, weight = line.rpartition(" aux_weight=")
        assert sep and STEP_LINE.match(before), line  # the line as without a schedule, the weight appended at the end
        assert weight == f"{weight_at(step, spec):.4f}" and m["aux_weight"] == weight_at(step, spec)
        gate = re.search(r"\[train\] step=(?P<step>\d+)/\d+ loss=(?P<value>[\d.]+)", line)  # the runbooks' metric
        assert (int(gate["step"]), gate["value"]) == (step, f"{m['loss']:.4f}")
    assert [line.rpartition("aux_weight=")[2] for line in lines] == ["1.0000", "0.8000", "0.6000", "0.4000", "0.2000",
                                                                       "0.2000"]


def test_non_finite_guard_skips_counts_and_stops_with_a_clear_line(data: dict, tmp_path: Path) -> None:
    from agent_ops.known_issues.diagnose import diagnose

    cache = tmp_path / "cache"
    shutil.copytree(data["cache"], cache)
    actions = np.load(cache / "actions.npy", mmap_mode="r+")
    actions[:, 0] = np.nan  # data gone bad after the statistics were computed
    actions.flush()
    del actions
    proc = train({**data, "cache": cache}, tmp_path / "run", "runtime.max_nonfinite_steps=3", "log_every=1",
                 "wandb.mode=disabled", nproc=None, expect=4)
    lines = gate_lines(proc.stdout)
    skipped = [line for line in lines if "update skipped" in line]
    assert len(skipped) == 3
    for s, line in enumerate(skipped):  # |x - nan| has a zero subgradient: the norm may well be finite
        assert re.fullmatch(rf"\[train\] non-finite loss or grad_norm at step={s} \(loss=nan grad_norm=(\d+\.\d{{3}}|nan)\): "
                            rf"update skipped \({s + 1}/3\)", line), line
    assert lines[-1].startswith("[train] stopping: non-finite loss in 3 steps (runtime.max_nonfinite_steps=3)")
    assert [m.issue_id for m in diagnose(proc.stdout, tags=["train"]).matches][:1] == ["loss-nan-gradnorm-inf"]


def test_collapse_stops_the_run_and_rollback_resumes_from_the_last_healthy_checkpoint(data: dict,
                                                                                     tmp_path: Path) -> None:
    from agent_ops.known_issues.diagnose import diagnose

    out = tmp_path / "run"
    # The LR jumps x1000 at step 40: the loss spikes and the watchdog must call it.
    spike = ("log_every=1", "max_steps=60", "checkpoint.save_every=10", "checkpoint.keep_last=2",
             "wandb.mode=disabled", "schedule.num_steps_before_decay=40", "schedule.decay_factor=1000")
    proc = train(data, out, *spike, nproc=None, expect=3)
    collapse = [line for line in gate_lines(proc.stdout) if line.startswith("[watchdog] COLLAPSE")]
    assert len(collapse) == 1
    assert re.fullmatch(r"\[watchdog\] COLLAPSE metric=loss value=\S+ best=\S+ drop=\d+\.\d\d step=(4\d|5\d)", collapse[0])
    assert [m.issue_id for m in diagnose(proc.stdout, tags=["train"]).matches][:1] == ["policy-collapse"]
    assert sorted(p.name for p in out.glob("checkpoint-*") if (p / "HEALTHY").is_file()) == \
        ["checkpoint-000030", "checkpoint-000040"]
    # The catalog's rollback: resume from the older healthy checkpoint with a lower LR.
    rolled = train(data, out, *spike[:-1], "schedule.decay_factor=0.1", nproc=None,
                   resume=str(out / "checkpoint-000030"))
    lines = gate_lines(rolled.stdout)
    assert any(re.fullmatch(rf"\[ckpt\] rolled back: moved checkpoint-000040 aside to {out}/superseded/\S+", line)
               for line in lines)
    assert f"[train] resumed from {out}/checkpoint-000030 at step=30" in lines
    assert lines[-2].startswith("[train] done step=60")


def test_bad_config_is_refused_with_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("out_dir: /tmp/x\nmax_steps: 10\ndata: {cache_dir: /tmp/c, batch_sise: 4}\n")
    assert main(["--config", str(bad)]) == 2
    assert f"[train] error: {bad}: data.batch_sise: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["--config", str(bad), "--set", "data.batch_sise=null", "--set", "optim.lr=-1"]) == 2
    assert f"{bad} (with --set overrides): optim.lr: Input should be greater than 0" in capsys.readouterr().err
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("out_dir: 'runs/output_2025-10-02||12:35:19'\nmax_steps: 10\ndata: {cache_dir: /tmp/c}\n")
    assert main(["--config", str(unsafe)]) == 2
    assert "out_dir: Value error, path component(s) ['output_2025-10-02||12:35:19'] outside [A-Za-z0-9._-]" \
        in capsys.readouterr().err


def test_resume_with_skip_updates_does_not_replay_the_skipped_batches(data: dict, tmp_path: Path) -> None:
    # The catalog's rollbacks set data.skip_updates: the batches read between the checkpoint and the failure are drawn
    # and dropped, so the resumed run's data stands exactly that many batches further on.
    sets = ("log_every=1", "max_steps=8", "checkpoint.save_every=4", "checkpoint.keep_last=3", "wandb.mode=disabled",
            "data.batch_size=4")
    out = tmp_path / "run"
    train(data, out, *sets, nproc=None)
    plain, skipping = tmp_path / "plain", tmp_path / "skipping"
    train(data, plain, *sets, nproc=None, resume=str(out / "checkpoint-000004"))
    proc = train(data, skipping, *sets, "data.skip_updates=3", nproc=None, resume=str(out / "checkpoint-000004"))
    assert "[train] skipped 3 batches after resume (data.skip_updates=3)" in gate_lines(proc.stdout)

    def cursor(run: Path) -> dict:
        return json.loads((run / "checkpoint-000008" / "rank-00000.json").read_text())["data"]

    moved, base = cursor(skipping), cursor(plain)
    assert (moved["epoch"], moved["cursor"]) == (base["epoch"], base["cursor"] + 3 * 4)  # 3 batches of 4 samples further on


def test_sigusr1_saves_a_checkpoint_at_the_next_step_and_stops(data: dict, tmp_path: Path) -> None:
    """What a rented run's budget asks of the training (training/save_request.py): save now, then exit 0."""
    out = tmp_path / "asked"
    proc = subprocess.Popen(command(data, out, "log_every=1", "max_steps=100000", "checkpoint.save_every=100000", nproc=None),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "metrics.jsonl").is_file() and metrics(out) and metrics(out)[-1]["step"] >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:]
    [stopped] = [line for line in gate_lines(stdout) if "stopped on request" in line]
    step = int(stopped.rsplit("step=", 1)[1])
    assert stopped == f"[train] stopped on request (SIGUSR1) after saving step={step}"
    assert (out / f"checkpoint-{step:06d}" / "trainer_state.json").is_file()
    assert 5 < step < 1000


@pytest.mark.parametrize(("env", "torn_down"), [
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, False),
    ({"WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}, False),  # torchrun --nproc_per_node=1 (the one-GPU box)
    ({}, True),  # python -m training.train: no process group, a normal exit
])
def test_a_torchrun_rank_leaves_without_the_interpreters_teardown(env: dict, torn_down: bool) -> None:
    """A rank that joined a process group (any torchrun job, one process included) must skip the teardown where
    gloo's threads can die; an atexit handler shows whether the interpreter's teardown ran."""
    code = ("import atexit; atexit.register(lambda: print('teardown ran', flush=True)); "
            "from training.train import _leave; _leave(3)")
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "MASTER_ADDR", "RANK")}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert ("teardown ran" in done.stdout) is torn_down
