"""Status as typed values read from the journal: one model for the CLI's --json and for MCP tools."""
from __future__ import annotations

import os
import socket
import time
from typing import Any

from pydantic import BaseModel, Field

from agent_ops.bounds import MAX_POLL_S
from agent_ops.record.bill import Bill, run_bill
from agent_ops.record.journal import TERMINAL_RUN_STATES, Journal, RunRow
from agent_ops.transport.target import run_tmux_socket

HEARTBEAT_STALE_S = 15.0


class RemedyView(BaseModel):
    """One known-issue remediation applied to a step."""

    step_id: str
    attempt: int
    issue_id: str
    matched_lines: list[str]
    fix: Any
    result: str
    ts: float


class AttemptView(BaseModel):
    """One attempt of a step on one node."""

    node: str = Field("", description="The node it ran on ('' in runs recorded before fleets).")
    attempt: int
    started: float
    ended: float | None = None
    rc: int | None = None
    verdict: str | None = None
    message: str | None = None
    job_dir: str | None = None
    window: str | None = None


class NodePartView(BaseModel):
    """One node's part of a step."""

    node: str
    state: str
    attempt: int
    started: float | None = None
    ended: float | None = None
    message: str | None = None
    last_line: str | None = None


class BlameView(BaseModel):
    """The node blamed for a step that failed on several nodes: the one whose failure came first."""

    node: str
    error: str = Field(description="Its root error line (from its log tail).")
    at: float | None = Field(None, description="When it failed (its log's last write on the box).")
    why: str
    knock_on: list[str] = Field(default_factory=list, description="Nodes whose errors were consequences of this one.")


class NodeView(BaseModel):
    """One node of the run's fleet."""

    name: str
    rank: int = Field(description="0 is the head.")
    target: str
    address: str = Field(description="Where the other nodes reach it.")
    state: str = Field(description="ok, or out (failed; with on_node_failure: continue it takes no more steps).")
    message: str | None = None
    run_dir: str
    attach: str = Field(description="Command (on the node) to watch its jobs in tmux.")


class StepView(BaseModel):
    """A step's state, attempts, gate progress and last log line; on a fleet, each node's part and the blame."""

    id: str
    kind: str
    state: str
    attempt: int
    started: float | None = None
    ended: float | None = None
    elapsed_s: float | None = None
    message: str | None = None
    last_line: str | None = None
    waiting_for_input: str | None = Field(
        None, description="The prompt a running job's pane shows while the job waits at it ([Y/n], a password request); "
        "its log alone does not tell. None once output resumes.")
    log_tail: list[str] = Field(default_factory=list, description="The newest log lines (secrets masked).")
    progress: dict[str, Any] | None = Field(None, description="Gate patterns (matched lines, deadline left) and metrics.")
    env: dict[str, str] | None = Field(None, description="A run step's job environment as its newest attempt got it (secrets ***).")
    outputs: dict[str, Any] | None = Field(
        None, description="What later steps read as steps.ID...: `outputs` (declared outputs, a gate's named groups), "
        "`metrics` (a gate's series), `checks` (a check step's results with their measured details); secrets masked.")
    attempts: list[AttemptView] = []
    nodes: list[NodePartView] = Field(default_factory=list, description="Each node's part: running, done, failed, stopped.")
    blame: BlameView | None = None


class RunStatus(BaseModel):
    """Everything known about a run, as the journal has it."""

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
    controller_alive: bool = Field(description="Whether a controller process is driving the run now.")
    tmux_session: str | None = None
    attach: str | None = Field(None, description="Command to watch the jobs in tmux on the target.")
    run_dir: str | None = None
    artifacts_dir: str | None = None
    vars: dict[str, Any] = {}
    nodes: list[NodeView] = Field(default_factory=list, description="The fleet, head first (one node for a single box).")
    blame: BlameView | None = Field(None, description="For a run that failed on several nodes: the node whose failure came "
                                    "first (of the first step that has a blame).")
    steps: list[StepView]
    remedies: list[RemedyView] = []
    bill: Bill | None = Field(None, description="For a run on rented boxes: per node $/h, spent and projected, the total, "
                              "the budget.")
    next_poll_s: float = Field(description="When to ask again (never more than 30 s).")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_RUN_STATES


class RunSummary(BaseModel):
    """One line of `agentops list`."""

    id: str
    runbook: str
    state: str
    target: str = Field(description="The target, or for a fleet: the head's and how many nodes.")
    nodes: list[str] = Field(default_factory=list, description="The fleet's node names, head first.")
    created: float
    ended: float | None = None
    message: str | None = None


def controller_alive(run: RunRow) -> bool:
    """A run's controller is alive if its pid exists here (same host), else if its heartbeat is fresh."""
    if run.state in TERMINAL_RUN_STATES or not run.controller_pid:
        return False
    if run.controller_host == socket.gethostname():
        try:
            os.kill(run.controller_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return (time.time() - (run.heartbeat or 0)) < HEARTBEAT_STALE_S


def run_status(journal: Journal, run_id: str) -> RunStatus | None:
    """The full status of one run, or None if the journal has no such run."""
    run = journal.run(run_id)
    if run is None:
        return None
    now = time.time()
    attempts: dict[str, list[AttemptView]] = {}
    for a in journal.attempts(run_id):
        attempts.setdefault(a.step_id, []).append(AttemptView(**{k: getattr(a, k) for k in AttemptView.model_fields}))
    parts: dict[str, list[NodePartView]] = {}
    for p in journal.step_nodes(run_id):
        parts.setdefault(p.step_id, []).append(NodePartView(**{k: getattr(p, k) for k in NodePartView.model_fields}))
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
    remedies = [RemedyView(**{k: getattr(r, k) for k in RemedyView.model_fields}) for r in journal.remedies(run_id)]
    target = _target_text(run, journal)
    tmux_socket = run_tmux_socket(run.target.get("tmux_socket") if isinstance(run.target, dict) else None, run.id)
    # A finished run's session is gone unless a job was left running (keep_running): only then is there anything to watch.
    watchable = run.state not in TERMINAL_RUN_STATES or any(s.state in ("running", "started") for s in steps)
    attach = (f"tmux -L {tmux_socket} attach -t {run.tmux_session}"
              if run.tmux_session and watchable else None)
    nodes = [NodeView(name=n.name, rank=n.rank, target=n.target.get("url", "local"), address=n.address, state=n.state,
                      message=n.message, run_dir=n.run_dir,
                      attach=f"tmux -L {run_tmux_socket(n.target.get('tmux_socket'), run.id)} attach -t {n.tmux_session}")
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
