"""Status as typed values read from the journal: one set of views for the CLI's --json and for MCP tools.

The views are frozen dataclasses, not pydantic models: `agentops status --json` is polled as a fresh process
every few seconds, and building eight pydantic models cost more than reading the journal. Field docs are
attribute docstrings, which pydantic reads (`use_attribute_docstrings`) where a view is part of an MCP tool's
JSON Schema.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field, fields
from typing import Any

from agent_ops.bounds import MAX_POLL_S
from agent_ops.record.bill import SCHEMA_CONFIG, Bill, run_bill
from agent_ops.record.journal import TERMINAL_RUN_STATES, Journal, RunRow
from agent_ops.transport.tmux import Tmux, run_tmux_socket

HEARTBEAT_STALE_S = 15.0


@dataclass(frozen=True, kw_only=True)
class RemedyView:
    """One known-issue remediation applied to a step."""

    __pydantic_config__ = SCHEMA_CONFIG
    step_id: str
    attempt: int
    issue_id: str
    matched_lines: list[str]
    fix: Any
    result: str
    ts: float


@dataclass(frozen=True, kw_only=True)
class AttemptView:
    """One attempt of a step on one node."""

    __pydantic_config__ = SCHEMA_CONFIG
    node: str = ""
    """The node it ran on ('' in runs recorded before fleets)."""
    attempt: int
    started: float
    ended: float | None = None
    rc: int | None = None
    verdict: str | None = None
    message: str | None = None
    job_dir: str | None = None
    window: str | None = None


@dataclass(frozen=True, kw_only=True)
class NodePartView:
    """One node's part of a step."""

    __pydantic_config__ = SCHEMA_CONFIG
    node: str
    state: str
    attempt: int
    started: float | None = None
    ended: float | None = None
    message: str | None = None
    last_line: str | None = None


@dataclass(frozen=True, kw_only=True)
class BlameView:
    """The node blamed for a step that failed on several nodes: the one whose failure came first."""

    __pydantic_config__ = SCHEMA_CONFIG
    node: str
    error: str
    """Its root error line (from its log tail)."""
    at: float | None = None
    """When it failed (its log's last write on the box)."""
    why: str
    knock_on: list[str] = field(default_factory=list)
    """Nodes whose errors were consequences of this one."""


@dataclass(frozen=True, kw_only=True)
class NodeView:
    """One node of the run's fleet."""

    __pydantic_config__ = SCHEMA_CONFIG
    name: str
    rank: int
    """0 is the head."""
    target: str
    address: str
    """Where the other nodes reach it."""
    state: str
    """ok, or out (failed; with on_node_failure: continue it takes no more steps)."""
    message: str | None = None
    run_dir: str
    attach: str
    """Command (on the node) to watch its jobs in tmux."""


@dataclass(frozen=True, kw_only=True)
class StepView:
    """A step's state, attempts, gate progress and last log line; on a fleet, each node's part and the blame."""

    __pydantic_config__ = SCHEMA_CONFIG
    id: str
    kind: str
    state: str
    attempt: int
    started: float | None = None
    ended: float | None = None
    elapsed_s: float | None = None
    message: str | None = None
    last_line: str | None = None
    waiting_for_input: str | None = None
    """The prompt a running job's pane shows while the job waits at it ([Y/n], a password request); its log alone
    does not tell. None once output resumes."""
    log_tail: list[str] = field(default_factory=list)
    """The newest log lines (secrets masked)."""
    progress: dict[str, Any] | None = None
    """Gate patterns (matched lines, deadline left) and metrics."""
    env: dict[str, str] | None = None
    """A run step's job environment as its newest attempt got it (secrets ***)."""
    outputs: dict[str, Any] | None = None
    """What later steps read as steps.ID...: `outputs` (declared outputs, a gate's named groups), `metrics` (a gate's
    series), `checks` (a check step's results with their measured details); secrets masked."""
    attempts: list[AttemptView] = field(default_factory=list)
    nodes: list[NodePartView] = field(default_factory=list)
    """Each node's part: running, done, failed, stopped."""
    blame: BlameView | None = None


@dataclass(frozen=True, kw_only=True)
class RunStatus:
    """Everything known about a run, as the journal has it."""

    __pydantic_config__ = SCHEMA_CONFIG
    id: str
    runbook: str
    runbook_path: str
    target: str
    state: str
    message: str | None = None
    created: float
    started: float | None = None
    ended: float | None = None
    elapsed_s: float | None = None
    controller_alive: bool
    """Whether a controller process is driving the run now."""
    tmux_session: str | None = None
    attach: str | None = None
    """Command to watch the jobs in tmux on the target."""
    run_dir: str | None = None
    artifacts_dir: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    nodes: list[NodeView] = field(default_factory=list)
    """The fleet, head first (one node for a single box)."""
    blame: BlameView | None = None
    """For a run that failed on several nodes: the node whose failure came first (of the first step that has a blame)."""
    steps: list[StepView]
    remedies: list[RemedyView] = field(default_factory=list)
    bill: Bill | None = None
    """For a run on rented boxes: per node $/h, spent and projected, the total, the budget."""
    next_poll_s: float
    """When to ask again (never more than 30 s)."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_RUN_STATES


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One line of `agentops list`."""

    __pydantic_config__ = SCHEMA_CONFIG
    id: str
    runbook: str
    state: str
    target: str
    """The target, or for a fleet: the head's and how many nodes."""
    nodes: list[str] = field(default_factory=list)
    """The fleet's node names, head first."""
    created: float
    ended: float | None = None
    message: str | None = None


def _view(cls: type, row: Any) -> Any:
    """A view of a journal row: the row's fields the view has."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


def controller_alive(run: RunRow) -> bool:
    """A run's controller is alive if its pid exists here (same host), else if its heartbeat is fresh."""
    if run.state in TERMINAL_RUN_STATES or not run.controller_pid:
        return False
    alive = process_alive(run.controller_pid, run.controller_host)
    return (time.time() - (run.heartbeat or 0)) < HEARTBEAT_STALE_S if alive is None else alive


def process_alive(pid: int, host: str | None) -> bool | None:
    """Whether process `pid` of `host` exists; None when it ran on another host (this one cannot tell)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(journal: Journal, run_id: str) -> RunStatus | None:
    """The full status of one run, or None if the journal has no such run."""
    run = journal.run(run_id)
    if run is None:
        return None
    now = time.time()
    attempts: dict[str, list[AttemptView]] = {}
    for a in journal.attempts(run_id):
        attempts.setdefault(a.step_id, []).append(_view(AttemptView, a))
    parts: dict[str, list[NodePartView]] = {}
    for p in journal.step_nodes(run_id):
        parts.setdefault(p.step_id, []).append(_view(NodePartView, p))
    steps = []
    for s in journal.steps(run_id):
        end = s.ended or (now if s.state == "running" else None)
        steps.append(StepView(
            id=s.step_id, kind=s.kind, state=s.state, attempt=s.attempt, started=s.started, ended=s.ended,
            elapsed_s=round(end - s.started, 3) if s.started and end else None, message=s.message,
            last_line=s.last_line, waiting_for_input=s.waiting_for_input, log_tail=s.tail or [], progress=s.progress, env=s.env, outputs=s.outputs,
            attempts=attempts.get(s.step_id, []), nodes=parts.get(s.step_id, []),
            blame=BlameView(**s.blame) if s.blame else None,
        ))
    remedies = [_view(RemedyView, r) for r in journal.remedies(run_id)]
    target = _target_text(run, journal)
    tmux = Tmux(run_tmux_socket(run.target.get("tmux_socket") if isinstance(run.target, dict) else None, run.id))
    # A finished run's session is gone unless a job was left running (keep_running): only then is there anything to watch.
    watchable = run.state not in TERMINAL_RUN_STATES or any(s.state in ("running", "started") for s in steps)
    attach = tmux.attach(run.tmux_session) if run.tmux_session and watchable else None
    nodes = [NodeView(name=n.name, rank=n.rank, target=n.target.get("url", "local"), address=n.address, state=n.state,
                      message=n.message, run_dir=n.run_dir,
                      attach=Tmux(run_tmux_socket(n.target.get("tmux_socket"), run.id)).attach(n.tmux_session))
             for n in journal.nodes(run_id)]
    alive = controller_alive(run)
    end = run.ended or now
    return RunStatus(
        id=run.id, runbook=run.runbook_name, runbook_path=run.runbook_path, target=target, state=run.state,
        message=run.message, created=run.created, started=run.started, ended=run.ended,
        elapsed_s=round(end - run.started, 3) if run.started else None, controller_alive=alive,
        tmux_session=run.tmux_session, attach=attach, run_dir=run.run_dir, artifacts_dir=run.artifacts_dir,
        vars=run.vars or {}, nodes=nodes, blame=next((s.blame for s in steps if s.blame), None), steps=steps, remedies=remedies,
        bill=run_bill(journal, run_id),
        next_poll_s=0.0 if run.state in TERMINAL_RUN_STATES else min(2.0 if alive else 10.0, MAX_POLL_S),
    )


def run_summaries(journal: Journal, limit: int = 50) -> list[RunSummary]:
    """Recent runs, newest first."""
    out = []
    for r in journal.runs(limit):
        out.append(RunSummary(id=r.id, runbook=r.runbook_name, state=r.state, target=_target_text(r, journal),
                              nodes=[n.name for n in journal.nodes(r.id)], created=r.created, ended=r.ended, message=r.message))
    return out


def _target_text(run: RunRow, journal: Journal) -> str:
    url = run.target.get("url", "local") if isinstance(run.target, dict) else str(run.target)
    count = len(journal.nodes(run.id))
    return f"{url} + {count - 1} more nodes" if count > 1 else url
