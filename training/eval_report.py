"""Per-task success rates from evaluation logs: a table (Markdown, CSV, JSON) and a bar plot (PNG).

Usage::

    python -m training.eval_report --logs DIR --out DIR [--tasks 0,1,2] [--trials 10] [--line-regex RE]

Input: one log per task, ``DIR/<task>.log`` (the evaluate runbook's workers write them), in which
every trial prints one success line::

    [eval] task=<task> trial=<k>/<n> success=<1|0>

``success`` also takes ``true``/``false`` (any case); text after a space is ignored
(``steps=87 ...``), and so is every other line. ``task`` must be the log's own task: an
evaluator that ignores its task selector would otherwise report one task five times. Trials
are numbered 1..n, each once, and a task is complete when it has all n (and, given
``--trials``, n equals it). An evaluator that prints something else can be read with
``--line-regex``: named group ``success`` is required (1, true, yes, success or succeeded, any case,
count as a success; anything else as a failure), ``task`` and ``trial``/``of`` are optional.

Output, in ``--out``: ``results.json``, ``results.csv``, ``results.md`` and
``success_rates.png``; stdout gets the Markdown table and::

    [eval-report] wrote DIR tasks=5 trials=50 mean_success_rate=0.300
    [eval-report] error: <task>: <what is wrong>      (one line each; exit 2, nothing written)

The mean is over tasks (each task weighs the same, as LIBERO results are reported); the
pooled successes/trials are in the JSON too.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

FORMAT = "agentops.eval_results/1"
SUCCESS_LINE = re.compile(
    r"^\[eval\] task=(?P<task>\S+) trial=(?P<trial>\d+)/(?P<of>\d+) success=(?P<success>[01]|true|false)(?:\s|$)",
    re.IGNORECASE,
)
TRUE_WORDS = ("1", "true", "yes", "success", "succeeded")
# Task names become file names: the same characters the runbook's workers accept.
TASK_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
OUTPUTS = ("results.json", "results.csv", "results.md", "success_rates.png")


class EvalReportError(ValueError):
    """The logs cannot give a complete, trustworthy table; holds every problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Trial(NamedTuple):
    """One success line: the trial's number and the trial count when the line gives them."""

    number: int | None
    success: bool
    of: int | None


@dataclass(frozen=True)
class TaskResult:
    """One task's trials and successes."""

    task: str
    trials: int
    successes: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.trials


def parse_log(text: str, task: str, pattern: re.Pattern[str] = SUCCESS_LINE) -> list[Trial]:
    """The success lines of one task's log; EvalReportError for lines that name another task."""
    found, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        match = pattern.search(line)
        if match is None:
            continue
        groups = match.groupdict()
        if groups.get("task") not in (None, task):
            problems.append(f"{task}: line {number} is for task {groups['task']!r}: {line.strip()[:120]}")
            continue
        trial, of = groups.get("trial"), groups.get("of")
        found.append(Trial(int(trial) if trial else None, match.group("success").lower() in TRUE_WORDS, int(of) if of else None))
    if problems:
        raise EvalReportError(problems)
    return found


def task_result(task: str, trials: list[Trial], expected: int | None) -> TaskResult:
    """Count one task's trials, refusing an empty, incomplete or inconsistent set (a partial rate would mislead)."""
    if not trials:
        raise EvalReportError([f"{task}: no success lines"])
    problems = []
    counts = {t.of for t in trials if t.of is not None}
    if len(counts) > 1:
        problems.append(f"{task}: trial counts disagree: {sorted(counts)}")
    numbers = [t.number for t in trials if t.number is not None]
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        problems.append(f"{task}: trials reported more than once: {repeated}")
    total = counts.pop() if len(counts) == 1 else None
    if total is not None and not repeated and len(trials) != total:
        missing = sorted(set(range(1, total + 1)) - set(numbers))
        problems.append(f"{task}: {len(trials)} of {total} trials reported (missing {missing[:10]}): did the evaluation stop early?")
    if expected is not None and not problems and len(trials) != expected:
        problems.append(f"{task}: {len(trials)} trials, expected {expected}")
    if problems:
        raise EvalReportError(problems)
    return TaskResult(task, len(trials), sum(t.success for t in trials))


def collect(logs: Path, tasks: list[str] | None, expected: int | None,
            pattern: re.Pattern[str] = SUCCESS_LINE) -> list[TaskResult]:
    """Every task's result from ``logs/<task>.log``; all problems (missing logs included) in one EvalReportError."""
    if tasks is None:
        tasks = sorted(p.stem for p in logs.glob("*.log"))
        if not tasks:
            raise EvalReportError([f"{logs}: no *.log files"])
    results, problems = [], []
    for task in tasks:
        path = logs / f"{task}.log"
        if not TASK_NAME.match(task):
            problems.append(f"{task!r}: not a task name (letters, digits, _ . - only)")
        elif not path.is_file():
            partial = " (only a .part: its evaluator did not finish)" if path.with_suffix(".log.part").exists() else ""
            problems.append(f"{task}: no log {path}{partial}")
        else:
            try:
                results.append(task_result(task, parse_log(path.read_text(errors="replace"), task, pattern), expected))
            except EvalReportError as exc:
                problems += [p + _format_hint(pattern, task, path) if p.endswith("no success lines") else p for p in exc.problems]
    if problems:
        raise EvalReportError(problems)
    return results


def _format_hint(pattern: re.Pattern[str], task: str, path: Path) -> str:
    last = next((line.strip() for line in reversed(path.read_text(errors="replace").splitlines()) if line.strip()), "(empty)")
    wanted = f"lines like `[eval] task={task} trial=1/10 success=1`" if pattern is SUCCESS_LINE else f"lines matching /{pattern.pattern}/"
    return f" in {path}: expected {wanted}; its last line: {last[:160]}"


def summary(results: list[TaskResult]) -> dict:
    """The JSON document: per-task rows, the mean over tasks and the pooled counts."""
    trials, successes = sum(r.trials for r in results), sum(r.successes for r in results)
    return {
        "format": FORMAT,
        "tasks": [{"task": r.task, "trials": r.trials, "successes": r.successes, "success_rate": r.success_rate} for r in results],
        "mean_success_rate": sum(r.success_rate for r in results) / len(results),
        "trials": trials,
        "successes": successes,
    }


def markdown(results: list[TaskResult]) -> str:
    """The table as Markdown, with a mean row."""
    doc = summary(results)
    rows = ["| task | trials | successes | success rate |", "|---|---:|---:|---:|"]
    rows += [f"| {r.task} | {r.trials} | {r.successes} | {100 * r.success_rate:.1f}% |" for r in results]
    rows.append(f"| **mean** | {doc['trials']} | {doc['successes']} | {100 * doc['mean_success_rate']:.1f}% |")
    return "\n".join(rows) + "\n"


def csv_text(results: list[TaskResult]) -> str:
    """The table as CSV; success_rate is written exactly (repr of the float)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "trials", "successes", "success_rate"])
    writer.writerows([r.task, r.trials, r.successes, repr(r.success_rate)] for r in results)
    return out.getvalue()


def plot(results: list[TaskResult], path: Path) -> None:
    """Bar chart of success rate per task with the mean as a line."""
    try:
        import matplotlib
    except ImportError:
        raise EvalReportError(["matplotlib is not installed: pip install 'agentops[train]' (or matplotlib>=3.7)"]) from None
    matplotlib.use("Agg")  # files only: no display on a rented box
    import matplotlib.pyplot as plt

    mean = summary(results)["mean_success_rate"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(results) + 2), 3.5))
    try:
        ax.bar([r.task for r in results], [100 * r.success_rate for r in results], color="#4c72b0")
        ax.axhline(100 * mean, color="#c44e52", linestyle="--", label=f"mean {100 * mean:.1f}%")
        ax.set_ylim(0, 100)
        ax.set_ylabel("success rate (%)")
        ax.set_xlabel("task")
        ax.set_title(f"Success rate per task ({results[0].trials} trials each)" if len({r.trials for r in results}) == 1
                     else "Success rate per task")
        ax.tick_params(axis="x", labelrotation=90 if len(results) > 10 else 0)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def write_report(results: list[TaskResult], out: Path) -> list[Path]:
    """Write the four outputs into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in OUTPUTS]
    plot(results, paths[3])  # first: without matplotlib nothing is written
    paths[0].write_text(json.dumps(summary(results), indent=2) + "\n")
    paths[1].write_text(csv_text(results))
    paths[2].write_text(markdown(results))
    return paths


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval_report", description=__doc__.splitlines()[0])
    p.add_argument("--logs", required=True, type=Path, help="directory holding <task>.log per task")
    p.add_argument("--out", required=True, type=Path, help="directory for results.{json,csv,md} and success_rates.png")
    p.add_argument("--tasks", help="comma-separated tasks, in table order (default: every *.log, sorted)")
    p.add_argument("--trials", type=int, help="trials each task must have")
    p.add_argument("--line-regex", help="success-line regex with group `success` (optional: task, trial, of)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 when the logs cannot give a complete table)."""
    args = _parser().parse_args(argv)
    try:
        pattern = _pattern(args.line_regex)
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        results = collect(args.logs, tasks, args.trials, pattern)
        write_report(results, args.out)
    except EvalReportError as exc:
        for problem in exc.problems:
            print(f"[eval-report] error: {problem}", file=sys.stderr, flush=True)
        return 2
    print(markdown(results), end="")
    doc = summary(results)
    print(f"[eval-report] wrote {args.out} tasks={len(results)} trials={doc['trials']} "
          f"mean_success_rate={doc['mean_success_rate']:.3f}", flush=True)
    return 0


def _pattern(text: str | None) -> re.Pattern[str]:
    if text is None:
        return SUCCESS_LINE
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise EvalReportError([f"--line-regex {text!r}: {exc}"]) from None
    if "success" not in pattern.groupindex:
        raise EvalReportError([f"--line-regex {text!r}: needs a named group (?P<success>...)"])
    return pattern


if __name__ == "__main__":
    sys.exit(main())
