"""Load a runbook file, validate it completely, resolve its variables, render its templates.

Every problem is reported as `FILE:LINE: path.to.field: message`; all of them at once,
sorted by line, so a user fixes a runbook in one pass. Nothing runs unless this module is satisfied.
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
from agent_ops.runbook.plan import graph_problems
from agent_ops.runbook.references import report_templates
from agent_ops.runbook.schema import BUILTIN_VARS, Runbook, Step, template_languages
from agent_ops.runbook.template import FieldError, fill_numbers, line_offset, names_used, render_tree, whole_expression
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


@dataclass(frozen=True)
class LoadedRunbook:
    """A validated runbook with what is needed to report on it: its file, text hash and line map.

    `reads`: for each step whose templates read `steps.…`, the ids it reads; such a step is rendered
    when it is about to run (the results exist then), every other one when the run starts.
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
    """Read, parse and validate a runbook (schema, graph, template references). Raises RunbookError."""
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
    # Validated before --var values are known: a field that is one expression giving a number is checked
    # with the variables' defaults, and again with the real values when the run renders it.
    templated = _templated(data)
    runbook = _validate(report, {**fill_numbers(templated, _load_values(data), template_languages()), **_verbatim(data)})
    if runbook is not None:
        for loc, msg in graph_problems(runbook.steps):
            report.add(loc, msg)
    reads = report_templates(report, data, templated, runbook)
    if report.found:
        raise RunbookError(report.problems())
    sha = hashlib.sha256(text.encode()).hexdigest()
    return LoadedRunbook(path=path.resolve(), sha256=sha, runbook=runbook, lines=lines, data=data, reads=reads)


def _templated(data: dict[str, Any]) -> dict[str, Any]:
    """The part of the runbook data that holds templates (all but UNTEMPLATED)."""
    return {k: v for k, v in data.items() if k not in UNTEMPLATED}


def _verbatim(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in UNTEMPLATED}


def _validate(report: Report, data: dict[str, Any], suffix: str = "", model: Any = Runbook) -> Any:
    """The model, or None with the problems in the report.

    A field that is one expression reading an earlier step's result (`within: "{{ steps.a.outputs.n }}"`)
    has no value yet: where only that fails, a number stands in, and the step is checked again when it runs.
    """
    try:
        return model.validate_python(data) if isinstance(model, TypeAdapter) else model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    prefix = report.prefix
    later = [loc for loc in (report.lines.clean_loc(prefix + tuple(e["loc"]))[len(prefix):] for e in errors)
             if _reads_results(value_at(data, loc))]
    if later:
        for loc in later:
            _set_at(data, loc, LATER_NUMBER)
        return _validate(report, data, suffix, model)
    report.add_errors(data, errors, suffix)
    return None


def _reads_results(value: Any) -> bool:
    return isinstance(value, str) and whole_expression(value) is not None and "steps" in names_used(value)


def _set_at(data: Any, loc: tuple, value: Any) -> None:
    for part in loc[:-1]:
        data = data[part]
    data[loc[-1]] = value


def _load_values(data: dict[str, Any]) -> dict[str, Any]:
    """Each variable's default (a required one: its first choice), from the raw data: what load-time checks evaluate with."""
    declared = data.get("vars")
    out: dict[str, Any] = {}
    for name, spec in (declared.items() if isinstance(declared, dict) else ()):
        if isinstance(spec, dict):
            choices = spec.get("choices") if isinstance(spec.get("choices"), list) else []
            value = spec.get("default") if spec.get("default") is not None or not choices else choices[0]
        else:
            value = spec
        if value is not None:
            out[name] = value
    return out


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
    """The runbook with its templates rendered, as far as `values` go (no `steps`: those fields wait for their step)."""
    report = loaded.report()
    rendered, errors = render_tree(_templated(loaded.data), values, template_languages())
    _report_render_errors(report, errors)
    runbook = None if errors else _validate(report, {**rendered, **_verbatim(loaded.data)}, " (after substituting variables)")
    if report.found:  # a value made a field invalid (e.g. a regex): reported where it was written
        raise RunbookError(report.problems())
    return runbook


def render_step(loaded: LoadedRunbook, step_id: str, values: dict[str, Any]) -> Step:
    """One step rendered with `values` that include `steps` (the results so far): just before it runs."""
    index = next(i for i, s in enumerate(loaded.runbook.steps) if s.id == step_id)
    loc = ("steps", index)
    report = loaded.report(Step, loc)
    rendered, errors = render_tree(loaded.data["steps"][index], values, template_languages(), loc)
    _report_render_errors(report, errors)
    step = None if errors else _validate(report, rendered, " (after substituting results)", _STEP)
    if report.found:
        raise RunbookError(report.problems())
    return step


_STEP: TypeAdapter[Step] = TypeAdapter(Step)


def _report_render_errors(report: Report, errors: list[FieldError]) -> None:
    for e in errors:
        line = report.lines.line_in(e.loc, line_offset(e.text, e.error.line), e.text) if e.error.line else None
        report.add(e.loc, f"cannot render: {e.error.message}", line)
