"""What a check needs of the machine it judges: the few calls it makes, nothing more.

`checks` sits below the controller (agent_ops imports it, never the other way), so it names
the calls it uses as a Protocol; every `agent_ops.transport` Transport satisfies it.
"""
from __future__ import annotations

from typing import Protocol

# An exec killed at its timeout reports this rc (coreutils `timeout`'s code); every Transport keeps to it.
EXEC_TIMEOUT_RC = 124


class Finished(Protocol):
    """A finished command: exit status and its two streams as bytes."""

    rc: int
    stdout: bytes
    stderr: bytes

    def text(self) -> str: ...


class PathFacts(Protocol):
    """What a check reads of a path's stat."""

    size: int
    is_dir: bool


class CheckTarget(Protocol):
    """The machine behind a check: run a command, read a file (whole or from an offset), stat a path."""

    name: str

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Finished: ...

    def get(self, path: str) -> bytes: ...

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes: ...

    def stat(self, path: str) -> PathFacts | None: ...

    def home(self) -> str: ...
