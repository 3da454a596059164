"""What runbook templates refer to, checked at load: syntax, names, filters, and earlier steps' results.

Syntax, names and filters are read from the raw YAML data, so they are reported even when the schema is
not satisfied; `matrix.NAME` only inside a matrix step (or a step of a matrix group) and only for its axes.
References to `steps.ID...` are checked for every expanded step (each cell) against the validated, expanded
runbook: the step exists, has that kind of result (a declared output, a metric, a check), and has finished
before the reading step starts (it is among its `needs`/`after`, directly or through other steps). Inside a
group's cell, as in its `needs`, a name of a step of the group means that step of the same cell.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from agent_ops.runbook.matrix import Expansion, Node
from agent_ops.runbook.plan import dependencies
from agent_ops.runbook.results import RESULT_PARTS, SERIES_PARTS
from agent_ops.runbook.schema import BUILTIN_VARS, MATRIX_SETTINGS, CheckStep, GateStep, Runbook, RunStep, Step
from agent_ops.runbook.template import ENV, FILTERS, free_names, is_template, line_offset, parse, walk_strings
from agent_ops.yaml_models import Report, did_you_mean

DYNAMIC = object()  # a part of a reference computed at run time (`steps[name]`): not checked at load
_NOT_HERE = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def report_templates(report: Report, data: dict[str, Any], templated: dict[str, Any], exp: Expansion,
                     runbook: Runbook | None) -> dict[str, list[str]]:
    """Add every template problem of `templated` (the templated part of `data`) to the report.

    `runbook` is the expanded runbook (its steps are `exp`'s nodes), or None where the schema or the graph
    failed: what the steps read is checked once they pass. Returns, for each expanded step whose templates
    read `steps`, the ids of the steps it reads (those named literally): such a step is rendered when it is
    about to run, once their results exist.
    """
    declared, listed = data.get("vars"), data.get("secrets")
    variables = set(declared if isinstance(declared, dict) else ()) | set(BUILTIN_VARS)
    secrets = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set()
    finished = _finished_before(runbook) if runbook is not None else None
    cells = _cells_by_loc(exp)
    reads: dict[str, list[str]] = {}
    found: dict[tuple, tuple[tuple, str, int | None]] = {}  # a reference as written: its first cell's problem
    for loc, text in walk_strings(templated):
        if not is_template(text):
            continue
        try:
            tree = parse(text)
        except TemplateSyntaxError as exc:
            report.add(loc, f"template syntax: {exc.message}", _line(report, loc, text, exc.lineno))
            continue
        step = _step_loc(loc, data)
        _report_names(report, loc, text, tree, variables, secrets, step is not None, _axes_at(data, loc))
        _report_filters(report, loc, text, tree)
        if step is None or "steps" not in _names(tree) or runbook is None or finished is None:
            continue
        for node in cells.get(step, []):
            read = reads.setdefault(node.id, [])
            for k, (written, lineno) in enumerate(_chains(tree)):
                parts = [node.siblings.get(written[0], written[0]), *written[1:]] if written and written[0] is not DYNAMIC else written
                if parts and parts[0] is not DYNAMIC and parts[0] not in read:
                    read.append(parts[0])
                problem = _result_problem(runbook, exp, runbook.step(node.id), parts, finished)
                if problem and (loc, k) not in found:
                    found[(loc, k)] = (loc, problem, _line(report, loc, text, lineno))
    for loc, problem, line in found.values():
        report.add(loc, problem, line)
    return reads


def _cells_by_loc(exp: Expansion) -> dict[tuple, list[Node]]:
    """Where a step is written -> its expanded steps (one, or one per cell)."""
    out: dict[tuple, list[Node]] = {}
    for node in exp.nodes:
        if node.id is not None:
            out.setdefault(node.loc, []).append(node)
    return out


def _step_loc(loc: tuple, data: dict[str, Any]) -> tuple | None:
    """Where the step that a location lies in is written (a step of a group: inside it), or None (a top-level
    field such as `env`, a group's own fields, a matrix: its cells are made before any step has results)."""
    steps = data.get("steps")
    if len(loc) < 3 or loc[0] != "steps" or not isinstance(steps, list) or not isinstance(loc[1], int) or loc[1] >= len(steps):
        return None
    step = steps[loc[1]]
    if not isinstance(step, dict):
        return None
    if step.get("kind") != "group":
        return loc[:2] if loc[2] != "matrix" else None
    inner = step.get("steps")
    if len(loc) >= 5 and loc[2] == "steps" and isinstance(inner, list) and isinstance(loc[3], int) and loc[3] < len(inner):
        return loc[:4] if isinstance(inner[loc[3]], dict) and loc[4] != "matrix" else None
    return None


def _axes_at(data: dict[str, Any], loc: tuple) -> list[str] | None:
    """The axis names of the matrix that `loc` is inside (a matrix step, or a step of a matrix group), else None."""
    steps = data.get("steps")
    if len(loc) < 3 or loc[0] != "steps" or not isinstance(steps, list) or not isinstance(loc[1], int) or loc[1] >= len(steps):
        return None
    owner = steps[loc[1]]
    inside = loc[2] != "matrix" and (owner.get("kind") != "group" or loc[2] == "steps") if isinstance(owner, dict) else False
    spec = owner.get("matrix") if isinstance(owner, dict) else None
    if not inside or not isinstance(spec, dict):
        return None
    axes = [str(k) for k in spec if k not in MATRIX_SETTINGS]
    include = spec.get("include")
    if not axes and isinstance(include, list) and include and isinstance(include[0], dict):
        axes = [str(k) for k in include[0]]
    return axes


def _names(tree: nodes.Template) -> set[str]:
    return set(free_names(tree))


def _report_names(report: Report, loc: tuple, text: str, tree: nodes.Template, variables: set[str], secrets: set[str],
                  in_step: bool, axes: list[str] | None) -> None:
    free = _names(tree)
    first_line = {}
    for node in tree.find_all(nodes.Name):
        if node.name in free and node.ctx == "load":
            first_line.setdefault(node.name, node.lineno)
    for name in sorted(free, key=lambda n: first_line.get(n, 0)):
        line = _line(report, loc, text, first_line.get(name))
        if name in secrets:
            report.add(loc, f"secret {name!r} cannot be templated (it would land in scripts and the journal); jobs read it as ${name}", line)
        elif name == "steps" and not in_step:
            report.add(loc, "steps.ID... (results of earlier steps) can be read only in a step's own fields (not in a matrix: "
                            "its cells are made before anything runs)" if "matrix" in loc else
                            "steps.ID... (results of earlier steps) can be read only in a step's own fields", line)
        elif name == "matrix":
            _report_axes(report, loc, text, tree, axes)
        elif name not in variables and name not in ENV.globals and name not in ("steps", "matrix"):
            report.add(loc, f"unknown variable {name!r}{did_you_mean(name, variables)} (declare it under vars:)", line)


def _report_axes(report: Report, loc: tuple, text: str, tree: nodes.Template, axes: list[str] | None) -> None:
    """`matrix.NAME` must sit in a matrix step (or a step of a matrix group) and name one of its axes."""
    for parts, lineno in _chains(tree, "matrix") or [([DYNAMIC], None)]:
        axis = parts[0] if parts else DYNAMIC
        shown = "matrix" if axis is DYNAMIC else f"matrix.{axis}"
        if axes is None:
            report.add(loc, f"{{{{ {shown} }}}} is used outside a matrix step: matrix.NAME can be read only in a step "
                            "expanded over a matrix (give the step, or its group, a matrix:)",
                       _line(report, loc, text, lineno))
        elif axis is not DYNAMIC and axis not in axes:
            report.add(loc, f"unknown matrix axis {axis!r}{did_you_mean(str(axis), axes)} (axes here: {', '.join(axes) or 'none'})",
                       _line(report, loc, text, lineno))


def _report_filters(report: Report, loc: tuple, text: str, tree: nodes.Template) -> None:
    for node in tree.find_all(nodes.Filter):
        if node.name not in ENV.filters:
            ours = ", ".join(FILTERS)
            report.add(loc, f"unknown filter {node.name!r}{did_you_mean(node.name, ENV.filters)} (known: {ours} and Jinja2's "
                            f"builtin filters such as default, length, join, int, round)", _line(report, loc, text, node.lineno))
    for node in tree.find_all(nodes.Test):
        if node.name not in ENV.tests:
            report.add(loc, f"unknown test {node.name!r}{did_you_mean(node.name, ENV.tests)}", _line(report, loc, text, node.lineno))
    for node in tree.find_all(_NOT_HERE):
        report.add(loc, f"`{{% {type(node).__name__.lower()} %}}` is not available: a runbook's templates read no other files",
                   _line(report, loc, text, node.lineno))


def _chains(tree: nodes.Template, root: str = "steps") -> list[tuple[list[Any], int]]:
    """Every `steps.A.B[C]...` (or `matrix.A`) in the template: its parts (DYNAMIC where computed) and line."""
    links = list(tree.find_all((nodes.Getattr, nodes.Getitem)))
    inner = {id(n.node) for n in links}
    chains = []
    for outer in (n for n in links if id(n) not in inner):
        parts: list[Any] = []
        node: nodes.Node = outer
        while isinstance(node, (nodes.Getattr, nodes.Getitem)):
            if isinstance(node, nodes.Getattr):
                parts.insert(0, node.attr)
            else:
                parts.insert(0, node.arg.value if isinstance(node.arg, nodes.Const) else DYNAMIC)
            node = node.node
        if isinstance(node, nodes.Name) and node.name == root:
            chains.append((parts, outer.lineno))
    return chains


def _result_problem(runbook: Runbook, exp: Expansion, me: Step, parts: Sequence[Any], finished: dict[str, set[str]]) -> str | None:
    """What is wrong with `steps.<parts>` read by step `me`, or None."""
    ids = {s.id: s for s in runbook.steps}
    sid = parts[0] if parts else DYNAMIC
    if sid is DYNAMIC:
        return None
    if sid not in ids and exp.names.get(sid):
        cells = exp.names[sid]
        return (f"steps.{sid}: {sid!r} stands for {len(cells)} steps (a matrix or a group); read one of them by its id, "
                f"e.g. steps[{cells[0]!r}]")
    if sid not in ids:
        return f"unknown step {sid!r} in steps.{sid}{did_you_mean(str(sid), ids)}"
    if sid == me.id:
        return f"step {me.id!r} cannot read its own results"
    if sid not in finished[me.id]:
        waits = getattr(ids[sid], "background", False) and sid in _reachable(runbook, me.id)
        if waits:
            return f"{sid!r} is a background job: its results exist once it exits; list it under `after` of {me.id!r}"
        return f"step {me.id!r} reads results of {sid!r} but does not wait for it (add {sid!r} to its needs or after)"
    other = ids[sid]
    part = parts[1] if len(parts) > 1 else None
    if part is None or part is DYNAMIC:
        return None
    if part not in RESULT_PARTS:
        return f"steps.{sid} has no {part!r} (it has: {', '.join(RESULT_PARTS)})"
    name = parts[2] if len(parts) > 2 else None
    if part == "outputs":
        return _output_problem(other, name)
    if part == "metrics":
        return _metric_problem(other, name, parts[3] if len(parts) > 3 else None)
    if part == "checks" and not isinstance(other, CheckStep):
        return f"steps.{sid}.checks: {sid!r} is a {other.kind} step; only check steps have checks"
    if part == "checks" and isinstance(name, int) and name >= len(other.checks):
        return f"steps.{sid}.checks[{name}]: {sid!r} has {len(other.checks)} checks (counted from 0)"
    return None


def _output_problem(step: Step, name: Any) -> str | None:
    declared = declared_outputs(step)
    if name is None or name is DYNAMIC or name in declared:
        return None
    how = ("a run step declares its outputs under `outputs:`" if isinstance(step, RunStep)
           else "a gate's outputs are the named groups (?P<NAME>...) of its patterns")
    return (f"steps.{step.id}.outputs: {step.id!r} has no output {name!r}{did_you_mean(str(name), declared)} "
            f"(declared: {', '.join(declared) or 'none'}; {how})")


def _metric_problem(step: Step, name: Any, part: Any) -> str | None:
    if not isinstance(step, GateStep):
        return f"steps.{step.id}.metrics: {step.id!r} is a {step.kind} step; only gates have metrics"
    names = [m.name for m in step.metrics]
    if name is not None and name is not DYNAMIC and name not in names:
        return f"steps.{step.id}.metrics: gate {step.id!r} has no metric {name!r}{did_you_mean(str(name), names)} (it has: {', '.join(names) or 'none'})"
    if part is not None and part is not DYNAMIC and part not in SERIES_PARTS:
        return f"steps.{step.id}.metrics.{name}: no {part!r} (a series has: {', '.join(SERIES_PARTS)})"
    return None


def declared_outputs(step: Step) -> list[str]:
    """The output names a step declares: a run step's `outputs`, a gate's named pattern groups."""
    if isinstance(step, RunStep):
        return list(step.outputs)
    if isinstance(step, GateStep):
        names: list[str] = []
        for pattern in step.patterns:
            try:
                names += [n for n in re.compile(pattern.regex).groupindex if n not in names]
            except re.error:
                continue
        return names
    return []


def _finished_before(runbook: Runbook) -> dict[str, set[str]]:
    """For each step, the steps certain to have finished when it starts.

    A dependency in `needs` that runs in the background has only started; its own dependencies have finished.
    """
    deps = dependencies(runbook.steps)
    steps = {s.id: s for s in runbook.steps}
    memo: dict[str, set[str]] = {}

    def done(sid: str, visiting: frozenset[str] = frozenset()) -> set[str]:
        if sid in memo or sid in visiting or sid not in steps:
            return memo.get(sid, set())
        out: set[str] = set()
        for dep in deps[sid]:
            if dep in steps[sid].after or not getattr(steps.get(dep), "background", False):
                out.add(dep)
            out |= done(dep, visiting | {sid})
        memo[sid] = out
        return out

    return {sid: done(sid) for sid in steps}


def _reachable(runbook: Runbook, sid: str) -> set[str]:
    deps = dependencies(runbook.steps)
    seen: set[str] = set()
    todo = list(deps.get(sid, []))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo += deps.get(dep, [])
    return seen


def _line(report: Report, loc: tuple, text: str, lineno: int | None) -> int | None:
    """The file line of line `lineno` (1-based) of the string at `loc`."""
    return report.lines.line_in(loc, line_offset(text, lineno), text) if lineno else report.lines.line_of(loc)
