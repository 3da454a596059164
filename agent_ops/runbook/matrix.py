"""Matrix and group expansion: the steps as written -> the plain steps the executor runs.

Works on the raw YAML data (not the validated model), so that the graph can be checked on
whatever parsed even when the schema is not satisfied, and so that each cell is rendered with
its own `{{ matrix.NAME }}` values. A step with a `matrix:` is a group of one; a `kind: group`
is repeated as a unit per cell. Every expanded step remembers where it is written (`loc`), so a
problem in a cell is reported at the line of the step that made it.

Ids: a cell's steps get `ID[axis=value,...]`. References are resolved here, once: inside a cell a
name of a step of the same group means that step of the same cell; any other name of a matrix
step or group stands for all of its expanded steps; an expanded id may also be named exactly.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_ops.runbook.schema import MATRIX_SETTINGS, MAX_CELLS, CellRef
from agent_ops.runbook.template import RenderError, as_text, evaluate, is_number, render_text, unknown_names, whole_expression

Problem = tuple[tuple, str]  # (location in the runbook data, message)
Ref = tuple[str, tuple]  # (a name as written, where it is written)
CELL_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")  # a value must be usable inside a step id
REF_FIELDS = ("needs", "after")


@dataclass
class Node:
    """One expanded step: its data (id and references rewritten), where it is written, its cell."""

    id: str | None  # the expanded id; None when the step has no usable id
    written: str | None  # the id as written
    kind: Any
    loc: tuple
    data: Any  # the step's data; a mapping unless the schema is broken there
    cell: CellRef | None = None
    needs: list[Ref] = field(default_factory=list)
    after: list[Ref] = field(default_factory=list)
    job: Ref | None = None
    siblings: dict[str, str] = field(default_factory=dict)  # written id -> expanded id, within this cell

    @property
    def values(self) -> dict[str, Any]:
        return self.cell.values if self.cell else {}

    @property
    def background(self) -> bool:
        return isinstance(self.data, dict) and self.data.get("background") is True


@dataclass
class Expansion:
    """The expanded steps, what their written names stand for, and the problems found on the way."""

    nodes: list[Node]
    names: dict[str, list[str]]  # written id (step, matrix step or group) -> expanded ids
    groups: dict[str, tuple]  # group id -> where it is written
    problems: list[Problem]


def expand(steps: Any, values: Mapping[str, Any]) -> Expansion:
    """Expand the raw `steps` list; `values` resolve templated axes and matrix settings (defaults at load)."""
    out = Expansion([], {}, {}, [])
    if not isinstance(steps, list):
        return out
    for i, item in enumerate(steps):
        loc = ("steps", i)
        if isinstance(item, dict) and item.get("kind") == "group":
            _expand_group(out, item, loc, values)
        elif isinstance(item, dict) and item.get("matrix") is not None:
            _expand_cells(out, _written_id(item), item, loc, [(item, loc)], values)
        else:
            node = _node(item, loc, None, {}, {})
            out.nodes.append(node)
            if node.written:
                out.names.setdefault(node.written, []).append(node.written)
    _resolve(out)
    return out


def _written_id(item: Any) -> str | None:
    return _name(item.get("id")) if isinstance(item, dict) else None


def _expand_group(out: Expansion, group: dict[str, Any], loc: tuple, values: Mapping[str, Any]) -> None:
    gid = _written_id(group)
    inner = group.get("steps") if isinstance(group.get("steps"), list) else []
    members = [(step, loc + ("steps", j)) for j, step in enumerate(inner)]
    for j, (step, where) in enumerate(members):
        if isinstance(step, dict) and step.get("matrix") is not None:
            out.problems.append((where + ("matrix",), "a step inside a group cannot have its own matrix; give the group the matrix"))
            members[j] = ({k: v for k, v in step.items() if k != "matrix"}, where)
    if gid:
        out.groups[gid] = loc
    _expand_cells(out, gid, group, loc, members, values, shared=group)


def _expand_cells(out: Expansion, gid: str | None, owner: dict[str, Any], loc: tuple, members: list[tuple[Any, tuple]],
                  values: Mapping[str, Any], shared: dict[str, Any] | None = None) -> None:
    """Each cell of `owner`'s matrix (one cell, unnamed, without a matrix), each member step in it."""
    spec = owner.get("matrix")
    cells, settings = _cells(spec, loc + ("matrix",), values, out.problems) if spec is not None else ([{}], {})
    written = [_written_id(step) for step, _ in members]
    for name in [*written, gid]:  # known names even when there are no cells: references to them are not "unknown"
        if name:
            out.names.setdefault(name, [])
    for values_of_cell in cells:
        key = ",".join(f"{k}={as_text(v)}" for k, v in values_of_cell.items())
        ref = CellRef(gid or "", key, values_of_cell, settings.get("max_parallel"), settings.get("fail_fast", True))
        siblings = {w: (f"{w}[{key}]" if spec is not None else w) for w in written if w}
        for (step, where), wid in zip(members, written):
            node = _node(step, where, ref, siblings, shared or {})
            if wid and spec is not None:
                node.id = siblings[wid]
            out.nodes.append(node)
            if wid:
                out.names.setdefault(wid, []).append(node.id)
            if gid and gid != wid:
                out.names.setdefault(gid, []).append(node.id)


def _node(item: Any, loc: tuple, cell: CellRef | None, siblings: dict[str, str], shared: dict[str, Any]) -> Node:
    written = _written_id(item)
    node = Node(id=written, written=written, kind=item.get("kind") if isinstance(item, dict) else None, loc=loc,
                data=item, cell=cell, siblings=siblings)
    if not isinstance(item, dict):
        return node
    for name in REF_FIELDS:
        refs = _refs(shared.get(name), loc[:2] + (name,)) if shared else []
        setattr(node, name, refs + _refs(item.get(name), loc + (name,)))
    job = _name(item.get("job"))
    node.job = (job, loc + ("job",)) if job else None
    tags = shared.get("tags") if isinstance(shared.get("tags"), list) else []
    data = {k: v for k, v in item.items() if k != "matrix"}
    if tags:
        mine = data.get("tags") if isinstance(data.get("tags"), list) else []
        data["tags"] = list(dict.fromkeys([*tags, *mine]))
    node.data = data
    return node


def _refs(raw: Any, loc: tuple) -> list[Ref]:
    return [(name, loc + (j,)) for j, item in enumerate(raw) if (name := _name(item))] if isinstance(raw, list) else []


def _name(item: Any) -> str | None:
    """A step name as written; a YAML number counts as its text (ids and needs are text, as the schema reads them)."""
    return str(item) if isinstance(item, (str, int)) and not isinstance(item, bool) else None


# --- cells --------------------------------------------------------------------------------------


def _cells(spec: Any, loc: tuple, values: Mapping[str, Any], problems: list[Problem]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The cells of one matrix (in order: the product, less exclusions, then inclusions) and its settings."""
    if not isinstance(spec, dict):
        return [{}], {}  # the schema reports it
    settings = _settings(spec, loc, values, problems)
    axes: dict[str, list[Any]] = {}
    for name, raw in spec.items():
        if name in MATRIX_SETTINGS or not isinstance(name, str):
            continue
        axis = _axis_values(raw, values, loc + (name,), problems)
        if axis is None:
            continue  # not a list of plain values (the schema reports it), or a template that failed (reported)
        if not axis:
            problems.append((loc + (name,), f"matrix axis {name!r} has no values"))
        axes[name] = axis
    include = [e for e in spec.get("include") or [] if isinstance(e, dict)] if isinstance(spec.get("include"), list) else []
    exclude = [e for e in spec.get("exclude") or [] if isinstance(e, dict)] if isinstance(spec.get("exclude"), list) else []
    names = list(axes) or (list(include[0]) if include else [])
    cells = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else []
    for k, entry in enumerate(exclude):
        where = loc + ("exclude", k)
        unknown = [key for key in entry if key not in names]
        if unknown:
            problems.append((where, f"exclude names {unknown[0]!r}, which is not an axis (axes: {', '.join(names)})"))
            continue
        kept = [c for c in cells if not all(as_text(c.get(key)) == as_text(v) for key, v in entry.items())]
        if len(kept) == len(cells):
            problems.append((where, f"exclude {_show(entry)} matches no cell"))
        cells = kept
    for k, entry in enumerate(include):
        where = loc + ("include", k)
        if set(entry) != set(names):
            missing, extra = [n for n in names if n not in entry], [n for n in entry if n not in names]
            what = f"lacks {', '.join(missing)}" if missing else f"names {', '.join(extra)}, not an axis"
            problems.append((where, f"include {_show(entry)} {what}: an included cell gives a value for every axis ({', '.join(names)})"))
            continue
        cell = {n: entry[n] for n in names}
        if any(_same(cell, c) for c in cells):
            problems.append((where, f"include {_show(entry)} is already a cell"))
            continue
        cells.append(cell)
    for cell in cells:
        for name, value in cell.items():
            if not CELL_VALUE.match(as_text(value)):
                problems.append((loc + (name,) if name in axes else loc,
                                 f"matrix value {as_text(value)!r} of {name!r} cannot be part of a step id (letters, digits, _ . - only)"))
                return [{}], settings
    if not cells:
        problems.append((loc, "the matrix has no cells"))
        return [], settings
    if len(cells) > MAX_CELLS:
        problems.append((loc, f"the matrix has {len(cells)} cells; at most {MAX_CELLS}"))
        return cells[:MAX_CELLS], settings
    return cells, settings


def _axis_values(raw: Any, values: Mapping[str, Any], loc: tuple, problems: list[Problem]) -> list[Any] | None:
    """An axis as a list: written as a list, or a template whose value is a list or comma-separated text."""
    if isinstance(raw, list):
        return raw if all(_plain(v) for v in raw) else None
    if not isinstance(raw, str):
        return None
    value = _value(raw, values, loc, problems)
    if value is None:
        return None
    if isinstance(value, list):
        return value if all(_plain(v) for v in value) else None
    return [part.strip() for part in as_text(value).split(",") if part.strip()]


def _settings(spec: dict[str, Any], loc: tuple, values: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """max_parallel and fail_fast, a template replaced by its value (the schema judged the defaults)."""
    out: dict[str, Any] = {}
    raw = _setting(spec.get("max_parallel"), values)
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 32:
        out["max_parallel"] = raw
    elif raw is not None and not isinstance(raw, str):
        problems.append((loc + ("max_parallel",), f"max_parallel must be an integer from 1 to 32 (got {as_text(raw)})"))
    fail_fast = _setting(spec.get("fail_fast", True), values)
    out["fail_fast"] = fail_fast if isinstance(fail_fast, bool) else True
    return out


def _setting(raw: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(raw, str) and whole_expression(raw) is not None and not unknown_names(raw, values):
        try:
            return evaluate(raw, values)
        except RenderError:
            return raw  # the template check reports it
    return raw


def _value(text: str, values: Mapping[str, Any], loc: tuple, problems: list[Problem]) -> Any:
    """A templated axis's value. Before --var values are known a required variable has none: the text stands
    for itself (one placeholder cell, so that the steps are still checked)."""
    if unknown_names(text, values):
        return "_".join(sorted(unknown_names(text, values)))
    try:
        return evaluate(text, values) if whole_expression(text) is not None else render_text(text, values, "text")
    except RenderError as exc:
        problems.append((loc, f"cannot render: {exc.message}"))
        return None


def _plain(value: Any) -> bool:
    return isinstance(value, (str, bool)) or is_number(value)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(as_text(a[k]) == as_text(b[k]) for k in a)


def _show(entry: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {as_text(v)}" for k, v in entry.items()) + "}"


# --- references -----------------------------------------------------------------------------------


def _resolve(out: Expansion) -> None:
    """Rewrite each node's needs, after and job to expanded ids; unknown names stay for the graph check to report."""
    for node in out.nodes:
        if not isinstance(node.data, dict):
            continue
        for name in REF_FIELDS:
            if name in node.data or getattr(node, name):
                node.data[name] = list(dict.fromkeys(i for ref, _ in getattr(node, name) for i in _targets(out, node, ref)))
        if node.job is not None:
            node.data["job"] = node.siblings.get(node.job[0], node.job[0])
        if node.id is not None:
            node.data["id"] = node.id


def _targets(out: Expansion, node: Node, name: str) -> list[str]:
    if name in node.siblings:
        return [node.siblings[name]]
    return out.names.get(name, [name])
