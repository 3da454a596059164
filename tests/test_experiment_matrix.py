"""runbooks/experiment_matrix.yaml (seed 001's grid, issue 12's acceptance): 2 suites x {baseline, CRaFT} x 2 seeds of
tiny CPU trainings, each cell gated live on its log, and a results table that is still written when a cell fails.

Nothing is substituted: the real runbook, executor, tmux jobs, journal, training core (synth, stats, cache, train)
and training.matrix_results. The per-cell results come from the files each cell's trainer writes (summary.json);
the failing cell is made to fail the way a real one does: its output directory already holds a checkpoint, which
the trainer refuses to overwrite (exit 2).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from agent_ops.record.status import RunStatus, run_status
from agent_ops.run.context import new_run_id, start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from tests.runs import CLI, Box, make_box

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "runbooks" / "experiment_matrix.yaml"
CELLS = [f"suite={suite},craft={craft},seed={seed}" for suite in ("object", "spatial") for craft in ("false", "true") for seed in (42, 123)]
END_TO_END = [
    pytest.mark.slow, pytest.mark.train,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                       reason="training.synth needs tensorflow-datasets to write the RLDS data"),
]


def end_to_end(test):
    for mark in END_TO_END:
        test = mark(test)
    return test


def test_the_grid_is_a_short_runbook_that_validates_and_plans() -> None:
    assert len(RUNBOOK.read_text().splitlines()) <= 40  # seed 001 needed 83 lines of YAML anchors for eight cells
    plan = subprocess.run([*CLI, "plan", str(RUNBOOK), "--json"], capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    waves = [[s["id"] for s in wave] for wave in doc["waves"]]
    assert [s["always"] for s in doc["waves"][3] + doc["waves"][4]] == [True, True]  # the table is made whatever failed
    assert waves == [["data[suite=object,seed=1]", "data[suite=spatial,seed=2]"], [f"train[{c}]" for c in CELLS],
                     [f"gate[{c}]" for c in CELLS], ["results"], ["fetch_results"]]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by both runs: the second finds the datasets the first made (the data cells are skipped)."""
    return tmp_path_factory.mktemp("matrix-work")


@pytest.fixture
def box(tmp_path: Path):
    target = make_box("local", tmp_path)
    yield target
    target.kill_tmux()


def _run(box: Box, work: Path, before=None) -> tuple[str, RunStatus]:
    loaded = load_runbook(RUNBOOK)
    journal = box.journal()
    run_id = new_run_id()
    if before:
        before(work / "runs" / run_id)
    ctx = start_run(loaded, resolve_vars(loaded, {"work": str(work)}), {}, box.spec, journal, run_id=run_id)
    try:
        final = Executor(ctx).execute()
    finally:
        ctx.transport.close()
    return final, run_status(journal, run_id)


def _table(status: RunStatus) -> dict[str, list[str]]:
    """results.md as fetched into the run's artifacts: cell (suite-craft-seed) -> its row's cells."""
    rows = {}
    for line in (Path(status.artifacts_dir) / "results.md").read_text().splitlines():
        cols = [c.strip() for c in line.strip("|").split("|")]
        if len(cols) == 8 and cols[0] in ("object", "spatial"):
            rows["-".join(cols[:3])] = cols[3:]
    return rows


@end_to_end
def test_every_cell_trains_behind_its_own_live_gate_and_the_table_has_eight_results(box: Box, work: Path) -> None:
    final, status = _run(box, work)
    steps = {s.id: s for s in status.steps}
    assert final == "succeeded", {s.id: (s.state, s.message) for s in status.steps if s.state != "succeeded"}
    for cell in CELLS:
        train, gate = steps[f"train[{cell}]"], steps[f"gate[{cell}]"]
        assert gate.started < train.ended, cell  # the gate watched the training while it ran
        assert "loss: 3 values" in gate.message
    trains = sorted((steps[f"train[{c}]"].started, steps[f"train[{c}]"].ended) for c in CELLS)
    assert max(sum(1 for s, e in trains if s <= t < e) for t, _ in trains) <= 2  # throttle: {train: 2}
    table = _table(status)
    assert len(table) == 8 and {row[0] for row in table.values()} == {"done"}
    assert all(0 < float(row[1]) < 2 for row in table.values())  # each cell's own final loss


@end_to_end
def test_a_failed_cell_leaves_the_other_seven_results_in_the_table(box: Box, work: Path) -> None:
    def occupy(run_dir: Path) -> None:
        # The trainer refuses an output directory that already holds a complete checkpoint (exit 2).
        (run_dir / "spatial-true-123" / "checkpoint-000010").mkdir(parents=True)
        (run_dir / "spatial-true-123" / "checkpoint-000010" / "COMPLETE").touch()

    final, status = _run(box, work, occupy)
    steps = {s.id: s for s in status.steps}
    assert final == "failed"
    assert steps["train[suite=spatial,craft=true,seed=123]"].state == "failed"
    others = [c for c in CELLS if c != "suite=spatial,craft=true,seed=123"]
    assert {steps[f"train[{c}]"].state for c in others} == {"succeeded"}  # fail_fast: false
    assert steps["results"].state == "succeeded" and steps["fetch_results"].state == "succeeded"  # if: always
    table = _table(status)
    assert table.pop("spatial-true-123")[0] == "failed"
    assert len(table) == 7 and {row[0] for row in table.values()} == {"done"}
