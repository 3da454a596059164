"""Load a runbook file, validate it completely, resolve its variables, render its templates.

Every problem is reported as `FILE:LINE: path.to.field: message`; all of them at once,
sorted by line, so a user fixes a runbook in one pass. Nothing runs unless this module is satisfied.
"""
from __future__ import annotations

import hashlib
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import get_close_matches
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agent_ops.errors import RunbookError
from agent_ops.plan import did_you_mean, graph_problems
from agent_ops.runbook import Runbook
from agent_ops.template import FILTERS, WHOLE_REF, fill_numbers, is_number, located_references, render_tree, walk_strings
from agent_ops.yaml_lines import LineMap, load_with_lines

# Names every runbook may use without declaring them; filled in by the executor.
BUILTIN_VARS = ("run_id", "run_dir", "runbook_dir", "artifacts_dir")
# Top-level fields kept verbatim: variable specs, and prose that may show `{{ x }}` as an example.
UNTEMPLATED = ("vars", "description")

# pydantic error types that only say "this is the wrong type": in a union, one per failed branch.
_TYPE_ERRORS = {
    "model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping", "list_type": "a list",
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "a boolean", "bool_parsing": "a boolean",
    "none_required": "null",
}
_NUMBER_ERRORS = ("int_type", "int_parsing", "float_type", "float_parsing")
_BOUNDS = {"less_than_equal": ("le", "at most"), "less_than": ("lt", "less than"),
           "greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "greater than")}


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


@dataclass
class _Report:
    """Problems of one file, kept with their lines so they print in file order."""

    label: str
    lines: LineMap
    found: list[tuple[int, str]] = field(default_factory=list)

    def add(self, loc: tuple, message: str, line: int | None = None) -> None:
        line = line or self.lines.line_of(loc) or 1
        self.found.append((line, f"{_where(self.label, self.lines, loc, line)}: {message}"))

    def problems(self) -> list[str]:
        return [text for _, text in sorted(self.found, key=lambda p: p[0])]


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
        raise RunbookError([_yaml_problem(label, text, exc)]) from None
    if not isinstance(data, dict):
        what = "the file is empty" if data is None else f"the top level is {_kind_of(data)}"
        raise RunbookError([f"{label}:{lines.line_of(()) or 1}: (top): {what}; a runbook is a mapping with name and steps"])
    report = _Report(label, lines)
    runbook = None
    # Validated before --var values are known: a field that is one reference to a numeric variable
    # is checked with the variable's default, and again with the real value when the run renders it.
    checked = _templated(data, lambda part: fill_numbers(part, _numeric_defaults(data)))
    try:
        runbook = Runbook.model_validate(checked)
    except ValidationError as exc:
        _report_validation(report, checked, exc.errors())
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
        report = _Report(str(loaded.path), loaded.lines)
        _report_validation(report, rendered, exc.errors())
        raise RunbookError([f"{p} (after substituting variables)" for p in report.problems()]) from None


# --- template references -------------------------------------------------------------------------


def _report_references(report: _Report, data: dict[str, Any]) -> None:
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


# --- pydantic errors, made human -----------------------------------------------------------------


def _report_validation(report: _Report, data: Any, errors: list[dict[str, Any]]) -> None:
    errors = _without_union_noise(report.lines, errors)
    clean = report.lines.clean_loc
    missing = {(clean(tuple(e["loc"])[:-1]), e["loc"][-1]) for e in errors if e["type"] == "missing"}
    for err in (e for e in errors if e["type"] == "extra_forbidden"):
        loc = tuple(err["loc"])
        parent = clean(loc[:-1])
        hint, meant = _field_hint(loc, [name for where, name in missing if where == parent])
        missing.discard((parent, meant))  # `comand` explains the missing `command`: one mistake, one problem
        report.add(clean(loc), f"unknown field {loc[-1]!r}{hint}")
    for err in (e for e in errors if e["type"] != "extra_forbidden"):
        loc, message = _describe(report.lines, data, err)
        if err["type"] != "missing" or (loc[:-1], loc[-1]) in missing:
            report.add(loc, message)


def _describe(lines: LineMap, data: Any, err: dict[str, Any]) -> tuple[tuple, str]:
    """(location in the YAML, message) for one pydantic error."""
    raw = tuple(err["loc"])
    loc = lines.clean_loc(raw)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return loc + (raw[-1],), "field required"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = _union_tags(raw)
        noun = _union_noun(raw)
        if kind == "union_tag_not_found":
            return loc + ("kind",), f"field required (one of {', '.join(tags)})"
        tag = value.get("kind") if isinstance(value, dict) else ctx.get("tag")
        return loc + ("kind",), f"unknown {noun} kind {tag!r} (expected one of {', '.join(tags)}){did_you_mean(str(tag), tags)}"
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"]))
        return loc + _blame(_value_at(data, loc), message), message
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        bound = f"{ctx[key]:g}" if isinstance(ctx[key], float) else ctx[key]
        return loc, f"must be {words} {bound} (got {_show(value)})"
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length", 1)
        return loc, "must not be empty" if n == 1 else f"needs at least {n} items (got {ctx.get('actual_length')})"
    if kind == "string_pattern_mismatch":
        return loc, f"{_show(value)} does not match the pattern {ctx.get('pattern')}"
    if kind == "literal_error":
        return loc, f"{_show(value)} is not one of {ctx.get('expected')}"
    if kind in _TYPE_ERRORS:
        if isinstance(value, str) and WHOLE_REF.match(value) and kind in _NUMBER_ERRORS:
            return loc, (f"expected {_TYPE_ERRORS[kind]}, got {value!r}: a variable in a numeric field needs a "
                         f"numeric default (runbooks are checked before --var values are known)")
        return loc, f"expected {_TYPE_ERRORS[kind]}, got {_kind_of(value)}"
    msg = err["msg"]
    return loc, msg[:1].lower() + msg[1:]


def _without_union_noise(lines: LineMap, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep what matters of a plain union's errors (one per branch): the branch that got close, or one summary.

    `vars: {x: {defualt: 1}}` fails as a mapping (unknown field) and as a string, integer...: only the first
    says something. `vars: {x: [1]}` fails every branch on type alone: that becomes one "expected ... got a list".
    """
    splits = [None if e["type"] == "missing" else _branch_split(lines, tuple(e["loc"])) for e in errors]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for err, split in zip(errors, splits):
        if split is not None:
            groups.setdefault(split, []).append(err)
    out, summarised = [], set()
    for err, split in zip(errors, splits):
        group = groups[split] if split is not None else [err]
        if split is None or len({e["loc"][split[1]] for e in group}) < 2:
            out.append(err)  # not a plain union: at most one branch reported here
            continue
        close = [e for e in group if e["type"] not in _TYPE_ERRORS or len(e["loc"]) > split[1] + 1]
        if err in close:
            out.append(err)
        elif not close and split not in summarised:
            summarised.add(split)
            wanted = list(dict.fromkeys(_TYPE_ERRORS[e["type"]] for e in group))
            out.append({**err, "type": "union_summary", "loc": split[0],
                        "msg": f"expected {_one_of(wanted)}, got {_kind_of(err.get('input'))}"})
    return out


def _branch_split(lines: LineMap, loc: tuple) -> tuple[tuple, int] | None:
    """(YAML location, index of the branch label) where `loc` leaves the YAML for a union branch."""
    for i in range(len(loc)):
        if not lines.has(loc[: i + 1]):
            return loc[:i], i
    return None


def _blame(value: Any, message: str) -> tuple:
    """The key or item a validator's message is about, when it names one: its first word, a `quoted` key or a repr."""
    if isinstance(value, dict):
        keys = [k for k in value if isinstance(k, str)]
        first = re.match(r"[A-Za-z_][A-Za-z0-9_]*", message)
        if first and first.group(0) in keys:
            return (first.group(0),)
        for quoted in re.findall(r"`([^`]+)`", message):
            if quoted in keys:
                return (quoted,)
        items = [(k, k) for k in value]
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return ()
    named = [(len(repr(v)), k) for k, v in items if isinstance(v, str) and repr(v) in message]
    return (max(named)[1],) if named else ()


def _schema_at(loc: tuple) -> Any:
    """The type that validates the value at a pydantic error location (None where it cannot be followed)."""
    tp: Any = Runbook
    for part in loc:
        tp = _step_into(tp, part)
        if tp is None:
            return None
    return tp


def _step_into(tp: Any, part: Any) -> Any:
    members = _union_members(tp)
    if len(members) > 1:
        return next((m for m in members if part in (getattr(m, "__name__", None), *_kind_tags(m))), None)
    tp = members[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(part)
        return info.annotation if info else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and isinstance(part, int):
        return args[0]
    if origin is dict:
        return args[1]
    return None


def _union_members(tp: Any) -> list[Any]:
    """A type's alternatives, with Annotated and nested unions unwrapped and None left out."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _union_members(arg) if m is not type(None)]
    return [tp]


def _kind_tags(tp: Any) -> tuple[str, ...]:
    if isinstance(tp, type) and issubclass(tp, BaseModel) and "kind" in tp.model_fields:
        return typing.get_args(tp.model_fields["kind"].annotation)
    return ()


def _union_tags(loc: tuple) -> list[str]:
    return [t for m in _union_members(_schema_at(loc)) for t in _kind_tags(m)]


def _union_noun(loc: tuple) -> str:
    """`step` or `check`: named after the common base class of the union's members (StepBase, CheckBase)."""
    members = _union_members(_schema_at(loc))
    bases = [b.__name__ for b in members[0].__mro__ if b.__name__.endswith("Base")] if members and members[0] else []
    return bases[0].removesuffix("Base").lower() if bases else "item"


def _field_hint(loc: tuple, missing: list[str]) -> tuple[str, str | None]:
    """(hint text, the field it suggests) for an unknown field: a close missing field, else a close known one."""
    model = _schema_at(loc[:-1])
    fields = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
    name = str(loc[-1])
    for pool in (missing, fields):
        close = get_close_matches(name, [str(f) for f in pool], n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]!r}?)", close[0]
    return (f" (allowed: {', '.join(fields)})" if fields else ""), None


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _one_of(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _kind_of(value: Any) -> str:
    for kind, noun in ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"), (str, "a string"),
                       (int, "an integer"), (float, "a number"), (type(None), "null")):
        if isinstance(value, kind):
            return noun if kind is not str else f"the string {value!r}"
    return type(value).__name__


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# --- locations -----------------------------------------------------------------------------------


def _where(label: str, lines: LineMap, loc: tuple, line: int | None = None) -> str:
    """`FILE:LINE: dotted.path`; parts of `loc` not in the YAML (a missing field) still name the path."""
    line = line or lines.line_of(loc) or 1
    return f"{label}:{line}: {'.'.join(str(p) for p in loc) or '(top)'}"


def _yaml_problem(label: str, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    problem = (getattr(exc, "problem", None) or str(exc)).removeprefix("but ")
    line = mark.line + 1 if mark is not None else 1
    # At the end of the text (an unclosed quote or bracket) the useful line is where the construct began.
    if context_mark is not None and line > len(text.splitlines()):
        line = context_mark.line + 1
    if context and context_mark is not None:
        problem = f"{problem} ({context} at line {context_mark.line + 1})"
    return f"{label}:{line}: (yaml): {problem}"
