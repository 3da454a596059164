"""runbooks/train_multinode.yaml for real on CPU: torchrun's c10d rendezvous across two loopback boxes (gloo).

Two boxes of the session's fleet (real sshd servers on 127.0.0.1, own homes and tmux sockets) each run
one trainer process: `torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d`, gated on both nodes'
lines. Its per-step losses must equal those of the same training on one box with two processes (same
world size, same data order). Then one node's trainer is killed mid-run: the wait ends on both nodes
within the poll cap, and blame names the killed node.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_ops.record.journal import Journal
from tests.fleet import Fleet, run_fleet
from tests.runs import wait_for
from tests.test_training_train import ENV, ROOT, data  # noqa: F401  (the fixture: synthetic data, stats, cache)

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.ssh]
RUNBOOK = ROOT / "runbooks" / "train_multinode.yaml"
STEPS, LOG_EVERY = 20, 5
POLL_CAP_S = 5.0  # the runbook's poll.cap_s
BATCH = "--set data.batch_size=8"  # half the demo's batch: the tests' 2 shared cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _python(tmp_path: Path) -> str:
    """This interpreter with this checkout's training core first on the path, as the boxes' `python`."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def _vars(data: dict, tmp_path: Path, steps: int) -> dict[str, object]:
    return {"python": _python(tmp_path), "work": str(tmp_path / "work"), "train_config": "tiny_cpu",
            "cache_dir": str(data["cache"]), "stats": str(data["stats"]), "nproc_per_node": 1, "min_gpus": 0,
            "rdzv_port": _free_port(), "train_steps": steps, "log_every": LOG_EVERY,
            "loss_lines": -(-steps // LOG_EVERY) + 1, "startup_s": 240, "extra_args": BATCH}


def _losses(metrics_file: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, metrics_file.read_text().splitlines())]


def test_two_boxes_train_as_one_box_with_two_processes(fleet: Fleet, data: dict, tmp_path: Path) -> None:
    two = fleet.specs[:2]
    run_id, final, journal = run_fleet(fleet, RUNBOOK, _vars(data, tmp_path, STEPS), specs=two)
    steps = {s.step_id: s for s in journal.steps(run_id)}
    # A string, not a dict: pytest shows a message whole, but cuts a dict's repr (a failed CI run hid its step).
    assert final == "succeeded", "\n".join(f"{k}: {s.state}: {s.message}" for k, s in steps.items() if s.state != "succeeded")
    # Gated on both nodes: each node's rank joined; rank 0's lines and loss on whichever node held rank 0.
    assert {p.node: p.state for p in journal.step_nodes(run_id, "joined")} == {"n1": "succeeded", "n2": "succeeded"}
    assert re.search(r"loss: 5 values, .* \(on n[12]\)$", steps["rank0"].message)
    assert steps["port_reach"].nodes == ["n2"] and steps["port_listen"].nodes == ["n1"]
    # Both nodes' ranks were in one job of world 2, with the c10d rendezvous (not --standalone).
    logs = {a.node: Path(a.job_dir, "log").read_text() for a in journal.attempts(run_id, "train")}
    ranks = sorted(m for text in logs.values() for m in re.findall(r"^\[dist\] (rank=\d/2) local_rank=0 ", text, re.M))
    assert ranks == ["rank=0/2", "rank=1/2"]

    # Rank 0 wrote its metrics in its own node's out_dir.
    [metrics] = list((tmp_path / "work" / "runs" / run_id).glob("n*/metrics.jsonl"))
    multinode = _losses(metrics)
    reference_out = tmp_path / "reference"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training.train",
           "--config", "tiny_cpu", "--set", f"out_dir={reference_out}", "--set", f"data.cache_dir={data['cache']}",
           "--set", f"data.stats={data['stats']}", "--set", f"max_steps={STEPS}", "--set", f"log_every={LOG_EVERY}",
           "--set", "wandb.mode=disabled", *BATCH.split()]
    proc = subprocess.run(cmd, cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _losses(reference_out / "metrics.jsonl")
    assert [s for s, _ in multinode] == [0, 5, 10, 15, 19]
    assert multinode == reference


def test_a_killed_trainer_ends_the_wait_on_every_node_and_is_blamed(fleet: Fleet, data: dict, tmp_path: Path) -> None:
    two = fleet.specs[:2]
    result: dict = {}
    controller = threading.Thread(target=lambda: result.update(
        run=run_fleet(fleet, RUNBOOK, _vars(data, tmp_path, 5000), specs=two)))
    controller.start()
    try:
        journal = Journal(fleet.home / "journal.db")
        run_id = wait_for("the run to start", journal.latest_run_id)
        victim = "n2"
        log = wait_for("n2's trainer to reach step 0", lambda: _step0_log(journal, run_id, victim), timeout=240)
        pid = int(re.search(r"^\[dist\] rank=\d/2 local_rank=0 .* pid=(\d+) ", log, re.M).group(1))
        os.kill(pid, signal.SIGKILL)  # the trainer on n2 dies; torchrun on n2 and the trainer on n1 are left
        killed_at = time.time()
        controller.join(timeout=120)
        assert not controller.is_alive(), "the run did not end after a node's trainer died"
    finally:
        controller.join(timeout=120)
    run_id, final, journal = result["run"]
    assert final == "failed"
    # The wait ended on both nodes within the poll cap: every node's part of the job and of its gates ended.
    for sid in ("train", "joined", "rank0"):
        parts = journal.step_nodes(run_id, sid)
        assert {p.node for p in parts} == {"n1", "n2"}, sid
        assert all(p.ended is not None and p.ended - killed_at <= POLL_CAP_S + 3.0 for p in parts), \
            [(sid, p.node, p.state, p.ended - killed_at if p.ended else None) for p in parts]
    train = journal.step(run_id, "train")
    assert train.blame["node"] == victim, train.blame
    assert "SIGKILL" in train.blame["error"]
    status = json.loads(subprocess.run([sys.executable, "-m", "agent_ops.front.cli", "status", run_id, "--json"],
                                       capture_output=True, text=True, env=fleet.env()).stdout)
    assert status["blame"]["node"] == victim
    # No trainer is left behind on either node.
    for a in journal.attempts(run_id, "train"):
        assert not any(_alive(p) for p in _pids(Path(a.job_dir, "log").read_text()))


def _step0_log(journal, run_id: str, node: str) -> str | None:
    attempts = [a for a in journal.attempts(run_id, "train") if a.job_dir]
    if len(attempts) < 2:
        return None
    texts = {a.node: Path(a.job_dir, "log").read_text() for a in attempts if Path(a.job_dir, "log").exists()}
    started = any("[train] step=0/" in t for t in texts.values())
    return texts.get(node) if started and "[dist] rank=" in texts.get(node, "") else None


def _pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"^\[dist\] .* pid=(\d+) ", log, re.M)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
