"""The executor: runs a rendered runbook's DAG on a target, recording everything in the journal.

The scheduler (one loop in the calling thread) starts ready steps up to
`max_parallel`; each step runs in a driver thread; a single Monitor thread polls
the box for all of them. Drivers report back through a queue. The journal is
written as things happen, so another process can read status at any moment and
`resume` can pick the run up after the controller dies.
"""
from __future__ import annotations

import os
import queue
import secrets as pysecrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent_ops.errors import AgentOpsError
from agent_ops.jobs import RunLayout, Tmux, kill_job, kill_session, prepare_run
from agent_ops.journal import TERMINAL_RUN_STATES, Journal
from agent_ops.loader import LoadedRunbook, render_runbook
from agent_ops.monitor import Monitor
from agent_ops.plan import dependencies
from agent_ops.poll import Backoff
from agent_ops.runbook import Runbook
from agent_ops.secrets import Masker
from agent_ops.steps import StepContext, StepOutcome, drive_step
from agent_ops.transport.base import Transport
from agent_ops.transport.target import TargetSpec, connect

DONE_OK = ("succeeded", "skipped")

Observer = Callable[[str, str | None, str], None]  # (event kind, step id, message)


def new_run_id() -> str:
    """A sortable, filesystem- and tmux-safe id (seed 000: no ':' or '|' in names)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{pysecrets.token_hex(2)}"


@dataclass
class RunContext:
    """Everything a run needs, built once by start_run() or resume_run()."""

    run_id: str
    loaded: LoadedRunbook
    values: dict[str, Any]  # variables, builtins included
    secrets: dict[str, str]
    target: TargetSpec
    transport: Transport
    journal: Journal
    layout: RunLayout
    artifacts_dir: Path
    masker: Masker
    observer: Observer | None = None
    resumed: bool = False
    runbook: Runbook = field(init=False)
    env_overrides: dict[str, str] = field(default_factory=dict)  # set by remedies (set_env)

    def __post_init__(self) -> None:
        self.runbook = render_runbook(self.loaded, self.values)

    def set_values(self, changes: dict[str, Any]) -> None:
        """Change variables (remedies do) and re-render: the next attempt of every step sees them."""
        self.values = {**self.values, **changes}
        self.runbook = render_runbook(self.loaded, self.values)
        user_vars = {k: v for k, v in self.values.items() if k in self.loaded.runbook.vars}
        self.journal.set_run(self.run_id, vars=user_vars)

    def event(self, kind: str, step_id: str | None, message: str, data: Any = None) -> None:
        self.journal.event(self.run_id, step_id, kind, message, data)
        if self.observer:
            self.observer(kind, step_id, self.masker.mask(message))


def start_run(
    loaded: LoadedRunbook,
    values: dict[str, Any],
    secret_values: dict[str, str],
    target: TargetSpec,
    journal: Journal,
    *,
    run_id: str | None = None,
    observer: Observer | None = None,
) -> RunContext:
    """Connect, lay out the run on the target, and record it in the journal (all steps pending)."""
    run_id = run_id or new_run_id()
    transport = connect(target)
    masker = Masker(secret_values.values())
    journal.masker = masker
    run_dir = _expand(target.workdir, transport.home()) + f"/runs/{run_id}"
    layout = RunLayout(run_id=run_id, run_dir=run_dir, tmux=Tmux(target.tmux_socket))
    artifacts = journal.path.parent / "runs" / run_id
    artifacts.mkdir(parents=True, exist_ok=True)
    builtins = {"run_id": run_id, "run_dir": run_dir, "runbook_dir": str(loaded.path.parent), "artifacts_dir": str(artifacts)}
    ctx = RunContext(run_id, loaded, {**values, **builtins}, secret_values, target, transport, journal, layout, artifacts,
                     masker, observer)
    journal.create_run(
        {
            "id": run_id, "runbook_name": loaded.runbook.name, "runbook_path": str(loaded.path), "runbook_sha": loaded.sha256,
            "target": target.model_dump(exclude_defaults=True), "vars": values, "secret_names": sorted(secret_values),
            "tmux_session": layout.session, "run_dir": run_dir, "artifacts_dir": str(artifacts),
        },
        [(s.id, s.kind) for s in ctx.runbook.steps],
    )
    return ctx


def _expand(path: str, home: str) -> str:
    return home + path[1:] if path == "~" or path.startswith("~/") else path


class Executor:
    """Schedules the DAG; see the module docstring."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.runbook = ctx.runbook
        self.deps = dependencies(self.runbook.steps)
        self.after = {s.id: frozenset(s.after) for s in self.runbook.steps}  # deps that must have finished, not just started
        self.state: dict[str, str] = {s.id: "pending" for s in self.runbook.steps}
        self.handles: dict[str, Any] = {}  # step id -> current JobHandle (gates follow them)
        self.monitor = Monitor(ctx.transport, ctx.layout, Backoff(self.runbook.poll))
        self.events: queue.Queue[tuple[str, str, StepOutcome | None]] = queue.Queue()
        self.stop_flag = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=len(self.runbook.steps), thread_name_prefix="step")
        self._cancelled = False
        self._stopping: set[str] = set()

    # --- the scheduler --------------------------------------------------------------------

    def execute(self) -> str:
        """Run to the end; returns the run's final state."""
        ctx = self.ctx
        ctx.journal.set_run(ctx.run_id, state="running", started=time.time(), controller_pid=os.getpid(),
                            controller_host=socket.gethostname(), heartbeat=time.time(), message=None)
        ctx.event("run_started", None, f"run {ctx.run_id} on {ctx.transport.name} (tmux: {ctx.layout.attach_hint()})")
        error = None
        try:
            prepare_run(ctx.transport, ctx.layout)
            self.monitor.start()
            self._restore()
            final = self._schedule()
        except Exception as exc:  # a target that cannot host the run (or a bug): the run still ends, failed, saying why
            final, error = "failed", f"{type(exc).__name__}: {exc}"
            ctx.event("run_error", None, error)
        finally:
            self.stop_flag.set()
            self._pool.shutdown(wait=True, cancel_futures=False)
            self.monitor.stop()
        self._finish(final, error)
        return final

    def _restore(self) -> None:
        """On resume: steps that already succeeded stay done and are never re-run."""
        if not self.ctx.resumed:
            return
        for row in self.ctx.journal.steps(self.ctx.run_id):
            if row["state"] in DONE_OK:
                self.state[row["step_id"]] = row["state"]

    def _schedule(self) -> str:
        running: set[str] = set()  # driver threads alive: foreground steps and background jobs
        while True:
            if self._cancel_requested():
                self._cancel()
                return "cancelled"
            self._block_unreachable()
            for step in self.runbook.steps:
                if len(running) < self.runbook.max_parallel and self.state[step.id] == "pending" and self._ready(step.id):
                    self.state[step.id] = "running"
                    running.add(step.id)
                    self._pool.submit(self._drive, step)
            pending = any(st == "pending" for st in self.state.values())
            if not running and not pending:
                return "succeeded" if all(st in DONE_OK or st == "started" for st in self.state.values()) else "failed"
            foreground = any(self.state[s] == "running" for s in running)
            if not foreground and not pending and any(st == "failed" for st in self.state.values()):
                self._stop_background(running)  # the run has failed: don't wait hours for a training job
            try:
                kind, sid, outcome = self.events.get(timeout=0.5)
            except queue.Empty:
                self.ctx.journal.set_run(self.ctx.run_id, heartbeat=time.time())
                continue
            if kind == "started":
                self.state[sid] = "started"  # a background job is up: its dependents may go
                if getattr(self.runbook.step(sid), "keep_running", False):
                    running.discard(sid)  # the run may end while it runs on
            else:
                running.discard(sid)
                self.state[sid] = outcome.state if outcome else "failed"

    def _stop_background(self, running: set[str]) -> None:
        for sid in running:
            handle = self.handles.get(sid)
            if handle is not None and sid not in self._stopping:
                self._stopping.add(sid)
                self.ctx.event("step_stopping", sid, "stopping background job: the run has failed")
                kill_job(self.ctx.transport, self.ctx.layout, handle)

    def _ready(self, sid: str) -> bool:
        after = self.after[sid]
        return all(self.state[d] in (("succeeded", "skipped") if d in after else ("succeeded", "skipped", "started"))
                   for d in self.deps[sid])

    def _block_unreachable(self, force: bool = False) -> None:
        """Pending steps whose dependency failed will never run: record them as not run."""
        changed = True
        while changed:
            changed = False
            for sid, deps in self.deps.items():
                if self.state[sid] != "pending":
                    continue
                bad = [d for d in deps if self.state[d] in ("failed", "cancelled")]
                if bad:
                    self.state[sid] = "cancelled"
                    why = f"not run: dependency {bad[0]} {'failed' if self.state[bad[0]] == 'failed' else 'was not run'}"
                    self.ctx.journal.set_step(self.ctx.run_id, sid, state="cancelled", message=why)
                    self.ctx.event("step_not_run", sid, why)
                    changed = True

    def _drive(self, step: Any) -> None:
        sctx = StepContext(self.ctx, self.monitor, self.handles, self.stop_flag,
                           started=lambda sid: self.events.put(("started", sid, None)))
        try:
            outcome = drive_step(sctx, step)
        except Exception as exc:  # a bug or a lost target must still end the step, never hang the run
            outcome = StepOutcome("failed", f"{type(exc).__name__}: {exc}")
            self.ctx.journal.set_step(self.ctx.run_id, step.id, state="failed", ended=time.time(), message=outcome.message)
            self.ctx.event("step_failed", step.id, outcome.message)
        self.events.put(("done", step.id, outcome))

    # --- cancel and finish ------------------------------------------------------------------

    def _cancel_requested(self) -> bool:
        row = self.ctx.journal.run(self.ctx.run_id)
        return bool(row and row["state"] == "cancelling")

    def _cancel(self) -> None:
        self._cancelled = True
        self.stop_flag.set()
        kill_session(self.ctx.transport, self.ctx.layout)
        for sid, st in self.state.items():
            if st in ("pending", "running", "started"):
                self.state[sid] = "cancelled"
                self.ctx.journal.set_step(self.ctx.run_id, sid, state="cancelled", ended=time.time(), message="cancelled")
        self.ctx.event("jobs_stopped", None, "cancelled: jobs stopped, tmux session closed")  # run_cancelled comes from _finish

    def _finish(self, final: str, error: str | None = None) -> None:
        ctx = self.ctx
        if error is not None:  # steps the error kept from running are over too; the run's message leads with why
            for sid, st in self.state.items():
                if st == "pending":
                    self.state[sid] = "cancelled"
                    ctx.journal.set_step(ctx.run_id, sid, state="cancelled", message=f"not run: {error}")
        left = [sid for sid, st in self.state.items() if st == "started"]
        note = f"; left running: {', '.join(left)}" if left else ""
        if not left:
            # Every job has ended (their output is in the job logs): the empty session would only pile up on the box.
            try:
                kill_session(ctx.transport, ctx.layout)
            except Exception:  # noqa: BLE001 -- best effort: an unreachable box must not change the run's verdict
                pass
        counts: dict[str, int] = {}
        for st in self.state.values():
            counts[st] = counts.get(st, 0) + 1
        summary = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
        why = f"{error}; " if error else ""
        ctx.journal.set_run(ctx.run_id, state=final, ended=time.time(), message=f"{final}: {why}{summary}{note}",
                            heartbeat=time.time())
        ctx.event(f"run_{final}", None, f"run {final}: {why}{summary}{note} (max poll interval {self.monitor.max_interval:.2f}s)",
                  {"max_poll_interval_s": self.monitor.max_interval})


def is_terminal(state: str) -> bool:
    return state in TERMINAL_RUN_STATES


class RunStateError(AgentOpsError):
    """The run cannot do what was asked in its current state (unknown id, finished, still driven)."""

    code = "run_state"


def resume_run(journal: Journal, run_id: str, *, observer: Observer | None = None, environ: dict[str, str] | None = None
               ) -> RunContext:
    """Rebuild a run's context from the journal, to finish it without re-running steps that succeeded."""
    from agent_ops.loader import load_runbook
    from agent_ops.secrets import read_secrets
    from agent_ops.status import controller_alive

    row = journal.run(run_id)
    if row is None:
        raise RunStateError(f"unknown run {run_id!r}")
    if row["state"] in ("succeeded", "cancelled"):
        raise RunStateError(f"run {run_id} already {row['state']}; nothing to resume")
    if controller_alive(row):
        raise RunStateError(f"run {run_id} is still driven by controller pid {row['controller_pid']} on {row['controller_host']}")
    loaded = load_runbook(row["runbook_path"])
    if loaded.sha256 != row["runbook_sha"]:
        raise RunStateError(f"{row['runbook_path']} changed since run {run_id} started; resume refuses a different runbook")
    secret_values = read_secrets(row["secret_names"], environ)
    target = TargetSpec.model_validate(row["target"])
    transport = connect(target)
    masker = Masker(secret_values.values())
    journal.masker = masker
    layout = RunLayout(run_id=run_id, run_dir=row["run_dir"], tmux=Tmux(target.tmux_socket))
    artifacts = Path(row["artifacts_dir"])
    builtins = {"run_id": run_id, "run_dir": row["run_dir"], "runbook_dir": str(loaded.path.parent), "artifacts_dir": str(artifacts)}
    ctx = RunContext(run_id, loaded, {**row["vars"], **builtins}, secret_values, target, transport, journal, layout,
                     artifacts, masker, observer, resumed=True)
    # Failed steps get another chance; steps that succeeded are never re-run.
    for step in journal.steps(run_id):
        if step["state"] in ("failed", "cancelled", "running"):
            journal.set_step(run_id, step["step_id"], state="pending" if step["state"] != "running" else "running")
    ctx.event("run_resumed", None, f"resumed by pid {os.getpid()}")
    return ctx


def cancel_run(journal: Journal, run_id: str) -> str:
    """Ask the controller to cancel; with no live controller, stop the jobs directly. Returns the new state."""
    from agent_ops.status import controller_alive

    row = journal.run(run_id)
    if row is None:
        raise RunStateError(f"unknown run {run_id!r}")
    if row["state"] in TERMINAL_RUN_STATES:
        raise RunStateError(f"run {run_id} already {row['state']}")
    if controller_alive(row):
        journal.set_run(run_id, state="cancelling")
        journal.event(run_id, None, "cancel_requested", "cancel requested")
        return "cancelling"
    target = TargetSpec.model_validate(row["target"])
    transport = connect(target)
    try:
        kill_session(transport, RunLayout(run_id=run_id, run_dir=row["run_dir"], tmux=Tmux(target.tmux_socket)))
    finally:
        transport.close()
    for step in journal.steps(run_id):
        if step["state"] not in ("succeeded", "failed", "skipped", "cancelled"):
            journal.set_step(run_id, step["step_id"], state="cancelled", ended=time.time(), message="cancelled")
    journal.set_run(run_id, state="cancelled", ended=time.time(), message="cancelled (no controller was running)")
    journal.event(run_id, None, "run_cancelled", "cancelled: jobs stopped, tmux session closed")
    return "cancelled"
