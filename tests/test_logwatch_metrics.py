"""Metric assertions on a log (issue 12, feature 6): monotonic, a value at (or near) a step within a band, last-value
bounds, and every failure saying how many values it saw and which. LogWatch is pure: bytes in, a verdict out.
"""
from __future__ import annotations

from agent_ops.run.logwatch import LogWatch
from agent_ops.runbook.schema import MetricSpec

LOSS = r"step=(?P<step>\d+)/\d+ loss=(?P<value>[\d.]+)"


def watch(lines: list[str], **spec: object) -> tuple[LogWatch, object]:
    metric = MetricSpec.model_validate({"name": "loss", "regex": LOSS, "within": 60, **spec})
    w = LogWatch(metrics=[metric])
    w.feed("".join(f"{line}\n" for line in lines).encode(), 1.0)
    return w, w.verdict(2.0)


def steps(*values: float, every: int = 10) -> list[str]:
    return [f"[train] step={i * every}/100 loss={v}" for i, v in enumerate(values)]


def test_non_increasing_passes_within_its_tolerance_and_fails_naming_the_step() -> None:
    _, ok = watch(steps(0.9, 0.8, 0.82, 0.7), count=4, monotonic="non_increasing", tolerance=0.05)
    assert ok.passed and ok.reason == "loss: 4 values, first 0.9, last 0.7"
    _, bad = watch(steps(0.9, 0.8, 0.82, 0.7), count=4, monotonic="non_increasing")
    assert not bad.passed and bad.kind == "metric"
    assert bad.reason == "loss: not non-increasing: 0.8 at step 10 then 0.82 at step 20 (saw 4 values: 0.9@0, 0.8@10, 0.82@20, 0.7@30)"


def test_strictly_decreasing_refuses_a_plateau() -> None:
    _, bad = watch(steps(0.9, 0.9, 0.8), count=3, monotonic="decreasing")
    assert not bad.passed and "not decreasing: 0.9 at step 0 then 0.9 at step 10" in bad.reason


def test_a_value_at_or_near_a_step_must_lie_in_its_band() -> None:
    lines = steps(0.9, 0.7, 0.6, 0.5, 0.45, 0.4, every=7)  # steps 0, 7, 14, 21, 28, 35
    _, ok = watch(lines, count=6, at_steps=[{"step": 20, "near": 2, "min": 0.4, "max": 0.55}])
    assert ok.passed
    _, low = watch(lines, count=6, at_steps=[{"step": 20, "near": 2, "max": 0.45}])
    assert low.reason.startswith("loss: value 0.5 at step 21 not in [-inf, 0.45] (wanted at step 20 (+-2))")
    _, none = watch(lines, count=6, at_steps=[{"step": 20, "max": 1}])
    assert none.reason.startswith("loss: no value logged at step 20 (saw 6 values: 0.9@0, 0.7@7")


def test_last_value_bounds_say_which_values_were_seen() -> None:
    _, bad = watch(steps(0.9, 0.8, 0.75), count=3, last={"max": 0.5})
    assert bad.reason == "loss: last value 0.75 not in [-inf, 0.5] (saw 3 values: 0.9@0, 0.8@10, 0.75@20)"


def test_a_long_series_is_shown_by_its_first_and_last_values() -> None:
    _, bad = watch(steps(*[1.0 - i / 100 for i in range(12)]), count=12, first={"max": 0.5})
    assert bad.reason == "loss: first value 1 not in [-inf, 0.5] (saw 12 values: 1@0, 0.99@10, 0.98@20, 0.97@30, ..., 0.92@80, 0.91@90, 0.9@100, 0.89@110)"


def test_too_few_values_by_the_deadline_or_the_end_of_the_log_names_them() -> None:
    metric = MetricSpec.model_validate({"name": "loss", "regex": LOSS, "within": 5, "count": 25})
    w = LogWatch(metrics=[metric])
    w.feed("".join(f"{line}\n" for line in steps(0.9, 0.8)).encode(), 1.0)
    late = w.verdict(6.0)
    assert late.kind == "deadline" and late.reason == "metric loss: 2/25 values within 5s (saw 2 values: 0.9@0, 0.8@10)"
    ended = w.verdict(2.0, ended=True)
    assert ended.kind == "eof" and ended.reason == "the log ended before metric loss had its 25 values (saw 2 values: 0.9@0, 0.8@10)"
