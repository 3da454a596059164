"""Executor contract tests: real tmux jobs on a private socket, on this machine and over the loopback sshd.

Every claim is read back from the journal (timestamps, attempts, events), never from
the test's own clock.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_ops.bounds import MAX_POLL_S
from agent_ops.errors import RunbookError
from agent_ops.run.poll import Backoff
from agent_ops.runbook.loader import load_runbook
from agent_ops.runbook.schema import PollSpec
from tests.runs import (
    CLI,
    RUNBOOKS,
    Box,
    PsSampler,
    agentops,
    alive,
    attempts,
    events,
    lines,
    make_box,
    run_api,
    step,
    wait_for,
)

# Characters that sed, the shell and regexes treat specially, so masking is tested on more than letters.
SECRET = f"ao-s3cr3t.v/x*y&z-{uuid.uuid4().hex}"


# --- the contract runbook, once per transport, through the CLI -------------------------------------


@dataclass
class ContractRun:
    """One `agentops run contract.yaml --json` with every process's command line sampled meanwhile."""

    box: Box
    proc: subprocess.CompletedProcess[str]
    status: dict
    ps_samples: list[str]

    @property
    def run_id(self) -> str:
        return self.status["id"]


@pytest.fixture(scope="module", params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def contract(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractRun]:
    sshd = request.getfixturevalue("sshd") if request.param == "ssh" else None
    box = make_box(request.param, tmp_path_factory.mktemp(f"contract-{request.param}"), sshd)
    try:
        with PsSampler() as ps:
            proc = agentops(box, "run", str(RUNBOOKS / "contract.yaml"), *box.cli_target(), "--var", f"box={box.scratch}",
                            "--json", AO_TEST_SECRET=SECRET)
        assert proc.stdout, proc.stderr
        yield ContractRun(box, proc, json.loads(proc.stdout), ps.samples)
    finally:
        box.kill_tmux()


def test_contract_runbook_succeeds_and_status_reports_it(contract: ContractRun) -> None:
    assert contract.proc.returncode == 0, contract.proc.stderr
    status = agentops(contract.box, "status", contract.run_id, "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["state"] == "succeeded" and doc["controller_alive"] is False
    states = {s["id"]: s["state"] for s in doc["steps"]}
    assert states == {"prepare": "succeeded", "left": "succeeded", "right": "succeeded", "trainer": "succeeded",
                      "trainer_gate": "succeeded", "use_secret": "succeeded", "idempotent": "skipped", "verify": "succeeded"}
    gate = next(s for s in doc["steps"] if s["id"] == "trainer_gate")
    assert [p["matched"] for p in gate["progress"]["patterns"]] == [True, True]
    assert gate["progress"]["metrics"][0]["values"] == [0.8, 0.7, 0.6, 0.5]
    verify = next(s for s in doc["steps"] if s["id"] == "verify")
    assert verify["message"] == "3 checks passed"
    # skip_if held: the idempotent step's command never ran.
    assert sorted(lines(contract.box.scratch / "counter")) == ["left", "prepare", "right", "trainer"]
    assert next(s for s in doc["steps"] if s["id"] == "idempotent")["attempts"] == []


def test_parallel_steps_overlap(contract: ContractRun) -> None:
    journal = contract.box.journal()
    [left] = attempts(journal, contract.run_id, "left")
    [right] = attempts(journal, contract.run_id, "right")
    # Each job sleeps 1.5 s; overlapping intervals prove neither waited for the other.
    assert left.started < right.ended and right.started < left.ended
    rows = {s: step(journal, contract.run_id, s) for s in ("left", "right", "prepare")}
    assert rows["left"].started < rows["right"].ended and rows["right"].started < rows["left"].ended
    assert min(rows["left"].started, rows["right"].started) >= rows["prepare"].ended  # needs were honoured


def test_poll_interval_of_the_contract_run_stays_under_its_cap(contract: ContractRun) -> None:
    [done] = events(contract.box.journal(), contract.run_id, "run_succeeded")
    assert 0 < done.data["max_poll_interval_s"] <= 2.0  # contract.yaml: poll.cap_s 2


def test_secret_never_leaks(contract: ContractRun) -> None:
    box, run_id = contract.box, contract.run_id
    journal = box.journal()
    # The job did get it (through the mode-600 env file) ...
    assert (box.scratch / "secret.copy").read_text() == SECRET
    # ... but no table of the journal holds it, nor any byte of the database files (WAL included).
    db = sqlite3.connect(box.home / "journal.db")
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert {"runs", "steps", "attempts", "events"} <= set(tables)
    for table in tables:
        for row in db.execute(f"SELECT * FROM {table}"):
            assert not any(SECRET in str(cell) for cell in row), f"secret in journal table {table}: {row}"
    for path in box.home.glob("journal.db*"):
        assert SECRET.encode() not in path.read_bytes(), path
    # The job's log on the box has it masked; its script never had it; the mode-600 env file and output masks that
    # held it were removed as the job started, so no file left on the box holds it in any form.
    [attempt] = attempts(journal, run_id, "use_secret")
    job_dir = Path(attempt.job_dir)
    assert (job_dir / "log").read_text() == "token is ***\n"
    assert {"script.sh", "run.sh", "log", "rc"} <= {p.name for p in job_dir.iterdir()}
    assert not {"env", "mask.hex", "mask.sed"} & {p.name for p in job_dir.iterdir()}
    for path in Path(box.spec.workdir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and SECRET.encode().hex().encode() not in data, path
    # Nothing the CLI prints has it: the run itself, logs, status.
    logs = agentops(box, "logs", run_id, "use_secret", AO_TEST_SECRET=SECRET)
    assert logs.returncode == 0 and logs.stdout == "token is ***\n", logs.stderr
    status = agentops(box, "status", run_id, "--json", AO_TEST_SECRET=SECRET)
    for text in (contract.proc.stdout, contract.proc.stderr, logs.stderr, status.stdout, status.stderr):
        assert SECRET not in text
    # No process's command line showed it while the jobs ran (and the sampler did see the job).
    assert any(f"{job_dir}/run.sh" in sample for sample in contract.ps_samples), "ps never sampled the job while it ran"
    assert not [s for s in contract.ps_samples if SECRET in s]


# --- gates, failure patterns, polling, retries, failures: each transport in turn -------------------


def test_gate_ignores_a_line_written_before_it_began(box: Box) -> None:
    log = box.scratch / "app.log"
    log.write_text("booting\nREADY old\n")
    run = run_api(box, "gate_file.yaml", {"log": str(log), "new_lines": 0})
    assert run.final == "failed"
    gate = step(run.journal, run.run_id, "ready")
    assert gate.state == "failed"
    assert "not seen within 2s" in gate.message
    assert gate.progress["patterns"][0]["matched"] is False
    [attempt] = attempts(run.journal, run.run_id, "ready")
    assert attempt.ended - attempt.started >= 2.0  # it failed by its deadline, not on the stale line


def test_gate_passes_on_a_line_appended_after_it_began(box: Box) -> None:
    log = box.scratch / "app.log"
    log.write_text("booting\nREADY old\n")
    run = run_api(box, "gate_file.yaml", {"log": str(log), "new_lines": 5})
    assert run.final == "succeeded"
    pattern = step(run.journal, run.run_id, "ready").progress["patterns"][0]
    assert pattern["matched"] is True
    assert pattern["line"].startswith("READY new "), pattern


def test_gate_never_matches_the_command_text(box: Box) -> None:
    run = run_api(box, "gate_echo.yaml")
    assert run.final == "failed"
    gate = step(run.journal, run.run_id, "marker")
    assert "the log ended before pattern 'MARKER-7f3' was satisfied" in gate.message
    [job] = attempts(run.journal, run.run_id, "quiet")
    assert job.rc == 0 and job.log_size == 0  # the script names the pattern; its log never held it


def test_failure_pattern_ends_the_wait_early(box: Box) -> None:
    run = run_api(box, "fail_on.yaml")
    assert run.final == "failed"
    journal, run_id = run.journal, run.run_id
    crash = step(journal, run_id, "crash")
    assert crash.state == "failed"
    assert "failure pattern '^ERROR: ' matched" in crash.message and "ERROR: disk on fire" in crash.message
    [attempt] = attempts(journal, run_id, "crash")
    # The job would sleep 60 s more: it was judged and killed on its error line (rc: it never exited by itself).
    assert attempt.rc is None and attempt.ended - attempt.started < 20
    gate = step(journal, run_id, "server_up")
    assert gate.state == "failed" and "failure pattern" in gate.message
    assert gate.ended - gate.started < 20  # its own deadline was 50 s
    row = journal.run(run_id)
    assert row.ended - row.started < 30
    # The failed run stopped both one-minute jobs: no window of theirs is left.
    windows = box.window_names()
    assert "crash-1" not in windows and "server-1" not in windows
    for name in ("crash.pid", "server.pid"):
        pid = int((box.scratch / name).read_text())
        wait_for(f"the job's sleep (pid {pid}) to end", lambda pid=pid: not alive(pid), timeout=10)


def test_poll_interval_backs_off_to_the_cap_and_never_past_it(box: Box) -> None:
    run = run_api(box, "quiet.yaml")
    assert run.final == "succeeded"
    [done] = events(run.journal, run.run_id, "run_succeeded")
    # quiet.yaml: poll.cap_s 0.5 and a job silent for 2 s, long enough for the backoff to reach the cap.
    assert done.data["max_poll_interval_s"] == pytest.approx(0.5)


def test_retry_succeeds_on_the_second_attempt(box: Box) -> None:
    run = run_api(box, "retry.yaml")
    assert run.final == "succeeded"
    flaky = step(run.journal, run.run_id, "flaky")
    assert flaky.state == "succeeded" and flaky.attempt == 2
    assert [(a.attempt, a.rc, a.verdict) for a in attempts(run.journal, run.run_id, "flaky")] == [
        (1, 1, "failed"), (2, 0, "succeeded")]
    assert len(events(run.journal, run.run_id, "step_retry")) == 1
    assert lines(box.scratch / "counter") == ["attempt", "attempt"]
    # Every job ended, so the run's tmux session went with the run (nothing piles up on the box), and
    # status no longer offers to attach to it.
    assert not box.server.has_session(f"agentops-{run.run_id}")
    assert agentops_status(box, run.run_id)["attach"] is None


def agentops_status(box: Box, run_id: str) -> dict:
    proc = agentops(box, "status", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_needs_waits_for_a_background_job_to_start_and_after_for_it_to_exit(box: Box) -> None:
    run = run_api(box, "after.yaml")
    assert run.final == "succeeded"
    slow = step(run.journal, run.run_id, "slow")
    with_needs = step(run.journal, run.run_id, "with_needs")
    with_after = step(run.journal, run.run_id, "with_after")
    # From the journal's own timestamps: one started while the job ran, the other once it had ended.
    assert with_needs.started < slow.ended <= with_after.started
    assert lines(box.scratch / "order") == ["with_needs", "exiting", "with_after"]


def test_failing_step_fails_the_run_and_its_dependents_are_not_run(box: Box) -> None:
    proc = agentops(box, "run", str(RUNBOOKS / "failing.yaml"), *box.cli_target(), "--var", f"box={box.scratch}", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["state"] == "failed"
    steps = {s["id"]: s for s in doc["steps"]}
    assert steps["broken"]["state"] == "failed" and "exit code 3" in steps["broken"]["message"]
    assert (steps["after"]["state"], steps["after"]["message"]) == ("cancelled", "not run: dependency broken failed")
    assert (steps["final"]["state"], steps["final"]["message"]) == ("cancelled", "not run: dependency after was not run")
    assert steps["after"]["attempts"] == steps["final"]["attempts"] == []
    assert steps["setup"]["state"] == steps["independent"]["state"] == "succeeded"
    assert sorted(lines(box.scratch / "counter")) == ["independent", "setup"]
    status = agentops(box, "status", "--json")  # the latest run
    assert json.loads(status.stdout)["state"] == "failed"


# --- the poll bound, without a target ---------------------------------------------------------------


@pytest.mark.parametrize("poll", ["{cap_s: 31}", "{cap_s: 600}", "{first_s: 0.5}"])
def test_runbook_asking_for_a_longer_wait_is_rejected(tmp_path: Path, poll: str) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(f"name: slow\npoll: {poll}\nsteps:\n  - {{id: a, kind: run, command: 'true'}}\n")
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}:2: poll.")
    proc = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and f"{path}:2: poll." in proc.stderr


@pytest.mark.parametrize("spec", [
    PollSpec(), PollSpec(cap_s=30, factor=4.0), PollSpec(first_s=0.01, cap_s=0.5, factor=1.0),
    PollSpec.model_construct(first_s=0.25, cap_s=600.0, factor=4.0),  # bypasses validation: the clock still caps at 30 s
])
def test_backoff_never_exceeds_its_cap(spec: PollSpec) -> None:
    backoff = Backoff(spec)
    cap = min(spec.cap_s, MAX_POLL_S)
    waits = []
    for i in range(2000):
        if i % 500 == 0:
            backoff.reset()
        waits.append(backoff.next())
    assert max(waits) <= cap <= MAX_POLL_S
    assert waits[0] == waits[500] == min(spec.first_s, cap) <= 0.25
