"""training.matrix_results: a row per cell directory, finished or not, so a failed cell never costs the others' results."""
from __future__ import annotations

import json
from pathlib import Path

from training.matrix_results import main


def test_the_table_has_a_row_per_cell_and_says_why_one_has_no_result(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    for name, loss in (("object-false-42", 0.3706), ("object-true-42", 0.3786)):
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text(json.dumps({"final_loss": loss, "s_per_step": 0.137, "samples_per_s": 116.6}))
    (runs / "spatial-true-123").mkdir()
    (runs / "spatial-true-123" / "train_progress.log").write_text("[train] step=0/30 loss=0.7069\n[train] stopping: loss is nan\n\n")
    (runs / "spatial-false-7").mkdir()
    out = tmp_path / "results.md"
    assert main(["--runs", str(runs), "--columns", "suite,craft,seed", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    table = out.read_text()
    assert "| object | false | 42 | done | 0.3706 | 0.137 | 116.6 |  |" in table
    assert "| spatial | true | 123 | failed | - | - | - | [train] stopping: loss is nan |" in table
    assert "| spatial | false | 7 | failed | - | - | - | no train_progress.log: the trainer did not start |" in table
    assert table.rstrip().endswith("2 of 4 cells finished; failed: 2")
    assert [r["result"] for r in json.loads((tmp_path / "r.json").read_text())] == ["done", "done", "failed", "failed"]
    assert "[matrix-results] wrote" in capsys.readouterr().out


def test_no_cells_is_an_error(tmp_path: Path) -> None:
    assert main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "x.md")]) == 2
