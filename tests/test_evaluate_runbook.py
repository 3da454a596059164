"""runbooks/evaluate.yaml (seed 002) end to end on the local transport: the real runbook, executor,
tmux jobs, journal, checks and training core.

Substituted, through the runbook's variables only (the eval_command is left at its default):

- `rdt_dir`     -> a copy of tests/standins/evaluate/rdt: RoboticsDiffusionTransformer's layout with
                   configs/base.yaml and eval_sim/eval_rdt_libero.py, a stand-in evaluator (no
                   simulator, no model) that takes the default command line, checks the config and
                   checkpoint paths, and prints per-trial success lines with fixed success counts
                   per task (SUCCESSES_PER_10 there; copied below as RATES).
- `eval_python` -> this interpreter (seed 002 runs the rdt conda env's python).
- `checkpoint`  -> the seed's relative path, created empty inside the stand-in checkout.
- `data`        -> synthetic LIBERO RLDS written by training.synth: `--action-units m` (positions in
                   metres, std ~0.014) or `mm` (the unit slip, std ~14).
- `python`      -> this interpreter (it has the agentops training core); `work` -> the test's directory.

Not substituted: training.stats, the dataset_stats and action_units checks, the per-task matrix cells,
training.eval_report, tmux, the journal and the get steps into the run's artifacts.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_ops.record.status import RunStatus, run_status
from agent_ops.run.context import start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from tests.runs import CLI, Box, events, make_box

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "runbooks" / "evaluate.yaml"
STANDIN_RDT = Path(__file__).resolve().parent / "standins" / "evaluate" / "rdt"
# The stand-in evaluator's success rates per libero_90 task id (its SUCCESSES_PER_10 / 10).
RATES = {"0": 0.3, "1": 0.5, "2": 0.2, "3": 0.4, "4": 0.1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Marks of the end-to-end runs; validating and planning the runbook needs none of them.
E2E = [
    pytest.mark.slow, pytest.mark.train,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                       reason="training.synth needs tensorflow-datasets to write the RLDS data"),
    pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="training.eval_report plots with matplotlib"),
]


def end_to_end(test):
    """Mark a test as an end-to-end run (slow, needs the training stack)."""
    for mark in E2E:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic LIBERO data twice: in metres and in millimetres (written in child processes: TF stays out)."""
    root = tmp_path_factory.mktemp("eval-data")
    out = {}
    for units in ("m", "mm"):
        out[units] = root / f"libero_{units}"
        subprocess.run([sys.executable, "-m", "training.synth", "--out", str(out[units]), "--episodes", "6", "--steps", "20",
                        "--image-size", "8", "--seed", "5", "--action-units", units],
                       cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture
def box(tmp_path: Path):
    target = make_box("local", tmp_path)
    yield target
    target.kill_tmux()


def _vars(tmp_path: Path, data: Path, **extra: object) -> dict[str, object]:
    rdt = tmp_path / "RoboticsDiffusionTransformer"
    shutil.copytree(STANDIN_RDT, rdt)
    (rdt / "checkpoints" / "libero_finetune_fixed" / "checkpoint-5000").mkdir(parents=True)
    return {"work": str(tmp_path / "eval"), "python": sys.executable, "data": str(data), "rdt_dir": str(rdt),
            "eval_python": sys.executable, **extra}


def test_validate_and_plan_through_the_cli() -> None:
    validate = subprocess.run([*CLI, "validate", str(RUNBOOK)], capture_output=True, text=True, timeout=60)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "evaluate.yaml: ok (evaluate, 14 steps)" in validate.stdout + validate.stderr  # one eval cell per default task
    plan = subprocess.run([*CLI, "plan", str(RUNBOOK), "--var", "workers=2", "--var", "tasks=0,1", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert [[s["id"] for s in wave] for wave in doc["waves"]] == [
        ["preflight", "workspace"], ["stats"], ["units"], ["eval[task=0]", "eval[task=1]"], ["report"],
        ["fetch_table", "fetch_csv", "fetch_json", "fetch_plot"]]
    cell = doc["waves"][3][1]["command"]
    assert "/eval_logs task=1\n" in cell and "printf '%s' 0,1 |" in cell  # the cell's task, and the list for TASK_INDEX
    assert "bash -c 'cd \"$RDT_DIR\" && \"$EVAL_PYTHON\" eval_sim/eval_rdt_libero.py --config configs/base.yaml" in cell


def _run(box: Box, values: dict[str, object]) -> tuple[str, RunStatus]:
    loaded = load_runbook(RUNBOOK)
    journal = box.journal()
    ctx = start_run(loaded, resolve_vars(loaded, values), {}, box.spec, journal)
    try:
        final = Executor(ctx).execute()
    finally:
        ctx.transport.close()
    return final, run_status(journal, ctx.run_id)


@end_to_end
def test_evaluate_per_task_success_rates_table_and_plot(datasets, box: Box, tmp_path: Path) -> None:
    final, status = _run(box, _vars(tmp_path, datasets["m"], tasks="0,1,2,3,4", trials=10, workers=2))
    steps = {s.id: s for s in status.steps}
    assert final == "succeeded", {s.id: (s.state, s.message) for s in status.steps if s.state != "succeeded"}
    passed = [e.message for e in events(box.journal(), status.id, "check_passed") if e.step_id == "units"]
    assert any("libero_synth.action.std within [0.005, 0.05] m: dim 0 = 0.01" in m for m in passed), passed

    # One cell per task, two at once (workers=2), never more.
    cells = [steps[f"eval[task={t}]"] for t in RATES]
    at_once = [sum(1 for c in cells if c.started <= d.started < c.ended) for d in cells]
    assert max(at_once) == 2
    work = tmp_path / "eval" / "runs" / status.id
    assert sorted(p.name for p in (work / "eval_logs").iterdir()) == [f"{t}.log" for t in RATES]

    # The table, fetched into the run's artifacts directory by the get steps.
    artifacts = Path(status.artifacts_dir)
    doc = json.loads((artifacts / "results.json").read_text())
    assert {row["task"]: row["success_rate"] for row in doc["tasks"]} == RATES
    assert [row["trials"] for row in doc["tasks"]] == [10] * 5
    assert doc["mean_success_rate"] == pytest.approx(0.3) and (doc["successes"], doc["trials"]) == (15, 50)
    with open(artifacts / "results.csv", newline="") as f:
        assert {row["task"]: float(row["success_rate"]) for row in csv.DictReader(f)} == RATES
    table = (artifacts / "results.md").read_text()
    assert "| 1 | 10 | 5 | 50.0% |" in table and "| **mean** | 50 | 15 | 30.0% |" in table

    # The plot: a real PNG that matplotlib reads back, not blank.
    png = artifacts / "success_rates.png"
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01


@end_to_end
def test_data_in_millimetres_fails_the_units_check_before_evaluating(datasets, box: Box, tmp_path: Path) -> None:
    final, status = _run(box, _vars(tmp_path, datasets["mm"]))
    steps = {s.id: s for s in status.steps}
    assert final == "failed"
    units = steps["units"]
    assert units.state == "failed"
    # Which dim, its value, and what it means.
    assert "libero_synth.action.std outside [0.005, 0.05] m: dim 0 = 1" in units.message
    assert "dim 2 = " in units.message and "the actions look like millimetres, not metres" in units.message
    # The dims are right (7 and 8): only the units are wrong.
    passed = [e.message for e in events(box.journal(), status.id, "check_passed") if e.step_id == "units"]
    assert len(passed) == 1 and "valid for robot libero" in passed[0]
    # Nothing was evaluated: the workers and the report never ran.
    for step_id in ("eval[task=0]", "report", "fetch_plot"):
        assert steps[step_id].state == "cancelled", (step_id, steps[step_id].state)
    assert list((tmp_path / "eval" / "runs" / status.id / "eval_logs").iterdir()) == []


@end_to_end
def test_a_failing_evaluator_fails_its_task_and_no_table_is_made(datasets, box: Box, tmp_path: Path) -> None:
    # Task 7 is beyond what the stand-in knows: it exits 2 like a real evaluator on a bad task id.
    final, status = _run(box, _vars(tmp_path, datasets["m"], tasks="7,0", trials=2))
    steps = {s.id: s for s in status.steps}
    assert final == "failed"
    bad = steps["eval[task=7]"]
    assert bad.state == "failed"
    assert any("task '7': this stand-in knows libero_90 tasks 0-4" in line for line in bad.log_tail)
    assert "[eval-worker] error: task=7: the evaluator failed" in bad.message + "\n".join(bad.log_tail)
    assert steps["eval[task=0]"].state == "succeeded"  # fail_fast: false: the other task is still evaluated
    assert steps["report"].state == "cancelled"
    logs = tmp_path / "eval" / "runs" / status.id / "eval_logs"
    assert (logs / "0.log").is_file() and (logs / "7.log.part").is_file() and not (logs / "7.log").exists()
