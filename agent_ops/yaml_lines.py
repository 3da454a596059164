"""YAML loading that remembers the line of every key, so errors can say `FILE:LINE: field: message`."""
from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[Any, ...]


class LineMap:
    """Maps a path of keys/indices to the 1-based line where that value starts."""

    def __init__(self) -> None:
        self._lines: dict[Path_, int] = {}

    def record(self, path: Path_, line: int) -> None:
        self._lines.setdefault(path, line)

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
    return _build(node, (), lines), lines


def _build(node: yaml.Node, path: Path_, lines: LineMap) -> Any:
    lines.record(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        _flatten_merges(node)
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
                )
            lines.record(path + (key,), key_node.start_mark.line + 1)
            out[key] = _build(value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, path + (i,), lines) for i, child in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # Resolve a single scalar with the safe constructor (ints, floats, bools, nulls as YAML 1.1 says).
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _flatten_merges(node: yaml.MappingNode) -> None:
    # `<<: *anchor` merge keys: let PyYAML's own logic expand them in place.
    loader = yaml.SafeLoader("")
    try:
        loader.flatten_mapping(node)
    finally:
        loader.dispose()
