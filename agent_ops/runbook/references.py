"""What runbook templates refer to, checked at load: syntax, names, filters, and earlier steps' results.

Syntax, names and filters are read from the raw YAML data, so they are reported even when the schema is
not satisfied. References to `steps.ID...` are checked against the validated runbook: the step exists,
has that kind of result (a declared output, a metric, a check), and has finished before the reading step
starts (it is among its `needs`/`after`, directly or through other steps).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from agent_ops.runbook.plan import dependencies, graph_problems
from agent_ops.runbook.results import RESULT_PARTS, SERIES_PARTS
from agent_ops.runbook.schema import BUILTIN_VARS, CheckStep, GateStep, Runbook, RunStep, Step
from agent_ops.runbook.template import ENV, FILTERS, free_names, is_template, line_offset, parse, walk_strings
from agent_ops.yaml_models import Report, did_you_mean

DYNAMIC = object()  # a part of a reference computed at run time (`steps[name]`): not checked at load
_NOT_HERE = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def report_templates(report: Report, data: dict[str, Any], templated: dict[str, Any], runbook: Runbook | None
                     ) -> dict[str, list[str]]:
    """Add every template problem of `templated` (the templated part of `data`) to the report.

    Returns, for each step whose templates read `steps`, the ids of the steps it reads (those named
    literally): such a step is rendered when it is about to run, once their results exist.
    """
    declared, listed = data.get("vars"), data.get("secrets")
    variables = set(declared if isinstance(declared, dict) else ()) | set(BUILTIN_VARS)
    secrets = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set()
    finished = _finished_before(runbook) if runbook is not None and not graph_problems(runbook.steps) else None
    reads: dict[str, list[str]] = {}
    for loc, text in walk_strings(templated):
        if not is_template(text):
            continue
        try:
            tree = parse(text)
        except TemplateSyntaxError as exc:
            report.add(loc, f"template syntax: {exc.message}", _line(report, loc, text, exc.lineno))
            continue
        step = _step_of(loc, data)
        _report_names(report, loc, text, tree, variables, secrets, step)
        _report_filters(report, loc, text, tree)
        if step is None or "steps" not in _names(tree):
            continue
        if runbook is None or finished is None or loc[1] >= len(runbook.steps):
            continue  # the schema or the graph failed: what a step reads is checked once they pass
        me = runbook.steps[loc[1]]
        read = reads.setdefault(me.id, [])
        for parts, lineno in _chains(tree):
            if parts and parts[0] is not DYNAMIC and parts[0] not in read:
                read.append(parts[0])
            problem = _result_problem(runbook, me, parts, finished)
            if problem:
                report.add(loc, problem, _line(report, loc, text, lineno))
    return reads


def _step_of(loc: tuple, data: dict[str, Any]) -> dict[str, Any] | None:
    """The raw step a location lies in, or None (a top-level field such as `env`)."""
    steps = data.get("steps")
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(steps, list) and isinstance(loc[1], int) and loc[1] < len(steps):
        step = steps[loc[1]]
        return step if isinstance(step, dict) else None
    return None


def _names(tree: nodes.Template) -> set[str]:
    return set(free_names(tree))


def _report_names(report: Report, loc: tuple, text: str, tree: nodes.Template, variables: set[str], secrets: set[str],
                  step: dict[str, Any] | None) -> None:
    free = _names(tree)
    first_line = {}
    for node in tree.find_all(nodes.Name):
        if node.name in free and node.ctx == "load":
            first_line.setdefault(node.name, node.lineno)
    for name in sorted(free, key=lambda n: first_line.get(n, 0)):
        line = _line(report, loc, text, first_line.get(name))
        if name in secrets:
            report.add(loc, f"secret {name!r} cannot be templated (it would land in scripts and the journal); jobs read it as ${name}", line)
        elif name == "steps" and step is None:
            report.add(loc, "steps.ID... (results of earlier steps) can be read only in a step's own fields", line)
        elif name == "matrix" and (step is None or "matrix" not in step):
            report.add(loc, "matrix.NAME can be read only in a step expanded over a matrix", line)
        elif name not in variables and name not in ENV.globals and name not in ("steps", "matrix"):
            report.add(loc, f"unknown variable {name!r}{did_you_mean(name, variables)} (declare it under vars:)", line)


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


def _chains(tree: nodes.Template) -> list[tuple[list[Any], int]]:
    """Every `steps.A.B[C]...` in the template: its parts (DYNAMIC where computed) and line."""
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
        if isinstance(node, nodes.Name) and node.name == "steps":
            chains.append((parts, outer.lineno))
    return chains


def _result_problem(runbook: Runbook, me: Step, parts: Sequence[Any], finished: dict[str, set[str]]) -> str | None:
    """What is wrong with `steps.<parts>` read by step `me`, or None."""
    ids = {s.id: s for s in runbook.steps}
    sid = parts[0] if parts else DYNAMIC
    if sid is DYNAMIC:
        return None
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
