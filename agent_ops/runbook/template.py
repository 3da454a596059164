"""Templates in runbook fields: Jinja2's sandboxed engine, every inserted value escaped for its field's language.

`{{ expr }}` inserts a value; `{% if %}` / `{% for %}` blocks work as in Jinja2 (comments are `{## ##}`,
since bash's `${#var}` holds a `{#`). What an inserted value becomes depends on the field it lands in:

- shell fields (a step's `command`, a check's `run`): shell-quoted, one literal word, never code;
- regex fields (gate patterns, metrics, `fail_on`, a check's `regex`): regex-escaped, matching the value literally;
- every other field: the value's text.

`| raw` inserts a value as it is (a flag list into a command, a pattern into a regex); `| q` and `| re`
quote or escape explicitly (and count as done in the field of that language, never twice). A field whose
whole text is one `{{ expr }}` whose value is a number takes the number itself (outside shell fields), so
numeric fields follow variables and expressions (`within: "{{ ceil(train_steps / 10) + 60 }}"`).
"""
from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

Language = Literal["shell", "regex", "text"]
# What an inserted value becomes in a field of each language (fields are marked `x-template` in the schema).
LANGUAGES: dict[str, str] = {
    "shell": "shell-quoted: one literal word, never code",
    "regex": "regex-escaped: matches the value literally, never widens the pattern",
    "text": "the value's text (unmarked fields)",
}
NUMBERS = "a field whose whole text is one {{ expression }} giving a number takes the number (outside shell fields)"

# Ours, beside Jinja2's builtin filters (default, length, join, int, round, ...). Shown by the README and the schema.
FILTERS: dict[str, str] = {
    "raw": "insert the value as it is, unquoted and unescaped (flags into a command, a pattern into a regex)",
    "q": "shell-quote the value (already quoted, so a shell field does not quote it again)",
    "re": "regex-escape the value (already escaped, so a regex field does not escape it again)",
}
# Functions callable in expressions, beside Jinja2's globals (range, dict, ...).
FUNCTIONS: dict[str, Callable[..., Any]] = {"ceil": math.ceil, "floor": math.floor, "min": min, "max": max}
# Names an expression may start from besides variables: filled by the run, never declared.
NAMESPACES: dict[str, str] = {
    "steps": "results of earlier steps: steps.ID.outputs.NAME, steps.ID.metrics.NAME.last|first|values|count|min|max|mean, "
             "steps.ID.checks[N].details.KEY, steps.ID.state",
    "matrix": "the values of the current matrix cell: matrix.NAME",
}


class Escaped(str):
    """Text already fit for a field language (`| q` for shell, `| re` for regex) or for any (`| raw`)."""

    language: str

    def __new__(cls, text: str, language: str) -> Escaped:
        out = super().__new__(cls, text)
        out.language = language
        return out


def as_text(value: Any) -> str:
    """How a value is written into text: YAML-style booleans, plain numbers, lists and mappings as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


_ESCAPES: dict[str, Callable[[str], str]] = {"shell": shlex.quote, "regex": re.escape, "text": lambda text: text}


def _finalize(language: Language) -> Callable[[Any], str]:
    escape = _ESCAPES[language]

    def finalize(value: Any) -> str:
        if isinstance(value, Escaped) and value.language in ("raw", language):
            return str(value)
        return escape(as_text(value))

    return finalize


class ResultUndefined(StrictUndefined):
    """A missing name or attribute: an error when used, saying what the object it was looked up on does have."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        describe = getattr(self._undefined_obj, "describe_missing", None)
        if callable(describe) and isinstance(self._undefined_name, str):
            return describe(self._undefined_name)
        return super()._undefined_message


def _environment(language: Language) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=ResultUndefined, finalize=_finalize(language), autoescape=False,
        keep_trailing_newline=True,  # a `|` block's last newline is part of the command
        comment_start_string="{##", comment_end_string="##}",
    )
    env.filters["raw"] = lambda value: Escaped(as_text(value), "raw")
    env.filters["q"] = lambda value: Escaped(shlex.quote(as_text(value)), "shell")
    env.filters["re"] = lambda value: Escaped(re.escape(as_text(value)), "regex")
    env.globals.update(FUNCTIONS)
    return env


ENVIRONMENTS: dict[str, ImmutableSandboxedEnvironment] = {lang: _environment(lang) for lang in ("shell", "regex", "text")}
ENV = ENVIRONMENTS["text"]  # for parsing: the three differ only in how they finalize values


def is_template(text: str) -> bool:
    """Whether the text holds template syntax at all (most fields do not: they are taken as they are)."""
    return "{{" in text or "{%" in text or "{##" in text


@lru_cache(maxsize=8192)
def parse(text: str) -> nodes.Template:
    """The template's syntax tree; raises jinja2.TemplateSyntaxError (lineno counted within the text)."""
    return ENV.parse(text)


@lru_cache(maxsize=8192)
def _compiled(language: str, text: str) -> Template:
    return ENVIRONMENTS[language].from_string(text)


@lru_cache(maxsize=8192)
def names_used(text: str) -> frozenset[str]:
    """Top-level names a template reads (variables, namespaces, functions); empty for bad syntax or plain text."""
    if not is_template(text):
        return frozenset()
    try:
        return free_names(parse(text))
    except TemplateError:
        return frozenset()


def free_names(tree: nodes.Template) -> frozenset[str]:
    """The names a parsed template reads that it does not set itself (`{% set %}`, loop variables)."""
    try:
        return frozenset(find_undeclared_variables(tree))
    except TemplateError:  # Jinja2's analysis also compiles, and stops at an unknown filter: read the tree instead
        stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")} | {"loop"}
        return frozenset(n.name for n in tree.find_all(nodes.Name) if n.ctx == "load" and n.name not in stored)


def whole_expression(text: str) -> nodes.Expr | None:
    """The expression of a text that is exactly one `{{ expr }}`, else None."""
    if not (text.startswith("{{") and text.endswith("}}")) or not is_template(text):
        return None
    try:
        body = parse(text).body
    except TemplateError:
        return None
    if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
        node = body[0].nodes[0]
        return None if isinstance(node, nodes.TemplateData) else node
    return None


def is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's true is no number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RenderError(Exception):
    """A template that failed while rendering: the message, and the line within the text (1-based) if known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def render_text(text: str, values: Mapping[str, Any], language: Language) -> str:
    """The text with every expression evaluated and escaped for `language`. Raises RenderError."""
    if not is_template(text):
        return text
    return _guarded(lambda: _compiled(language, text).render(values))


def render_value(text: str, values: Mapping[str, Any], language: Language) -> Any:
    """A field's value: the number itself when the whole text is one expression that gives one; else text."""
    if language != "shell" and whole_expression(text) is not None:
        value = evaluate(text, values)
        if is_number(value):
            return value
    return render_text(text, values, language)


def evaluate(text: str, values: Mapping[str, Any]) -> Any:
    """The value (of any type: a list, a number, text) of a text that is exactly one `{{ expr }}`. Raises RenderError."""
    return _guarded(lambda: _native(text)(values))


def _guarded(render: Callable[[], Any]) -> Any:
    try:
        return render()
    except TemplateError as exc:
        raise RenderError(exc.message or str(exc), _template_line(exc)) from None
    except Exception as exc:  # an expression's own error (1 / 0, a metric with no values): say which and where
        raise RenderError(f"{type(exc).__name__}: {exc}", _template_line(exc)) from None


@lru_cache(maxsize=4096)
def _native(text: str) -> Callable[[Mapping[str, Any]], Any]:
    inner = text[2:-2]
    # `{{- x -}}` only trims the text around it: the dashes are no part of the expression (`{{ -x }}`'s is).
    inner = inner[1:] if inner.startswith("-") else inner
    inner = inner[:-1] if inner.endswith("-") else inner
    expression = ENV.compile_expression(inner, undefined_to_none=False)

    def evaluate(values: Mapping[str, Any]) -> Any:
        value = expression(**values)
        if isinstance(value, StrictUndefined):
            str(value)  # raises the UndefinedError that says what is missing
        return value

    return evaluate


def line_offset(text: str, line: int) -> int:
    """The offset where line `line` (1-based) of the text begins."""
    offset = 0
    for _ in range(line - 1):
        found = text.find("\n", offset)
        if found < 0:
            break
        offset = found + 1
    return offset


def _template_line(exc: BaseException) -> int | None:
    """The line within the template text where rendering failed (Jinja2 maps its frames to `<template>` lines)."""
    if getattr(exc, "lineno", None):
        return exc.lineno
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --- plain data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """A template in plain data that could not be rendered: where it is, its text, and why."""

    loc: tuple[Any, ...]
    text: str
    error: RenderError


def render_tree(data: Any, values: Mapping[str, Any], languages: Mapping[str, Language],
                loc: tuple[Any, ...] = ()) -> tuple[Any, list[FieldError]]:
    """Render every string of plain data (dicts/lists); the field a string sits in picks its language.

    Strings that read `steps` when `values` has no `steps` (before the run has results) are left as they
    are, to be rendered when their step is about to run. Returns the new data and every error.
    """
    errors: list[FieldError] = []
    later = {"steps"} - set(values)

    def leaf(text: str, field: str | None, where: tuple[Any, ...]) -> Any:
        if not is_template(text) or names_used(text) & later:
            return text
        try:
            return render_value(text, values, languages.get(field or "", "text"))
        except RenderError as exc:
            errors.append(FieldError(where, text, exc))
            return text

    return map_strings(data, leaf, loc), errors


def unknown_names(text: str, values: Mapping[str, Any]) -> frozenset[str]:
    """The names a template reads that neither `values` nor the functions give (a required variable before --var)."""
    return names_used(text) - set(values) - set(ENV.globals)


def fill_numbers(data: Any, values: Mapping[str, Any], languages: Mapping[str, Language]) -> Any:
    """Only whole expressions that evaluate to a number replaced (what load-time validation sees); the rest untouched."""

    def leaf(text: str, field: str | None, where: tuple[Any, ...]) -> Any:
        if languages.get(field or "") == "shell" or whole_expression(text) is None or unknown_names(text, values):
            return text
        try:
            value = _native(text)(values)
        except Exception:  # a required variable has no value yet: the run renders it with the real one
            return text
        return value if is_number(value) else text

    return map_strings(data, leaf)


def map_strings(data: Any, leaf: Callable[[str, str | None, tuple[Any, ...]], Any], loc: tuple[Any, ...] = (),
                field: str | None = None) -> Any:
    """Plain data with every string replaced by leaf(string, name of the field it sits in, its location)."""
    if isinstance(data, str):
        return leaf(data, field, loc)
    if isinstance(data, dict):
        return {k: map_strings(v, leaf, loc + (k,), k if isinstance(k, str) else field) for k, v in data.items()}
    if isinstance(data, list):
        return [map_strings(v, leaf, loc + (i,), field) for i, v in enumerate(data)]
    return data


def walk_strings(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield (path, string) for every string in plain data, for reference checking."""
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from walk_strings(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_strings(v, path + (i,))
