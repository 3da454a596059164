"""The controller's life cycle through the CLI: SIGKILL then `agentops resume`, and `agentops cancel`, on both transports."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading

import pytest

from agent_ops.record.journal import Journal
from tests.runs import RUNBOOKS, Box, agentops, alive, attempts, events, lines, only_run_id, spawn, step, wait_for


def _start(box: Box, runbook: str, *var: str) -> tuple[subprocess.Popen[str], Journal, str]:
    proc = spawn(box, "run", str(RUNBOOKS / runbook), *box.cli_target(), "--var", f"box={box.scratch}",
                 *(arg for v in var for arg in ("--var", v)))
    journal = box.journal()
    run_id = wait_for("the run to appear in the journal", lambda: only_run_id(journal))
    return proc, journal, run_id


def _sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped: a zombie would still answer kill(pid, 0) and look like a live controller
    proc.stdout.close()
    proc.stderr.close()


def _job_running(journal: Journal, run_id: str, step_id: str) -> bool:
    return step(journal, run_id, step_id).state == "running" and any(
        a.job_dir and a.ended is None for a in attempts(journal, run_id, step_id))


def test_sigkill_mid_run_then_resume_finishes_without_rerunning(box: Box) -> None:
    proc, journal, run_id = _start(box, "resume.yaml")
    counter = box.scratch / "counter"
    wait_for("first to succeed and long's job to run", lambda: step(journal, run_id, "first").state == "succeeded"
             and _job_running(journal, run_id, "long") and "long" in lines(counter))
    _sigkill(proc)
    assert proc.returncode == -signal.SIGKILL
    killed = json.loads(agentops(box, "status", run_id, "--json").stdout)
    assert killed["state"] == "running" and killed["controller_alive"] is False

    (box.scratch / "release").touch()  # long ends while no controller follows it
    resumed = agentops(box, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["state"] == "succeeded"
    assert {s["id"]: s["state"] for s in doc["steps"]} == {"first": "succeeded", "long": "succeeded", "last": "succeeded"}
    # Every step's command ran exactly once: the counter and the journal's attempts agree.
    assert lines(counter) == ["first", "long", "last"]
    for sid in ("first", "long", "last"):
        assert [a.attempt for a in attempts(journal, run_id, sid)] == [1], sid
    [long_attempt] = attempts(journal, run_id, "long")
    assert long_attempt.rc == 0
    [reattached] = events(journal, run_id, "job_reattached")
    assert reattached.step_id == "long"
    assert [e.step_id for e in events(journal, run_id, "job_started")] == ["first", "long", "last"]
    assert len(events(journal, run_id, "run_resumed")) == 1


def _resume_finishes_without_rerunning(box: Box, journal: Journal, run_id: str) -> None:
    (box.scratch / "release").touch()
    resumed = agentops(box, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["state"] == "succeeded"
    assert lines(box.scratch / "counter") == ["first", "long", "last"]
    assert [a.attempt for a in attempts(journal, run_id, "long")] == [1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_records_the_run_interrupted_as_ctrl_c_does(box: Box, sig: signal.Signals) -> None:
    proc, journal, run_id = _start(box, "resume.yaml")
    wait_for("long's job to run", lambda: _job_running(journal, run_id, "long") and "long" in lines(box.scratch / "counter"))
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert f"stopped by {sig.name}; jobs keep running. Continue with: agentops resume {run_id}" in stderr
    row = journal.run(run_id)
    assert row.state == "interrupted" and row.message.startswith(f"controller stopped by {sig.name}")
    _resume_finishes_without_rerunning(box, journal, run_id)


def test_unwritable_journal_stops_the_controller_with_one_message(box: Box) -> None:
    proc, journal, run_id = _start(box, "resume.yaml")
    wait_for("long's job to run", lambda: _job_running(journal, run_id, "long") and "long" in lines(box.scratch / "counter"))
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    # Every write of the controller to a file now fails (EFBIG, as a full disk fails it with ENOSPC) ...
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, hard))
    wait_for("the controller to say the journal cannot be written", lambda: any("cannot be written" in line for line in stderr))
    # ... until the disk is freed, while the controller still tries to record the run as interrupted.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    assert proc.wait(timeout=60) == 1
    reader.join(timeout=10)
    text = "".join(stderr)
    assert "Traceback" not in text and len(text.splitlines()) < 20, text
    assert f"journal {box.home / 'journal.db'} cannot be written" in text
    assert f"recorded as interrupted; once the journal can be written, continue with: agentops resume {run_id}" in text
    assert journal.run(run_id).state == "interrupted"
    _resume_finishes_without_rerunning(box, journal, run_id)


def test_file_gate_resumed_after_sigkill_sees_lines_written_meanwhile(box: Box) -> None:
    log = box.scratch / "watched.log"
    log.write_text("READY stale: written before the gate began\n")
    proc, journal, run_id = _start(box, "gate_file_resume.yaml", f"log={log}")
    wait_for("the gate to start reading", lambda: step(journal, run_id, "ready").progress is not None)
    _sigkill(proc)
    with log.open("a") as fh:  # the line the gate waits for, written while no controller watched
        fh.write("READY written while the controller was down\n")
    resumed = agentops(box, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    gate = next(s for s in json.loads(resumed.stdout)["steps"] if s["id"] == "ready")
    assert gate["state"] == "succeeded"
    assert gate["progress"]["patterns"][0]["line"] == "READY written while the controller was down"
    # The resumed attempt read from where the interrupted one began, as the journal remembered it.
    first, again = events(journal, run_id, "gate_file_opened")
    assert again.data["offset"] == first.data["offset"] == len("READY stale: written before the gate began\n")


def test_cancel_stops_a_running_run(box: Box) -> None:
    proc, journal, run_id = _start(box, "cancel.yaml")
    sleep_pid = box.scratch / "sleep.pid"
    wait_for("the job to be running", lambda: _job_running(journal, run_id, "forever") and sleep_pid.exists())
    pid = int(sleep_pid.read_text())
    cancel = agentops(box, "cancel", run_id, "--json")
    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout) == {"id": run_id, "state": "cancelling"}  # the live controller does the stopping
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    _assert_cancelled(box, journal, run_id, pid)
    assert len(events(journal, run_id, "cancel_requested")) == 1


def test_cancel_without_a_controller_stops_the_jobs_itself(box: Box) -> None:
    proc, journal, run_id = _start(box, "cancel.yaml")
    sleep_pid = box.scratch / "sleep.pid"
    wait_for("the job to be running", lambda: _job_running(journal, run_id, "forever") and sleep_pid.exists())
    _sigkill(proc)
    cancel = agentops(box, "cancel", run_id, "--json")
    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout) == {"id": run_id, "state": "cancelled"}
    _assert_cancelled(box, journal, run_id, int(sleep_pid.read_text()))
    again = agentops(box, "resume", run_id)
    assert again.returncode == 4 and "already cancelled" in again.stderr


def _assert_cancelled(box: Box, journal: Journal, run_id: str, pid: int) -> None:
    row = journal.run(run_id)
    assert row.state == "cancelled" and row.ended is not None
    steps = {s.step_id: (s.state, s.message) for s in journal.steps(run_id)}
    assert steps == {"forever": ("cancelled", "cancelled"), "never": ("cancelled", "cancelled")}  # not failed, not left running
    assert len(events(journal, run_id, "run_cancelled")) == 1
    session = row.tmux_session
    assert not box.server.has_session(session), "the run's tmux session outlived the cancel"
    wait_for(f"the job's sleep (pid {pid}) to end", lambda: not alive(pid), timeout=10)
    assert lines(box.scratch / "counter") == []  # `never` never ran
