"""`{{ var }}` templating: shell-quoted in commands by default, verbatim elsewhere or with `| raw`.

A value that is nothing but one reference to a number (`within: "{{ timeout }}"`,
`equals: "{{ steps }}"`) takes the number itself, outside shell fields, so numeric
fields and JSON comparisons can follow variables; everything else renders to text.
A dotted name (`{{ matrix.seed }}`) reads a mapping among the values: a matrix cell's
values reach its steps that way.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"  # a variable, or a dotted path into a mapping value
WHOLE_REF = re.compile(rf"^\{{\{{\s*({NAME})\s*\}}\}}$")
VAR_REF = re.compile(rf"\{{\{{\s*({NAME})\s*(?:\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*)?\}}\}}")
MISSING = object()
FILTERS = ("raw", "q")

# Fields whose text is bash: interpolations there are quoted so a value can never become code.
SHELL_FIELDS = frozenset({"command", "run", "commands"})


def references(text: str) -> list[tuple[str, str | None]]:
    """The (name, filter) pairs a text refers to."""
    return [(name, flt) for _, name, flt in located_references(text)]


def located_references(text: str) -> list[tuple[int, str, str | None]]:
    """The (offset, name, filter) of every reference, so an error can name its line."""
    return [(m.start(), m.group(1), m.group(2)) for m in VAR_REF.finditer(text)]


def lookup(values: Mapping[str, Any], name: str) -> Any:
    """The value a (dotted) name stands for, or MISSING."""
    value: Any = values
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def as_text(value: Any) -> str:
    """How a variable's value is written into text: YAML-style booleans, plain numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def render(text: str, values: Mapping[str, Any], *, shell: bool) -> str:
    """Substitute every reference; in shell text quote unless `| raw`, elsewhere quote only with `| q`."""

    def one(match: re.Match[str]) -> str:
        name, flt = match.group(1), match.group(2)
        found = lookup(values, name)
        if found is MISSING:
            raise KeyError(name)  # load-time validation names every unknown reference: this is a bug
        value = as_text(found)
        quote = (shell and flt != "raw") or flt == "q"
        return shlex.quote(value) if quote else value

    return VAR_REF.sub(one, text)


def is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's true is no number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_reference(text: str, values: Mapping[str, Any], field: str | None) -> Any:
    """The number a value that is exactly one reference to a numeric variable stands for, else None."""
    match = WHOLE_REF.match(text) if field not in SHELL_FIELDS else None
    value = lookup(values, match.group(1)) if match else None
    return value if is_number(value) else None


def render_tree(data: Any, values: Mapping[str, Any], field: str | None = None) -> Any:
    """Render every string in plain data (dicts/lists); the field name decides shell quoting."""

    def leaf(text: str, field: str | None) -> Any:
        number = number_reference(text, values, field)
        return number if number is not None else render(text, values, shell=field in SHELL_FIELDS)

    return _map_strings(data, leaf, field)


def fill_numbers(data: Any, values: Mapping[str, Any], field: str | None = None) -> Any:
    """Only the whole references to numbers replaced (what load-time validation sees); other text untouched."""

    def leaf(text: str, field: str | None) -> Any:
        number = number_reference(text, values, field)
        return number if number is not None else text

    return _map_strings(data, leaf, field)


def _map_strings(data: Any, leaf: Callable[[str, str | None], Any], field: str | None) -> Any:
    """Plain data with every string replaced by leaf(string, name of the field it sits in)."""
    if isinstance(data, str):
        return leaf(data, field)
    if isinstance(data, dict):
        return {k: _map_strings(v, leaf, k if isinstance(k, str) else field) for k, v in data.items()}
    if isinstance(data, list):
        return [_map_strings(v, leaf, field) for v in data]
    return data


def walk_strings(data: Any, path: tuple[Any, ...] = ()):
    """Yield (path, string) for every string in plain data, for reference checking."""
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from walk_strings(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_strings(v, path + (i,))
