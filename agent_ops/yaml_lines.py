"""YAML loading that remembers the line of every key, so errors can say `FILE:LINE: field: message`."""
from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

Path_ = tuple[Any, ...]
MERGE_TAG = "tag:yaml.org,2002:merge"


class LineMap:
    """Maps a path of keys/indices to the 1-based line where that value starts."""

    def __init__(self) -> None:
        self._lines: dict[Path_, int] = {}
        self._text: dict[Path_, tuple[int, bool]] = {}

    def record(self, path: Path_, line: int) -> None:
        self._lines.setdefault(path, line)

    def record_text(self, path: Path_, first_line: int, literal: bool) -> None:
        """Note where the scalar at `path` starts; a `|` block keeps one source line per text line."""
        self._text[path] = (first_line, literal)

    def has(self, path: Path_) -> bool:
        """Whether `path` names a key or item present in the YAML."""
        return path in self._lines

    def line_of(self, loc: Path_) -> int | None:
        """The line of the deepest known prefix of `loc`, skipping parts that are not in the YAML.

        pydantic error locations contain extra parts (a union's tag, `function-after[...]`):
        unknown parts are skipped instead of cutting the search short.
        """
        best = self._lines.get(())
        path: Path_ = ()
        for part in loc:
            candidate = path + (part,)
            if candidate in self._lines:
                path = candidate
                best = self._lines[candidate]
        return best

    def line_in(self, loc: Path_, offset: int, text: str) -> int | None:
        """The line of character `offset` of the string `text` at `loc` (exact inside `|` blocks).

        Other multi-line scalars fold their line breaks away: there, the line where the value starts.
        """
        if loc not in self._text:
            return self.line_of(loc)
        first, literal = self._text[loc]
        return first + text.count("\n", 0, offset) if literal else first

    def clean_loc(self, loc: Path_) -> Path_:
        """The parts of `loc` that name real keys in the YAML (drops union tags and validator names)."""
        path: Path_ = ()
        for part in loc:
            if path + (part,) in self._lines:
                path = path + (part,)
        return path


def load_with_lines(text: str, filename: str) -> tuple[Any, LineMap]:
    """Parse YAML text into plain Python data plus a LineMap. Raises yaml.YAMLError with a mark."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = LineMap()
    if node is None:
        return None, lines
    return _build(node, (), lines, ()), lines


def _build(node: yaml.Node, path: Path_, lines: LineMap, parents: tuple[int, ...]) -> Any:
    if id(node) in parents:
        raise yaml.MarkedYAMLError(problem="recursive alias (a node that contains itself)", problem_mark=node.start_mark)
    parents += (id(node),)
    lines.record(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key, key_node, value_node in _mapping_pairs(node):
            lines.record(path + (key,), key_node.start_mark.line + 1)
            out[key] = _build(value_node, path + (key,), lines, parents)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, path + (i,), lines, parents) for i, child in enumerate(node.value)]
    # The text of a `|` or `>` block starts on the line after its indicator; other scalars where they start.
    block = node.style in ("|", ">")
    lines.record_text(path, node.start_mark.line + (2 if block else 1), node.style == "|")
    return _scalar(node)


def _mapping_pairs(node: yaml.MappingNode) -> list[tuple[Any, yaml.Node, yaml.Node]]:
    """(key, key node, value node) after `<<:` merges: explicit keys win, then earlier merge sources.

    A key written twice in the same mapping is an error (YAML forbids it; PyYAML silently keeps the last).
    """
    explicit: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
    sources: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            sources += value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            continue
        key = _key(key_node)
        if key in explicit:
            first = explicit[key][0].start_mark.line + 1
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r} (first at line {first})", problem_mark=key_node.start_mark)
        explicit[key] = (key_node, value_node)
    merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise yaml.MarkedYAMLError(problem="`<<:` merges a mapping or a list of mappings", problem_mark=source.start_mark)
        for key, key_node, value_node in _mapping_pairs(source):
            merged.setdefault(key, (key_node, value_node))
    merged.update(explicit)
    return [(key, k, v) for key, (k, v) in merged.items()]


def _key(node: yaml.Node) -> Any:
    key = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode) or not isinstance(key, Hashable):
        raise yaml.MarkedYAMLError(problem="a mapping key must be a plain value, not a list or mapping", problem_mark=node.start_mark)
    return key


def _scalar(node: yaml.Node) -> Any:
    # Resolve a single scalar with the safe constructor (ints, floats, bools, nulls as YAML 1.1 says).
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
