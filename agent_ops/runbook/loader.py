"""Load a runbook file, validate it completely, resolve its variables, render its templates.

Every problem is reported as `FILE:LINE: path.to.field: message`; all of them at once,
sorted by line, so a user fixes a runbook in one pass. Nothing runs unless this module is satisfied.

Matrices and groups are expanded (matrix.py) before anything else: the graph, template references and
put sources are judged on the expanded steps, every cell rendered with its own `matrix` values, and a
problem of a cell is reported at the step as written.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agent_ops.errors import RunbookError
from agent_ops.runbook.matrix import Expansion, Node, expand
from agent_ops.runbook.plan import graph_problems
from agent_ops.runbook.references import report_templates
from agent_ops.runbook.results import Fields
from agent_ops.runbook.schema import BUILTIN_VARS, Runbook, Step, template_languages
from agent_ops.runbook.template import (
    FieldError,
    RenderError,
    fill_numbers,
    line_offset,
    names_used,
    render_text,
    render_tree,
    unknown_names,
    whole_expression,
)
from agent_ops.yaml_models import LineMap, Report, YamlProblems, did_you_mean, kind_of, read_yaml, value_at, where

__all__ = ["BUILTIN_VARS", "LoadedRunbook", "builtin_values", "load_runbook", "render_runbook", "render_step", "resolve_vars"]

# A field that is one template expression: in a numeric field it must give a number (explained in errors).
WHOLE_EXPRESSION = re.compile(r"^\{\{.*\}\}$", re.S)
# Stands in, during validation, for a number only known when its step runs (it reads an earlier step's results).
LATER_NUMBER = 1


def builtin_values(*, run_id: str, run_dir: str, runbook_dir: str, artifacts_dir: str,
                   nodes: list[tuple[str, str]] | None = None, rank: int = 0) -> dict[str, Any]:
    """The values of BUILTIN_VARS for one run on one node (or placeholders, for a plan made before any run).

    `nodes`: the fleet as (name, address), head first; `rank`: the node whose values these are. Without
    nodes (a plan), a fleet of one placeholder node.
    """
    nodes = nodes or [("<node.name>", "<node.address>")]
    names, addresses = [n for n, _ in nodes], [a for _, a in nodes]
    head = {"name": names[0], "address": addresses[0]}
    return {"run_id": run_id, "run_dir": run_dir, "runbook_dir": runbook_dir, "artifacts_dir": artifacts_dir,
            "node": {"name": names[rank], "rank": rank, "address": addresses[rank]},
            "fleet": {"size": len(nodes), "names": names, "addresses": addresses, "head": head, "head_address": head["address"]}}


# Top-level fields kept verbatim: variable specs, and prose that may show `{{ x }}` as an example.
UNTEMPLATED = ("vars", "description")
# Builtins whose files come into being during the run: a put from there is not checked before it starts.
RUN_MADE = ("run_id", "run_dir", "artifacts_dir")


@dataclass(frozen=True)
class LoadedRunbook:
    """A validated runbook with what is needed to report on it: its file, text hash and line map.

    `runbook` is expanded (a matrix step's cells are steps) with the variables' defaults. `reads`: for
    each expanded step whose templates read `steps.…`, the ids it reads; such a step is rendered when it
    is about to run (the results exist then), every other one when the run starts.
    """

    path: Path
    sha256: str
    runbook: Runbook
    lines: LineMap
    data: dict[str, Any]
    reads: dict[str, list[str]] = field(default_factory=dict)

    def where(self, loc: tuple) -> str:
        """`FILE:LINE: dotted.path` for a location in the runbook data."""
        return where(str(self.path), self.lines, loc)

    def report(self, root: Any = Runbook, prefix: tuple = ()) -> Report:
        return Report(str(self.path), self.lines, root, prefix, numeric_ref=WHOLE_EXPRESSION)

    def reads_results(self, step_id: str) -> bool:
        """Whether a step's templates read earlier steps' results. Asked of the step as written, so that it holds
        for the cells that `--var` values make, which the defaults did not (ids as written have no brackets)."""
        return step_id.split("[", 1)[0] in {sid.split("[", 1)[0] for sid in self.reads}


def find_runbook(name: str) -> Path:
    """A path as given, or a bare name (`setup_vastai.yaml`) found among the runbooks shipped with agentops."""
    path = Path(name)
    if path.exists() or os.sep in name:
        return path
    shipped = resources.files("runbooks")
    for candidate in (name, f"{name}.yaml"):
        entry = shipped / candidate
        if entry.is_file():
            return Path(str(entry))
    return path


def shipped_runbooks() -> list[str]:
    """Names of the runbooks shipped in the package."""
    return sorted(p.name for p in resources.files("runbooks").iterdir() if p.name.endswith(".yaml"))


def load_runbook(name: str | os.PathLike[str]) -> LoadedRunbook:
    """Read, parse and validate a runbook (schema, graph, template references, put sources). Raises RunbookError."""
    path = find_runbook(str(name))
    label = str(name)
    try:
        data, lines, text = read_yaml(path, label)
    except FileNotFoundError:
        hint = f" (shipped runbooks: {', '.join(shipped_runbooks())})" if os.sep not in label else ""
        raise RunbookError([f"{label}: no such file{hint}"]) from None
    except YamlProblems as exc:
        raise RunbookError(exc.problems) from None
    if not isinstance(data, dict):
        what = "the file is empty" if data is None else f"the top level is {kind_of(data)}"
        raise RunbookError([f"{label}:{lines.line_of(()) or 1}: (top): {what}; a runbook is a mapping with name and steps"])
    report = Report(label, lines, Runbook, numeric_ref=WHOLE_EXPRESSION)
    # Validated before --var values are known: matrices are expanded, and a field that is one expression giving
    # a number is checked, with the variables' defaults; again with the real values when the run renders them.
    values, here = _load_values(data), {"runbook_dir": str(path.resolve().parent)}
    exp = expand(data.get("steps"), {**values, **here})
    templated = _templated(data)
    _validate(report, {**_fill_written(templated, values, exp), **_verbatim(data)})
    # The graph, references and files are judged on whatever parsed, schema problems or not: one pass finds all.
    for loc, msg in [*graph_problems(exp), *_put_problems(exp, {**_defaults(data), **here}, path.resolve().parent),
                     *_throttle_problems(data, exp)]:
        report.add(loc, msg)
    runbook = None
    if not report.found:
        languages = template_languages()
        runbook = _expanded(report, data, exp, fill_numbers(_without_steps(templated), values, languages),
                            [fill_numbers(node.data, {**values, "matrix": node.values}, languages) for node in exp.nodes])
    reads = report_templates(report, data, templated, exp, runbook)
    if report.found:
        raise RunbookError(report.problems())
    sha = hashlib.sha256(text.encode()).hexdigest()
    return LoadedRunbook(path=path.resolve(), sha256=sha, runbook=runbook, lines=lines, data=data, reads=reads)


def _templated(data: dict[str, Any]) -> dict[str, Any]:
    """The part of the runbook data that holds templates (all but UNTEMPLATED)."""
    return {k: v for k, v in data.items() if k not in UNTEMPLATED}


def _verbatim(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in UNTEMPLATED}


def _without_steps(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "steps"}


def _fill_written(templated: dict[str, Any], values: dict[str, Any], exp: Expansion) -> dict[str, Any]:
    """The runbook as written (groups and matrices) with whole numeric expressions filled, for the schema check;
    a matrix step's (a group's steps') with its first cell's values."""
    languages = template_languages()
    firsts: dict[tuple, dict[str, Any]] = {}
    for node in exp.nodes:
        firsts.setdefault(node.loc, node.values)

    def step(raw: Any, loc: tuple) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("steps"), list):  # a group: its own fields, then its steps
            return {**fill_numbers(_without_steps(raw), values, languages),
                    "steps": [step(inner, loc + ("steps", j)) for j, inner in enumerate(raw["steps"])]}
        return fill_numbers(raw, {**values, "matrix": firsts.get(loc, {})}, languages)

    steps = templated.get("steps")
    out = fill_numbers(_without_steps(templated), values, languages)
    if isinstance(steps, list):
        return {**out, "steps": [step(raw, ("steps", i)) for i, raw in enumerate(steps)]}
    return {**out, **({"steps": steps} if "steps" in templated else {})}


def _expanded(report: Report, data: dict[str, Any], exp: Expansion, top: dict[str, Any], steps: list[Any],
              suffix: str = "") -> Runbook | None:
    """The runbook of `top`'s fields and the expanded `steps` (each made from its node), validated; its problems go
    to `report` at the steps as written, explained with the value the cell gave (None then)."""
    whole = {**top, **_verbatim(data), "steps": steps}
    runbook, errors = _checked(Runbook, whole)
    for error in errors:
        loc = tuple(error["loc"])
        k = loc[1] if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and loc[1] < len(exp.nodes) else None
        if k is None:
            report.add_errors(whole, [error], suffix)
            continue
        view = _placed({**whole, "steps": data.get("steps")}, exp.nodes[k].loc, steps[k])
        report.add_errors(view, [{**error, "loc": exp.nodes[k].loc + loc[2:]}], suffix)
    if runbook is not None:
        runbook._cells = {node.id: node.cell for node in exp.nodes if node.id and node.cell}
    return runbook


def _placed(data: Any, loc: tuple, value: Any) -> Any:
    """`data` with `value` at `loc` (copies along the path; the rest is shared)."""
    if not loc:
        return value
    head, rest = loc[0], loc[1:]
    if isinstance(data, dict):
        return {**data, head: _placed(data.get(head), rest, value)}
    if isinstance(data, list) and isinstance(head, int) and head < len(data):
        return [*data[:head], _placed(data[head], rest, value), *data[head + 1:]]
    return data


def _validate(report: Report, data: dict[str, Any], suffix: str = "", model: Any = Runbook) -> Any:
    """The model, or None with the problems in the report."""
    obj, errors = _checked(model, data)
    report.add_errors(data, errors, suffix)
    return obj


def _checked(model: Any, data: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """The model and no errors, or None and pydantic's errors.

    A field that is one expression reading an earlier step's result (`within: "{{ steps.a.outputs.n }}"`)
    has no value yet: where only that fails, a number stands in, and the step is checked again when it runs.
    """
    while True:
        try:
            return (model.validate_python(data) if isinstance(model, TypeAdapter) else model.model_validate(data)), []
        except ValidationError as exc:
            errors = exc.errors()
        later = [loc for loc in (_data_loc(data, tuple(e["loc"])) for e in errors) if _reads_results(value_at(data, loc))]
        if not later:
            return None, errors
        for loc in later:  # each replaced value no longer reads results: the loop ends
            _set_at(data, loc, LATER_NUMBER)


def _data_loc(data: Any, loc: tuple) -> tuple:
    """The parts of a pydantic error location that index into `data` (drops union tags and validator names)."""
    path: tuple = ()
    for part in loc:
        try:
            inner = data[part]
        except (KeyError, IndexError, TypeError):
            continue
        path, data = path + (part,), inner
    return path


def _reads_results(value: Any) -> bool:
    return isinstance(value, str) and whole_expression(value) is not None and "steps" in names_used(value)


def _set_at(data: Any, loc: tuple, value: Any) -> None:
    for part in loc[:-1]:
        data = data[part]
    data[loc[-1]] = value


def _defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Each variable's declared default (required ones left out), from the raw data."""
    declared = data.get("vars")
    out: dict[str, Any] = {}
    for name, spec in (declared.items() if isinstance(declared, dict) else ()):
        value = spec.get("default") if isinstance(spec, dict) else spec
        if value is not None:
            out[name] = value
    return out


def _load_values(data: dict[str, Any]) -> dict[str, Any]:
    """Each variable's default (a required one: its first choice), from the raw data: what load-time checks evaluate with."""
    declared = data.get("vars")
    firsts = {name: spec["choices"][0] for name, spec in (declared.items() if isinstance(declared, dict) else ())
              if isinstance(spec, dict) and isinstance(spec.get("choices"), list) and spec["choices"]}
    return {**firsts, **_defaults(data)}


def resolve_vars(loaded: LoadedRunbook, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the caller's values (typed like the default); missing or bad ones are errors."""
    specs = loaded.runbook.var_specs()
    problems: list[str] = []
    for name in overrides:
        if name not in specs:
            hint = did_you_mean(name, specs) or f" (known: {', '.join(specs) or 'none'})"
            problems.append(f"{loaded.where(('vars',))}: --var {name}: not a variable of this runbook{hint}")
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        where = loaded.where(("vars", name))
        if name in overrides and isinstance(overrides[name], str) and "\x00" in overrides[name]:
            problems.append(f"{where}: --var {name}: contains a NUL byte, which no command line or file on the target can carry")
            continue
        if name in overrides:
            # A required variable has no default to copy a type from: its choices give one.
            like = spec.default if spec.default is not None or not spec.choices else spec.choices[0]
            try:
                values[name] = coerce(overrides[name], like)
            except ValueError as exc:
                problems.append(f"{where}: --var {name}: {exc}")
                continue
        elif spec.default is None:
            problems.append(f"{where}: variable {name!r} is required (pass --var {name}=VALUE)")
            continue
        else:
            values[name] = spec.default
        if spec.choices is not None and values[name] not in spec.choices:
            problems.append(f"{where}: {values[name]!r} is not one of the choices {spec.choices}")
    if problems:
        raise RunbookError(problems)
    return values


def coerce(raw: Any, default: Any) -> Any:
    """Convert a command-line string to the type of the variable's default (a list: comma-separated items)."""
    if not isinstance(raw, str) or default is None or isinstance(default, str):
        return raw
    if isinstance(default, list):  # `--var tasks=0,1,2` for a list: its items typed like the default's first
        return [coerce(item.strip(), default[0] if default else None) for item in raw.split(",")] if raw.strip() else []
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {raw!r}")
    for kind, noun in ((int, "an integer"), (float, "a number")):
        if isinstance(default, kind):
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"expected {noun}, got {raw!r}") from None
    return raw


def render_runbook(loaded: LoadedRunbook, values: dict[str, Any]) -> Runbook:
    """The runbook expanded (matrix cells, each with its `matrix` values) and rendered, as far as `values` go
    (no `steps`: those fields wait for their step).

    A value that makes a field invalid, a matrix empty or a put's source missing is reported where it was written.
    """
    report = loaded.report()
    suffix = " (after substituting variables)"
    exp = expand(loaded.data.get("steps"), values)
    for loc, msg in [*exp.problems, *_put_problems(exp, values, loaded.path.parent)]:
        report.add(loc, msg + suffix)
    languages = template_languages()
    top, errors = render_tree(_without_steps(_templated(loaded.data)), values, languages)
    steps = []
    for node in exp.nodes:
        step, cell_errors = render_tree(node.data, {**values, "matrix": node.values}, languages, node.loc)
        steps.append(step)
        errors += cell_errors
    _report_render_errors(report, errors)
    runbook = None if report.found else _expanded(report, loaded.data, exp, top, steps, suffix)
    if report.found:  # a value made a field invalid (e.g. a regex): reported where it was written
        raise RunbookError(report.problems())
    return runbook


def render_step(loaded: LoadedRunbook, step_id: str, values: dict[str, Any]) -> Step:
    """One expanded step rendered with `values` that include `steps` (the results so far): just before it runs.

    The step as written is rendered with its cell's `matrix` values; inside a group's cell, `steps.NAME` of a
    step of the group is that step of the same cell (as in `needs`). The expansion is made with `values`, as
    the run's own was, so the cells that `--var` values make are found.
    """
    node = _node(loaded, step_id, values)
    results = values["steps"]
    cell = {**values, "matrix": node.values, "steps": results.aliased(node.siblings) if isinstance(results, Fields) else results}
    report = loaded.report(Step, node.loc)
    rendered, errors = render_tree(node.data, cell, template_languages(), node.loc)
    _report_render_errors(report, errors)
    step = None if errors else _validate(report, rendered, " (after substituting results)", _STEP)
    if report.found:
        raise RunbookError(report.problems())
    return step


def _node(loaded: LoadedRunbook, step_id: str, values: dict[str, Any]) -> Node:
    for node in expand(loaded.data.get("steps"), values).nodes:
        if node.id == step_id:
            return node
    raise KeyError(step_id)


_STEP: TypeAdapter[Step] = TypeAdapter(Step)


def _report_render_errors(report: Report, errors: list[FieldError]) -> None:
    for e in errors:
        line = report.lines.line_in(e.loc, line_offset(e.text, e.error.line), e.text) if e.error.line else None
        report.add(e.loc, f"cannot render: {e.error.message}", line)


def _throttle_problems(data: dict[str, Any], exp: Expansion) -> list[tuple[tuple, str]]:
    """A throttled tag that no step carries is a typo: it would limit nothing."""
    throttle = data.get("throttle")
    tags = {t for n in exp.nodes if isinstance(n.data, dict) and isinstance(n.data.get("tags"), list)
            for t in n.data["tags"] if isinstance(t, str)}
    return [(("throttle", tag), f"no step has the tag {tag!r}{did_you_mean(str(tag), tags)} (tags: {', '.join(sorted(tags)) or 'none'})")
            for tag in (throttle if isinstance(throttle, dict) else ()) if tag not in tags]


# --- files a put step copies ---------------------------------------------------------------------


def _put_problems(exp: Expansion, values: dict[str, Any], runbook_dir: Path) -> list[tuple[tuple, str]]:
    """A put whose local source is missing fails before anything runs (not halfway through the run)."""
    found = []
    for node in exp.nodes:
        src = node.data.get("src") if node.kind == "put" and isinstance(node.data, dict) else None
        if not isinstance(src, str):
            continue
        text = _source_path(src, {**values, "matrix": node.values})
        if text is None:
            continue
        path = Path(text) if Path(text).is_absolute() else runbook_dir / text
        if path.is_dir():
            found.append((node.loc + ("src",), f"put source {text!r} is a directory ({path}); put copies one file"))
        elif not path.is_file():
            found.append((node.loc + ("src",), f"put source {text!r} does not exist ({path})"))
    return list(dict.fromkeys(found))


def _source_path(text: str, values: dict[str, Any]) -> str | None:
    """A put's source as the run will read it, or None where that is not known before the run: it reads what
    the run makes (its directories, earlier steps' results) or a variable with no value yet."""
    if names_used(text) & {*RUN_MADE, "steps"} or unknown_names(text, values):
        return None
    try:
        return render_text(text, values, "text")
    except RenderError:
        return None  # the template check reports it
