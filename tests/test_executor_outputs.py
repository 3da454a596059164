"""Step results through a real run (tmux, journal; local and over SSH): written, recorded, read by a later step, resumed.

Covers issue 12's outputs: a run step's declared outputs, a gate's metrics and named groups, a check's measured
values, each read by a later step's template; the journal keeps them, so a resumed run renders the same.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from typer.testing import CliRunner

from agent_ops.front.cli import app
from tests.runs import RUNBOOKS, Box, agentops, attempts, run_api, step

SECRET = f"ao-out-{uuid.uuid4().hex}"


def test_results_reach_a_later_step_and_survive_a_resume(box: Box) -> None:
    first = agentops(box, "run", str(RUNBOOKS / "outputs.yaml"), *box.cli_target(), "--var", f"box={box.scratch}", "--json",
                     AO_TEST_SECRET=SECRET)
    assert first.returncode == 1, first.stderr  # report waits for the `go` file this test has not written yet
    doc = json.loads(first.stdout)
    steps = {s["id"]: s for s in doc["steps"]}
    assert [steps[s]["state"] for s in ("count", "started", "files", "report")] == ["succeeded", "succeeded", "succeeded", "failed"]
    count = steps["count"]
    assert count["outputs"]["outputs"] == {"n_tasks": 3, "label": "two words", "token": "***", "best": {"loss": 0.25}}
    assert count["env"]["AO_TEST_SECRET"] == "***" and count["env"]["AGENTOPS_OUTPUT"].endswith("/jobs/count-1/outputs")
    assert SECRET not in first.stdout
    assert steps["started"]["outputs"] == {"outputs": {"params": 12.5}, "metrics": {"loss": [0.8, 0.7, 0.6]}}
    assert steps["files"]["outputs"]["checks"][0]["details"]["count"] == 1

    (box.scratch / "go").touch()
    resumed = agentops(box, "resume", doc["id"], "--json", AO_TEST_SECRET=SECRET)
    assert resumed.returncode == 0, resumed.stderr
    # Rendered from the journal's results by the resuming controller; count's job did not run again.
    assert (box.scratch / "report.txt").read_text().splitlines() == [
        "tasks 6 label two words", "best 0.25", "loss 0.8 -> 0.6 of 3", "params 12.5, 1 json file"]
    journal = box.journal()
    assert [a.attempt for a in attempts(journal, doc["id"], "count")] == [1]
    assert [a.attempt for a in attempts(journal, doc["id"], "report")] == [1, 2]

    verbose = agentops(box, "status", doc["id"], "-v")
    assert "count: outputs.n_tasks = 3" in verbose.stdout and "started: metrics.loss: 3 values, 0.8 .. 0.6" in verbose.stdout
    assert "count: env AO_TEST_SECRET=***" in verbose.stdout and SECRET not in verbose.stdout


def test_a_declared_output_the_job_did_not_write_fails_the_step(box: Box) -> None:
    run = run_api(box, "outputs.yaml", {"write_label": "false"}, secrets={"AO_TEST_SECRET": SECRET})
    assert run.final == "failed"
    count = step(run.journal, run.run_id, "count")
    assert count.state == "failed"
    assert "declared outputs not written: label (a job writes NAME=value lines to $AGENTOPS_OUTPUT)" in count.message
    assert step(run.journal, run.run_id, "report").message == "not run: dependency count failed"


def test_plan_shows_each_steps_env_and_what_it_reads(tmp_path: Path) -> None:
    plan = CliRunner().invoke(app, ["plan", str(RUNBOOKS / "outputs.yaml"), "--var", f"box={tmp_path}", "--json"])
    assert plan.exit_code == 0, plan.output
    steps = {s["id"]: s for wave in json.loads(plan.stdout)["waves"] for s in wave}
    assert steps["count"]["env"] == {"AO_TEST_SECRET": "***", "AGENTOPS_OUTPUT": "<its job directory>/outputs"}
    assert steps["report"]["reads"] == ["count", "started", "files"]
    assert "echo tasks {{ steps.count.outputs.n_tasks * 2 }}" in steps["report"]["command"]  # shown as written until it runs


def test_matrix_cells_read_results_of_their_own_cell_and_of_a_named_cell(box: Box) -> None:
    run = run_api(box, "matrix_outputs.yaml")
    assert run.final == "succeeded", [(s.step_id, s.state, s.message) for s in run.journal.steps(run.run_id)]
    assert [(box.scratch / f"use-{n}").read_text() for n in (1, 2)] == ["1 w1\n", "2 w2\n"]  # each cell its own make's output
    assert (box.scratch / "pick").read_text() == "w2\n"
    assert [(box.scratch / f"wait-{k}").read_text() for k in (1, 2)] == ["1\n", "2\n"]
