"""Hostile runbooks: inputs built to exhaust a YAML loader (alias bombs, deep nesting, huge or non-UTF-8 files).

Each must end in `FILE:LINE: ...` problems and exit 2 within bounded time and memory; the quick test
(tests/test_runbook_validation.py) loads them in-process, tests/bench/bench_faults.py runs each through
the CLI and measures it.
"""
from __future__ import annotations

from typing import NamedTuple

from agent_ops.yaml_models import MAX_YAML_BYTES

STEPS = "steps:\n  - {id: a, kind: run, command: echo}\n"


class Hostile(NamedTuple):
    """A runbook's bytes, the line its first problem must name, and words that problem must hold."""

    data: bytes
    line: int
    words: str


def _bomb(levels: int, width: int, where: str = "vars") -> str:
    """The billion-laughs shape: each anchor is a list of `width` aliases of the one before."""
    out = ["name: bomb", f"{where}:" if where != "top" else "x:", '  a0: &a0 ["lol"]']
    for i in range(1, levels):
        out.append(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(out) + "\n" + (STEPS if where != "steps" else "")


def _nested(depth: int, flow: bool) -> str:
    if flow:
        return "name: deep\nvars:\n  x: " + "[" * depth + "1" + "]" * depth + "\n" + STEPS
    lines = ["name: deep", "vars:"] + [" " * (2 * i + 2) + "k:" for i in range(depth)]
    lines[-1] += " 1"
    return "\n".join(lines) + "\n" + STEPS


def _chain(n: int, merge: bool) -> str:
    """Anchors that each contain (or `<<:` merge) the one before: shallow text, deep once aliases are followed."""
    out = ["name: chain", "vars:", "  c0: &c0 {v: 1}"]
    for i in range(1, n):
        out.append(f"  c{i}: &c{i} " + (f"{{<<: *c{i - 1}, v{i}: 1}}" if merge else f"[*c{i - 1}]"))
    return "\n".join(out) + "\n" + STEPS


def hostile() -> dict[str, Hostile]:
    """name -> case; alias bombs and 500-deep nesting first."""
    big_comment = "# " + "x" * 1000 + "\n"
    return {
        "alias-bomb-9x9": Hostile(_bomb(9, 9).encode(), 8, "alias bomb"),
        "alias-bomb-wide": Hostile(_bomb(4, 400).encode(), 5, "alias bomb"),
        "alias-bomb-in-steps": Hostile(_bomb(9, 9, "steps").encode(), 8, "alias bomb"),
        "nesting-500-block": Hostile(_nested(500, flow=False).encode(), 65, "nested deeper than"),
        "nesting-500-flow": Hostile(_nested(500, flow=True).encode(), 3, "nested deeper than"),
        "nesting-5000-flow": Hostile(_nested(5000, flow=True).encode(), 3, "nested deeper than"),
        "alias-chain-200": Hostile(_chain(200, merge=False).encode(), 64, "once aliases are followed"),
        "merge-chain-200": Hostile(_chain(200, merge=True).encode(), 65, "merges nested deeper"),
        "too-large": Hostile(b"name: big\n" + big_comment.encode() * (MAX_YAML_BYTES // 1000) + STEPS.encode(), 1, "larger than"),
        "not-utf8-latin1": Hostile("name: caf\u00e9\n".encode("latin-1") + STEPS.encode(), 1, "not UTF-8: byte 0xe9"),
        "not-utf8-line-4": Hostile(b"name: x\nsteps:\n  - id: a\n    command: echo \xff\xfe\n    kind: run\n", 4, "not UTF-8: byte 0xff"),
        "utf16": Hostile("name: x\n".encode("utf-16") + STEPS.encode("utf-16"), 1, "not UTF-8"),
        "nul-byte": Hostile(b"name: x\nsteps:\n  - {id: a, kind: run, command: \"echo \x00\"}\n", 3, "not allowed"),
        "control-char": Hostile(b"name: x\x07\n" + STEPS.encode(), 1, "not allowed"),
        "binary-junk": Hostile(bytes(range(256)) * 4, 2, "not UTF-8"),
    }
