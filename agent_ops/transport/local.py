"""LocalTransport: this machine, through the same protocol as a remote box.

Commands, file writes, tmux and the probe run through the remote runner's own functions (start_bash/communicate,
put_file, TmuxControl, probe), called in this process instead of over a channel: one implementation of each, so
the local target and a box behave alike by construction.
"""
from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict

from agent_ops.errors import TransportError
from agent_ops.transport.base import ExecResult, FileStat, ProbeRequest, expand_home
from agent_ops.transport.remote_runner import TmuxControl, communicate, probe, put_file, start_bash

# What commands and jobs on this machine inherit from the controller: where programs and home are, who and where the
# user is, nothing else. TMUX_TMPDIR: tmux finds its sockets by it.
KEPT_ENV = ("HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TMUX_TMPDIR")


def clean_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that bash commands and the tmux server start with on a local target.

    The controller's own environment holds every secret the user exported, for any runbook; a tmux
    server copies the environment of the process that starts it into its global environment, which
    every job of every run on that server inherits. So nothing starts with the controller's
    environment: a job gets this, plus exactly what its runbook gives it (the mode-600 env file),
    as a job on a remote box gets the box's login environment and nothing of ours.
    """
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in KEPT_ENV or k.startswith("LC_")}


@contextmanager
def _file_errors(what: str, path: str) -> Iterator[None]:
    """FileNotFoundError passes (the protocol promises it); other OSErrors become TransportError, as over SSH."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TransportError(f"local: {what} {path}: {exc}") from exc


class LocalTransport:
    """Runs commands with subprocess and touches files directly."""

    name = "local"

    def __init__(self) -> None:
        self._home = os.path.expanduser("~")
        self._lock = threading.Lock()
        self._tmux: dict[str | None, TmuxControl] = {}  # the same control-mode clients the remote runner keeps

    def home(self) -> str:
        return self._home

    def _path(self, path: str) -> str:
        return expand_home(path, self._home)

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        try:
            proc = start_bash(script, stdin is not None, env=clean_environment())
        except OSError as exc:
            raise TransportError(f"local exec failed to start: {exc}") from exc
        return ExecResult(*communicate(proc, stdin, timeout))

    def tmux(self, socket: str | None, args: Sequence[str], *, private: bool = False, timeout: float | None = None) -> ExecResult:
        return ExecResult(*self._control(socket, private).run(list(args), timeout))

    def probe(self, request: ProbeRequest) -> str:
        return probe(asdict(request), self._control(request.tmux_socket, request.tmux_private).run)

    def _control(self, socket: str | None, private: bool) -> TmuxControl:
        with self._lock:
            return self._tmux.setdefault(socket, TmuxControl(socket, private, env=clean_environment()))

    def put(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        path = self._path(path)
        with _file_errors("put", path):
            put_file(path, data, mode)

    def put_files(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        for path, (data, mode) in files.items():
            self.put(path, data, mode=mode)

    def get(self, path: str) -> bytes:
        path = self._path(path)
        with _file_errors("get", path), open(path, "rb") as fh:
            return fh.read()

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        path = self._path(path)
        with _file_errors("read", path), open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(limit)

    def stat(self, path: str) -> FileStat | None:
        path = self._path(path)
        try:
            with _file_errors("stat", path):
                st = os.stat(path)
        except FileNotFoundError:
            return None
        return FileStat(size=st.st_size, mtime=st.st_mtime, is_dir=stat.S_ISDIR(st.st_mode), mode=st.st_mode & 0o7777)

    def close(self) -> None:
        with self._lock:
            controls, self._tmux = list(self._tmux.values()), {}
        for control in controls:
            control.close()
