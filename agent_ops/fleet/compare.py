"""Checks judged across the fleet: each node's part measures, the comparison is over all nodes' details.

`same_across_nodes` (one command's output, e.g. torch / CUDA / NCCL versions) must be the same on
every node; `clock_skew` offsets from the controller's clock must also lie within the bound of each other.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from checks.kinds import Check, ClockSkewCheck, SameAcrossNodesCheck


def disagreements(checks: Sequence[Check], results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """What differs across nodes, one line per check (`results`: node -> that node's check results, in order)."""
    problems = []
    for i, check in enumerate(checks):
        details = {node: res[i].get("details") or {} for node, res in results.items() if i < len(res)}
        if isinstance(check, SameAcrossNodesCheck):
            problems += _outputs_differ(check, details)
        elif isinstance(check, ClockSkewCheck):
            problems += _clocks_spread(check, details)
    return problems


def _outputs_differ(check: SameAcrossNodesCheck, details: Mapping[str, Mapping[str, Any]]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for node, d in details.items():
        groups.setdefault(str(d.get("output", "")), []).append(node)
    if len(groups) <= 1:
        return []
    shown = "; ".join(f"{', '.join(nodes)}: {out!r}" for out, nodes in sorted(groups.items(), key=lambda g: -len(g[1])))
    return [f"{check.title}: differs across nodes: {shown}"]


def _clocks_spread(check: ClockSkewCheck, details: Mapping[str, Mapping[str, Any]]) -> list[str]:
    offsets = {node: float(d["offset_s"]) for node, d in details.items() if "offset_s" in d}
    if len(offsets) < 2:
        return []
    slack = max(float(d.get("rtt_s", 0.0)) for d in details.values())
    spread = max(offsets.values()) - min(offsets.values())
    if spread <= check.max_skew_s + slack:
        return []
    shown = ", ".join(f"{node} {off:+.3f} s" for node, off in offsets.items())
    return [f"{check.title}: clocks {spread:.3f} s apart across nodes ({shown}); allowed {check.max_skew_s:g} s"]
