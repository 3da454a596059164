"""Helpers for executor tests: a private target per test, runs through the API or the CLI, waits on the journal."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import libtmux
from libtmux.exc import LibTmuxException

from agent_ops.record.journal import AttemptRow, EventRow, Journal, StepRow
from agent_ops.run.context import close_run, start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from agent_ops.secret_values import read_secrets
from agent_ops.transport.target import TargetSpec
from tests.sshd import SSHServer

RUNBOOKS = Path(__file__).parent / "runbooks"
CLI = [sys.executable, "-m", "agent_ops.front.cli"]
T = TypeVar("T")


@dataclass
class Box:
    """Where one test runs: a private tmux server, target workdir, scratch dir and journal home; local or over SSH."""

    kind: str  # local | ssh
    spec: TargetSpec
    home: Path  # AGENTOPS_HOME: the journal lives here
    scratch: Path  # the runbook's own files (`box` variable)
    inventory: Path | None = None  # for the CLI over SSH: names the test key and known_hosts

    @property
    def socket(self) -> str:
        assert self.spec.tmux_socket
        return self.spec.tmux_socket

    def journal(self) -> Journal:
        return Journal(self.home / "journal.db")

    def cli_target(self) -> list[str]:
        """`agentops run` options that reach this box with its private tmux server and workdir."""
        where = ["--target", "local"] if self.inventory is None else ["--inventory", str(self.inventory), "--target", "box"]
        return [*where, "--tmux-socket", self.socket, "--workdir", self.spec.workdir]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AGENTOPS_HOME": str(self.home), **extra}

    @property
    def server(self) -> libtmux.Server:
        """This box's tmux server (the runs' jobs live on it; over SSH too, the loopback sshd being this machine)."""
        return libtmux.Server(socket_name=self.socket)

    def window_names(self) -> list[str]:
        """Every window's name on this box's server; none once the server is gone (or exiting as it is asked)."""
        try:
            return [w.window_name or "" for w in self.server.windows]
        except LibTmuxException:
            return []

    def kill_tmux(self) -> None:
        kill_tmux_server(self.server)


def kill_tmux_server(server: libtmux.Server) -> None:
    """Stop a test's tmux server if it runs and remove its socket file (tmux leaves it behind)."""
    with contextlib.suppress(LibTmuxException):  # a socket file whose server is gone (connection refused): only the file
        server.kill()
    if server.socket_path is not None:
        Path(server.socket_path).unlink(missing_ok=True)
    elif server.socket_name:
        Path(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", server.socket_name).unlink(missing_ok=True)


def make_box(kind: str, root: Path, sshd: SSHServer | None = None, **spec: Any) -> Box:
    """A Box under `root` on a fresh tmux socket; `sshd` is required for kind 'ssh'."""
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    common = {"tmux_socket": f"ao-test-{uuid.uuid4().hex[:10]}", "workdir": str(root / "target"), **spec}
    if kind == "local":
        return Box(kind, TargetSpec(url="local", **common), root / "home", root / "scratch")
    assert sshd is not None
    target = TargetSpec(url=f"ssh://{sshd.user}@{sshd.host}:{sshd.port}", identity=str(sshd.identity),
                        known_hosts=str(sshd.known_hosts), connect_timeout=5.0, reconnect_timeout=30.0, **common)
    inventory = root / "inventory.yaml"
    inventory.write_text(
        f"hosts:\n  box:\n    url: {target.url}\n    identity: {sshd.identity}\n    known_hosts: {sshd.known_hosts}\n"
    )
    return Box(kind, target, root / "home", root / "scratch", inventory)


@dataclass
class ApiRun:
    """What a run through the Python API left: its id, final state and journal."""

    run_id: str
    final: str
    journal: Journal


def run_api(box: Box, runbook: str, overrides: dict[str, Any] | None = None, secrets: dict[str, str] | None = None,
            spec: TargetSpec | None = None) -> ApiRun:
    """Run a fixture runbook to the end in this process (real executor, real tmux, real transport)."""
    loaded = load_runbook(RUNBOOKS / runbook)
    values = resolve_vars(loaded, {"box": str(box.scratch), **(overrides or {})})
    secret_values = read_secrets(loaded.runbook.secrets, secrets or {})
    journal = box.journal()
    ctx = start_run(loaded, values, secret_values, spec or box.spec, journal)
    try:
        final = Executor(ctx).execute()
    finally:
        close_run(ctx)
    return ApiRun(ctx.run_id, final, journal)


def agentops(box: Box, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `agentops` CLI in a subprocess against this box's journal."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=box.env(**env), timeout=timeout)


def spawn(box: Box, *args: str, **env: str) -> subprocess.Popen[str]:
    """Start the `agentops` CLI without waiting (output to pipes; read them after it ends)."""
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=box.env(**env))


def wait_for(what: str, probe: Callable[[], T], timeout: float = 30.0, every: float = 0.05) -> T:
    """Re-check `probe` until it returns something truthy; fail after `timeout` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(every)


def only_run_id(journal: Journal) -> str | None:
    """The id of the journal's single run, once it exists."""
    runs = journal.runs()
    assert len(runs) <= 1, "the test's private journal should hold one run"
    return runs[0].id if runs else None


def step(journal: Journal, run_id: str, step_id: str) -> StepRow:
    """One step's journal row."""
    return next(s for s in journal.steps(run_id) if s.step_id == step_id)


def attempts(journal: Journal, run_id: str, step_id: str) -> list[AttemptRow]:
    return journal.attempts(run_id, step_id)


def events(journal: Journal, run_id: str, kind: str) -> list[EventRow]:
    return [e for e in journal.events(run_id, limit=100000) if e.kind == kind]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has ended: only its parent can reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class PsSampler:
    """Samples `ps -ww -eo args` (every process's full command line, never cut to a width) in a thread until stopped."""

    every: float = 0.05
    samples: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PsSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout)
            self._stop.wait(self.every)
