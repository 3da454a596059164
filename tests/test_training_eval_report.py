"""training.eval_report: success lines -> per-task rates -> table and plot; incomplete evidence is an error."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from training.eval_report import (
    SUCCESS_LINE,
    EvalReportError,
    TaskResult,
    Trial,
    collect,
    main,
    markdown,
    parse_log,
    summary,
    task_result,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log_text(task: str, outcomes: str, noise: bool = True) -> str:
    """A log as an evaluator writes it: chatter, then one success line per trial ('1' = success)."""
    lines = ["Loading RDT from checkpoints/x (text encoder google/t5-v1_1-xxl)", f"Task {task}: SOME_SCENE_task"] if noise else []
    n = len(outcomes)
    lines += [f"[eval] task={task} trial={k}/{n} success={c} steps=87" for k, c in enumerate(outcomes, 1)]
    if noise:
        lines.append(f"Task {task}: success rate {100 * outcomes.count('1') / n:.1f}%")
    return "\n".join(lines) + "\n"


def write_logs(root: Path, logs: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for task, outcomes in logs.items():
        (root / f"{task}.log").write_text(log_text(task, outcomes))
    return root


# --- parsing -----------------------------------------------------------------------------------------


def test_success_lines_are_read_and_other_lines_ignored() -> None:
    text = log_text("3", "0110") + "[eval] task=3 trial=x/4 success=1\nreward 1.0 success=1\n"
    assert parse_log(text, "3") == [Trial(1, False, 4), Trial(2, True, 4), Trial(3, True, 4), Trial(4, False, 4)]


def test_true_false_spellings_and_trailing_text() -> None:
    text = "[eval] task=a trial=1/3 success=True\n[eval] task=a trial=2/3 success=false extra\n[eval] task=a trial=3/3 success=1\n"
    assert [t.success for t in parse_log(text, "a")] == [True, False, True]
    assert SUCCESS_LINE.search("[eval] task=a trial=1/3 success=10") is None  # not a 0/1 value


def test_a_line_for_another_task_is_an_error() -> None:
    # An evaluator that ignores its task selector reports task 0 in every task's log.
    with pytest.raises(EvalReportError) as caught:
        parse_log(log_text("0", "01"), "2")
    assert caught.value.problems[0].startswith("2: line 3 is for task '0': [eval] task=0 trial=1/2 success=0")


def test_custom_regex_without_task_or_trial_groups() -> None:
    pattern = re.compile(r"^Episode \d+: (?P<success>success|failure)$")
    text = "Episode 1: success\nEpisode 2: failure\nEpisode 3: success\n"
    result = task_result("t", parse_log(text, "t", pattern), expected=3)
    assert (result.trials, result.successes) == (3, 2)


# --- one task's count -----------------------------------------------------------------------------


def test_rate_of_a_complete_task() -> None:
    result = task_result("0", parse_log(log_text("0", "0010010010"), "0"), expected=10)
    assert result == TaskResult("0", 10, 3) and result.success_rate == 0.3


@pytest.mark.parametrize(
    "outcomes_lines, expected, message",
    [
        ("[eval] task=0 trial=1/10 success=1\n[eval] task=0 trial=2/10 success=0\n", None,
         "0: 2 of 10 trials reported (missing [3, 4, 5, 6, 7, 8, 9, 10]): did the evaluation stop early?"),
        ("[eval] task=0 trial=1/2 success=1\n[eval] task=0 trial=1/2 success=0\n", None, "0: trials reported more than once: [1]"),
        ("[eval] task=0 trial=1/2 success=1\n[eval] task=0 trial=2/3 success=0\n", None, "0: trial counts disagree: [2, 3]"),
        ("[eval] task=0 trial=1/2 success=1\n[eval] task=0 trial=2/2 success=0\n", 10, "0: 2 trials, expected 10"),
    ],
)
def test_incomplete_or_inconsistent_trials_are_refused(outcomes_lines: str, expected: int | None, message: str) -> None:
    with pytest.raises(EvalReportError) as caught:
        task_result("0", parse_log(outcomes_lines, "0"), expected)
    assert caught.value.problems == [message]


# --- several tasks ---------------------------------------------------------------------------------


def test_collect_in_the_given_order_with_mean_over_tasks(tmp_path: Path) -> None:
    logs = write_logs(tmp_path / "logs", {"0": "1110000000", "1": "1100", "2": "0000000000"})
    results = collect(logs, ["2", "0", "1"], expected=None)
    assert [(r.task, r.trials, r.successes) for r in results] == [("2", 10, 0), ("0", 10, 3), ("1", 4, 2)]
    doc = summary(results)
    # Each task weighs the same in the mean (0 + 0.3 + 0.5) / 3; the pooled counts are kept beside it.
    assert doc["mean_success_rate"] == pytest.approx(0.8 / 3) and (doc["successes"], doc["trials"]) == (5, 24)
    assert collect(logs, None, None) == sorted(results, key=lambda r: r.task)  # default: every *.log, sorted


def test_a_missing_task_names_the_task_and_the_expected_log(tmp_path: Path) -> None:
    logs = write_logs(tmp_path / "logs", {"0": "10", "1": "01"})
    (logs / "3.log.part").write_text(log_text("3", "1"))
    with pytest.raises(EvalReportError) as caught:
        collect(logs, ["0", "1", "2", "3"], expected=2)
    assert caught.value.problems == [
        f"2: no log {logs / '2.log'}",
        f"3: no log {logs / '3.log'} (only a .part: its evaluator did not finish)",
    ]


def test_a_log_without_success_lines_shows_the_format_and_its_last_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "4.log").write_text("Loading RDT\nTask 4 success rate: 30.0%\n")
    with pytest.raises(EvalReportError) as caught:
        collect(logs, ["4"], expected=10)
    assert caught.value.problems == [
        f"4: no success lines in {logs / '4.log'}: expected lines like `[eval] task=4 trial=1/10 success=1`; "
        "its last line: Task 4 success rate: 30.0%"
    ]


def test_markdown_table() -> None:
    table = markdown([TaskResult("0", 10, 3), TaskResult("1", 10, 5)])
    assert table.splitlines() == [
        "| task | trials | successes | success rate |",
        "|---|---:|---:|---:|",
        "| 0 | 10 | 3 | 30.0% |",
        "| 1 | 10 | 5 | 50.0% |",
        "| **mean** | 20 | 8 | 40.0% |",
    ]


# --- the command line --------------------------------------------------------------------------------


def test_cli_writes_json_csv_markdown_and_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    logs = write_logs(tmp_path / "logs", {"0": "1110000000", "1": "1111100000"})
    out = tmp_path / "results"
    assert main(["--logs", str(logs), "--out", str(out), "--tasks", "0,1", "--trials", "10"]) == 0
    stdout = capsys.readouterr().out
    assert "| **mean** | 20 | 8 | 40.0% |" in stdout
    assert stdout.rstrip().endswith(f"[eval-report] wrote {out} tasks=2 trials=20 mean_success_rate=0.400")

    doc = json.loads((out / "results.json").read_text())
    assert doc["format"] == "agentops.eval_results/1"
    assert [(r["task"], r["success_rate"]) for r in doc["tasks"]] == [("0", 0.3), ("1", 0.5)]
    with open(out / "results.csv", newline="") as f:
        assert [(r["task"], r["trials"], r["successes"], float(r["success_rate"])) for r in csv.DictReader(f)] == \
            [("0", "10", "3", 0.3), ("1", "10", "5", 0.5)]
    png = (out / "success_rates.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image

    assert matplotlib.image.imread(str(out / "success_rates.png")).shape[2] in (3, 4)


def test_cli_errors_exit_2_one_line_each_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = write_logs(tmp_path / "logs", {"0": "10"})
    out = tmp_path / "results"
    assert main(["--logs", str(logs), "--out", str(out), "--tasks", "0,5", "--trials", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"[eval-report] error: 5: no log {logs / '5.log'}"]
    assert not out.exists()
    assert main(["--logs", str(logs), "--out", str(out), "--line-regex", "success=(\\d)"]) == 2
    assert "needs a named group (?P<success>...)" in capsys.readouterr().err
