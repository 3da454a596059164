"""The scheduler's language (issue 12): gates that start with their job, gates of skipped jobs, `if: always`,
`continue_on_error`, `throttle`, and matrix cells with their own max_parallel and fail_fast.

Real tmux on a private socket and the real journal; every claim about timing is read back from the
journal's step rows (started / ended), never from the test's own clock.
"""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_ops.record.journal import Journal
from tests.runs import RUNBOOKS, Box, agentops, events, lines, make_box, only_run_id, run_api, spawn, step, wait_for


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Box]:
    """A private local target: scheduling is the same code whatever the transport (the matrix test also runs over SSH)."""
    target = make_box("local", tmp_path)
    yield target
    target.kill_tmux()


def _rows(journal: Journal, run_id: str) -> dict[str, object]:
    return {s.step_id: s for s in journal.steps(run_id)}


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def test_each_gate_starts_while_its_job_runs_even_when_jobs_fill_max_parallel(local: Box) -> None:
    run = run_api(local, "gates_live.yaml")
    assert run.final == "succeeded"
    rows = _rows(run.journal, run.run_id)
    for i in range(1, 5):
        job, gate = rows[f"t{i}"], rows[f"g{i}"]
        # A gate that starts after its job ended reads a finished log and passes on history: it watched nothing.
        assert gate.started < job.ended, (f"g{i}", gate.started, job.ended)
        assert gate.ended <= job.ended + 0.5, f"g{i} passed on a line the live job printed, before the job ended"
    # The limit still holds for the jobs themselves.
    assert _most_at_once([(rows[f"t{i}"].started, rows[f"t{i}"].ended) for i in range(1, 5)]) <= 2


def test_a_gate_on_a_skipped_job_is_skipped_and_says_why(local: Box) -> None:
    run = run_api(local, "gate_skipped.yaml")
    assert run.final == "succeeded"
    rows = _rows(run.journal, run.run_id)
    assert rows["probe"].state == "skipped"
    assert rows["probe_gate"].state == "skipped"
    assert rows["probe_gate"].message == "skipped: job probe was skipped"
    assert (local.scratch / "after").read_text() == "after\n"  # what needs the gate goes on


def test_an_always_step_runs_after_a_failure_and_continue_on_error_lets_dependents_go(local: Box) -> None:
    run = run_api(local, "always.yaml")
    assert run.final == "failed"
    rows = _rows(run.journal, run.run_id)
    assert rows["bad"].state == "failed" and rows["dependent"].state == "cancelled"
    assert rows["flaky"].state == "failed" and rows["after_flaky"].state == "succeeded"
    assert [e.message for e in events(run.journal, run.run_id, "step_tolerated")] == [
        "failed, but continue_on_error: the run goes on"]
    assert rows["report"].state == "succeeded" and rows["report"].started >= rows["bad"].ended
    assert (local.scratch.parent / "report.txt").read_text().split() == ["after_flaky", "good"]


def test_a_failure_with_continue_on_error_does_not_fail_the_run(local: Box) -> None:
    run = run_api(local, "always.yaml", {"fail": "no"})
    assert run.final == "succeeded"
    rows = _rows(run.journal, run.run_id)
    assert rows["flaky"].state == "failed" and "exit code 4" in rows["flaky"].message
    assert (local.scratch.parent / "report.txt").read_text().split() == ["after_flaky", "dependent", "good"]


def test_throttle_bounds_the_steps_of_a_tag_apart_from_max_parallel(local: Box) -> None:
    run = run_api(local, "throttle.yaml")
    assert run.final == "succeeded"
    rows = _rows(run.journal, run.run_id)
    trains = [(r.started, r.ended) for sid, r in rows.items() if sid.startswith("train[")]
    assert len(trains) == 5
    assert _most_at_once(trains) == 2
    # An untagged step is not held back by the throttle: it ran beside the first trainings.
    other = rows["other"]
    assert other.started < min(end for _, end in trains)
    for n in range(1, 6):  # each cell's gate watched its own job live
        assert rows[f"watch[n={n}]"].started < rows[f"train[n={n}]"].ended


def test_matrix_cells_respect_their_max_parallel_and_all_run_without_fail_fast(box: Box) -> None:
    run = run_api(box, "matrix_cells.yaml", {"fail": "spatial-1"})
    assert run.final == "failed"
    rows = _rows(run.journal, run.run_id)
    cells = ["suite=object,seed=1", "suite=object,seed=2", "suite=spatial,seed=1", "suite=spatial,seed=2", "suite=goal,seed=7"]
    assert list(rows) == [f"{s}[{c}]" for c in cells for s in ("train", "gate")] + ["report"]
    assert rows["train[suite=spatial,seed=1]"].state == "failed"
    for cell in cells:
        if cell != "suite=spatial,seed=1":
            assert rows[f"train[{cell}]"].state == "succeeded" and rows[f"gate[{cell}]"].state == "succeeded"
    assert _most_at_once([(rows[f"train[{c}]"].started, rows[f"train[{c}]"].ended) for c in cells]) == 2
    assert rows["report"].state == "succeeded"
    assert (box.scratch.parent / "report.txt").read_text().split() == ["goal-7", "object-1", "object-2", "spatial-2"]


def test_fail_fast_stops_starting_cells_after_one_fails(local: Box) -> None:
    text = (RUNBOOKS / "matrix_cells.yaml").read_text().replace("fail_fast: false", "fail_fast: true")
    path = local.scratch.parent / "fail_fast.yaml"
    path.write_text(text)
    run = run_api(local, str(path), {"fail": "object-1", "width": "1"})
    assert run.final == "failed"
    rows = _rows(run.journal, run.run_id)
    assert rows["train[suite=object,seed=1]"].state == "failed"
    later = [sid for sid in rows if sid.startswith("train[") and sid != "train[suite=object,seed=1]"]
    assert {rows[sid].state for sid in later} == {"cancelled"}
    assert rows["train[suite=object,seed=2]"].message == "not run: another cell of cell failed (fail_fast: false runs every cell)"
    assert [e.step_id for e in events(run.journal, run.run_id, "matrix_halted")] == ["train[suite=object,seed=1]"]
    assert rows["report"].state == "succeeded"  # if: always
    assert step(run.journal, run.run_id, "gate[suite=goal,seed=7]").state == "cancelled"


def test_a_matrix_run_resumes_by_cell_ids_without_repeating_a_cell(local: Box) -> None:
    proc = spawn(local, "run", str(RUNBOOKS / "matrix_resume.yaml"), *local.cli_target(), "--var", f"box={local.scratch}")
    journal = local.journal()
    run_id = wait_for("the run in the journal", lambda: only_run_id(journal), timeout=60)
    counter = local.scratch / "counter"
    wait_for("cell 2 to run", lambda: lines(counter) == ["1", "2"], timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    (local.scratch / "release").touch()  # cell 2 ends while no controller follows it
    resumed = agentops(local, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert {s["id"]: s["state"] for s in doc["steps"]} == {f"cell[n={n}]": "succeeded" for n in (1, 2, 3)}
    assert lines(counter) == ["1", "2", "3"]
    assert [e.step_id for e in events(journal, run_id, "job_reattached")] == ["cell[n=2]"]
