"""runbooks/resume_training.yaml (seed 000) end to end on this machine: collapse -> catalog rollback -> resume.

The shipped runbook runs unchanged through the real executor, local transport, tmux and journal;
its variables only point the interpreter and the work directories into the test's own space. The
trainer (torchrun, 2 gloo processes) is real: training/configs/collapse_cpu.yaml warms the LR up
past its test-only fault edge, so the first attempt collapses; the catalog's policy-collapse fix
rolls back and halves the LR; the second attempt runs the remaining updates. Everything asserted
here is read back from the journal (and `agentops status --json`) and from the attempts' job logs.
One run (~1 min on 2 cores) is shared by the tests of this module.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_ops.record.journal import Journal
from agent_ops.record.status import RunStatus, run_status
from agent_ops.run.context import start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from tests.runs import CLI, Box, agentops, events, make_box

E2E_MARKS = (
    pytest.mark.slow, pytest.mark.train,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None or importlib.util.find_spec("torch") is None,
                       reason="the runbook's data and trainer need the [train] extra (tensorflow-datasets, torch)"),
)


def e2e(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of the tests that read the end-to-end run (validation alone needs none of them)."""
    for mark in E2E_MARKS:
        test = mark(test)
    return test


ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "runbooks" / "resume_training.yaml"
STEP_LINE = re.compile(r"^\[train\] step=(\d+)/(\d+) loss=(\S+) lr=(\S+) ")
SAVED = re.compile(r"^\[ckpt\] saved \S+/checkpoint-(\d{6}) step=\d+")
FAULT = re.compile(r"^\[fault\] step=(\d+): ")


@dataclass
class Finished:
    """What the one run left: its status (as `agentops status --json` builds it), journal, and the train job's logs."""

    run_id: str
    status: RunStatus
    journal: Journal
    box: Box
    ckpt_dir: Path
    logs: list[list[str]]  # per train attempt, its job log's lines

    def steps(self, log: list[str]) -> list[tuple[int, str, float]]:
        """(step, loss as printed, lr) of every step line."""
        return [(int(m[1]), m[3], float(m[4])) for line in log if (m := STEP_LINE.match(line))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    root = tmp_path_factory.mktemp("resume-training")
    box = make_box("local", root)
    work = root / "work"
    loaded = load_runbook(RUNBOOK)
    values = resolve_vars(loaded, {"python": sys.executable, "work": str(work), "ckpt_dir": str(work / "runs" / "collapse")})
    journal = box.journal()
    ctx = start_run(loaded, values, {}, box.spec, journal)
    try:
        Executor(ctx).execute()
    finally:
        ctx.transport.close()
        box.kill_tmux()
    logs = [Path(a.job_dir, "log").read_text().splitlines() for a in journal.attempts(ctx.run_id, "train")]
    return Finished(ctx.run_id, run_status(journal, ctx.run_id), journal, box, work / "runs" / "collapse", logs)


def _expected_rollback(first: list[str]) -> tuple[int, list[int]]:
    """From attempt 1's log: the checkpoint a correct rollback takes, and the ones saved after the damage.

    The first amplified update is step F; a checkpoint-N holds the weights after N updates, so N <= F
    predates the damage and N > F does not, whatever the watchdog's smoothing made of it at save time.
    """
    saved = [int(m[1]) for line in first if (m := SAVED.match(line))]
    [fault_step] = [int(m[1]) for line in first if (m := FAULT.match(line))]
    return max(n for n in saved if n <= fault_step), [n for n in saved if n > fault_step]


def _last_step(log: list[str]) -> int:
    """The highest step attempt 1's log shows: where the remedy's skip ends."""
    return max(int(m[1]) for line in log for m in re.finditer(r"\bstep\W{0,2}[=: ]\s*(\d+)", line, re.IGNORECASE))


@e2e
def test_the_run_succeeds_on_the_second_train_attempt(finished: Finished) -> None:
    status = finished.status
    problems = {s.id: (s.state, s.message) for s in status.steps if s.state != "succeeded"}
    assert status.state == "succeeded", json.dumps(problems, indent=1)
    train = next(s for s in status.steps if s.id == "train")
    assert train.attempt == 2 and len(finished.logs) == 2
    assert train.attempts[0].rc not in (0, None) and train.attempts[0].verdict == "failed"
    assert train.attempts[1].rc == 0 and train.attempts[1].verdict == "succeeded"
    for s in status.steps:
        if s.id != "train":
            assert s.attempt == 1, (s.id, s.message)


@e2e
def test_first_attempt_collapsed_and_was_diagnosed_as_policy_collapse(finished: Finished) -> None:
    first = finished.logs[0]
    collapse = [line for line in first if line.startswith("[watchdog] COLLAPSE metric=loss ")]
    assert len(collapse) == 1
    assert "[train] stopping after collapse: nothing saved; roll back to the newest HEALTHY checkpoint" in first
    assert not any(line.startswith("[train] done ") for line in first)
    [diagnosis] = [e for e in events(finished.journal, finished.run_id, "diagnosis") if e.step_id == "train"]
    assert diagnosis.message.startswith("known issue policy-collapse: ")
    assert diagnosis.data["matched_lines"][0].endswith(collapse[0])


@e2e
def test_the_rollback_fix_is_recorded_with_the_newest_healthy_checkpoint_and_half_the_lr(finished: Finished) -> None:
    good, suspects = _expected_rollback(finished.logs[0])
    assert suspects, "collapse_cpu.yaml is meant to save a checkpoint between the damage and the collapse line"
    chosen = f"{finished.ckpt_dir}/checkpoint-{good:06d}"
    [remedy] = finished.status.remedies
    assert (remedy.step_id, remedy.attempt, remedy.issue_id, remedy.result) == ("train", 1, "policy-collapse", "succeeded")
    assert any("[watchdog] COLLAPSE metric=loss" in line for line in remedy.matched_lines)
    last = _last_step(finished.logs[0])
    assert remedy.fix == [f"rolled back to {chosen}; skip_updates = {last - good + 1} (steps {good}..{last} skipped on resume); "
                          "learning_rate: 0.002 -> 0.001; save_every: 5 -> 2"]
    assert finished.status.vars["skip_updates"] == last - good + 1
    assert finished.status.vars["resume_from"] == chosen
    assert finished.status.vars["learning_rate"] == pytest.approx(1e-3)
    assert finished.status.vars["save_every"] == 2
    # The suspects lost HEALTHY when the collapse was reported, which is why the rollback passed over them.
    names = ", ".join(f"checkpoint-{n:06d}" for n in suspects)
    assert any(line.startswith(f"[ckpt] HEALTHY withdrawn from {names}: ") for line in finished.logs[0])


@e2e
def test_second_attempt_resumed_there_with_the_lower_lr_and_ran_only_the_remaining_updates(finished: Finished) -> None:
    first, second = finished.logs
    good, suspects = _expected_rollback(first)
    assert f"[train] resumed from {finished.ckpt_dir}/checkpoint-{good:06d} at step={good}" in second
    moved = [line for line in second if line.startswith("[ckpt] rolled back: moved ")]
    assert moved == [f"[ckpt] rolled back: moved {', '.join(f'checkpoint-{n:06d}' for n in suspects)} aside to "
                     f"{moved[0].rsplit(' aside to ', 1)[1]}"] and f"{finished.ckpt_dir}/superseded/" in moved[0]
    before, after = finished.steps(first), finished.steps(second)
    assert [s for s, _, _ in after] == list(range(good, 80))  # the remaining updates, from the checkpoint's step
    assert not any(line.startswith("[fault]") for line in second)
    # The batches attempt 1 read from that checkpoint up to the collapse are skipped, not replayed (grad_accum 1).
    skipped = _last_step(first) - good + 1
    assert f"[train] skipped {skipped} batches after resume (data.skip_updates={skipped})" in second
    # The lowered LR in the trainer's own lr= lines: half of attempt 1's schedule, never above the new peak.
    lr_before = {s: lr for s, _, lr in before}
    for s, _, lr in after:
        if s in lr_before and lr_before[s] < 1.0:  # attempt 1's amplified steps are no schedule to compare with
            assert lr == pytest.approx(lr_before[s] / 2, rel=2e-3), s
        assert lr <= 1e-3 * (1 + 1e-3), s
    assert any(line.startswith("[train] done step=80 ") for line in second)
    assert not any(line.startswith("[watchdog] COLLAPSE") for line in second)


@e2e
def test_the_checkpoints_on_disk_tell_the_same_story(finished: Finished) -> None:
    _, suspects = _expected_rollback(finished.logs[0])
    final = finished.ckpt_dir / "checkpoint-000080"
    assert (final / "COMPLETE").is_file() and (final / "HEALTHY").is_file()
    assert json.loads((final / "trainer_state.json").read_text())["step"] == 80
    aside = sorted(p.name for p in finished.ckpt_dir.glob("superseded/*/checkpoint-*"))
    assert aside == [f"checkpoint-{n:06d}" for n in suspects]
    assert not list(finished.ckpt_dir.glob("superseded/*/checkpoint-*/HEALTHY"))
    outcome = next(s for s in finished.status.steps if s.id == "outcome")
    assert outcome.message == "6 checks passed"


@e2e
def test_the_gate_followed_the_retry_and_matched_the_resumed_run(finished: Finished) -> None:
    gate = next(s for s in finished.status.steps if s.id == "train_gate")
    assert gate.state == "succeeded"
    assert [e.step_id for e in events(finished.journal, finished.run_id, "gate_follows_retry")] == ["train_gate"]
    patterns = {p["name"]: p for p in gate.progress["patterns"]}
    assert all(p["matched"] for p in patterns.values())
    good, _ = _expected_rollback(finished.logs[0])
    assert patterns["a step"]["line"].startswith(f"[train] step={good}/80 ")
    assert patterns["done"]["line"].startswith("[train] done step=80 ")


@e2e
def test_agentops_status_json_shows_why(finished: Finished) -> None:
    proc = agentops(finished.box, "status", finished.run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["state"] == "succeeded"
    [remedy] = status["remedies"]
    assert remedy["issue_id"] == "policy-collapse" and remedy["result"] == "succeeded"
    assert remedy["fix"][0].startswith(f"rolled back to {finished.ckpt_dir}/checkpoint-")


def test_the_runbook_validates() -> None:
    proc = subprocess.run([*CLI, "validate", str(RUNBOOK), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = json.loads(proc.stdout)["results"]
    assert (result["ok"], result["name"], result["problems"]) == (True, "resume_training", [])


def test_plan_shows_the_check_waiting_for_the_trainer_to_exit() -> None:
    proc = subprocess.run([*CLI, "plan", str(RUNBOOK), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = {s["id"]: s for wave in json.loads(proc.stdout)["waves"] for s in wave}
    assert steps["outcome"]["needs"] == ["train_gate"] and steps["outcome"]["after"] == ["train"]
    assert "${resume:+--resume \"$resume\"}" in steps["train"]["command"]
