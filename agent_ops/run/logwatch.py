"""Judging a log as it grows: ordered patterns with deadlines, failure patterns, metrics, stalls.

Pure logic, no I/O: the step drivers feed it the bytes they read by offset, so it
only ever sees what was written after its step started (never a stale line).
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agent_ops.runbook.results import parse_scalar
from agent_ops.runbook.schema import GatePattern, MetricSpec

MAX_LINE = 400  # a matched line is stored for status output; keep it short
TAIL_LINES = 20


@dataclass(frozen=True)
class Verdict:
    """How a watch ended: passed, or failed with a reason (and the line that decided, if any)."""

    passed: bool
    reason: str
    line: str | None = None
    kind: str = "gate"  # gate | fail_on | deadline | stall | metric | eof


# tqdm-style progress rewrites a line with \r: each rewrite is a line of its own.
LINE_BREAK = re.compile(rb"\r\n|\n|\r")
# A line is judged on its first MAX_LINE_BYTES; the rest of a longer one is dropped as it arrives.
MAX_LINE_BYTES = 1 << 20


class LineSplitter:
    """Turns byte chunks into complete text lines; a trailing partial line waits for its end.

    Each chunk is scanned once and a partial line keeps at most MAX_LINE_BYTES. (Joining the partial
    line to each new chunk and splitting again made a log without newlines cost time quadratic in its
    size and several times its size in memory: 256 MiB in one line took 145 s of CPU and 1.3 GiB.)
    """

    def __init__(self) -> None:
        self._tail = bytearray()
        self._after_cr = False  # the last chunk ended in \r: a \n opening the next one ends no line of its own

    def feed(self, data: bytes) -> list[str]:
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        if not data:
            return []
        self._after_cr = data.endswith(b"\r")
        if b"\n" not in data and b"\r" not in data:  # memchr: the common case of a long line costs no regex scan
            self._tail = _up_to_limit(self._tail, data)
            return []
        parts = LINE_BREAK.split(data)
        lines = [_text(_up_to_limit(self._tail, parts[0]))] + [_text(p[:MAX_LINE_BYTES]) for p in parts[1:-1]]
        self._tail = _up_to_limit(bytearray(), parts[-1])
        return lines

    def flush(self) -> list[str]:
        tail, self._tail = self._tail, bytearray()
        return [_text(tail)] if tail else []


def _up_to_limit(head: bytearray, more: bytes) -> bytearray:
    """`head` with as much of `more` appended as MAX_LINE_BYTES leaves room for."""
    room = MAX_LINE_BYTES - len(head)
    if room > 0:
        head += more[:room]
    return head


def _text(line: bytes | bytearray) -> str:
    return bytes(line).decode("utf-8", "replace")


@dataclass
class PatternState:
    """Progress of one ordered pattern."""

    spec: GatePattern
    matched_line: str | None = None
    matched_at: float | None = None  # seconds after the watch started
    groups: dict[str, str] = field(default_factory=dict)  # the regex's named groups in the matched line: the gate's outputs


@dataclass
class MetricState:
    """Values collected for one metric, with the time each arrived."""

    spec: MetricSpec
    values: list[float] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    verdict: Verdict | None = None

    def judge(self) -> Verdict:
        """The assertions on the first `count` values; a failure names what it saw."""
        spec, vals = self.spec, self.values[: self.spec.count]
        problem = self._problem(vals)
        if problem is not None:
            return Verdict(False, f"{spec.name}: {problem} ({self.seen()})", kind="metric")
        return Verdict(True, f"{spec.name}: {len(vals)} values, first {vals[0]:g}, last {vals[-1]:g}", kind="metric")

    def _problem(self, vals: list[float]) -> str | None:
        spec = self.spec
        if spec.first and not spec.first.contains(vals[0]):
            return f"first value {vals[0]:g} not in {_range(spec.first)}"
        if spec.last and not spec.last.contains(vals[-1]):
            return f"last value {vals[-1]:g} not in {_range(spec.last)}"
        if spec.falling:
            third = max(1, len(vals) // 3)
            head, tail = sum(vals[:third]) / third, sum(vals[-third:]) / third
            if not tail < head:
                return f"not falling (first-third mean {head:.4g}, last-third mean {tail:.4g})"
        if spec.monotonic:
            broken = _against(vals, spec.monotonic, spec.tolerance)
            if broken is not None:
                i = broken
                slack = f" by more than {spec.tolerance:g}" if spec.tolerance else ""
                return (f"not {spec.monotonic.replace('_', '-')}: {vals[i - 1]:g} at {self._where(i - 1)} then "
                        f"{vals[i]:g} at {self._where(i)}{slack}")
        for band in spec.at_steps:
            problem = self._band_problem(band)
            if problem is not None:
                return problem
        rate = self.seconds_per_step()
        if spec.rate_max_s is not None and rate is not None and rate > spec.rate_max_s:
            return f"{rate:.3g} s/step exceeds {spec.rate_max_s:g}"
        return None

    def _band_problem(self, band: Any) -> str | None:
        n = min(len(self.values), self.spec.count)
        near = [(abs(step - band.step), i) for i, step in enumerate(self.steps[:n]) if step is not None and abs(step - band.step) <= band.near]
        at = f"step {band.step}" + (f" (+-{band.near})" if band.near else "")
        if not near:
            return f"no value logged at {at}"
        i = min(near)[1]
        if not band.contains(self.values[i]):
            return f"value {self.values[i]:g} at step {self.steps[i]} not in {_range(band)} (wanted at {at})"
        return None

    def _where(self, i: int) -> str:
        return f"step {self.steps[i]}" if self.steps[i] is not None else f"value {i + 1}"

    def seen(self, limit: int = 8) -> str:
        """How many values were seen and which (the first and last few when there are many), with their steps."""
        n = len(self.values)
        if n == 0:
            return "saw no values"
        shown = [self._item(i) for i in range(n)] if n <= limit else \
            [*(self._item(i) for i in range(limit // 2)), "...", *(self._item(i) for i in range(n - limit // 2, n))]
        return f"saw {n} value{'s' if n != 1 else ''}: {', '.join(shown)}"

    def _item(self, i: int) -> str:
        return f"{self.values[i]:g}" + (f"@{self.steps[i]}" if self.steps[i] is not None else "")

    def seconds_per_step(self) -> float | None:
        """Seconds per logged step from arrival times (by step numbers when the regex captures them)."""
        n = min(len(self.values), self.spec.count)
        if n < 2:
            return None
        span = self.times[n - 1] - self.times[0]
        first, last = self.steps[0], self.steps[n - 1]
        steps = (last - first) if first is not None and last is not None and last > first else n - 1
        return span / steps


class LogWatch:
    """Watches one log: ordered patterns, metrics, failure patterns and stalls, against deadlines."""

    def __init__(
        self,
        *,
        patterns: list[GatePattern] = (),
        metrics: list[MetricSpec] = (),
        fail_on: list[str] = (),
        stall_after: float | None = None,
    ) -> None:
        self.patterns = [PatternState(p) for p in patterns]
        self.metrics = [MetricState(m) for m in metrics]
        self._metric_res = [re.compile(m.regex) for m in metrics]
        self._pattern_res = [re.compile(p.regex) for p in patterns]
        self._fail_res = [re.compile(p) for p in fail_on]
        self.stall_after = stall_after
        self._lines = LineSplitter()
        self._last_growth = 0.0
        self.failed: Verdict | None = None
        self.lines_seen = 0
        self.last_line: str | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)  # for status: the newest lines, secrets already masked

    @property
    def judges_success(self) -> bool:
        """Whether this watch decides success (a gate) or only detects failure (a run step)."""
        return bool(self.patterns or self.metrics)

    def feed(self, data: bytes, now: float) -> None:
        """Take new log bytes that arrived `now` seconds after the watch started."""
        if data:
            self._last_growth = now
        for line in self._lines.feed(data):
            self._line(line, now)

    def end_of_log(self, now: float) -> None:
        """The writer is gone: the partial last line counts as a line."""
        for line in self._lines.flush():
            self._line(line, now)

    def _line(self, line: str, now: float) -> None:
        self.lines_seen += 1
        if line.strip():
            self.last_line = line[:MAX_LINE]
            self.tail.append(line[:MAX_LINE])
        if self.failed:
            return
        for rx in self._fail_res:
            if rx.search(line):
                self.failed = Verdict(False, f"failure pattern {rx.pattern!r} matched", line[:MAX_LINE], kind="fail_on")
                return
        pending = self._next_pattern()
        match = self._pattern_res[pending].search(line) if pending is not None else None
        if match:
            state = self.patterns[pending]
            state.matched_line, state.matched_at = line[:MAX_LINE], now
            state.groups = {k: v for k, v in match.groupdict().items() if v is not None}
        for rx, metric in zip(self._metric_res, self.metrics):
            self._metric_line(rx, metric, line, now)

    def _metric_line(self, rx: re.Pattern[str], metric: MetricState, line: str, now: float) -> None:
        if metric.verdict is not None:
            return
        match = rx.search(line)
        if not match:
            return
        try:
            value = float(match.group("value"))
        except ValueError:
            return
        step = match.groupdict().get("step")
        metric.values.append(value)
        metric.steps.append(int(step) if step is not None and step.isdigit() else None)
        metric.times.append(now)
        if len(metric.values) >= metric.spec.count:
            metric.verdict = metric.judge()
            if not metric.verdict.passed:
                self.failed = Verdict(False, metric.verdict.reason, line[:MAX_LINE], kind="metric")

    def _next_pattern(self) -> int | None:
        for i, state in enumerate(self.patterns):
            if state.matched_line is None:
                return i
        return None

    def verdict(self, now: float, *, ended: bool = False) -> Verdict | None:
        """Passed, failed, or None while still undecided; `ended` means the log will not grow."""
        if self.failed:
            return self.failed
        pending = self._next_pattern()
        waiting_metrics = [m for m in self.metrics if m.verdict is None]
        if pending is None and not waiting_metrics:
            return Verdict(True, self._summary()) if self.judges_success else None
        if pending is not None and now > self.patterns[pending].spec.within:
            spec = self.patterns[pending].spec
            return Verdict(False, f"pattern {pending + 1}/{len(self.patterns)} {spec.name or spec.regex!r} not seen within {spec.within:g}s", kind="deadline")
        for m in waiting_metrics:
            if now > m.spec.within:
                return Verdict(False, f"metric {m.spec.name}: {len(m.values)}/{m.spec.count} values within {m.spec.within:g}s ({m.seen()})",
                               kind="deadline")
        if ended and self.judges_success:
            if pending is not None:
                what = f"pattern {self.patterns[pending].spec.name or self.patterns[pending].spec.regex!r} was satisfied"
            else:
                m = waiting_metrics[0]
                what = f"metric {m.spec.name} had its {m.spec.count} values ({m.seen()})"
            return Verdict(False, f"the log ended before {what}", kind="eof")
        if self.stall_after is not None and not ended and now - self._last_growth > self.stall_after:
            return Verdict(False, f"log stalled: no output for {now - self._last_growth:.0f}s (limit {self.stall_after:g}s)", kind="stall")
        return None

    def _summary(self) -> str:
        parts = [f"{len(self.patterns)} patterns matched"] if self.patterns else []
        parts += [m.verdict.reason for m in self.metrics if m.verdict]
        return "; ".join(parts)

    def results(self) -> dict[str, Any]:
        """What later steps read (`steps.ID.outputs` / `.metrics`): named groups of matched patterns, metric series."""
        outputs: dict[str, Any] = {}
        for state in self.patterns:
            outputs.update({k: parse_scalar(v) for k, v in state.groups.items()})
        return {"outputs": outputs, "metrics": {m.spec.name: list(m.values) for m in self.metrics}}

    def progress(self, now: float) -> dict[str, Any]:
        """A JSON-able snapshot for the journal and status: each pattern and metric with deadline left."""
        return {
            "patterns": [
                {
                    "name": s.spec.name or s.spec.regex,
                    "matched": s.matched_line is not None,
                    "line": s.matched_line,
                    "at_s": None if s.matched_at is None else round(s.matched_at, 3),
                    "deadline_left_s": None if s.matched_line is not None else round(max(0.0, s.spec.within - now), 1),
                }
                for s in self.patterns
            ],
            "metrics": [
                {
                    "name": m.spec.name,
                    "values": m.values[-20:],
                    "count": len(m.values),
                    "needed": m.spec.count,
                    "verdict": None if m.verdict is None else m.verdict.reason,
                }
                for m in self.metrics
            ],
        }


def _against(vals: list[float], direction: str, tolerance: float) -> int | None:
    """The index of the first value that moves against `direction` (beyond `tolerance`), or None."""
    for i in range(1, len(vals)):
        step = vals[i] - vals[i - 1]
        if direction in ("non_increasing", "decreasing"):
            step = -step
        strict = direction in ("decreasing", "increasing")
        if step < -tolerance or (strict and step <= 0 and tolerance == 0):
            return i
    return None


def _range(r: Any) -> str:
    return f"[{'-inf' if r.min is None else f'{r.min:g}'}, {'inf' if r.max is None else f'{r.max:g}'}]"
