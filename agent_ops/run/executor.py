"""The executor: runs a rendered runbook's DAG on a fleet of nodes, recording everything in the journal.

The scheduler (one loop in the calling thread) starts ready steps up to
`max_parallel`; each step runs in a driver thread, which drives the step's part
on each of its nodes (run/fanout.py); one Monitor thread per node polls that box
for every job on it. Drivers report back through a queue. The journal is written
as things happen, so another process can read status at any moment and `resume`
can pick the run up after the controller dies. A single box is a fleet of one.
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from agent_ops.errors import JournalError
from agent_ops.fleet.placement import Placement
from agent_ops.record.journal import DONE_OK
from agent_ops.run.context import RunContext
from agent_ops.run.fanout import FleetDrive, drive_step
from agent_ops.run.jobs import JobHandle, end_run_tmux, kill_job, prepare_run
from agent_ops.run.monitor import Monitor
from agent_ops.run.nodes import Node
from agent_ops.run.poll import Backoff
from agent_ops.run.steps import HandleKey, StepOutcome
from agent_ops.runbook.plan import dependencies
from agent_ops.runbook.schema import Step


class Executor:
    """Schedules the DAG; see the module docstring."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.runbook = ctx.runbook
        self.deps = dependencies(self.runbook.steps)
        self.after = {s.id: frozenset(s.after) for s in self.runbook.steps}  # deps that must have finished, not just started
        self.state: dict[str, str] = {s.id: "pending" for s in self.runbook.steps}
        self.handles: dict[HandleKey, JobHandle] = {}  # (step id, node) -> current job (gates follow them)
        self.monitors = {n.name: Monitor(n.transport, n.layout, Backoff(self.runbook.poll)) for n in ctx.nodes}
        self.events: queue.Queue[tuple[str, str, StepOutcome | None]] = queue.Queue()
        self.stop_flag = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=len(self.runbook.steps), thread_name_prefix="step")
        self._cancelled = False
        self._stopping: set[str] = set()
        self.journal_error: JournalError | None = None  # set by a driver: nothing more can be recorded
        self.placement = Placement([n.name for n in ctx.nodes], self.runbook.max_per_node)  # `on: any` steps

    # --- the scheduler --------------------------------------------------------------------

    def execute(self) -> str:
        """Run to the end; returns the run's final state."""
        ctx = self.ctx
        ctx.journal.set_run(ctx.run_id, state="running", started=time.time(), controller_pid=os.getpid(),
                            controller_host=socket.gethostname(), heartbeat=time.time(), message=None)
        ctx.event("run_started", None, f"run {ctx.run_id} on {_where(ctx.nodes)} (tmux: {ctx.layout.attach_hint()})")
        error = None
        try:
            self._on_each(lambda node: prepare_run(node.transport, node.layout))
            for monitor in self.monitors.values():
                monitor.start()
            self._restore()
            final = self._schedule()
        except JournalError:
            raise  # nothing more can be recorded: the front end says so; the jobs run on and `resume` re-attaches
        except Exception as exc:  # a target that cannot host the run (or a bug): the run still ends, failed, saying why
            final, error = "failed", f"{type(exc).__name__}: {exc}"
            ctx.event("run_error", None, error)
        finally:
            self.stop_flag.set()
            self._pool.shutdown(wait=True, cancel_futures=False)
            for monitor in self.monitors.values():
                monitor.stop()
        self._finish(final, error)
        return final

    def _on_each(self, action: Callable[[Node], None], nodes: list[Node] | None = None) -> None:
        """`action` on every node (reachable ones: a node whose monitor lost it is left alone) side by side; the
        first error, named by node, is raised after all have finished."""
        nodes = [n for n in (nodes or self.ctx.nodes) if self.monitors[n.name].error is None]
        if len(nodes) == 1:
            action(nodes[0])
            return
        with ThreadPoolExecutor(max_workers=min(16, len(nodes)) or 1, thread_name_prefix="fleet") as pool:
            futures = [(n, pool.submit(action, n)) for n in nodes]
        for node, future in futures:
            exc = future.exception()
            if exc is not None:
                raise type(exc)(f"node {node.name}: {exc}") from exc

    def _restore(self) -> None:
        """On resume: steps that already succeeded stay done and are never re-run."""
        if not self.ctx.resumed:
            return
        for row in self.ctx.journal.steps(self.ctx.run_id):
            if row.state in DONE_OK:
                self.state[row.step_id] = row.state

    def _schedule(self) -> str:
        running: set[str] = set()  # driver threads alive: foreground steps and background jobs
        while True:
            if self.journal_error is not None:
                raise self.journal_error
            if self._cancel_requested():
                self._cancel()
                return "cancelled"
            self._block_unreachable()
            for step in self.runbook.steps:
                if len(running) < self.runbook.max_parallel and self.state[step.id] == "pending" and self._ready(step.id):
                    node = self._place(step)
                    if node is None:
                        continue  # every node that may take it is full: the next free one will
                    self.state[step.id] = "running"
                    running.add(step.id)
                    self._pool.submit(self._drive, step, node or None)
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
                self.placement.release(sid)
                self.state[sid] = outcome.state if outcome else "failed"  # "pending" again: re-queued

    def _stop_background(self, running: set[str]) -> None:
        for sid in running:
            jobs = {node: h for (step, node), h in self.handles.items() if step == sid}
            if jobs and sid not in self._stopping:
                self._stopping.add(sid)
                self.ctx.event("step_stopping", sid, "stopping background job: the run has failed")
                self._on_each(lambda node, jobs=jobs: kill_job(node.transport, node.layout, jobs[node.name]),
                              [n for n in self.ctx.nodes if n.name in jobs])

    def _ready(self, sid: str) -> bool:
        after = self.after[sid]
        return all(self.state[d] in (DONE_OK if d in after else (*DONE_OK, "started"))
                   for d in self.deps[sid])

    def _block_unreachable(self) -> None:
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

    def _place(self, step: Step) -> str | None:
        """For an `on: any` step, the free node it starts on (None: none free now); '' for any other step."""
        if step.on != "any":
            return ""
        gone = set(self.ctx.out) | {name for name, m in self.monitors.items() if m.error is not None}
        node = self.placement.free_node(step.id, gone)
        if node is None and gone >= set(self.placement.nodes):
            node = self.placement.nodes[0]  # no node is left to take it: it fails there, saying so
        if node is not None:
            self.placement.take(step.id, node)
        return node

    def _drive(self, step: Step, placed_on: str | None = None) -> None:
        fd = FleetDrive(self.ctx, self.monitors, self.handles, self.stop_flag,
                        started=lambda sid: self.events.put(("started", sid, None)), placed_on=placed_on,
                        placement=self.placement)
        outcome = StepOutcome("failed", "the journal cannot be written")
        try:
            outcome = drive_step(fd, step)
        except JournalError as exc:
            self.journal_error = exc
        except Exception as exc:  # a bug or a lost target must still end the step, never hang the run
            outcome = StepOutcome("failed", f"{type(exc).__name__}: {exc}")
            try:
                self.ctx.journal.set_step(self.ctx.run_id, step.id, state="failed", ended=time.time(), message=outcome.message)
                self.ctx.event("step_failed", step.id, outcome.message)
            except JournalError as journal_exc:
                self.journal_error = journal_exc
        finally:
            self.events.put(("done", step.id, outcome))  # whatever happened, the scheduler hears of it

    # --- cancel and finish ------------------------------------------------------------------

    def _cancel_requested(self) -> bool:
        row = self.ctx.journal.run(self.ctx.run_id)
        return bool(row and row.state == "cancelling")

    def _cancel(self) -> None:
        self._cancelled = True
        self.stop_flag.set()
        self._on_each(lambda node: end_run_tmux(node.transport, node.layout))
        for sid, st in self.state.items():
            if st in ("pending", "running", "started"):
                self.state[sid] = "cancelled"
                self.ctx.journal.set_step(self.ctx.run_id, sid, state="cancelled", ended=time.time(), message="cancelled")
        self.ctx.event("jobs_stopped", None, "cancelled: jobs stopped, tmux closed")  # run_cancelled comes from _finish

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
            # Every job has ended (their output is in the job logs): an empty session, or the run's own tmux server,
            # would only pile up on the box.
            try:
                self._on_each(lambda node: end_run_tmux(node.transport, node.layout))
            except Exception:
                pass
        if ctx.out:
            note += "; out of the fleet: " + ", ".join(f"{n} ({why})" for n, why in ctx.out.items())
        counts: dict[str, int] = {}
        for st in self.state.values():
            counts[st] = counts.get(st, 0) + 1
        summary = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
        why = f"{error}; " if error else ""
        ctx.journal.set_run(ctx.run_id, state=final, ended=time.time(), message=f"{final}: {why}{summary}{note}",
                            heartbeat=time.time())
        longest = max(m.max_interval for m in self.monitors.values())
        ctx.event(f"run_{final}", None, f"run {final}: {why}{summary}{note} (max poll interval {longest:.2f}s)",
                  {"max_poll_interval_s": longest})


def _where(nodes: list[Node]) -> str:
    if len(nodes) == 1:
        return nodes[0].transport.name
    return f"{len(nodes)} nodes: " + ", ".join(f"{n.name} ({n.transport.name})" for n in nodes)
