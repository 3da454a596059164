"""The narrow I/O boundary: everything above a Transport cannot tell localhost from a rented box.

A Transport does I/O only: run a bash snippet or a tmux command, move bytes, read a
file from an offset, stat a path. Policy (retries of steps, polling, gates) lives above it.
tmux and the monitor's probe have methods of their own because they are the hot path of
every job: a transport keeps a control-mode tmux client open (`remote_runner.TmuxControl`)
and runs the probe in Python next to it, so neither costs a process on the target, where
an exec costs a bash (and a tmux client) each time.
Foreign exceptions (OSError, paramiko.SSHException, socket.timeout) are turned
into `TransportError` here, once.

Every exec and tmux command the layers above send is idempotent by construction (a
job's wrapper runs only once, however often its window is opened; waits and reads
change nothing), so a transport may retry one once after reconnecting.

Paths given to put/get/read_from/stat may start with `~/`; the transport expands
it against the target user's home directory.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


def expand_home(path: str, home: str) -> str:
    """`~` and `~/...` as paths under `home` (the target user's); any other path as it is. The one spelling of it:
    transports expand the paths they are given, the run its workdir, qualification its probes' paths."""
    return home + path[1:] if path == "~" or path.startswith("~/") else path


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


@dataclass(frozen=True)
class ProbeRequest:
    """One look at a run's jobs: wait (bounded) on the run's wake-up FIFO, then report exit codes and sizes.

    jobs.py's PROBE says what it means and what the report holds; `script` is that probe as a bash
    command line, for a target where the transport cannot run it natively.
    """

    wait_s: float
    wake_fifo: str
    jobs_dir: str
    items: tuple[str, ...]  # "run:NAME" (waited for), "job:NAME" (already ended), "file:PATH"
    tmux_socket: str | None
    tmux_private: bool  # the server is the run's own (see Transport.tmux)
    session: str
    script: str


@runtime_checkable
class Transport(Protocol):
    """exec / tmux / probe / put / put_files / get / read_from / stat / close — nothing else crosses the boundary."""

    #: "local" or "ssh://user@host:port": shown to people, stored in the journal.
    name: str

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        """Run `script` with `bash --norc --noprofile -c` on the target and wait for it.

        Never sources ~/.bashrc per call (it costs ~90 ms on boxes with conda/pyenv).
        On timeout the process group is killed and rc is EXEC_TIMEOUT_RC.
        """
        ...

    def tmux(self, socket: str | None, args: Sequence[str], *, private: bool = False, timeout: float | None = None) -> ExecResult:
        """Run `tmux [-L socket] ARGS...` on the target (no shell: ARGS go to tmux as they are).

        `private`: the server on `socket` is one run's own, used by no other controller; only there may the
        transport keep a control-mode client (remote_runner.TmuxControl says why).
        rc 0 and the command's output, or rc != 0 and tmux's error on stderr; EXEC_TIMEOUT_RC if
        no answer came within `timeout`.
        """
        ...

    def probe(self, request: ProbeRequest) -> str:
        """The probe's report (lines `R name rc|-`, `W window`, `S size path`), with no process on the target where
        the transport can (remote_runner.probe), else by running `request.script`."""
        ...

    def put(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write `data` to `path` atomically (temp file + rename), creating parent directories.

        The file is created with `mode` from the start (a secret file is never world-readable,
        not even for a moment).
        """
        ...

    def put_files(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        """put() each `path: (data, mode)` in order; one round trip for small files where the transport can."""
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
