"""Load a runbook file, validate it completely, resolve its variables, render its templates.

Every problem is reported as `FILE:LINE: path.to.field: message`; all of them at once,
so a user fixes a runbook in one pass. Nothing runs unless this module is satisfied.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent_ops.errors import RunbookError
from agent_ops.plan import graph_problems
from agent_ops.runbook import Runbook
from agent_ops.template import FILTERS, references, render_tree, walk_strings
from agent_ops.yaml_lines import LineMap, load_with_lines

# Names every runbook may use without declaring them; filled in by the executor.
BUILTIN_VARS = ("run_id", "run_dir", "runbook_dir", "artifacts_dir")


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
        return _where(str(self.path), self.lines, loc)


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f" (shipped runbooks: {', '.join(shipped_runbooks())})" if os.sep not in label else ""
        raise RunbookError([f"{label}: no such file{hint}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookError([f"{label}: cannot read: {exc}"]) from None
    try:
        data, lines = load_with_lines(text, label)
    except yaml.YAMLError as exc:
        raise RunbookError([_yaml_problem(label, exc)]) from None
    if not isinstance(data, dict):
        raise RunbookError([f"{label}:1: the runbook must be a mapping with name and steps"])
    try:
        runbook = Runbook.model_validate(data)
    except ValidationError as exc:
        raise RunbookError(_validation_problems(label, lines, exc)) from None
    problems = [f"{_where(label, lines, loc)}: {msg}" for loc, msg in graph_problems(runbook.steps)]
    problems += _reference_problems(label, lines, runbook, data)
    if problems:
        raise RunbookError(problems)
    sha = hashlib.sha256(text.encode()).hexdigest()
    return LoadedRunbook(path=path.resolve(), sha256=sha, runbook=runbook, lines=lines, data=data)


def resolve_vars(loaded: LoadedRunbook, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the caller's values (typed like the default); missing or bad ones are errors."""
    specs = loaded.runbook.var_specs()
    problems: list[str] = []
    for name in overrides:
        if name not in specs:
            problems.append(f"{loaded.path}: --var {name}: not a variable of this runbook (known: {', '.join(specs) or 'none'})")
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in overrides:
            try:
                values[name] = coerce(overrides[name], spec.default)
            except ValueError as exc:
                problems.append(f"{loaded.where(('vars', name))}: {exc}")
                continue
        elif spec.default is None:
            problems.append(f"{loaded.where(('vars', name))}: variable {name!r} is required (pass --var {name}=VALUE)")
            continue
        else:
            values[name] = spec.default
        if spec.choices is not None and values[name] not in spec.choices:
            problems.append(f"{loaded.where(('vars', name))}: {name}={values[name]!r} is not one of {spec.choices}")
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
        raise ValueError(f"expected a boolean, got {raw!r}")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"expected {kind.__name__}, got {raw!r}") from None
    return raw


def render_runbook(loaded: LoadedRunbook, values: dict[str, Any]) -> Runbook:
    """The runbook with every `{{ var }}` substituted (shell-quoted in commands)."""
    data = {k: v for k, v in loaded.data.items() if k != "vars"}
    rendered = render_tree(data, values)
    rendered["vars"] = loaded.data.get("vars", {})
    return Runbook.model_validate(rendered)


def _reference_problems(label: str, lines: LineMap, runbook: Runbook, data: dict[str, Any]) -> list[str]:
    known = set(runbook.vars) | set(BUILTIN_VARS)
    secrets = set(runbook.secrets)
    problems = []
    for loc, text in walk_strings({k: v for k, v in data.items() if k not in ("vars", "description")}):
        for name, flt in references(text):
            where = _where(label, lines, loc)
            if name in secrets:
                problems.append(f"{where}: secret {name!r} cannot be templated (it would land in scripts and the journal); jobs read it as ${name}")
            elif name not in known:
                problems.append(f"{where}: unknown variable {name!r} (declare it under vars:)")
            if flt is not None and flt not in FILTERS:
                problems.append(f"{where}: unknown filter {flt!r} (known: {', '.join(FILTERS)})")
    return problems


def _validation_problems(label: str, lines: LineMap, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown step kind {err.get('input', {}).get('kind') if isinstance(err.get('input'), dict) else ''!r}; " + err["msg"].split(";")[-1].strip()
        missing = str(loc[-1]) if err["type"] == "missing" and loc else None
        problems.append(f"{_where(label, lines, loc, missing)}: {msg}")
    return problems


def _where(label: str, lines: LineMap, loc: tuple, missing: str | None = None) -> str:
    line = lines.line_of(loc)
    parts = [str(p) for p in lines.clean_loc(loc)]
    # A missing field is not in the YAML: name it under its nearest existing parent.
    if missing is not None:
        parts.append(missing)
    return f"{label}:{line or 1}: {'.'.join(parts) or '(top)'}"


def _yaml_problem(label: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{label}:{line}: (yaml): {problem}"
