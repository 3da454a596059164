"""`agentops logs RUN STEP --follow` on a step that has not started waits for it (bounded, saying so), and on a
gate shows the watched job's log (issue 12, defect 4); `agentops wait RUN --until done` waits in bounded polls with
a progress line per change and exits with the run's code (feature 7). Real CLI processes, tmux and journal.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runs import RUNBOOKS, Box, agentops, make_box, only_run_id, spawn, wait_for


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Box]:
    target = make_box("local", tmp_path)
    yield target
    target.kill_tmux()


def _start(box: Box, runbook: str, *extra: str):
    proc = spawn(box, "run", str(RUNBOOKS / runbook), *box.cli_target(), "--var", f"box={box.scratch}", *extra)
    run_id = wait_for("the run in the journal", lambda: only_run_id(box.journal()), timeout=60)
    return proc, run_id


def test_logs_follow_waits_for_a_step_to_start_and_a_gate_shows_its_jobs_log(local: Box) -> None:
    proc, run_id = _start(local, "late_start.yaml")
    try:
        follow = spawn(local, "logs", run_id, "late", "--follow")
        gate = spawn(local, "logs", run_id, "late_gate", "--follow")
        # Both are waiting before the job exists (the run holds it back until the test writes `go`).
        assert follow.stderr.readline() == f"waiting for step late of run {run_id} to start (up to 600s)\n"
        assert gate.stderr.readline() == "late_gate is a gate on job late: showing late's log\n"
        assert gate.stderr.readline() == f"waiting for step late of run {run_id} to start (up to 600s)\n"
        (local.scratch / "go").touch()
        for reader in (follow, gate):
            out, err = reader.communicate(timeout=120)
            assert reader.returncode == 0, err
            assert out.splitlines() == ["line=1", "line=2", "line=3"]
    finally:
        (local.scratch / "go").touch()
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    check = agentops(local, "logs", run_id, "done")
    assert check.returncode == 4 and "step 'done' is a check step: it runs no job and has no log (succeeded: 1 checks passed)" in check.stderr
    unknown = agentops(local, "logs", run_id, "lates")
    assert unknown.returncode == 4 and f"run {run_id} has no step 'lates' (did you mean 'late'?)" in unknown.stderr


def test_logs_follow_gives_up_when_the_step_will_never_start(local: Box) -> None:
    proc, run_id = _start(local, "failing.yaml")
    proc.communicate(timeout=120)
    gone = agentops(local, "logs", run_id, "after", "--follow")
    assert gone.returncode == 4
    assert "step 'after' ended without a job log: cancelled: not run: dependency broken failed" in gone.stderr
    short = agentops(local, "logs", run_id, "after")
    assert short.returncode == 4 and "has no job log yet (cancelled)" in short.stderr


def test_wait_until_done_reports_progress_and_exits_with_the_runs_code(local: Box) -> None:
    proc, run_id = _start(local, "late_start.yaml")
    try:
        early = agentops(local, "wait", run_id, "--until", "done", "--timeout", "0.5")
        assert early.returncode == 124 and f"run {run_id} still running" in early.stderr
        waiter = spawn(local, "wait", run_id, "--until", "done")
        first = waiter.stderr.readline()  # the state when it began: then the run is let go
        assert first.endswith(f"] {run_id}: running: 3 pending, 1 running; running: first\n"), first
        (local.scratch / "go").touch()
        out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, err
        progress = [line for line in err.splitlines() if f"] {run_id}: " in line]
        assert progress[-1].endswith(f"{run_id}: succeeded: 4 succeeded")
        assert any("running: late" in line for line in progress)  # a line per change, naming what runs
        assert f"{run_id}: succeeded" in out
    finally:
        (local.scratch / "go").touch()
        proc.communicate(timeout=120)


def test_wait_until_done_exits_1_for_a_failed_run(local: Box) -> None:
    proc, run_id = _start(local, "failing.yaml")
    try:
        failed = agentops(local, "wait", run_id, "--until", "done", timeout=120)
    finally:
        proc.communicate(timeout=120)
    assert failed.returncode == 1, failed.stderr
    assert f"{run_id}: failed" in failed.stdout
    too_long = agentops(local, "wait", run_id, "--timeout", "45")
    assert too_long.returncode == 2 and "at most 30 s with --until change" in too_long.stderr


def test_run_detach_checks_first_then_starts_the_run_with_the_same_target_and_vars(local: Box) -> None:
    hello = str(RUNBOOKS / "hello.yaml")
    bad = agentops(local, "run", hello, "--target", "nowhere", "--var", f"box={local.scratch}", "--detach", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "invalid_target", bad.stdout + bad.stderr
    unset = agentops(local, "run", hello, *local.cli_target(), "--detach")
    assert unset.returncode == 2 and "box" in unset.stderr
    assert only_run_id(local.journal()) is None  # nothing was started by either
    started = agentops(local, "run", hello, *local.cli_target(), "--var", f"box={local.scratch}", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    done = agentops(local, "wait", run_id, "--until", "done", timeout=120)
    assert done.returncode == 0, done.stderr
    assert (local.scratch / "counter").read_text() == "hello\n"
    target = local.journal().run(run_id).target  # the background run got the flags back as they were given
    assert (target["tmux_socket"], target["workdir"]) == (local.socket, local.spec.workdir)
