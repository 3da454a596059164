"""The narrow I/O boundary: everything above a Transport cannot tell localhost from a rented box.

A Transport does I/O only: run a bash snippet, move bytes, read a file from an
offset, stat a path. Policy (retries of steps, polling, gates) lives above it.
Foreign exceptions (OSError, paramiko.SSHException, socket.timeout) are turned
into `TransportError` here, once.

Every exec the layers above send is idempotent by construction (a job start is
guarded by `mkdir`, waits and reads change nothing), so a transport may retry an
exec once after reconnecting.

Paths given to put/get/read_from/stat may start with `~/`; the transport expands
it against the target user's home directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ExecResult:
    """What a finished command left: exit status and its two streams (bytes, not decoded)."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileStat:
    """The few facts about a path that the layers above need."""

    size: int
    mtime: float
    is_dir: bool
    mode: int


# rc reported when an exec ran past its timeout and was killed (coreutils `timeout` uses the same).
EXEC_TIMEOUT_RC = 124


@runtime_checkable
class Transport(Protocol):
    """exec / put / get / read_from / stat / close — nothing else crosses the boundary."""

    #: "local" or "ssh://user@host:port": shown to people, stored in the journal.
    name: str

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        """Run `script` with `bash --norc --noprofile -c` on the target and wait for it.

        Never sources ~/.bashrc per call (it costs ~90 ms on boxes with conda/pyenv).
        On timeout the process group is killed and rc is EXEC_TIMEOUT_RC.
        """
        ...

    def put(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write `data` to `path` atomically (temp file + rename), creating parent directories.

        The file is created with `mode` from the start (a secret file is never world-readable,
        not even for a moment).
        """
        ...

    def get(self, path: str) -> bytes:
        """Read a whole (small) file. Raises FileNotFoundError if it does not exist."""
        ...

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Read at most `limit` bytes of `path` starting at `offset`; b'' at or past the end.

        Raises FileNotFoundError if the file does not exist. Never reads the whole file.
        """
        ...

    def stat(self, path: str) -> FileStat | None:
        """Facts about `path`, or None if it does not exist."""
        ...

    def home(self) -> str:
        """The target user's home directory (absolute); `~` in paths is expanded against it."""
        ...

    def close(self) -> None:
        """Release connections; safe to call twice."""
        ...
