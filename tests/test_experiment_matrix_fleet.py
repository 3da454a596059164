"""Seed 001's grid (2 suites x {baseline, CRaFT} x 2 seeds = 8 tiny CPU trainings) as one runbook over a 2-node
fleet (real sshd boxes on 127.0.0.1), at most 2 cells per node at once, the next free node taking the next cell;
the report table holds 8 final losses. runbooks/experiment_matrix_fleet.yaml, nothing substituted but `python`
(this checkout's training core) and the work directory."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from tests.fleet import Fleet, run_fleet
from tests.test_fleet_placement import _most_at_once

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.ssh,
              pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                                 reason="training.synth needs tensorflow-datasets to write the RLDS data")]
ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "runbooks" / "experiment_matrix_fleet.yaml"
PER_NODE = 2


def test_the_grid_spreads_over_two_nodes_at_most_two_cells_each(fleet: Fleet, tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    run_id, final, journal = run_fleet(fleet, RUNBOOK, {"python": str(python), "work": str(tmp_path / "work"),
                                                        "train_steps": 20, "per_node": PER_NODE}, specs=fleet.specs[:2])
    steps = {s.step_id: s for s in journal.steps(run_id)}
    assert final == "succeeded", "\n".join(f"{k}: {s.state}: {s.message}" for k, s in steps.items() if s.state != "succeeded")
    trains = [p for p in journal.step_nodes(run_id) if p.step_id.startswith("train[")]
    assert len(trains) == 8 and {p.state for p in trains} <= {"succeeded", "started"}
    for node in ("n1", "n2"):
        mine = [p for p in trains if p.node == node]
        assert mine, f"{node} took no cell"
        assert _most_at_once(mine) <= PER_NODE
    # Each cell's gate watched its job on the node the job was placed on.
    for p in trains:
        assert journal.step(run_id, p.step_id.replace("train[", "gate[", 1)).nodes == [p.node]
    table = [line for line in steps["results"].tail or [] if line.startswith("| ") and not line.startswith("| suite")]
    assert len(table) == 8, steps["results"].tail
    losses = [float(row.split("|")[4]) for row in table]
    assert all(0.05 < loss < 5 for loss in losses)
    assert {tuple(c.strip() for c in row.split("|")[1:4]) for row in table} == {
        (s, c, seed) for s in ("object", "spatial") for c in ("false", "true") for seed in ("42", "123")}
    assert re.search(r"exit code 0", steps["results"].message)
