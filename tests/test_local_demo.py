"""The README's main command: the shipped local_demo.yaml end to end, on this machine and over SSH.

Run through the CLI exactly as a user runs it (`agentops run local_demo.yaml`, the bare name finds
the shipped runbook), with only its working directory, the interpreter (the one running the tests,
which has the [train] extra) and the target changed. Over SSH the target is the loopback sshd
fixture: the same runbook, every byte through paramiko. Nothing is substituted: synthetic RLDS
data, statistics, cache, torchrun with 2 gloo processes, checkpoint checks and the resume all run.
"""
from __future__ import annotations

import json
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest

from tests.runs import agentops, make_box

pytestmark = [pytest.mark.slow, pytest.mark.train]

SECRET = f"demo-{uuid.uuid4().hex}"


@pytest.mark.parametrize("where", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_local_demo_runs_end_to_end(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow_datasets")
    sshd = request.getfixturevalue("sshd") if where == "ssh" else None
    box = make_box(where, tmp_path, sshd)
    work = tmp_path / "work"
    try:
        proc = agentops(box, "run", "local_demo.yaml", *box.cli_target(), "--var", f"work={work}",
                        "--var", f"python={sys.executable}", "--json", timeout=290, DEMO_WANDB_API_KEY=SECRET)
    finally:
        box.kill_tmux()
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout)
    steps = {s["id"]: s for s in status["steps"]}
    assert status["state"] == "succeeded"
    assert all(s["state"] == "succeeded" for s in steps.values()), {k: s["message"] for k, s in steps.items()}

    # The trainer really trained and really resumed: read its own log, not the gates' verdicts.
    out = work / "runs" / status["id"]
    log = (out / "train_progress.log").read_text().splitlines()
    losses = [float(line.split("loss=")[1].split()[0]) for line in log if line.startswith("[train] step=")]
    assert losses[-1] < losses[0]
    assert f"[train] resumed from {out}/checkpoint-000060 at step=60" in log
    assert "[train] step=60/100 " in "\n".join(log) and "[train] done step=100 " in "\n".join(log)
    assert (out / "checkpoint-000100" / "COMPLETE").is_file()
    assert "loss" in steps["train_gate"]["message"] and "7 values" in steps["train_gate"]["message"]

    # The summary step's report is in the status, and the artifacts came back to the controller.
    summary = "\n".join(steps["summary"]["log_tail"])
    assert "training:" in summary and "-> " in summary and "checkpoints:" in summary
    artifacts = Path(status["artifacts_dir"])
    assert (artifacts / "train_progress.log").read_text().splitlines() == log
    assert json.loads((artifacts / "dataset_statistics.json").read_text())

    # The wandb key reached the job (the netrc), never the journal or the CLI's output.
    assert SECRET in (work / "netrc").read_text()
    assert SECRET not in proc.stdout + proc.stderr
    with sqlite3.connect(box.home / "journal.db") as db:
        dump = "\n".join(db.iterdump())
    assert SECRET not in dump
