"""runbooks/train_2gpu.yaml on CPU: 2 gloo processes in tmux, gated on both ranks and rank 0's loss.

Run through the CLI as a user runs it (`agentops run train_2gpu.yaml`, the bare name finds the
shipped runbook) with the local transport, its config switched to the tiny CPU policy and its
cache to the trainer tests' synthetic one. On a 2-GPU box the same runbook runs the reference
config (its defaults). What is asserted is read back from the job's own log and the run's files.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.runs import agentops, make_box
from tests.test_training_train import data  # noqa: F401  (the fixture: synthetic data, stats, cache)

pytestmark = [pytest.mark.slow, pytest.mark.train]
STEPS = 30


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_train_2gpu_runbook_gates_every_rank_and_the_loss_on_cpu(parallel: str, data: dict, tmp_path: Path) -> None:
    box = make_box("local", tmp_path)
    work = tmp_path / "work"
    sets = {"work": work, "python": sys.executable, "train_config": "tiny_cpu", "cache_dir": data["cache"],
            "stats": data["stats"], "parallel": parallel, "min_gpus": 0, "train_steps": STEPS, "loss_lines": 4}
    try:
        proc = agentops(box, "run", "train_2gpu.yaml", *box.cli_target(),
                        *[arg for k, v in sets.items() for arg in ("--var", f"{k}={v}")], "--json", timeout=290)
    finally:
        box.kill_tmux()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = json.loads(proc.stdout)
    steps = {s["id"]: s for s in status["steps"]}
    assert status["state"] == "succeeded", {k: s["message"] for k, s in steps.items()}
    assert "loss: 4 values" in steps["train_gate"]["message"]

    # Both ranks joined, in rank order, each with the three multicast switches in its environment.
    attempt = box.journal().attempts(status["id"], "train")[-1]
    log = Path(attempt.job_dir, "log").read_text().splitlines()
    ranks = [line for line in log if line.startswith("[dist] ")]
    assert [r.split()[1] for r in ranks] == ["rank=0/2", "rank=1/2"]
    assert all(re.fullmatch(r"\[dist\] rank=\d/2 local_rank=\d device=cpu backend=gloo host=\S+ pid=\d+ nvls=off", r)
               for r in ranks)
    assert "[train] effective_batch=32 (batch=16 x world=2 x accum=1)" in log

    out = work / "runs" / status["id"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["device"] == "cpu"
    assert any(line.startswith("world 2 (cpu): ") for line in steps["summary"]["log_tail"])
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0]
