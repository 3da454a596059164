"""Steps with `needs` form a DAG; the plan is its waves (steps in a wave may run at once).

The graph is checked on the expanded steps built from the raw data (matrix.py), so duplicate
ids, unknown needs, gates on unknown jobs, cycles and gates that could never watch their job
live are all reported in the same pass as schema problems, wherever the schema is broken.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from agent_ops.runbook.matrix import Expansion, Node, Problem
from agent_ops.runbook.schema import WRITTEN_ID, GateStep, Step
from agent_ops.yaml_models import did_you_mean


@dataclass(frozen=True)
class Plan:
    """Topologically ordered waves of step ids."""

    waves: list[list[str]]

    def order(self) -> list[str]:
        return [s for wave in self.waves for s in wave]


def graph_problems(exp: Expansion) -> list[Problem]:
    """Every graph problem of the expanded steps, each once, at the line where it is written."""
    found = [*exp.problems, *_id_problems(exp)]
    known = {n.id for n in exp.nodes if n.id} | set(exp.names)
    kinds = {n.id: n.kind for n in exp.nodes if n.id}
    for node in _written_once(exp):
        found += _reference_problems(exp, node, known, kinds)
    # Cycles among the steps whose ids are unique, self-needs left out (both are reported above): a duplicate
    # elsewhere in the file does not hide a cycle.
    ids = Counter(n.id for n in exp.nodes if n.id)
    unique = {i for i, count in ids.items() if count == 1}
    deps = {n.id: [d for d in _deps(n) if d in unique and d != n.id] for n in exp.nodes if n.id in unique}
    cycle = find_cycle(deps)
    if cycle:
        path = " -> ".join(cycle + [cycle[0]])
        found.append((_edge_loc(exp, cycle[0], cycle[1 % len(cycle)]), f"dependency cycle (each step needs the next): {path}"))
    elif len(unique) == len(ids):
        found += _gate_liveness_problems(exp)
    return list(dict.fromkeys(found))  # the cells of a matrix repeat their step's problems: report each once


def _written_once(exp: Expansion) -> list[Node]:
    """One node per written step (a matrix step's first cell stands for all)."""
    seen: dict[tuple, Node] = {}
    for node in exp.nodes:
        seen.setdefault(node.loc, node)
    return list(seen.values())


def _id_problems(exp: Expansion) -> list[Problem]:
    found: list[Problem] = []
    first: dict[str, tuple] = {}
    written = [(gid, loc) for gid, loc in exp.groups.items()] + [(n.written, n.loc) for n in _written_once(exp) if n.written]
    for wid, loc in sorted(written, key=lambda item: _order(item[1])):
        if wid in first and first[wid] != loc:
            where = ".".join(str(p) for p in first[wid])
            found.append((loc + ("id",), f"duplicate step id {wid!r} (first defined at {where})"))
        first.setdefault(wid, loc)
        if "[" in wid and not re.fullmatch(WRITTEN_ID, wid):
            found.append((loc + ("id",), f"step id {wid!r}: brackets are reserved for the ids of matrix cells"))
    return found


def _order(loc: tuple) -> tuple:
    return tuple(p if isinstance(p, int) else -1 for p in loc)


def _reference_problems(exp: Expansion, node: Node, known: set[str], kinds: dict[str, object]) -> list[Problem]:
    found: list[Problem] = []
    me = node.written
    for field in ("needs", "after"):
        for name, loc in getattr(node, field):
            if name == me or (name in node.siblings and node.siblings[name] == node.id):
                found.append((loc, f"step {me!r} {'needs' if field == 'needs' else 'waits for'} itself"))
            elif node.cell and name == node.cell.group and name != me:
                found.append((loc, f"step {me!r} is in group {name!r}: it cannot wait for its own group"))
            elif name not in known and name not in node.siblings:
                found.append((loc, f"unknown step {name!r} in {field} of {me!r}{did_you_mean(name, exp.names)}"))
    if node.job is not None and node.kind == "gate":
        name, loc = node.job
        targets = [node.siblings[name]] if name in node.siblings else exp.names.get(name, [name] if name in kinds else [])
        if not targets:
            found.append((loc, f"gate {me!r} watches unknown step {name!r}{did_you_mean(name, exp.names)}"))
        elif len(targets) > 1:
            found.append((loc, f"gate {me!r} watches {name!r}, which has {len(targets)} cells: put the gate in a group with it "
                               f"(kind: group) so that each cell gets its own gate"))
        elif kinds.get(targets[0]) != "run":
            found.append((loc, f"gate {me!r} watches {name!r}, which is a {kinds.get(targets[0])} step, not a run step"))
    return found


def _deps(node: Node) -> list[str]:
    """The expanded ids a node waits for: needs, after, and the job a gate watches."""
    data = node.data if isinstance(node.data, dict) else {}
    out = [d for field in ("needs", "after") for d in (data.get(field) or []) if isinstance(d, str)]
    job = data.get("job") if node.kind == "gate" else None
    return list(dict.fromkeys([*out, *([job] if isinstance(job, str) else [])]))


def _edge_loc(exp: Expansion, src: str, dst: str) -> tuple:
    """Where the edge src -> dst is written: the `needs` / `after` item that names dst, or a gate's `job`."""
    node = next(n for n in exp.nodes if n.id == src)
    for field in ("needs", "after"):
        for name, loc in getattr(node, field):
            if dst in ([node.siblings[name]] if name in node.siblings else exp.names.get(name, [name])):
                return loc
    return node.job[1] if node.job else node.loc


# --- gates that could never watch a live job --------------------------------------------------------


def _gate_liveness_problems(exp: Expansion) -> list[Problem]:
    """A gate starts once its job is up; one that also waits for something that needs the job to have exited never
    sees the job running (it would read a finished log and pass on history): refused at validation."""
    nodes = {n.id: n for n in exp.nodes if n.id}
    found: list[Problem] = []
    for gate in nodes.values():
        job = gate.data.get("job") if gate.kind == "gate" and isinstance(gate.data, dict) else None
        if not isinstance(job, str) or job not in nodes:
            continue
        chain = _waits_for_exit(nodes, gate.id, job, set())
        if chain:
            found.append((_edge_loc(exp, gate.id, chain[1]),
                          f"gate {gate.written!r} could never watch {job!r} running: through {' -> '.join(chain)} it waits "
                          f"for {job!r} to exit (a gate starts when its job starts; it must not also wait for its end)"))
    return found


def _waits_for_exit(nodes: dict[str, Node], sid: str, job: str, seen: set[str]) -> list[str] | None:
    """The chain of steps through which `sid` cannot start before `job` has exited, or None."""
    if sid in seen:
        return None
    seen.add(sid)
    node = nodes[sid]
    data = node.data if isinstance(node.data, dict) else {}
    watches = data.get("job") if node.kind == "gate" else None
    for field in ("after", "needs"):
        for dep in data.get(field) or []:
            if dep == job:
                if field == "after" or (watches != job and not nodes[job].background):
                    return [sid, job]
                continue
            if dep in nodes:
                chain = _waits_for_exit(nodes, dep, job, seen)
                if chain:
                    return [sid, *chain]
    return None


# --- cycles and waves (on expanded steps) -----------------------------------------------------------


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """One dependency cycle as a list of ids, or None."""
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


def _edges(step: Step) -> list[str]:
    # A gate implicitly needs the job it watches: it cannot watch a log that does not exist yet.
    extra = [step.job] if isinstance(step, GateStep) and step.job and step.job not in step.needs else []
    return list(dict.fromkeys([*step.needs, *step.after, *extra]))


def build_plan(steps: Sequence[Step]) -> Plan:
    """Waves by longest dependency depth; assumes graph_problems() found nothing."""
    deps = dependencies(steps)
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
