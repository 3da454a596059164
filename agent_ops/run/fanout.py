"""A step across the fleet: one driver per node it runs on, the failure policy between them, one verdict.

The scheduler starts a step here; a step on one node (a fleet of one included) is the same call with
one part. Each part is steps.drive_on_node on that node's view of the run. With `on_node_failure:
stop_all` the first part that fails by itself stops the others at once (their drivers see the step's
StopSignal within one wake-up and kill their jobs); with `continue` the others finish and a failed node
is taken out of the fleet: later steps run on the nodes left. When a step fails on several nodes, blame
(fleet/blame.py) names the node whose failure came first.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent_ops.fleet.blame import Blame, NodeFailure, blame, is_knock_on, root_error
from agent_ops.fleet.compare import disagreements
from agent_ops.fleet.placement import Placement
from agent_ops.run.context import RunContext
from agent_ops.run.jobs import JobHandle
from agent_ops.run.monitor import Monitor
from agent_ops.run.nodes import Node, step_node_names
from agent_ops.run.remedy import log_tail
from agent_ops.run.steps import HandleKey, StepContext, StepOutcome, StopSignal, drive_on_node
from agent_ops.runbook.schema import CheckStep, GateStep, Step

# A node that failed only because a peer died (its socket closed, a collective timed out) waits this long for the
# peer's own failure before the others are stopped: stopping the peer first would erase the evidence blame needs
# (torchrun notices a dead worker on its next look, 0.1 s by default, while a closed socket is seen at once).
KNOCK_ON_GRACE_S = 2.0


@dataclass
class FleetDrive:
    """What the scheduler lends a step: the run (head's view), each node's monitor, the job handles, the run's stop."""

    run: RunContext
    monitors: dict[str, Monitor]
    handles: dict[HandleKey, JobHandle]
    stop_flag: threading.Event
    started: Callable[[str], None]
    placed_on: str | None = None  # an `on: any` step: the node the scheduler chose
    placement: Placement | None = None  # the scheduler's book of placed steps (re-queues)


def nodes_of(run: RunContext, step: Step) -> list[str]:
    """The nodes a step runs on (a gate without `on:`: where its job ran), before taking out failed nodes."""
    names = [n.name for n in run.nodes]
    job_nodes = None
    if isinstance(step, GateStep) and step.job is not None:
        row = run.journal.step(run.run_id, step.job)
        job_nodes = row.nodes if row and row.nodes is not None else step_node_names(run.runbook.step(step.job), names)
    return step_node_names(step, names, job_nodes)


def drive_step(fd: FleetDrive, step: Step) -> StepOutcome:
    """Run a step on its nodes and judge it; the step's row and events record the whole."""
    run = fd.run
    chosen = [fd.placed_on] if fd.placed_on else nodes_of(run, step)
    nodes = [n for n in run.nodes if n.name in chosen and n.name not in run.out]
    run.journal.set_step(run.run_id, step.id, state="running", started=time.time(), message=None,
                         nodes=[n.name for n in nodes])
    where = f" on {len(nodes)} nodes" if len(nodes) > 1 else f" on {nodes[0].name}" if nodes and len(run.nodes) > 1 else ""
    run.event("step_started", step.id, f"{step.kind} step {step.title} started{where}")
    if not nodes:
        left_out = ", ".join(f"{n} ({run.out[n]})" for n in chosen)
        outcome = (StepOutcome("failed", f"no node left to run on: {left_out} out of the fleet") if chosen
                   else StepOutcome("skipped", f"skipped: on: {step.on} names no node in a fleet of {len(run.nodes)}"))
        return _end(run, step, outcome)
    stop = StopSignal()
    started = _StartedWhenAll([n.name for n in nodes], lambda: fd.started(step.id))
    first_pass = _passes_on_any(step) and len(nodes) > 1

    def part(node: Node, lead: bool) -> StepOutcome:
        sctx = StepContext(run.for_node(node), fd.monitors[node.name], fd.handles, fd.stop_flag,
                           lambda _sid: started.mark(node.name, True), stop, lead, parts=len(nodes),
                           placed=fd.placed_on is not None, retries=_retries_left(fd, step))
        try:
            outcome = drive_on_node(sctx, step)
        except Exception as exc:  # a bug or a lost node must still end this part, never hang the step
            outcome = StepOutcome("failed", f"{type(exc).__name__}: {exc}")
            sctx.record(step.id, state="failed", ended=time.time(), message=outcome.message, failed_at=time.time())
        started.mark(node.name, False)
        if first_pass and outcome.state == "succeeded":
            stop.set(f"the gate passed on node {node.name}")
        elif _decisive(step, outcome) and run.runbook.on_node_failure == "stop_all" and len(nodes) > 1:
            if _knock_on(run.for_node(node), outcome):
                stop.wait(KNOCK_ON_GRACE_S)  # the peer that died shows its own failure first, if it will
            if stop.set(f"node {node.name} failed"):
                run.event("step_stopping", step.id, f"node {node.name} failed ({outcome.message}); stopping the others",
                          node=node.name)
        return outcome

    if len(nodes) == 1:
        outcomes = [part(nodes[0], True)]
    else:
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix=f"{step.id}@") as pool:
            outcomes = list(pool.map(part, nodes, [i == 0 for i in range(len(nodes))]))
    outcome = _judge(run, step, nodes, outcomes, placed=fd.placed_on is not None)
    if outcome.kind == "moved":  # a gate whose job was re-queued: it starts again with the job, on the job's new node
        message = outcome.message
        run.journal.set_step(run.run_id, step.id, state="pending", message=message)
        run.event("step_requeued", step.id, message)
        return StepOutcome("pending", message, kind="requeue")
    if fd.placed_on and outcome.kind == "unreachable":  # no more placed steps go to a node that was lost
        _take_out(run, fd.placed_on, f"unreachable during step {step.id}")
    if fd.placed_on and _requeue(fd, step, outcome):
        return _requeued(fd, step, outcome)
    return _end(run, step, outcome)


def _retries_left(fd: FleetDrive, step: Step) -> int | None:
    """A placed step's plain retries are re-queues, counted across the nodes it ran on."""
    if fd.placed_on is None or fd.placement is None:
        return None
    return max(0, step.retries - fd.placement.requeued[step.id])


def _requeue(fd: FleetDrive, step: Step, outcome: StepOutcome) -> bool:
    return (outcome.state == "failed" and outcome.kind in ("requeue", "unreachable") and fd.placement is not None
            and fd.placement.requeued[step.id] < step.retries)


def _requeued(fd: FleetDrive, step: Step, outcome: StepOutcome) -> StepOutcome:
    """Back to the queue, to be taken by the next free node (not this one, if another is free)."""
    run, node = fd.run, fd.placed_on
    assert node is not None and fd.placement is not None
    fd.placement.requeue(step.id, node)
    message = (f"re-queued after failing on {node} (retry {fd.placement.requeued[step.id]} of {step.retries}): "
               f"{outcome.message}")
    run.journal.set_step(run.run_id, step.id, state="pending", message=message)
    run.event("step_requeued", step.id, message, node=node)
    return StepOutcome("pending", message, kind="requeue")


class _StartedWhenAll:
    """A background step is `started` (its dependents may go) once every node's job runs or its part has ended,
    and at least one job runs."""

    def __init__(self, parts: list[str], fire: Callable[[], None]) -> None:
        self._waiting = set(parts)
        self._any, self._fired = False, False
        self._fire = fire
        self._lock = threading.Lock()

    def mark(self, node: str, started: bool) -> None:
        """A node's job is running (started) or its part ended; each node counts once, whichever comes first."""
        with self._lock:
            if node not in self._waiting:
                return
            self._waiting.discard(node)
            self._any = self._any or started
            fire = not self._waiting and self._any and not self._fired
            self._fired = self._fired or fire
        if fire:
            self._fire()


def _own_failure(outcome: StepOutcome) -> bool:
    return outcome.state == "failed" and outcome.kind != "stopped"


def _knock_on(view: RunContext, outcome: StepOutcome) -> bool:
    """Whether a part's failure reads as a consequence of another node's (its root error is a knock-on error)."""
    if outcome.kind == "unreachable":
        return False
    try:
        text = log_tail(view, outcome.log_path) if outcome.log_path else ""
    except Exception:  # the log cannot be read: judge on the message
        text = ""
    return is_knock_on(root_error(text) or outcome.message)


def _passes_on_any(step: Step) -> bool:
    return isinstance(step, GateStep) and step.pass_on == "any"


def _decisive(step: Step, outcome: StepOutcome) -> bool:
    """Whether a part's failure decides the step: for a `pass_on: any` gate, a pattern not seen on one node does not
    (another node may show it); a fail_on match, a failed metric assertion or a lost job does."""
    if not _own_failure(outcome):
        return False
    return not (_passes_on_any(step) and outcome.kind in ("deadline", "eof"))


def _judge(run: RunContext, step: Step, nodes: Sequence[Node], outcomes: Sequence[StepOutcome], placed: bool = False
           ) -> StepOutcome:
    """One outcome for the step from its parts, under the runbook's failure policy (a placed step's own failure does
    not take its node out: another cell may well succeed there; a lost node does)."""
    if len(nodes) == 1 and run.runbook.on_node_failure == "stop_all":
        return outcomes[0]
    parts = dict(zip((n.name for n in nodes), outcomes))
    passed = [name for name, o in parts.items() if o.state == "succeeded"]
    if _passes_on_any(step) and passed and not any(_decisive(step, o) for o in outcomes):
        return _passed_on(run, step, passed[0], parts[passed[0]])
    failed = [name for name, o in parts.items() if _own_failure(o)]
    blamed = _record_blame(run, step, nodes, outcomes) if failed and len(nodes) > 1 else None
    if failed and run.runbook.on_node_failure == "continue" and not placed:
        for name in failed:
            _take_out(run, name, f"failed at step {step.id}: {parts[name].message}")
        if any(o.ok for o in outcomes) and all(o.ok for name, o in parts.items() if name not in failed):
            kept = [name for name in parts if name not in failed]
            note = f"{_summary(kept, [parts[k] for k in kept])}; failed on {', '.join(failed)} (out of the fleet)"
            return StepOutcome(_ok_state([parts[k] for k in kept]), note)
    if len(nodes) == 1:
        return outcomes[0]
    if failed:
        first = blamed.node if blamed else failed[0]
        stopped = [name for name, o in parts.items() if o.kind == "stopped"]
        note = f"; stopped on {', '.join(stopped)}" if stopped else ""
        o = parts[first]
        why = f"node {first} first: {blamed.error}" if blamed else f"{first}: {o.message}"
        return StepOutcome("failed", f"failed on {', '.join(failed)}; {why}{note}", o.log_tail, o.log_path)
    not_ok = [o for o in outcomes if not o.ok]
    if not_ok:  # cancelled (the run was cancelled, or stopped, or a gate's job moved)
        return not_ok[0]
    problems = _across_nodes(run, step) if isinstance(step, CheckStep) else []
    if problems:
        for problem in problems:
            run.event("check_failed", step.id, problem)
        return StepOutcome("failed", "; ".join(problems))
    return StepOutcome(_ok_state(outcomes), _summary(list(parts), outcomes))


def _across_nodes(run: RunContext, step: CheckStep) -> list[str]:
    """A check step's comparisons over every node's results (same output, clocks close to each other)."""
    results = {r.node: (r.outputs or {}).get("checks") or [] for r in run.journal.step_nodes(run.run_id, step.id)
               if r.state == "succeeded"}
    return disagreements(step.checks, results)


def _passed_on(run: RunContext, step: Step, node: str, outcome: StepOutcome) -> StepOutcome:
    """A `pass_on: any` gate passed on `node`: its results and progress become the step's (templates read them)."""
    row = next(r for r in run.journal.step_nodes(run.run_id, step.id) if r.node == node)
    run.journal.set_step(run.run_id, step.id, outputs=row.outputs, progress=row.progress, last_line=row.last_line,
                         tail=row.tail)
    return StepOutcome("succeeded", f"{outcome.message} (on {node})", outcome.log_tail, outcome.log_path)


def _ok_state(outcomes: Sequence[StepOutcome]) -> str:
    states = {o.state for o in outcomes}
    if states == {"skipped"}:
        return "skipped"
    return "started" if "started" in states else "succeeded"


def _summary(names: Sequence[str], outcomes: Sequence[StepOutcome]) -> str:
    messages = {o.message for o in outcomes}
    if len(outcomes) == 1:
        return f"{outcomes[0].message} (on {names[0]})"
    if len(messages) == 1:
        return f"{outcomes[0].message} on {len(outcomes)} nodes"
    return "; ".join(f"{n}: {o.message}" for n, o in zip(names, outcomes))


def _take_out(run: RunContext, name: str, why: str) -> None:
    """on_node_failure: continue: a node that failed takes no more steps of this run."""
    if name in run.out:
        return
    run.out[name] = why
    run.journal.set_node(run.run_id, name, state="out", message=why)
    run.event("node_out", None, f"node {name} is out of the fleet: {why}", node=name)


def _record_blame(run: RunContext, step: Step, nodes: Sequence[Node], outcomes: Sequence[StepOutcome]) -> Blame | None:
    """Read each failed or stopped node's log tail and record the node whose failure came first."""
    rows = {r.node: r for r in run.journal.step_nodes(run.run_id, step.id)}
    failures = []
    for node, outcome in zip(nodes, outcomes):
        if outcome.ok:
            continue
        text, at = "", rows[node.name].failed_at if node.name in rows else None
        if outcome.kind != "unreachable" and outcome.log_path:
            try:
                st = node.transport.stat(outcome.log_path)
                text = log_tail(run.for_node(node), outcome.log_path)
                at = st.mtime if st and (_own_failure(outcome) or at is None) else at
            except Exception:  # a node that cannot be read is judged on what the controller saw
                pass
        # A node we stopped counts only if its log shows an error of its own (it may have died before we stopped it).
        if _own_failure(outcome) or root_error(text):
            failures.append(NodeFailure(node.name, text, at, outcome.message, unreachable=outcome.kind == "unreachable"))
    found = blame(failures)
    if found is not None:
        run.journal.set_step(run.run_id, step.id, blame=found.as_dict())
        run.event("blame", step.id, f"blamed node {found.node}: {found.error} ({found.why})", found.as_dict(), node=found.node)
    return found


def _end(run: RunContext, step: Step, outcome: StepOutcome) -> StepOutcome:
    if outcome.state == "started":
        run.journal.set_step(run.run_id, step.id, message=outcome.message)
        run.event("step_left_running", step.id, outcome.message)
        return outcome
    run.journal.set_step(run.run_id, step.id, state=outcome.state, ended=time.time(), message=outcome.message)
    run.event(f"step_{outcome.state}", step.id, outcome.message)
    return outcome
