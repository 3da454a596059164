"""The config keys as ``python -m training.train --help`` lists them, generated from training.config's models.

Each key is a dotted path ``--set`` accepts, with its type (and bounds), its
default and the field's description. Nested models are walked, never listed
by hand, so the help cannot drift from the schema. A model that may be null
(``objective.aux_ce``) or a list of models (``watchdog.watch``) is a key of
its own, followed by its fields: ``objective.aux_ce.start`` can be set alone
(the rest take their defaults); ``watchdog.watch[].metric`` is a field of each
list entry, set by giving the whole list.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from training.config import TrainConfig

BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


@dataclass(frozen=True)
class ConfigKey:
    """One key of the config: dotted path, type, default, description."""

    path: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    """A nested model's keys under its docstring's first line."""

    path: str
    summary: str
    keys: list[ConfigKey]


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model inside an annotation and how it sits there: "" (plainly), "optional" or "list"."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "list" if get_origin(annotation) is list else "optional"
    return None, ""


def type_text(annotation: Any) -> str:
    """A short, YAML-minded name of a field's type (``int``, ``str | null``, ``q99|mean_std|none``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join([type_text(a) for a in args if a is not type(None)] + ["null"] * (type(None) in args))
    if origin is list:
        return f"list[{type_text(args[0])}]"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    marks = [f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in BOUNDS if hasattr(m, attr)]
    return f" ({', '.join(marks)})" if marks else ""


def default_text(field: FieldInfo) -> str:
    """The default as YAML would spell it (``null``, ``true``, ``0.0002``), or ``required``."""
    if field.is_required():
        return "required"
    value = TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True), mode="json")
    if isinstance(value, str) and value and yaml.safe_load(value) == value:
        return value  # as --set takes it: `--set data.normalization=q99`
    return json.dumps(value, separators=(", ", ": "))


def _summary(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""


def sections(model: type[BaseModel] = TrainConfig, prefix: str = "", summary: str = "") -> list[Section]:
    """The model's own keys first, then one section per nested model, depth first."""
    keys: list[ConfigKey] = []
    nested: list[Section] = []
    for name, field in model.model_fields.items():
        path = prefix + name
        inner, how = _nested(field.annotation)
        if inner is not None and how == "":
            nested += sections(inner, path + ".", _summary(inner))
            continue
        description = field.description or (_summary(inner) if inner is not None else "")
        if how == "list" and not field.description:
            description = f"each entry: {description[:1].lower()}{description[1:]}"
        keys.append(ConfigKey(path, type_text(field.annotation) + _bounds(field), default_text(field), description))
        if inner is not None:  # the fields of the optional model, or of each list entry
            keys += [key for sec in sections(inner, path + ("[]." if how == "list" else ".")) for key in sec.keys]
    return [Section(prefix.rstrip("."), summary, keys), *nested]


def config_keys(model: type[BaseModel] = TrainConfig) -> list[ConfigKey]:
    """Every key of the model, in the order the help lists them."""
    return [key for sec in sections(model) for key in sec.keys]


def help_text(model: type[BaseModel] = TrainConfig) -> str:
    """The keys table: ``KEY  TYPE  DEFAULT  DESCRIPTION``, grouped by section."""
    keys = config_keys(model)
    # Columns fit the common case; a longer type or default (watchdog.watch's list) just pushes its line on.
    width = [max(len(k.path) for k in keys), min(max(len(k.type) for k in keys), 24), 12]
    lines = ["config keys for --set KEY=VALUE (VALUE is read as YAML; KEY[].field: a field of each list entry):"]
    for sec in sections(model):
        if sec.path:
            lines += ["", f"  {sec.path}: {sec.summary}".rstrip()]
        for k in sec.keys:
            default = k.default if len(k.default) <= width[2] else "(next line)"
            lines.append(f"  {k.path:<{width[0]}}  {k.type:<{width[1]}}  {default:<{width[2]}}  {k.description}".rstrip())
            if default != k.default:
                lines.append(f"  {'':<{width[0]}}  default: {k.default}")
    return "\n".join(lines)
