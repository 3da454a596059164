"""The executor: runs a rendered runbook's DAG on a fleet of nodes, recording everything in the journal.

The scheduler (one loop in the calling thread) starts ready steps within the limits
(`max_parallel`, `throttle` per tag, a matrix's own `max_parallel`, `max_per_node` for steps
placed `on: any`); each step runs in a driver thread, which drives the step's part on each of
its nodes (run/fanout.py); one Monitor thread per node polls that box for every job on it.
Drivers report back through a queue. The journal is written as things happen, so another
process can read status at any moment and `resume` can pick the run up after the controller
dies. A single box is a fleet of one.

Gates hold no slot: a gate only watches, and it starts as soon as its job is up (background
or not), so it always judges a live log; a slot held by the job can never starve its gate.
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections import Counter
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
from agent_ops.runbook.schema import GateStep, Step

UNSETTLED = ("pending", "running")  # an `if: always` step waits only for these to pass


class Executor:
    """Schedules the DAG; see the module docstring."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.runbook = ctx.runbook
        self.deps = dependencies(self.runbook.steps)
        self.after = {s.id: frozenset(s.after) for s in self.runbook.steps}  # deps that must have finished, not just started
        self.state: dict[str, str] = {s.id: "pending" for s in self.runbook.steps}
        self.steps: dict[str, Step] = {s.id: s for s in self.runbook.steps}
        self.gates = frozenset(sid for sid, s in self.steps.items() if isinstance(s, GateStep))
        self.cells: dict[tuple[str, str], list[str]] = {}  # (matrix group, cell) -> its steps
        for sid in self.steps:
            if (cell := self.runbook.cell_of(sid)) is not None:
                self.cells.setdefault((cell.group, cell.cell), []).append(sid)
        self.up: set[str] = set()  # run steps whose job has been started (their gates may start)
        self.starts: Counter[str] = Counter()  # run step -> how often its job has been started (each attempt, each node)
        self.followed: dict[str, int] = {}  # gate -> its job's start count when the gate started: the attempt it follows
        # Gates re-queued with their job: they start again once the job has been started anew, and never on the attempt
        # they followed. Until the scheduler reads the job's own re-queue its state still says started (the gate would
        # start at once on the node that was lost); and the job may already be up again, even done, on another node
        # when the gate's re-queue is read (it must not wait for a start that has happened).
        self.following: set[str] = set()  # such gates: each waits for its job's start count to pass its `followed`
        self.tolerated: set[str] = set()  # failed steps with continue_on_error: dependents go on, the run does not fail
        self.halted: set[str] = set()  # matrix groups that stopped starting cells (fail_fast)
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
        running: set[str] = set()  # driver threads alive: foreground steps, background jobs, gates
        while True:
            if self.journal_error is not None:
                raise self.journal_error
            if self._cancel_requested():
                self._cancel()
                return "cancelled"
            self._settle_pending()
            for step in self.runbook.steps:
                if self.state[step.id] == "pending" and self._ready(step) and self._has_room(step, running):
                    node = self._place(step)
                    if node is None:
                        continue  # every node that may take it is full: the next free one will
                    self.state[step.id] = "running"
                    self.following.discard(step.id)
                    if isinstance(step, GateStep) and step.job:
                        self.followed[step.id] = self.starts[step.job]
                    running.add(step.id)
                    self._pool.submit(self._drive, step, node or None)
            pending = [sid for sid, st in self.state.items() if st == "pending"]
            if not running and not pending:
                ok = all(st in DONE_OK or st == "started" or sid in self.tolerated for sid, st in self.state.items())
                return "succeeded" if ok else "failed"
            foreground = any(self.state[s] == "running" for s in running)
            # `if: always` steps run after the rest: they must not keep a failed run waiting on a training job.
            waiting = [sid for sid in pending if self.steps[sid].if_ != "always"]
            if not foreground and not waiting and self._failed():
                self._stop_background(running)  # the run has failed: don't wait hours for a training job
            try:
                kind, sid, outcome = self.events.get(timeout=0.5)
            except queue.Empty:
                self.ctx.journal.set_run(self.ctx.run_id, heartbeat=time.time())
                continue
            if kind == "started":
                self.up.add(sid)
                self.starts[sid] += 1
                step = self.steps[sid]
                if getattr(step, "background", False):
                    self.state[sid] = "started"  # a background job is up: its dependents may go
                    if getattr(step, "keep_running", False):
                        running.discard(sid)  # the run may end while it runs on
            else:
                running.discard(sid)
                self.placement.release(sid)
                self._ended(sid, outcome)  # "pending" again: re-queued on the next free node

    def _ended(self, sid: str, outcome: StepOutcome | None) -> None:
        self.state[sid] = outcome.state if outcome else "failed"
        if self.state[sid] == "pending":  # re-queued: it (or the job a gate watches) must be up again before gates go
            self.up.discard(sid)
            step = self.steps[sid]
            if isinstance(step, GateStep) and step.job:
                self.following.add(sid)  # a gate is re-queued only after it ran: `followed` holds its attempt
            return
        if self.state[sid] != "failed":
            return
        if self.steps[sid].continue_on_error:
            self.tolerated.add(sid)
            self.ctx.event("step_tolerated", sid, "failed, but continue_on_error: the run goes on")
            return
        cell = self.runbook.cell_of(sid)
        if cell and cell.cell and cell.fail_fast and cell.group not in self.halted:
            self.halted.add(cell.group)
            self.ctx.event("matrix_halted", sid, f"cell {cell.cell} of {cell.group} failed: cells not yet started are not run (fail_fast)")

    def _failed(self) -> bool:
        return any(st == "failed" and sid not in self.tolerated for sid, st in self.state.items())

    def _stop_background(self, running: set[str]) -> None:
        for sid in running:
            cell = self.runbook.cell_of(sid)
            if cell and not cell.fail_fast and all(self.state[m] != "failed" for m in self.cells[(cell.group, cell.cell)]):
                continue  # fail_fast: false: another cell's failure does not end this one's job
            jobs = {node: h for (step, node), h in self.handles.items() if step == sid}
            if jobs and sid not in self._stopping:
                self._stopping.add(sid)
                self.ctx.event("step_stopping", sid, "stopping background job: the run has failed")
                self._on_each(lambda node, jobs=jobs: kill_job(node.transport, node.layout, jobs[node.name]),
                              [n for n in self.ctx.nodes if n.name in jobs])

    # --- when a step may start ----------------------------------------------------------------

    def _ok(self, dep: str, *, exited: bool) -> bool:
        """Whether a dependency lets a step go: done (or tolerated), or, unless it must have exited, a job that is up."""
        st = self.state[dep]
        return st in DONE_OK or dep in self.tolerated or (not exited and st == "started")

    def _ready(self, step: Step) -> bool:
        sid, after = step.id, self.after[step.id]
        job = step.job if isinstance(step, GateStep) else None
        for dep in self.deps[sid]:
            if dep == job and sid in self.following:
                if dep in self.up and self.starts[dep] > self.followed[sid]:
                    continue  # the job was started anew since the gate was moved: the gate goes to it
                return False
            if dep == job and dep in self.up:
                continue  # a gate starts with its job (background or not): it judges the log while it is written
            if step.if_ == "always":
                if self.state[dep] in UNSETTLED or (dep in after and self.state[dep] == "started"):
                    return False
            elif not self._ok(dep, exited=dep in after):
                return False
        return True

    def _has_room(self, step: Step, running: set[str]) -> bool:
        """max_parallel, the throttle of each of the step's tags, its matrix's max_parallel; a gate needs no room."""
        if step.id in self.gates:
            return True
        if sum(1 for sid in running if sid not in self.gates) >= self.runbook.max_parallel:
            return False
        for tag in step.tags:
            limit = self.runbook.throttle.get(tag)
            alive = (sid for sid, st in self.state.items() if st in ("running", "started") and sid not in self.gates)
            if limit is not None and sum(1 for sid in alive if tag in self.steps[sid].tags) >= limit:
                return False
        cell = self.runbook.cell_of(step.id)
        if cell is None or cell.max_parallel is None or self._cell_active(cell.group, cell.cell, running):
            return True
        active = sum(1 for group, key in self.cells if group == cell.group and self._cell_active(group, key, running))
        return active < cell.max_parallel

    def _cell_active(self, group: str, cell: str, running: set[str]) -> bool:
        """A cell is in progress while one of its steps holds a slot, or while it is part done."""
        members = self.cells[(group, cell)]
        if any(sid in running and sid not in self.gates for sid in members):
            return True
        states = [self.state[sid] for sid in members]
        return "pending" in states and any(st != "pending" for st in states)

    def _settle_pending(self) -> None:
        """Pending steps that will never run are recorded as such: gates of skipped jobs, steps whose dependency
        failed or did not run, cells of a matrix that stopped on a failure (fail_fast)."""
        changed = True
        while changed:
            changed = False
            for step in self.runbook.steps:
                sid = step.id
                if self.state[sid] != "pending":
                    continue
                why, state = self._never(step), "cancelled"
                if why is None and isinstance(step, GateStep) and step.job and self.state.get(step.job) == "skipped":
                    why, state = f"skipped: job {step.job} was skipped", "skipped"
                if why is None:
                    continue
                self.state[sid] = state
                self.ctx.journal.set_step(self.ctx.run_id, sid, state=state, message=why)
                self.ctx.event("step_skipped" if state == "skipped" else "step_not_run", sid, why)
                changed = True

    def _never(self, step: Step) -> str | None:
        """Why a pending step can never run, or None."""
        if step.if_ == "always":
            return None
        bad = [d for d in self.deps[step.id] if self.state[d] in ("failed", "cancelled") and d not in self.tolerated]
        if bad:
            return f"not run: dependency {bad[0]} {'failed' if self.state[bad[0]] == 'failed' else 'was not run'}"
        job = step.job if isinstance(step, GateStep) else None
        if (job and step.id in self.following and self.state[job] in DONE_OK
                and self.starts[job] <= self.followed[step.id]):
            return f"not run: job {job} ended on a node that was lost before the gate could judge it"
        cell = self.runbook.cell_of(step.id)
        if cell and cell.group in self.halted and all(self.state[sid] == "pending" for sid in self.cells[(cell.group, cell.cell)]):
            return f"not run: another cell of {cell.group} failed (fail_fast: false runs every cell)"
        return None

    def _place(self, step: Step) -> str | None:
        """For an `on: any` step, the free node it starts on (None: none free now); '' for any other step.

        The steps of one matrix cell (a group) share their node: the first one placed takes a slot there."""
        if step.on != "any":
            return ""
        cell = self.runbook.cell_of(step.id)
        key = f"{cell.group}[{cell.cell}]" if cell and cell.cell else step.id
        gone = set(self.ctx.out) | {name for name, m in self.monitors.items() if m.error is not None}
        node = self.placement.free_node(key, gone)
        if node is None and gone >= set(self.placement.nodes):
            node = self.placement.nodes[0]  # no node is left to take it: it fails there, saying so
        if node is not None:
            self.placement.take(step.id, key, node)
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
