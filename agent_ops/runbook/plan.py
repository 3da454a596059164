"""Steps with `needs` form a DAG; the plan is its waves (steps in a wave may run at once)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent_ops.runbook.schema import GateStep, Step
from agent_ops.yaml_models import did_you_mean

Problem = tuple[tuple, str]  # (location in the runbook data, message)


@dataclass(frozen=True)
class Plan:
    """Topologically ordered waves of step ids."""

    waves: list[list[str]]

    def order(self) -> list[str]:
        return [s for wave in self.waves for s in wave]


def graph_problems(steps: Sequence[Step]) -> list[Problem]:
    """Duplicate ids, unknown or self needs, gates on unknown jobs, and cycles, with their locations."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in seen:
            problems.append((("steps", i, "id"), f"duplicate step id {step.id!r} (first defined at steps.{seen[step.id]})"))
        seen.setdefault(step.id, i)
    kinds = {s.id: s.kind for s in steps}
    for i, step in enumerate(steps):
        for field in ("needs", "after"):
            for j, need in enumerate(getattr(step, field)):
                if need == step.id:
                    problems.append((("steps", i, field, j), f"step {step.id!r} {'needs' if field == 'needs' else 'waits for'} itself"))
                elif need not in kinds:
                    problems.append((("steps", i, field, j), f"unknown step {need!r} in {field} of {step.id!r}{did_you_mean(need, kinds)}"))
        if isinstance(step, GateStep) and step.job is not None:
            if step.job not in kinds:
                problems.append((("steps", i, "job"), f"gate {step.id!r} watches unknown step {step.job!r}{did_you_mean(step.job, kinds)}"))
            elif kinds[step.job] != "run":
                problems.append((("steps", i, "job"), f"gate {step.id!r} watches {step.job!r}, which is a {kinds[step.job]} step, not a run step"))
    # A cycle is only meaningful once ids are unique; a self-need was reported above.
    duplicate_or_self = len(seen) < len(steps) or any(s.id in s.needs or s.id in s.after for s in steps)
    if not duplicate_or_self:
        cycle = find_cycle(steps)
        if cycle:
            path = " -> ".join(cycle + [cycle[0]])
            problems.append((_edge_loc(steps, cycle[0], cycle[1 % len(cycle)]), f"dependency cycle (each step needs the next): {path}"))
    return problems


def _edge_loc(steps: Sequence[Step], src: str, dst: str) -> tuple:
    """Where the edge src -> dst is written: the `needs` item, or a gate's `job`."""
    i = next(i for i, s in enumerate(steps) if s.id == src)
    step = steps[i]
    if dst in step.needs:
        return ("steps", i, "needs", step.needs.index(dst))
    if dst in step.after:
        return ("steps", i, "after", step.after.index(dst))
    return ("steps", i, "job")


def _edges(step: Step) -> list[str]:
    # A gate implicitly needs the job it watches: it cannot watch a log that does not exist yet.
    extra = [step.job] if isinstance(step, GateStep) and step.job and step.job not in step.needs else []
    return list(dict.fromkeys([*step.needs, *step.after, *extra]))


def find_cycle(steps: Sequence[Step]) -> list[str] | None:
    """One dependency cycle as a list of ids, or None."""
    deps = {s.id: _edges(s) for s in steps}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in deps.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep):]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for sid in deps:
        if sid not in state and (found := visit(sid)):
            return found
    return None


def build_plan(steps: Sequence[Step]) -> Plan:
    """Waves by longest dependency depth; assumes graph_problems() found nothing."""
    deps = {s.id: _edges(s) for s in steps}
    depth: dict[str, int] = {}

    def level(node: str) -> int:
        if node not in depth:
            depth[node] = 1 + max((level(d) for d in deps[node]), default=-1)
        return depth[node]

    for sid in deps:
        level(sid)
    waves: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for s in steps:
        waves[depth[s.id]].append(s.id)
    return Plan(waves=waves)


def dependencies(steps: Sequence[Step]) -> dict[str, list[str]]:
    """Each step's effective dependencies (needs, plus the job a gate watches)."""
    return {s.id: _edges(s) for s in steps}
