"""A command's one JSON document, from pydantic models or dataclasses: standard library only.

Its own module so that a status poll answered without the CLI framework (front/entry.py) writes exactly what
`Output.json` writes.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


def to_json(doc: Any) -> str:
    """A pydantic model, a dataclass, or lists and dicts of them, as indented JSON (text as it is, not \\u-escaped).

    A non-finite float becomes null, as pydantic writes it: `NaN` is no JSON, and a strict reader refuses it.
    """
    if hasattr(doc, "model_dump_json"):
        return doc.model_dump_json(indent=2)
    return json.dumps(_plain(doc), indent=2, ensure_ascii=False)


def _plain(doc: Any) -> Any:
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if doc is None or isinstance(doc, (str, int)):
        return doc
    if hasattr(doc, "model_dump"):
        return doc.model_dump(mode="json")
    if dataclasses.is_dataclass(doc) and not isinstance(doc, type):
        return {f.name: _plain(getattr(doc, f.name)) for f in dataclasses.fields(doc)}
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_plain(d) for d in doc]
    return doc
