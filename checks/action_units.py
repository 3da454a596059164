"""Are action statistics in the units the policy expects? Judged from the std of chosen dims (seed 002's data fix).

Pure functions on a parsed statistics document; `checks.evaluate` reads the file through the
transport and turns a LayoutError or a bad spread into a failed check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The slips worth naming, per unit: (factor by which the std comes out too large, what the data is then in).
UNIT_SLIPS: dict[str, tuple[str, tuple[tuple[float, str], ...]]] = {
    "m": ("metres", ((1000.0, "millimetres"), (100.0, "centimetres"))),
    "rad": ("radians", ((180 / math.pi, "degrees"),)),
}
# A factor counts as "about 1000x" between a third and three times it: mm and cm stay apart, noise does not matter.
SLIP_TOLERANCE = 3.0


class LayoutError(ValueError):
    """The document holds no readable action std (unknown layout, several datasets, missing dims)."""


@dataclass(frozen=True)
class ActionSpread:
    """The action std of one dataset, where it was found, and its range (min/max or q01/q99) when present."""

    where: str
    std: list[float]
    low: list[float] | None
    high: list[float] | None


def action_spread(doc: Any, dataset: str | None = None) -> ActionSpread:
    """The action std in an agentops/OpenVLA, openpi or RDT statistics document; LayoutError if none."""
    if not isinstance(doc, dict):
        raise LayoutError("expected a JSON object at the top level")
    if dataset is None and isinstance(doc.get("norm_stats"), dict):
        return _openpi(doc["norm_stats"])
    name = dataset if dataset is not None else _only_dataset(doc)
    entry = doc.get(name)
    if not isinstance(entry, dict):
        raise LayoutError(f"no dataset {name!r} (top-level keys: {', '.join(sorted(map(str, doc))) or 'none'})")
    if isinstance(entry.get("action"), dict):  # agentops / OpenVLA: {dataset: {action: {std, min, max, ...}}}
        stats = entry["action"]
        return _spread(f"{name}.action.std", stats.get("std"), stats.get("min", stats.get("q01")), stats.get("max", stats.get("q99")))
    if "action_std" in entry:  # RDT: {dataset: {action_mean, action_std, action_min, action_max}}
        return _spread(f"{name}.action_std", entry["action_std"], entry.get("action_min"), entry.get("action_max"))
    raise LayoutError(f"dataset {name!r} has neither action.std nor action_std (keys: {', '.join(sorted(map(str, entry)))})")


def _openpi(norm_stats: dict[str, Any]) -> ActionSpread:
    actions = norm_stats.get("actions")
    if not isinstance(actions, dict):
        raise LayoutError("norm_stats has no actions entry")
    return _spread("norm_stats.actions.std", actions.get("std"), actions.get("q01"), actions.get("q99"))


def _only_dataset(doc: dict[str, Any]) -> str:
    names = [k for k, v in doc.items() if isinstance(v, dict) and ("action" in v or "action_std" in v)]
    if len(names) == 1:
        return names[0]
    if names:
        raise LayoutError(f"several datasets ({', '.join(sorted(names))}); name one with `dataset`")
    raise LayoutError("no action statistics: expected {dataset: {action: {std}}}, {norm_stats: {actions}} or {dataset: {action_std}}")


def _spread(where: str, std: Any, low: Any, high: Any) -> ActionSpread:
    if not _numbers(std):
        raise LayoutError(f"{where}: expected a list of numbers, found {type(std).__name__}")
    return ActionSpread(where, [float(v) for v in std], _floats_or_none(low, len(std)), _floats_or_none(high, len(std)))


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _floats_or_none(value: Any, length: int) -> list[float] | None:
    return [float(v) for v in value] if _numbers(value) and len(value) == length else None


def outside_band(spread: ActionSpread, dims: list[int], low: float, high: float) -> list[tuple[int, float]]:
    """(dim, std) for every chosen dim whose std is outside [low, high] (NaN included); LayoutError for a missing dim."""
    missing = [d for d in dims if d >= len(spread.std)]
    if missing:
        raise LayoutError(f"{spread.where} has {len(spread.std)} values, no dim {missing[0]} (dims asked: {dims})")
    # `not low <= v <= high` rather than two comparisons: NaN must fail.
    return [(d, spread.std[d]) for d in dims if not low <= spread.std[d] <= high]


def unit_hint(spread: ActionSpread, bad: list[tuple[int, float]], low: float, high: float, unit: str) -> str:
    """What the out-of-band std most likely means: normalised actions, a named unit slip, or a plain factor."""
    values = [v for _, v in bad if math.isfinite(v) and v > 0]
    if not values:
        return "the statistics are degenerate (zero or non-finite std)"
    centre = math.sqrt(low * high)
    factor = math.exp(sum(math.log(v / centre) for v in values) / len(values))  # geometric mean of the ratios
    unit_name, slips = UNIT_SLIPS.get(unit, (unit, ()))
    if factor > 1 and _within_unit_interval(spread, [d for d, _ in bad]):
        return f"about {factor:.0f}x too large and bounded by [-1, 1]: the actions look normalised, not in {unit_name}"
    for scale, name in slips:
        if scale / SLIP_TOLERANCE <= factor <= scale * SLIP_TOLERANCE:
            return f"about {factor:.0f}x too large: the actions look like {name}, not {unit_name}"
    if factor > 1:
        return f"about {factor:.3g}x too large"
    return f"about {1 / factor:.3g}x too small"


def _within_unit_interval(spread: ActionSpread, dims: list[int]) -> bool:
    if spread.low is None or spread.high is None:
        return False
    return all(spread.low[d] >= -1.0 and spread.high[d] <= 1.0 for d in dims)
