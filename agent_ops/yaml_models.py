"""YAML file -> validated pydantic model -> `FILE:LINE: field: message` problems.

One room for the three YAML inputs (runbooks, known-issue entries, inventories): parse with
the line of every key remembered (LineMap), then turn pydantic's errors into sentences a
person fixes in one pass (Report), every problem at once and sorted by line.
"""
from __future__ import annotations

import re
import types
import typing
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any

import yaml
from pydantic import BaseModel

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


class _AnyLine(LineMap):
    """For data not read from a file: every key counts as present, none has a line."""

    _NOISE = re.compile(r"[\[(]|^function-")  # pydantic's union-branch and validator names in error locations

    def has(self, path: Path_) -> bool:
        return True

    def line_of(self, loc: Path_) -> int | None:
        return None

    def clean_loc(self, loc: Path_) -> Path_:
        return tuple(p for p in loc if not (isinstance(p, str) and self._NOISE.search(p)))


class YamlProblems(Exception):
    """A YAML file that cannot be read or parsed; `problems` are `FILE:LINE: (yaml): ...` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# Bounds on what one YAML input may cost, far above any real runbook, catalog entry or inventory (the
# largest shipped runbook: 31 KiB, 7 levels deep). Without them a 0.5 KiB alias bomb expands to hundreds of
# millions of values and 500 nested brackets overflow the parser's recursion.
MAX_YAML_BYTES = 256 << 10
MAX_DEPTH = 64  # nested mappings and lists, counted after aliases and merges are followed
MAX_VALUES = 100_000  # values built, aliases expanded


def read_yaml(path: Any, label: str) -> tuple[Any, LineMap, str]:
    """(data, line map, text) of a YAML file. FileNotFoundError propagates (callers add their hint)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # never the whole of a huge file
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise YamlProblems([f"{label}:1: (yaml): cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_YAML_BYTES:
        raise YamlProblems([f"{label}:1: (yaml): the file is larger than {MAX_YAML_BYTES >> 10} KiB, the most a YAML input may be"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = raw.count(b"\n", 0, exc.start) + 1, exc.start - raw.rfind(b"\n", 0, exc.start)
        raise YamlProblems([f"{label}:{line}: (yaml): not UTF-8: byte 0x{raw[exc.start]:02x} at column {column} "
                            "(save the file as UTF-8)"]) from None
    try:
        data, lines = load_with_lines(text)
    except yaml.YAMLError as exc:
        raise YamlProblems([yaml_problem(label, text, exc)]) from None
    return data, lines, text


def load_with_lines(text: str) -> tuple[Any, LineMap]:
    """Parse YAML text into plain Python data plus a LineMap. Raises yaml.YAMLError with a mark.

    Nesting deeper than MAX_DEPTH and aliases that expand past MAX_VALUES are errors at their line.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    lines = LineMap()
    if node is None:
        return None, lines
    return _Builder(lines).build(node, ()), lines


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's composer recurses once per nesting level: refuse a level past MAX_DEPTH before Python's stack ends."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self._depth >= MAX_DEPTH:
            raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Node graph -> plain data with every line recorded; aliases are followed within MAX_DEPTH and MAX_VALUES."""

    def __init__(self, lines: LineMap) -> None:
        self.lines = lines
        self.left = MAX_VALUES
        self.built: set[int] = set()  # nodes built once: building one again is following an alias
        self.stack: list[yaml.Node] = []  # the node being built and its parents, aliases followed
        # Scalars are resolved by the safe constructor (ints, floats, bools, nulls as YAML 1.1 says); one for the file.
        self.constructor = yaml.constructor.SafeConstructor()

    def spend(self, node: yaml.Node) -> None:
        self.left -= 1
        if self.left >= 0:
            return
        site = self.alias_site()
        if site is None:
            raise yaml.MarkedYAMLError(problem=f"more than {MAX_VALUES} values", problem_mark=node.start_mark)
        raise yaml.MarkedYAMLError(problem=f"more than {MAX_VALUES} values once aliases are expanded (an alias bomb?)",
                                   problem_mark=site)

    def alias_site(self) -> yaml.Mark | None:
        """Where the outermost alias being followed is written: the collection that holds it (nodes keep no alias marks)."""
        inner = next((i for i, n in enumerate(self.stack) if id(n) in self.built and i > 0), None)
        return None if inner is None else self.stack[inner - 1].start_mark

    def build(self, node: yaml.Node, path: Path_) -> Any:
        if any(parent is node for parent in self.stack):
            raise yaml.MarkedYAMLError(problem="recursive alias (a node that contains itself)", problem_mark=node.start_mark)
        if len(self.stack) >= MAX_DEPTH:
            raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels once aliases are followed",
                                       problem_mark=self.alias_site() or node.start_mark)
        self.stack.append(node)
        try:
            self.spend(node)
            return self.build_value(node, path)
        finally:
            self.stack.pop()
            self.built.add(id(node))

    def build_value(self, node: yaml.Node, path: Path_) -> Any:
        lines = self.lines
        lines.record(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key, key_node, value_node in self.mapping_pairs(node, len(self.stack)):
                lines.record(path + (key,), key_node.start_mark.line + 1)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        # The text of a `|` or `>` block starts on the line after its indicator; other scalars where they start.
        block = node.style in ("|", ">")
        lines.record_text(path, node.start_mark.line + (2 if block else 1), node.style == "|")
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def key(self, node: yaml.Node) -> Any:
        key = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(node, yaml.ScalarNode) or not isinstance(key, Hashable):
            raise yaml.MarkedYAMLError(problem="a mapping key must be a plain value, not a list or mapping", problem_mark=node.start_mark)
        # YAML 1.1 reads `on:` (a step field) and `yes:`/`no:` as booleans; no key of ours is a boolean, so keep the word.
        return node.value if isinstance(key, bool) else key

    def mapping_pairs(self, node: yaml.MappingNode, depth: int) -> list[tuple[Any, yaml.Node, yaml.Node]]:
        """(key, key node, value node) after `<<:` merges: explicit keys win, then earlier merge sources.

        A key written twice in the same mapping is an error (YAML forbids it; PyYAML silently keeps the last).
        """
        explicit: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        sources: list[yaml.Node] = []
        for key_node, value_node in node.value:
            self.spend(key_node)
            if key_node.tag == MERGE_TAG:
                sources += value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                continue
            key = self.key(key_node)
            if key in explicit:
                first = explicit[key][0].start_mark.line + 1
                raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r} (first at line {first})", problem_mark=key_node.start_mark)
            explicit[key] = (key_node, value_node)
        merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise yaml.MarkedYAMLError(problem="`<<:` merges a mapping or a list of mappings", problem_mark=source.start_mark)
            if depth >= MAX_DEPTH:
                raise yaml.MarkedYAMLError(problem=f"`<<:` merges nested deeper than {MAX_DEPTH} levels",
                                           problem_mark=self.stack[-1].start_mark)
            for key, key_node, value_node in self.mapping_pairs(source, depth + 1):
                merged.setdefault(key, (key_node, value_node))
        merged.update(explicit)
        return [(key, k, v) for key, (k, v) in merged.items()]


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



@dataclass
class Report:
    """Problems of one file, kept with their lines so they print in file order.

    `root` is the model the file validates against (its field names feed the hints); `prefix` is
    where that model sits in the file (an inventory's host under `hosts.NAME`); a value matching
    `numeric_ref` in a numeric field gets an explanation (a template reference, for runbooks).
    """

    label: str
    lines: LineMap | None  # None: not from a file (a target given on the command line); problems carry no line
    root: Any = None
    prefix: tuple = ()
    numeric_ref: re.Pattern[str] | None = None
    found: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.lines is None:
            self.lines = _AnyLine()
            self._placed = False
        else:
            self._placed = True

    def add(self, loc: tuple, message: str, line: int | None = None) -> None:
        if not self._placed:
            self.found.append((0, f"{self.label}: {'.'.join(str(p) for p in loc) or '(top)'}: {message}"))
            return
        line = line or self.lines.line_of(loc) or 1
        self.found.append((line, f"{where(self.label, self.lines, loc, line)}: {message}"))

    def add_errors(self, data: Any, errors: list[dict[str, Any]], suffix: str = "") -> None:
        """pydantic's errors for `data` (validated against `root`), in words, at their lines."""
        errors = [{**e, "loc": self.prefix + tuple(e["loc"])} for e in errors]
        for loc, message in _explain(self, data, errors):
            self.add(loc, message + suffix)

    def problems(self) -> list[str]:
        # Each once: the cells of a matrix repeat the problems of the step they are made from.
        return list(dict.fromkeys(text for _, text in sorted(self.found, key=lambda p: p[0])))



# --- pydantic errors, made human --- -----------------------------------------------------------------


def _explain(report: Report, data: Any, errors: list[dict[str, Any]]) -> Iterator[tuple[tuple, str]]:
    errors = _without_union_noise(report.lines, errors)
    clean = report.lines.clean_loc
    missing = {(clean(tuple(e["loc"])[:-1]), e["loc"][-1]) for e in errors if e["type"] == "missing"}
    for err in (e for e in errors if e["type"] == "extra_forbidden"):
        loc = tuple(err["loc"])
        parent = clean(loc[:-1])
        hint, meant = _field_hint(report, loc, [name for place, name in missing if place == parent])
        missing.discard((parent, meant))  # `comand` explains the missing `command`: one mistake, one problem
        yield clean(loc), f"unknown field {loc[-1]!r}{hint}"
    for err in (e for e in errors if e["type"] != "extra_forbidden"):
        loc, message = _describe(report, data, err)
        if err["type"] != "missing" or (loc[:-1], loc[-1]) in missing:
            yield loc, message


def _describe(report: Report, data: Any, err: dict[str, Any]) -> tuple[tuple, str]:
    """(location in the YAML, message) for one pydantic error."""
    raw = tuple(err["loc"])
    loc = report.lines.clean_loc(raw)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return loc + (raw[-1],), "field required"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        schema = _schema_at(report, raw)
        disc = ctx.get("discriminator", "'kind'").strip("'")
        tags = _union_tags(schema, disc)
        if kind == "union_tag_not_found":
            return loc + (disc,), f"field required (one of {', '.join(tags)})"
        tag = value.get(disc) if isinstance(value, dict) else ctx.get("tag")
        return loc + (disc,), (f"unknown {_union_noun(schema)} {disc} {tag!r} (expected one of {', '.join(tags)})"
                               f"{did_you_mean(str(tag), tags)}")
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
        return loc + _blame(value_at(data, loc[len(report.prefix):]), message), message
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
        if isinstance(value, str) and report.numeric_ref and report.numeric_ref.match(value) and kind in _NUMBER_ERRORS:
            return loc, (f"expected {_TYPE_ERRORS[kind]}, got {value!r}: a variable in a numeric field needs a "
                         f"numeric default (runbooks are checked before --var values are known)")
        return loc, f"expected {_TYPE_ERRORS[kind]}, got {kind_of(value)}"
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
                        "msg": f"expected {_one_of(wanted)}, got {kind_of(err.get('input'))}"})
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


def _schema_at(report: Report, loc: tuple) -> Any:
    """The type that validates the value at a pydantic error location (None where it cannot be followed)."""
    tp: Any = report.root
    for part in loc[len(report.prefix):]:
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


def _kind_tags(tp: Any, disc: str = "kind") -> tuple[str, ...]:
    """A tagged-union member's tag values (`kind: Literal["run"]`, `action: Literal["set_env"]`)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel) and disc in tp.model_fields:
        return typing.get_args(tp.model_fields[disc].annotation)
    return ()


def _union_tags(schema: Any, disc: str) -> list[str]:
    return [t for m in _union_members(schema) for t in _kind_tags(m, disc)]


def _union_noun(schema: Any) -> str:
    """`step`, `check` or `fix`: named after the common base class of the union's members (StepBase, CheckBase)."""
    members = _union_members(schema)
    bases = [b.__name__ for b in members[0].__mro__ if b.__name__.endswith("Base")] if members and members[0] else []
    return bases[0].removesuffix("Base").lower() if bases else "item"


def _field_hint(report: Report, loc: tuple, missing: list[str]) -> tuple[str, str | None]:
    """(hint text, the field it suggests) for an unknown field: a close missing field, else a close known one."""
    model = _schema_at(report, loc[:-1])
    # As written in YAML: a field with an alias (`if`) is known by it.
    fields = [info.alias or name for name, info in model.model_fields.items()] if isinstance(model, type) and issubclass(model, BaseModel) else []
    name = str(loc[-1])
    for pool in (missing, fields):
        close = get_close_matches(name, [str(f) for f in pool], n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]!r}?)", close[0]
    return (f" (allowed: {', '.join(fields)})" if fields else ""), None


def value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _one_of(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def kind_of(value: Any) -> str:
    for kind, noun in ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"), (str, "a string"),
                       (int, "an integer"), (float, "a number"), (type(None), "null")):
        if isinstance(value, kind):
            return noun if kind is not str else f"the string {value!r}"
    return type(value).__name__


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# --- locations -----------------------------------------------------------------------------------


def where(label: str, lines: LineMap, loc: tuple, line: int | None = None) -> str:
    """`FILE:LINE: dotted.path`; parts of `loc` not in the YAML (a missing field) still name the path."""
    line = line or lines.line_of(loc) or 1
    return f"{label}:{line}: {'.'.join(str(p) for p in loc) or '(top)'}"


def yaml_problem(label: str, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    problem = (getattr(exc, "problem", None) or str(exc)).removeprefix("but ")
    line = mark.line + 1 if mark is not None else 1
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, most control characters)
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problem = f"character U+{char:04X} is not allowed in YAML"
    # At the end of the text (an unclosed quote or bracket) the useful line is where the construct began.
    if context_mark is not None and line > len(text.splitlines()):
        line = context_mark.line + 1
    if context and context_mark is not None:
        problem = f"{problem} ({context} at line {context_mark.line + 1})"
    return f"{label}:{line}: (yaml): {problem}"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest known name, or an empty string."""
    close = get_close_matches(name, [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
