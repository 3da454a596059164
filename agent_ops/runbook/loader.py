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
from agent_ops.runbook.plan import graph_problems
from agent_ops.runbook.schema import Runbook
from agent_ops.runbook.template import FILTERS, WHOLE_REF, fill_numbers, is_number, located_references, render_tree, walk_strings
from agent_ops.yaml_models import LineMap, Report, YamlProblems, did_you_mean, kind_of, read_yaml, where

# Names every runbook may use without declaring them; filled in when a run starts (builtin_values).
BUILTIN_VARS = ("run_id", "run_dir", "runbook_dir", "artifacts_dir")


def builtin_values(*, run_id: str, run_dir: str, runbook_dir: str, artifacts_dir: str) -> dict[str, str]:
    """The values of BUILTIN_VARS for one run (or placeholders, for a plan made before any run)."""
    return {"run_id": run_id, "run_dir": run_dir, "runbook_dir": runbook_dir, "artifacts_dir": artifacts_dir}
# Top-level fields kept verbatim: variable specs, and prose that may show `{{ x }}` as an example.
UNTEMPLATED = ("vars", "description")

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
    runbook = None
    # Validated before --var values are known: a field that is one reference to a numeric variable
    # is checked with the variable's default, and again with the real value when the run renders it.
    checked = _templated(data, lambda part: fill_numbers(part, _numeric_defaults(data)))
    try:
        runbook = Runbook.model_validate(checked)
    except ValidationError as exc:
        report.add_errors(checked, exc.errors())
    if runbook is not None:
        for loc, msg in graph_problems(runbook.steps):
            report.add(loc, msg)
    _report_references(report, data)
    if report.found:
        raise RunbookError(report.problems())
    sha = hashlib.sha256(text.encode()).hexdigest()
    return LoadedRunbook(path=path.resolve(), sha256=sha, runbook=runbook, lines=lines, data=data)


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
    """The runbook with every `{{ var }}` substituted (shell-quoted in commands)."""
    rendered = _templated(loaded.data, lambda part: render_tree(part, values))
    try:
        return Runbook.model_validate(rendered)
    except ValidationError as exc:  # a value made a field invalid (e.g. a regex): report it where it was written
        report = Report(str(loaded.path), loaded.lines, Runbook, numeric_ref=WHOLE_REF)
        report.add_errors(rendered, exc.errors(), " (after substituting variables)")
        raise RunbookError(report.problems()) from None


# --- template references -------------------------------------------------------------------------


def _report_references(report: Report, data: dict[str, Any]) -> None:
    # Read from the raw data, so template problems are reported even when the schema is not satisfied.
    declared, listed = data.get("vars"), data.get("secrets")
    known = set(declared if isinstance(declared, dict) else ()) | set(BUILTIN_VARS)
    secrets = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set()
    for loc, text in walk_strings({k: v for k, v in data.items() if k not in UNTEMPLATED}):
        for offset, name, flt in located_references(text):
            line = report.lines.line_in(loc, offset, text)
            if name in secrets:
                report.add(loc, f"secret {name!r} cannot be templated (it would land in scripts and the journal); "
                                f"jobs read it as ${name}", line)
            elif name not in known:
                report.add(loc, f"unknown variable {name!r}{did_you_mean(name, known)} (declare it under vars:)", line)
            if flt is not None and flt not in FILTERS:
                report.add(loc, f"unknown filter {flt!r} (known: {', '.join(FILTERS)})", line)


