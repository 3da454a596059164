"""Load a runbook file, validate it completely, resolve its variables, render its templates.

Every problem is reported as `FILE:LINE: path.to.field: message`; all of them at once,
sorted by line, so a user fixes a runbook in one pass. Nothing runs unless this module is satisfied.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent_ops.errors import RunbookError
from agent_ops.runbook.matrix import Expansion, Node, expand
from agent_ops.runbook.plan import graph_problems
from agent_ops.runbook.schema import MATRIX_SETTINGS, Runbook
from agent_ops.runbook.template import (
    FILTERS,
    MISSING,
    VAR_REF,
    WHOLE_REF,
    as_text,
    fill_numbers,
    is_number,
    located_references,
    lookup,
    render_tree,
    walk_strings,
)
from agent_ops.yaml_models import LineMap, Report, YamlProblems, did_you_mean, kind_of, read_yaml, where

# Names every runbook may use without declaring them; filled in when a run starts (builtin_values).
BUILTIN_VARS = ("run_id", "run_dir", "runbook_dir", "artifacts_dir")


def builtin_values(*, run_id: str, run_dir: str, runbook_dir: str, artifacts_dir: str) -> dict[str, str]:
    """The values of BUILTIN_VARS for one run (or placeholders, for a plan made before any run)."""
    return {"run_id": run_id, "run_dir": run_dir, "runbook_dir": runbook_dir, "artifacts_dir": artifacts_dir}
# Top-level fields kept verbatim: variable specs, and prose that may show `{{ x }}` as an example.
UNTEMPLATED = ("vars", "description")
# Builtins whose files come into being during the run: a put from there is not checked before it starts.
RUN_MADE = ("run_id", "run_dir", "artifacts_dir")


@dataclass(frozen=True)
class LoadedRunbook:
    """A validated runbook with what is needed to report on it: its file, text hash and line map."""

    path: Path
    sha256: str
    runbook: Runbook
    lines: LineMap
    data: dict[str, Any]

    def where(self, loc: tuple) -> str:
        """`FILE:LINE: dotted.path` for a location in the runbook data."""
        return where(str(self.path), self.lines, loc)


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
    report = Report(label, lines, Runbook, numeric_ref=WHOLE_REF)
    # Validated before --var values are known: a field that is one reference to a numeric variable
    # is checked with the variable's default, and again with the real value when the run renders it.
    numbers = _numeric_defaults(data)
    defaults = {**_defaults(data), "runbook_dir": str(path.resolve().parent)}
    exp = expand(data.get("steps"), defaults)
    firsts: dict[tuple, dict[str, Any]] = {}
    for node in exp.nodes:
        firsts.setdefault(node.loc, node.values)  # a matrix step is checked with its first cell's numbers
    checked = _templated(data, lambda part: _fill_steps(part, numbers, firsts))
    try:
        Runbook.model_validate(checked)
    except ValidationError as exc:
        report.add_errors(checked, exc.errors())
    # The graph, references and files are judged on whatever parsed, schema problems or not: one pass finds all.
    for loc, msg in graph_problems(exp):
        report.add(loc, msg)
    _report_references(report, data)
    for loc, msg in [*_put_problems(exp, defaults, path.resolve().parent), *_throttle_problems(data, exp)]:
        report.add(loc, msg)
    if report.found:
        raise RunbookError(report.problems())
    runbook = _expanded(data, exp, lambda step, node: fill_numbers(step, {**numbers, "matrix": node.values}),
                        lambda part: fill_numbers(part, numbers), report)
    if report.found:
        raise RunbookError(report.problems())
    sha = hashlib.sha256(text.encode()).hexdigest()
    return LoadedRunbook(path=path.resolve(), sha256=sha, runbook=runbook, lines=lines, data=data)


def _fill_steps(part: dict[str, Any], numbers: dict[str, Any], firsts: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """Whole numeric references filled, steps (and a group's steps) with their matrix's first cell values."""
    out = fill_numbers({k: v for k, v in part.items() if k != "steps"}, numbers)
    steps = part.get("steps")
    if not isinstance(steps, list):
        return {**out, **({"steps": steps} if "steps" in part else {})}
    filled = []
    for i, step in enumerate(steps):
        if isinstance(step, dict) and isinstance(step.get("steps"), list):
            inner = [fill_numbers(s, {**numbers, "matrix": firsts.get(("steps", i, "steps", j), {})})
                     for j, s in enumerate(step["steps"])]
            filled.append({**fill_numbers({k: v for k, v in step.items() if k != "steps"}, numbers), "steps": inner})
        else:
            filled.append(fill_numbers(step, {**numbers, "matrix": firsts.get(("steps", i), {})}))
    return {**out, "steps": filled}


def _expanded(data: dict[str, Any], exp: Expansion, step: Callable[[Any, Node], Any], top: Callable[[dict[str, Any]], dict[str, Any]],
              report: Report, suffix: str = "") -> Runbook | None:
    """The runbook with expanded steps (each transformed with its cell), validated; problems go to `report` where written."""
    rendered = {**_templated({k: v for k, v in data.items() if k != "steps"}, top),
                "steps": [step(node.data, node) for node in exp.nodes]}
    try:
        runbook = Runbook.model_validate(rendered)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            k = loc[1] if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and loc[1] < len(exp.nodes) else None
            if k is None:
                report.add_errors(rendered, [error], suffix)
                continue
            # Explained against the written layout holding this cell's rendered step (the value the message is about).
            view = _placed({k: v for k, v in rendered.items() if k != "steps"} | {"steps": data.get("steps")},
                           exp.nodes[k].loc, rendered["steps"][k])
            report.add_errors(view, [{**error, "loc": exp.nodes[k].loc + loc[2:]}], suffix)
        return None
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


def _defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Each declared variable's default (None for a required one), from raw data."""
    declared = data.get("vars")
    out: dict[str, Any] = {}
    for name, spec in (declared.items() if isinstance(declared, dict) else ()):
        out[str(name)] = spec.get("default") if isinstance(spec, dict) else spec
    return out


def _templated(data: dict[str, Any], transform: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The runbook data with ``transform`` applied to its templated part; UNTEMPLATED fields kept verbatim."""
    return {**transform({k: v for k, v in data.items() if k not in UNTEMPLATED}),
            **{k: v for k, v in data.items() if k in UNTEMPLATED}}


def _numeric_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Each variable's numeric default (or, for a required one, its first numeric choice), from raw data."""
    declared = data.get("vars")
    out: dict[str, Any] = {}
    for name, spec in (declared.items() if isinstance(declared, dict) else ()):
        if isinstance(spec, dict):
            choices = spec.get("choices") if isinstance(spec.get("choices"), list) else []
            candidates = [spec.get("default")] + ([] if spec.get("default") is not None else choices)
        else:
            candidates = [spec]
        number = next((c for c in candidates if is_number(c)), None)
        if number is not None:
            out[name] = number
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
    """Convert a command-line string to the type of the variable's default."""
    if not isinstance(raw, str) or default is None or isinstance(default, str):
        return raw
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
    """The runbook expanded (matrix cells) with every `{{ var }}` substituted (shell-quoted in commands).

    A value that makes a field invalid, a matrix empty or a put's source missing is reported where it was written.
    """
    report = Report(str(loaded.path), loaded.lines, Runbook, numeric_ref=WHOLE_REF)
    suffix = " (after substituting variables)"
    exp = expand(loaded.data.get("steps"), values)
    for loc, msg in [*exp.problems, *_put_problems(exp, values, loaded.path.parent)]:
        report.add(loc, msg + suffix)
    runbook = None
    if not report.found:
        runbook = _expanded(loaded.data, exp, lambda step, node: render_tree(step, {**values, "matrix": node.values}),
                            lambda part: render_tree(part, values), report, suffix)
    if report.found or runbook is None:
        raise RunbookError(report.problems())
    return runbook


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
        text = _resolved_text(src, {**values, "matrix": node.values})
        if text is None:
            continue
        path = Path(text) if Path(text).is_absolute() else runbook_dir / text
        if path.is_dir():
            found.append((node.loc + ("src",), f"put source {text!r} is a directory ({path}); put copies one file"))
        elif not path.is_file():
            found.append((node.loc + ("src",), f"put source {text!r} does not exist ({path})"))
    return list(dict.fromkeys(found))


def _resolved_text(text: str, values: dict[str, Any]) -> str | None:
    """The text with its references substituted verbatim, or None when one is not known yet (or made by the run)."""
    names = [m.group(1) for m in VAR_REF.finditer(text)]
    if any(n in RUN_MADE or lookup(values, n) in (MISSING, None) for n in names):
        return None
    return VAR_REF.sub(lambda m: as_text(lookup(values, m.group(1))), text)


# --- template references -------------------------------------------------------------------------


def _report_references(report: Report, data: dict[str, Any]) -> None:
    # Read from the raw data, so template problems are reported even when the schema is not satisfied.
    declared, listed = data.get("vars"), data.get("secrets")
    known = set(declared if isinstance(declared, dict) else ()) | set(BUILTIN_VARS)
    secrets = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set()
    if "matrix" in known - set(BUILTIN_VARS):
        report.add(("vars", "matrix"), "variable name 'matrix' is reserved: {{ matrix.NAME }} is a matrix cell's value")
    for loc, text in walk_strings({k: v for k, v in data.items() if k not in UNTEMPLATED}):
        for offset, name, flt in located_references(text):
            line = report.lines.line_in(loc, offset, text)
            root, _, rest = name.partition(".")
            if root == "matrix" and rest:
                problem = _matrix_reference(data, loc, rest)
                if problem:
                    report.add(loc, problem, line)
            elif name in secrets:
                report.add(loc, f"secret {name!r} cannot be templated (it would land in scripts and the journal); "
                                f"jobs read it as ${name}", line)
            elif name not in known:
                report.add(loc, f"unknown variable {name!r}{did_you_mean(name, known)} (declare it under vars:)", line)
            if flt is not None and flt not in FILTERS:
                report.add(loc, f"unknown filter {flt!r} (known: {', '.join(FILTERS)})", line)


def _matrix_reference(data: dict[str, Any], loc: tuple, name: str) -> str | None:
    """What is wrong with `{{ matrix.NAME }}` at `loc`, or None: it must sit in a matrix step and name one of its axes."""
    axes = _axes_at(data, loc)
    if axes is None:
        return f"{{{{ matrix.{name} }}}} is used outside a matrix step (give the step, or its group, a matrix:)"
    if name not in axes:
        return f"unknown matrix axis {name!r}{did_you_mean(name, axes)} (axes here: {', '.join(axes) or 'none'})"
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
    axes = [k for k in spec if isinstance(k, str) and k not in MATRIX_SETTINGS]
    include = spec.get("include")
    if not axes and isinstance(include, list) and include and isinstance(include[0], dict):
        axes = [str(k) for k in include[0]]
    return axes
