"""A run's context: its id, rendered runbook, values, target connection, layout and journal.

Built once by `start_run` (a new run) or `resume_run` (from the journal, after the controller
died); `cancel_run` stops a run from any process. The executor, the step drivers and the
remedies all work on this one object, so it lives below them.
"""
from __future__ import annotations

import os
import secrets as pysecrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent_ops.errors import AgentOpsError
from agent_ops.record.journal import TERMINAL_RUN_STATES, TERMINAL_STEP_STATES, Journal
from agent_ops.run.jobs import RunLayout, end_run_tmux
from agent_ops.runbook.loader import LoadedRunbook, builtin_values, load_runbook, render_runbook, render_step
from agent_ops.runbook.results import steps_view
from agent_ops.runbook.schema import Runbook, Step
from agent_ops.secret_values import Masker, read_secrets
from agent_ops.transport.base import Transport
from agent_ops.transport.target import TargetSpec, connect

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

    def step(self, step_id: str) -> Step:
        """A step as its next attempt runs it: one that reads earlier steps' results is rendered now, with them."""
        if not self.loaded.reads_results(step_id):
            return self.runbook.step(step_id)
        results = steps_view({row.step_id: (row.state, row.outputs) for row in self.journal.steps(self.run_id)})
        return render_step(self.loaded, step_id, {**self.values, "steps": results})

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
    layout = RunLayout.on(target, run_id, run_dir)
    artifacts = journal.path.parent / "runs" / run_id
    artifacts.mkdir(parents=True, exist_ok=True)
    builtins = builtin_values(run_id=run_id, run_dir=run_dir, runbook_dir=str(loaded.path.parent), artifacts_dir=str(artifacts))
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


def on_target(path: str, cwd: str | None, home: str) -> str:
    """An absolute path on the target: `~` expanded, a relative one taken from `cwd` (else the home directory)."""
    path = _expand(path, home)
    return path if path.startswith("/") else f"{on_target(cwd, None, home) if cwd else home}/{path}"


class RunStateError(AgentOpsError):
    """The run cannot do what was asked in its current state (unknown id, finished, still driven)."""

    code = "run_state"


def resume_run(journal: Journal, run_id: str, *, observer: Observer | None = None, environ: dict[str, str] | None = None
               ) -> RunContext:
    """Rebuild a run's context from the journal, to finish it without re-running steps that succeeded."""
    from agent_ops.record.status import controller_alive

    row = journal.run(run_id)
    if row is None:
        raise RunStateError(f"unknown run {run_id!r}")
    if row.state in ("succeeded", "cancelled"):
        raise RunStateError(f"run {run_id} already {row.state}; nothing to resume")
    if controller_alive(row):
        raise RunStateError(f"run {run_id} is still driven by controller pid {row.controller_pid} on {row.controller_host}")
    loaded = load_runbook(row.runbook_path)
    if loaded.sha256 != row.runbook_sha:
        raise RunStateError(f"{row.runbook_path} changed since run {run_id} started; resume refuses a different runbook")
    secret_values = read_secrets(row.secret_names, environ)
    target = TargetSpec.model_validate(row.target)
    transport = connect(target)
    masker = Masker(secret_values.values())
    journal.masker = masker
    layout = RunLayout.on(target, run_id, row.run_dir)
    artifacts = Path(row.artifacts_dir)
    builtins = builtin_values(run_id=run_id, run_dir=row.run_dir, runbook_dir=str(loaded.path.parent), artifacts_dir=str(artifacts))
    ctx = RunContext(run_id, loaded, {**row.vars, **builtins}, secret_values, target, transport, journal, layout,
                     artifacts, masker, observer, resumed=True)
    # Failed steps get another chance; steps that succeeded are never re-run.
    for step in journal.steps(run_id):
        if step.state in ("failed", "cancelled", "running"):
            journal.set_step(run_id, step.step_id, state="pending" if step.state != "running" else "running")
    ctx.event("run_resumed", None, f"resumed by pid {os.getpid()}")
    return ctx


def cancel_run(journal: Journal, run_id: str) -> str:
    """Ask the controller to cancel; with no live controller, stop the jobs directly. Returns the new state."""
    from agent_ops.record.status import controller_alive

    row = journal.run(run_id)
    if row is None:
        raise RunStateError(f"unknown run {run_id!r}")
    if row.state in TERMINAL_RUN_STATES:
        raise RunStateError(f"run {run_id} already {row.state}")
    if controller_alive(row):
        journal.set_run(run_id, state="cancelling")
        journal.event(run_id, None, "cancel_requested", "cancel requested")
        return "cancelling"
    target = TargetSpec.model_validate(row.target)
    transport = connect(target)
    try:
        end_run_tmux(transport, RunLayout.on(target, run_id, row.run_dir))
    finally:
        transport.close()
    for step in journal.steps(run_id):
        if step.state not in TERMINAL_STEP_STATES:
            journal.set_step(run_id, step.step_id, state="cancelled", ended=time.time(), message="cancelled")
    journal.set_run(run_id, state="cancelled", ended=time.time(), message="cancelled (no controller was running)")
    journal.event(run_id, None, "run_cancelled", "cancelled: jobs stopped, tmux closed")
    return "cancelled"
