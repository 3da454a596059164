"""What a template reads of earlier steps: `steps.ID.outputs`, `.metrics`, `.checks`, `.state`.

The run keeps each step's results in the journal as plain JSON, `{"outputs": {NAME: value},
"metrics": {NAME: [values]}, "checks": [CheckResult as a dict]}`, so they survive the controller and
`resume`; when a step that reads them is about to run, they become these read-only objects. A name
that is not there is an error that lists what is.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

# The parts of `steps.ID`, and of a metric series; the loader checks references against these.
RESULT_PARTS: dict[str, str] = {
    "outputs": "a run step's declared outputs (`NAME=value` lines in $AGENTOPS_OUTPUT, or `outputs_file`), "
               "a gate's named regex groups `(?P<NAME>...)`",
    "metrics": "a gate's metric series by name",
    "checks": "a check step's results in order: .status, .message, .details (the measured values)",
    "state": "succeeded, failed, skipped, ...",
}
SERIES_PARTS: dict[str, str] = {
    "first": "the first value", "last": "the last value", "values": "every value, in order", "count": "how many",
    "min": "the smallest value", "max": "the largest value", "mean": "the mean",
}


class ResultMissing(LookupError):
    """A result a template asked for does not exist (a metric with no values)."""


class Fields:
    """Read-only names -> values with attribute access (`outputs.loss`); a missing name says what there is."""

    def __init__(self, label: str, items: Mapping[str, Any]) -> None:
        self._label = label
        self._items = dict(items)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __repr__(self) -> str:
        return f"{self._label}({', '.join(self._items)})"

    def aliased(self, names: Mapping[str, str]) -> Fields:
        """The same fields, also under other names (alias -> a name there): a group cell's steps by their written ids."""
        return Fields(self._label, {**self._items, **{alias: self._items[name] for alias, name in names.items() if name in self._items}})

    def describe_missing(self, name: str) -> str:
        """The error for `label.name` when there is no such name."""
        there = ", ".join(self._items) or "none"
        return f"{self._label} has no {name!r} (it has: {there})"


class MetricSeries:
    """One gate metric's values, in the order the log gave them."""

    def __init__(self, label: str, values: list[float]) -> None:
        self._label = label
        self.values = list(values)
        self.count = len(self.values)

    def _need(self) -> list[float]:
        if not self.values:
            raise ResultMissing(f"{self._label} has no values")
        return self.values

    @property
    def first(self) -> float:
        return self._need()[0]

    @property
    def last(self) -> float:
        return self._need()[-1]

    @property
    def min(self) -> float:
        return min(self._need())

    @property
    def max(self) -> float:
        return max(self._need())

    @property
    def mean(self) -> float:
        values = self._need()
        return sum(values) / len(values)

    def __repr__(self) -> str:
        return f"{self._label}({self.count} values)"


class CheckResultView:
    """One check of a check step, as it ended."""

    def __init__(self, label: str, result: Mapping[str, Any]) -> None:
        self.kind = result.get("kind")
        self.name = result.get("name")
        self.status = result.get("status")
        self.message = result.get("message")
        self.details = Fields(f"{label}.details", result.get("details") or {})


class StepResults:
    """`steps.ID`: one step's state and results."""

    def __init__(self, step_id: str, state: str, record: Mapping[str, Any] | None) -> None:
        record = record or {}
        label = f"steps.{step_id}"
        self.state = state
        self.outputs = Fields(f"{label}.outputs" + ("" if state == "succeeded" else f" ({step_id} {state})"),
                              record.get("outputs") or {})
        self.metrics = Fields(f"{label}.metrics", {name: MetricSeries(f"{label}.metrics.{name}", values)
                                                   for name, values in (record.get("metrics") or {}).items()})
        self.checks = [CheckResultView(f"{label}.checks[{i}]", r) for i, r in enumerate(record.get("checks") or [])]


def steps_view(rows: Mapping[str, tuple[str, Mapping[str, Any] | None]]) -> Fields:
    """The `steps` namespace from {step id: (state, recorded results)}."""
    return Fields("steps", {sid: StepResults(sid, state, record) for sid, (state, record) in rows.items()})


_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def parse_scalar(text: str) -> Any:
    """An output value as a `NAME=value` line writes it: an integer or a number where it is plainly one, else the text.

    `007`, `1_000` and `nan` stay text: only what reads back the same is taken as a number.
    """
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


OUTPUT_ENV = "AGENTOPS_OUTPUT"  # the file a run step with declared outputs writes NAME=value lines to
_OUTPUT_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def parse_output_lines(text: str) -> dict[str, Any]:
    """The `NAME=value` lines a job wrote to $AGENTOPS_OUTPUT (a later line wins); ValueError names a bad line."""
    found: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _OUTPUT_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"$AGENTOPS_OUTPUT line {number}: expected NAME=value, got {line[:80]!r}")
        found[match.group(1)] = parse_scalar(match.group(2))
    return found
