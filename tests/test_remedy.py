"""Known-issue remediation end to end: real tmux jobs, on this machine and over a loopback sshd."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import libtmux
import pytest

from agent_ops.front import service
from agent_ops.record.journal import Journal
from agent_ops.record.status import run_status
from agent_ops.run.context import start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from agent_ops.transport.target import TargetSpec
from tests.runs import kill_tmux_server

OOM_LINE = "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 15.68 GiB. GPU 1 has a total capacity of 94.97 GiB"


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def target(request: pytest.FixtureRequest, tmp_path: Path):
    """A TargetSpec on a private tmux server and work directory, on either transport."""
    sock = f"ao-remedy-{uuid.uuid4().hex[:8]}"
    common = {"tmux_socket": sock, "workdir": str(tmp_path / "box")}
    if request.param == "local":
        spec = TargetSpec(url="local", **common)
    else:
        sshd = request.getfixturevalue("sshd")
        spec = TargetSpec(url=f"ssh://{sshd.user}@{sshd.host}:{sshd.port}", identity=str(sshd.identity),
                          known_hosts=str(sshd.known_hosts), **common)
    yield spec
    kill_tmux_server(libtmux.Server(socket_name=sock))


def _run(tmp_path: Path, target: TargetSpec, text: str, **overrides):
    path = tmp_path / "runbook.yaml"
    path.write_text(textwrap.dedent(text))
    loaded = load_runbook(path)
    journal = Journal(tmp_path / "journal.db")
    ctx = start_run(loaded, resolve_vars(loaded, overrides), {}, target, journal)
    final = Executor(ctx).execute()
    ctx.transport.close()
    return final, run_status(journal, ctx.run_id)


OOM_RUNBOOK = """
name: oom
vars:
  batch_size: 16
steps:
  - id: train
    kind: run
    tags: [train]
    background: true
    command: |
      echo "WaypointVLMDataset: dir=/data/1.0.0, M=7, stride=4, robot=libero"
      if [ "${{PYTORCH_CUDA_ALLOC_CONF:-}}" != "expandable_segments:True" ] || [ {{{{ batch_size }}}} -gt {limit} ]; then
        echo "{oom}"
        exit 1
      fi
      for i in 0 1 2; do echo "[VLM] step=$i/30000 loss=11.$i"; sleep 0.1; done
  - id: started
    kind: gate
    job: train
    patterns:
      - {{regex: 'step=0/', within: 60}}
      - {{regex: 'step=2/', within: 60}}
"""


def test_oom_is_fixed_by_env_and_smaller_batch(tmp_path: Path, target: TargetSpec) -> None:
    final, status = _run(tmp_path, target, OOM_RUNBOOK.format(limit=12, oom=OOM_LINE))
    assert final == "succeeded"
    train = next(s for s in status.steps if s.id == "train")
    assert train.attempt == 2 and [a.rc for a in train.attempts] == [1, 0]
    assert status.vars["batch_size"] == 12
    [remedy] = status.remedies
    assert remedy.issue_id == "vlm-cuda-oom-batch16"
    assert remedy.attempt == 1 and remedy.result == "succeeded"
    assert any("Tried to allocate 15.68 GiB" in line for line in remedy.matched_lines)
    assert "set env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in remedy.fix
    assert "scaled batch_size: 16 -> 12" in remedy.fix


def test_a_fix_that_does_not_help_stops_after_its_bound(tmp_path: Path, target: TargetSpec) -> None:
    # Nothing satisfies this job (limit 0): the entry allows two fixes, then the step fails with the diagnosis.
    final, status = _run(tmp_path, target, OOM_RUNBOOK.format(limit=0, oom=OOM_LINE))
    assert final == "failed"
    train = next(s for s in status.steps if s.id == "train")
    assert train.state == "failed" and train.attempt == 3
    assert "vlm-cuda-oom-batch16" in train.message and "Still OOM at batch 12" in train.message
    assert [r.result for r in status.remedies] == ["failed", "failed", "exhausted"]
    assert status.vars["batch_size"] == 9  # 16 -> 12 -> 9: scaled within bounds, never below min
    gate = next(s for s in status.steps if s.id == "started")
    assert gate.state == "failed"


def test_unknown_failure_reports_nearest_candidates(tmp_path: Path, target: TargetSpec) -> None:
    final, status = _run(tmp_path, target, """
        name: plain
        steps:
          - id: boom
            kind: run
            command: echo "something odd happened"; exit 3
    """)
    assert final == "failed"
    [step] = status.steps
    assert step.attempt == 1 and "exit code 3" in step.message
    assert "no known issue matched" in step.message and "something odd happened" in step.message
    assert status.remedies == []


def test_collapse_rolls_back_to_the_newest_healthy_checkpoint(tmp_path: Path, target: TargetSpec) -> None:
    ckpts = tmp_path / "ckpts"
    for step, healthy in ((2, True), (4, True), (6, False)):
        d = ckpts / f"checkpoint-{step:06d}"
        d.mkdir(parents=True)
        if healthy:
            (d / "HEALTHY").write_text("ok\n")
    final, status = _run(tmp_path, target, f"""
        name: rl
        vars:
          ckpt_dir: {ckpts}
          resume_from: ""
          learning_rate: 1.0e-7
          save_every: 5
        steps:
          - id: train
            kind: run
            tags: [train]
            command: |
              echo "resume_from={{{{ resume_from | raw }}}} lr={{{{ learning_rate }}}} save_every={{{{ save_every }}}}"
              if [ -z {{{{ resume_from }}}} ]; then
                echo "[train] step=6/15 loss=0.91"
                echo "[watchdog] COLLAPSE metric=success_rate value=0.02 best=0.60 drop=0.97 step=6"
                exit 1
              fi
              echo "[train] done step=15 final_loss=0.2"
    """)
    assert final == "succeeded"
    [remedy] = status.remedies
    assert remedy.issue_id == "policy-collapse" and remedy.result == "succeeded"
    assert status.vars["resume_from"] == f"{ckpts}/checkpoint-000004"  # newest with HEALTHY, not 000006
    assert status.vars["learning_rate"] == pytest.approx(5e-8) and status.vars["save_every"] == 2
    assert "rolled back to" in remedy.fix[0]


TRAINING_HEALTH_RUNBOOK = """
name: health
vars:
  ckpt_dir: {ckpts}
  resume_from: ""
  learning_rate: 4.0e-4
  skip_updates: 0
steps:
  - id: train
    kind: run
    tags: [train]
    command: |
      echo "resume_from={{{{ resume_from | raw }}}} lr={{{{ learning_rate }}}} skip={{{{ skip_updates }}}}"
      if [ -z {{{{ resume_from }}}} ] || [ {always_fail} = 1 ]; then
{failure}
        exit 4
      fi
      echo "[train] done step=100 final_loss=0.2"
"""
NAN_FAILURE = """\
        for s in 40 41; do echo "[train] step=$s/100 loss=0.4${s} lr=4.000e-04 grad_norm=0.900 s/step=0.400"; done
        echo "[train] non-finite loss or grad_norm at step=42 (loss=nan grad_norm=nan): update skipped (1/2)"
        echo "[train] non-finite loss or grad_norm at step=43 (loss=nan grad_norm=nan): update skipped (2/2)"
        echo "[train] stopping: non-finite loss in 2 steps (runtime.max_nonfinite_steps=2); roll back or lower the LR"
"""
SPIKE_FAILURE = """\
        for s in 0 1 2 3 4 5 6 7 8 9; do echo "{'loss': 1.1$s, 'learning_rate': 4e-04, 'step': 3$s}"; done
        for s in 40 41 42; do echo "{'loss': 9.7, 'learning_rate': 4e-04, 'step': $s}"; done
        echo "Traceback (most recent call last):"
        echo "KeyboardInterrupt"
"""


def _checkpoints(root: Path) -> Path:
    """checkpoint-000020 and -000030 HEALTHY, -000040 saved after the damage (no HEALTHY)."""
    for step, healthy in ((20, True), (30, True), (40, False)):
        d = root / f"checkpoint-{step:06d}"
        d.mkdir(parents=True)
        if healthy:
            (d / "HEALTHY").write_text("ok\n")
    return root


@pytest.mark.parametrize(("failure", "issue_id"), [(NAN_FAILURE, "loss-nan-gradnorm-inf"), (SPIKE_FAILURE, "loss-spike")])
def test_training_health_rolls_back_skips_the_bad_batches_and_lowers_the_lr(tmp_path: Path, target: TargetSpec,
                                                                           failure: str, issue_id: str) -> None:
    ckpts = _checkpoints(tmp_path / "ckpts")
    final, status = _run(tmp_path, target, TRAINING_HEALTH_RUNBOOK.format(ckpts=ckpts, always_fail=0, failure=failure))
    assert final == "succeeded"
    [remedy] = status.remedies
    assert (remedy.issue_id, remedy.result) == (issue_id, "succeeded")
    last = 43 if issue_id == "loss-nan-gradnorm-inf" else 42
    assert status.vars["resume_from"] == f"{ckpts}/checkpoint-000030"  # newest HEALTHY, not the damaged 000040
    assert status.vars["skip_updates"] == last - 30 + 1  # steps 30..last: the batches read when it went wrong
    assert status.vars["learning_rate"] == pytest.approx(2e-4)
    assert remedy.fix == [f"rolled back to {ckpts}/checkpoint-000030; skip_updates = {last - 29} (steps 30..{last} skipped "
                          f"on resume); learning_rate: 0.0004 -> 0.0002"]


def test_training_health_rollbacks_are_bounded_and_each_is_in_the_journal(tmp_path: Path, target: TargetSpec) -> None:
    ckpts = _checkpoints(tmp_path / "ckpts")
    final, status = _run(tmp_path, target, TRAINING_HEALTH_RUNBOOK.format(ckpts=ckpts, always_fail=1, failure=NAN_FAILURE))
    assert final == "failed"
    # At most 2 rollbacks (the entry's bound), each one in the journal, then the step stops with the advice.
    assert [(r.issue_id, r.result) for r in status.remedies] == [("loss-nan-gradnorm-inf", "failed")] * 2 + [
        ("loss-nan-gradnorm-inf", "exhausted")]
    assert status.vars["learning_rate"] == pytest.approx(1e-4)  # halved twice
    [train] = status.steps
    assert train.attempt == 3 and "fix already applied 2 time(s)" in train.message


def test_a_stalled_gate_is_explained_by_a_hint(tmp_path: Path, target: TargetSpec) -> None:
    # Nothing failed: the run URL never comes because wandb is offline. A hint says so; it is no diagnosis of a job.
    final, status = _run(tmp_path, target, """
        name: offline
        steps:
          - id: train
            kind: run
            tags: [train]
            background: true
            command: |
              echo 'wandb: W&B syncing is set to `offline` in this directory.'
              sleep 3
          - id: wandb_url
            kind: gate
            tags: [train]
            job: train
            patterns: [{regex: 'View run at https://', within: 1}]
    """)
    gate = next(s for s in status.steps if s.id == "wandb_url")
    assert final == "failed" and gate.state == "failed"
    assert "looks like known issue wandb-offline" in gate.message
    assert status.remedies == []


DISK_FULL_RUNBOOK = """
name: disk
vars:
  box: {{default: {box}}}
steps:
  - id: write
    kind: run
    command: |
      if [ -f {{{{ box }}}}/purged ]; then echo written; exit 0; fi
      echo "OSError: [Errno 28] No space left on device"; exit 1
"""


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed"])
def test_a_deleting_fix_on_this_machine_needs_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: bool) -> None:
    # Stand-ins for the package managers whose caches disk-full's fix purges: they record that they were asked.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pip", "uv"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho \"{tool} $*\" >> {tmp_path}/purged\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    sock = f"ao-remedy-{uuid.uuid4().hex[:8]}"
    target = TargetSpec(url="local", tmux_socket=sock, workdir=str(tmp_path / "box"), allow_deleting_fixes=allowed)
    try:
        final, status = _run(tmp_path, target, DISK_FULL_RUNBOOK.format(box=tmp_path))
    finally:
        kill_tmux_server(libtmux.Server(socket_name=sock))
    [remedy] = status.remedies
    assert remedy.issue_id == "disk-full"
    if allowed:
        assert final == "succeeded" and remedy.result == "succeeded"
        assert (tmp_path / "purged").read_text() == "uv cache clean\npip cache purge\n"
        return
    # Refused: nothing was deleted on the user's own machine, and the step says why and how to allow it.
    assert final == "failed" and remedy.result == "refused" and not (tmp_path / "purged").exists()
    [step] = status.steps
    assert step.attempt == 1
    assert "deletes the uv and pip package caches of the target's user" in step.message
    assert "--allow-deleting-fixes" in step.message


def test_plan_names_the_fixes_that_delete(tmp_path: Path) -> None:
    path = tmp_path / "disk.yaml"
    path.write_text(textwrap.dedent(DISK_FULL_RUNBOOK.format(box=tmp_path)))
    [deleting] = service.plan(str(path), {}).deleting_fixes
    assert (deleting.issue_id, deleting.steps) == ("disk-full", ["write"])
    assert deleting.deletes == ["the uv and pip package caches of the target's user"]
    shown = subprocess.run([sys.executable, "-m", "agent_ops.front.cli", "plan", str(path)], capture_output=True, text=True)
    assert "disk-full deletes the uv and pip package caches of the target's user, if it matches a failure of: write" in shown.stdout
