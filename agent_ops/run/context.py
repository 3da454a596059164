"""A run's context: its id, rendered runbook, values, nodes (each with its connection and layout) and journal.

Built once by `start_run` (a new run) or `resume_run` (from the journal, after the controller
died); `cancel_run` stops a run from any process. The executor, the step drivers and the
remedies all work on this one object, so it lives below them.
"""
from __future__ import annotations

import os
import secrets as pysecrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent_ops.errors import AgentOpsError, RunbookError
from agent_ops.fleet.nodes import NodeSpec, fleet_of_one, fleet_rows
from agent_ops.record.journal import TERMINAL_RUN_STATES, TERMINAL_STEP_STATES, Journal
from agent_ops.run.jobs import RunLayout, end_run_tmux
from agent_ops.run.nodes import Node, NodeSelectionError, connect_all, step_node_names
from agent_ops.runbook.loader import LoadedRunbook, builtin_values, load_runbook, render_runbook, render_step
from agent_ops.runbook.results import steps_view
from agent_ops.runbook.schema import Runbook, Step
from agent_ops.secret_values import Masker, read_secrets
from agent_ops.transport.base import Transport, expand_home
from agent_ops.transport.target import TargetSpec, connect

Observer = Callable[[str, str | None, str], None]  # (event kind, step id, message)


def new_run_id() -> str:
    """A sortable, filesystem- and tmux-safe id (seed 000: no ':' or '|' in names)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{pysecrets.token_hex(2)}"


@dataclass
class RunContext:
    """Everything a run needs, built once by start_run() or resume_run().

    Bound to one node (`node`, the head unless made by `for_node`): `transport`, `layout`, `target`, the
    builtin values (`run_dir`, `node.*`) and the rendered `runbook` are that node's. Step drivers work on
    the view of the node they drive; remedies applied through a view change that node's values only.
    """

    run_id: str
    loaded: LoadedRunbook
    values: dict[str, Any]  # variables, builtins included (this node's)
    secrets: dict[str, str]
    nodes: list[Node]  # the fleet, head first
    journal: Journal
    artifacts_dir: Path
    masker: Masker
    observer: Observer | None = None
    resumed: bool = False
    node: Node | None = None  # None: the head
    runbook: Runbook = field(init=False)
    env_overrides: dict[str, str] = field(default_factory=dict)  # set by remedies (set_env)
    views: dict[str, RunContext] = field(default_factory=dict)  # node name -> its view, shared by every view
    out: dict[str, str] = field(default_factory=dict)  # nodes taken out of the fleet -> why; shared by every view

    def __post_init__(self) -> None:
        self.node = self.node or self.nodes[0]
        self.values = {**self.values, **self._builtins()}
        self.runbook = render_runbook(self.loaded, self.values)
        self.views.setdefault(self.node.name, self)

    def _builtins(self) -> dict[str, Any]:
        return builtin_values(run_id=self.run_id, run_dir=self.layout.run_dir, runbook_dir=str(self.loaded.path.parent),
                              artifacts_dir=str(self.artifacts_dir), nodes=[(n.name, n.address) for n in self.nodes],
                              rank=self.node.rank)

    @property
    def transport(self) -> Transport:
        return self.node.transport

    @property
    def layout(self) -> RunLayout:
        return self.node.layout

    @property
    def target(self) -> TargetSpec:
        return self.node.target

    @property
    def head(self) -> RunContext:
        return self.views[self.nodes[0].name]

    def for_node(self, node: Node) -> RunContext:
        """The run as `node` sees it (made once per node and kept: a remedy's change to its values lasts)."""
        if node.name not in self.views:
            self.views[node.name] = replace(self, node=node, env_overrides=dict(self.env_overrides))
        return self.views[node.name]

    def set_values(self, changes: dict[str, Any]) -> None:
        """Change variables (remedies do) and re-render: the next attempt of every step on this node sees them."""
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

    def event(self, kind: str, step_id: str | None, message: str, data: Any = None, node: str | None = None) -> None:
        """Record an event (`node`: the node it happened on, for a step's part on one node)."""
        self.journal.event(self.run_id, step_id, kind, message, data, node=node)
        if self.observer:
            label = f"{step_id}@{node}" if step_id and node and len(self.nodes) > 1 else step_id
            self.observer(kind, label, self.masker.mask(message))


def start_run(
    loaded: LoadedRunbook,
    values: dict[str, Any],
    secret_values: dict[str, str],
    target: TargetSpec | Sequence[NodeSpec],
    journal: Journal,
    *,
    run_id: str | None = None,
    observer: Observer | None = None,
) -> RunContext:
    """Connect to every node, lay out the run on each, and record it in the journal (all steps pending)."""
    run_id = run_id or new_run_id()
    specs = fleet_of_one(target) if isinstance(target, TargetSpec) else list(target)
    transports = connect_all(specs)
    nodes = [Node(spec, rank, transport,
                  RunLayout.on(spec.target, run_id, expand_home(spec.target.workdir, transport.home()) + f"/runs/{run_id}"))
             for rank, (spec, transport) in enumerate(zip(specs, transports))]
    masker = Masker(secret_values.values())
    journal.masker = masker
    artifacts = journal.path.parent / "runs" / run_id
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        ctx = RunContext(run_id, loaded, values, secret_values, nodes, journal, artifacts, masker, observer)
        _check_selections(ctx)
    except Exception:
        _close(nodes)
        raise
    head = nodes[0]
    journal.create_run(
        {
            "id": run_id, "runbook_name": loaded.runbook.name, "runbook_path": str(loaded.path), "runbook_sha": loaded.sha256,
            "target": head.target.model_dump(exclude_defaults=True), "vars": values, "secret_names": sorted(secret_values),
            "tmux_session": head.layout.session, "run_dir": head.layout.run_dir, "artifacts_dir": str(artifacts),
        },
        [(s.id, s.kind) for s in ctx.runbook.steps],
        [{"name": n.name, "rank": n.rank, "target": n.target.model_dump(exclude_defaults=True), "address": n.address,
          "run_dir": n.layout.run_dir, "tmux_session": n.layout.session} for n in nodes],
    )
    return ctx


def _check_selections(ctx: RunContext) -> None:
    """Every step's `on:` names nodes of this fleet (a typo must stop the run before anything runs)."""
    names = [n.name for n in ctx.nodes]
    problems = []
    for step in ctx.runbook.steps:
        try:
            step_node_names(step, names)
        except NodeSelectionError as exc:
            problems.append(f"{ctx.loaded.where(('steps', ctx.runbook.steps.index(step), 'on'))}: {exc}")
    if problems:
        raise RunbookError(problems)


def _close(nodes: Sequence[Node]) -> None:
    for node in nodes:
        node.transport.close()


def close_run(ctx: RunContext) -> None:
    """Close every node's connection (the jobs run on in tmux)."""
    _close(ctx.nodes)


def on_target(path: str, cwd: str | None, home: str) -> str:
    """An absolute path on the target: `~` expanded, a relative one taken from `cwd` (else the home directory)."""
    path = expand_home(path, home)
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
    recorded = fleet_rows(journal, row)
    transports = connect_all([spec for spec, _, _ in recorded])
    nodes = [Node(spec, rank, transport, RunLayout.on(spec.target, run_id, run_dir))
             for rank, ((spec, run_dir, _), transport) in enumerate(zip(recorded, transports))]
    masker = Masker(secret_values.values())
    journal.masker = masker
    try:
        ctx = RunContext(run_id, loaded, row.vars, secret_values, nodes, journal, Path(row.artifacts_dir), masker, observer,
                         resumed=True)
    except Exception:
        _close(nodes)
        raise
    ctx.out.update({n.name: n.message or "out" for n in journal.nodes(run_id) if n.state == "out"})
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
    for spec, run_dir, _ in fleet_rows(journal, row):
        transport = connect(spec.target)
        try:
            end_run_tmux(transport, RunLayout.on(spec.target, run_id, run_dir))
        finally:
            transport.close()
    for step in journal.steps(run_id):
        if step.state not in TERMINAL_STEP_STATES:
            journal.set_step(run_id, step.step_id, state="cancelled", ended=time.time(), message="cancelled")
    journal.set_run(run_id, state="cancelled", ended=time.time(), message="cancelled (no controller was running)")
    journal.event(run_id, None, "run_cancelled", "cancelled: jobs stopped, tmux closed")
    return "cancelled"
