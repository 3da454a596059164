"""Step drivers: what each step kind does on one node, one attempt at a time, with retries around it.

A step on several nodes is one driver per node (run/fanout.py starts them and judges the whole);
each writes its node's part of the step (journal `step_nodes`) and, for the step's lead node, the
step's own row's progress, log tail and results.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent_ops.errors import RunbookError
from agent_ops.fleet.blame import is_knock_on, root_error
from agent_ops.record.journal import DONE_OK, TERMINAL_STEP_STATES, StepNodeRow, StepState
from agent_ops.run.context import RunContext, on_target
from agent_ops.run.jobs import JobHandle, JobSpec, exit_code_written, kill_job, start_job, unwritable_reason
from agent_ops.run.logwatch import LogWatch, Verdict
from agent_ops.run.monitor import Monitor
from agent_ops.run.pane import PromptWatch, capture
from agent_ops.run.poll import Deadline
from agent_ops.run.remedy import explain, log_tail, remediate
from agent_ops.runbook.results import OUTPUT_ENV, parse_output_lines
from agent_ops.runbook.schema import CheckStep, GateStep, GetStep, PutStep, RunStep, Step
from checks.evaluate import evaluate, evaluate_all

MAX_OUTPUTS = 1 << 20  # outputs are values for templates, read whole: a bound keeps a runaway writer out of the journal
READ_CHUNK = 4 << 20  # a log is followed in chunks; a burst of output never loads whole into memory
WAKE_S = 1.0  # drivers re-judge deadlines at least this often even when the box is quiet
JOURNAL_EVERY_S = 0.5  # progress and last-line writes to the journal are throttled to this
FILE_GATE_EVENT = "gate_file_opened"  # its data: the file, the offset a file gate reads from, the attempt


@dataclass(frozen=True)
class StepOutcome:
    """How a step (or one attempt, or one node's part) ended."""

    state: StepState  # succeeded | failed | skipped | cancelled | started (left running)
    message: str
    log_tail: str = ""
    log_path: str | None = None  # the log a diagnosis reads (a job's, or the job a gate watched)
    # Why it failed, where that matters: "stopped" (another node's part decided the step), "unreachable" (node lost),
    # or a gate's verdict kind (deadline, eof, fail_on, ...).
    kind: str = ""

    @property
    def ok(self) -> bool:
        return self.state in (*DONE_OK, "started")

    def failed_with(self, note: str, **changes: Any) -> StepOutcome:
        """This attempt's outcome as the part's failure, `note` added to its message; its log and kind stay (a
        `pass_on: any` gate's part that merely ended without the line must still read so, not as its node's own
        failure that stops the node showing it)."""
        return replace(self, state="failed", message=f"{self.message} | {note}", **changes)


HandleKey = tuple[str, str]  # (step id, node name)


class StopSignal:
    """A step's own stop, set once with the reason (another node's part failed); drivers look at it each wake-up."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> bool:
        """Stop the step; False if it was already stopped (the first reason stays)."""
        if self._event.is_set():
            return False
        self.reason = reason
        self._event.set()
        return True

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the step to be stopped; whether it was."""
        return self._event.wait(timeout)
# Fields of a step's part on a node that the step's own row shows too (from its lead node): what status and templates read.
LEAD_FIELDS = ("last_line", "tail", "progress", "outputs", "env", "attempt")


@dataclass
class StepContext:
    """What a driver may touch: its node's view of the run and monitor, the shared job handles, the stop flags.

    `abort` is the step's own stop (another node's part failed: stop this one too); `stop_flag` the run's.
    """

    run: RunContext
    monitor: Monitor
    handles: dict[HandleKey, JobHandle]
    stop_flag: threading.Event
    started: Callable[[str], None]
    abort: StopSignal
    lead: bool = True  # this node's part also fills the step's own row (progress, tail, results)
    parts: int = 1  # how many nodes the step runs on
    placed: bool = False  # an `on: any` step: its node was chosen when it started, and a retry is re-queued
    retries: int | None = None  # plain retries left (None: the step's own `retries`)

    @property
    def node(self) -> str:
        return self.run.node.name

    def record(self, step_id: str, **fields: Any) -> None:
        """Write this node's part of the step; the lead node's progress and results go to the step's row as well."""
        run = self.run
        env = fields.pop("env", None)
        if fields:
            run.journal.set_step_node(run.run_id, step_id, self.node, **fields)
        shared = {k: v for k, v in {**fields, "env": env}.items() if k in LEAD_FIELDS and v is not None}
        if self.lead and shared:
            run.journal.set_step(run.run_id, step_id, **shared)

    def event(self, kind: str, step_id: str, message: str, data: Any = None) -> None:
        self.run.event(kind, step_id, message, data, node=self.node)

    def stopping(self) -> bool:
        return self.stop_flag.is_set() or self.abort.is_set()


def drive_on_node(sctx: StepContext, step: Step) -> StepOutcome:
    """One node's part of a step: skip check, then attempts up to 1 + retries; every transition goes to the journal."""
    run, journal = sctx.run, sctx.run.journal
    sctx.record(step.id, state="running", started=time.time(), message=None)
    step, problem = _rendered(run, step.id)
    if problem:
        return _end(sctx, step, StepOutcome("failed", problem))
    if step.skip_if is not None:
        result = evaluate(step.skip_if, run.transport)
        if result.status == "passed":
            return _end(sctx, step, StepOutcome("skipped", f"skipped: {result.message}"))
    outcome = StepOutcome("failed", "no attempt made")
    live, previous = _earlier_attempts(sctx, step)
    attempt = live or previous + 1  # on resume attempt numbers go on: a job directory is never reused
    plain_retries = step.retries if sctx.retries is None else sctx.retries
    while True:
        step, problem = _rendered(run, step.id)  # remedies may have changed variables: render the step again
        if problem:
            outcome = StepOutcome("failed", problem)
            break
        if sctx.abort.is_set():
            outcome = StepOutcome("cancelled", "stopped before its attempt: another node's part failed", kind="stopped")
            break
        sctx.record(step.id, attempt=attempt)
        outcome = _attempt(sctx, step, attempt, reattach=(attempt == live))
        if attempt > 1:  # a fix applied after the previous attempt now has its outcome
            journal.remedy_outcome(run.run_id, step.id, attempt - 1, "succeeded" if outcome.ok else "failed", node=sctx.node)
        if outcome.ok or sctx.stopping() or outcome.kind in ("stopped", "unreachable", "moved"):
            break
        text = log_tail(run, outcome.log_path) or outcome.message
        if sctx.parts > 1 and is_knock_on(root_error(text) or outcome.message):
            # This node failed because a peer did (a closed socket, a collective's timeout): fixing and re-running
            # its part alone cannot help, and the step's policy decides what happens to every node.
            outcome = outcome.failed_with("a consequence of another node's failure: not retried on its own")
            break
        # Only a job can be fixed and re-run; for a gate or check the diagnosis explains the failure.
        remedy = remediate(run, step, attempt, text) if isinstance(step, RunStep) else explain(run, step, text)
        if remedy.decision in ("escalated", "exhausted", "refused", "diagnosed"):
            outcome = outcome.failed_with(remedy.message)
            break
        if remedy.decision != "applied":
            if plain_retries <= 0:
                outcome = outcome.failed_with(remedy.message)
                break
            if sctx.placed:  # a placed step's retry goes back to the queue: the next free node takes it
                outcome = outcome.failed_with(remedy.message, kind="requeue")
                break
            plain_retries -= 1
        sctx.event("step_retry", step.id, f"attempt {attempt} failed ({outcome.message}); retrying")
        attempt += 1
    if outcome.state in ("failed", "started") and _cancelling(sctx):
        # The cancel killed the job: that is why it "failed" (or stopped being followed); it must not read as a failure.
        outcome = StepOutcome("cancelled", "cancelled", outcome.log_tail, outcome.log_path)
    elif outcome.kind == "stopped" and outcome.state == "failed":
        outcome = StepOutcome("cancelled", outcome.message, outcome.log_tail, outcome.log_path, kind="stopped")
    return _end(sctx, step, outcome)


def _rendered(run: RunContext, step_id: str) -> tuple[Step, str | None]:
    """The step for its next attempt, or (as the run has it, why it cannot be rendered): a result it reads is missing."""
    try:
        return run.step(step_id), None
    except RunbookError as exc:
        return run.runbook.step(step_id), "; ".join(exc.problems)


def _cancelling(sctx: StepContext) -> bool:
    """Whether the controller is stopping because the run was cancelled (not because it ended)."""
    if not sctx.stop_flag.is_set():
        return False
    row = sctx.run.journal.run(sctx.run.run_id)
    return row is not None and row.state in ("cancelling", "cancelled")


def _end(sctx: StepContext, step: Step, outcome: StepOutcome) -> StepOutcome:
    """Record how this node's part ended (its own failures with the time they were seen: blame reads it)."""
    if outcome.state == "started":
        sctx.record(step.id, state="started", message=outcome.message)
        return outcome
    own = outcome.state == "failed" and outcome.kind != "stopped"
    sctx.record(step.id, state=outcome.state, ended=time.time(), message=outcome.message,
                **({"failed_at": time.time()} if own else {}))
    # A node's part that did not succeed is an event of its own (which node, why); successes are in step_nodes, and
    # the step's own event sums them up (a fleet of one: that event says it all).
    if len(sctx.run.nodes) > 1 and outcome.state != "succeeded":
        sctx.event(f"node_{outcome.state}", step.id, outcome.message)
    return outcome


def _earlier_attempts(sctx: StepContext, step: Step) -> tuple[int | None, int]:
    """On resume: the attempt whose job may still be alive (re-attach, not restart) and the last attempt number.

    A placed step counts attempts over every node it was on: a re-queued attempt that lands on a node it ran on
    before must not reuse that job directory."""
    if not sctx.run.resumed:
        if not sctx.placed:
            return None, 0
        return None, max((a.attempt for a in sctx.run.journal.attempts(sctx.run.run_id, step.id)), default=0)
    attempts = sctx.run.journal.attempts(sctx.run.run_id, step.id, node=sctx.node)
    last = max((a.attempt for a in attempts), default=0)
    live = [a for a in attempts if a.ended is None and a.job_dir] if isinstance(step, RunStep) else []
    return (live[-1].attempt if live else None), last


def _attempt(sctx: StepContext, step: Step, attempt: int, reattach: bool) -> StepOutcome:
    if isinstance(step, RunStep):
        return _run(sctx, step, attempt, reattach)
    sctx.run.journal.start_attempt(sctx.run.run_id, step.id, attempt, job_dir=None, window=None, node=sctx.node)
    if isinstance(step, CheckStep):
        outcome = _check(sctx, step)
    elif isinstance(step, GateStep):
        outcome = _gate(sctx, step)
    elif isinstance(step, PutStep):
        outcome = _put(sctx, step)
    elif isinstance(step, GetStep):
        outcome = _get(sctx, step)
    else:  # pragma: no cover - the schema admits no other kind
        raise TypeError(step.kind)
    sctx.run.journal.end_attempt(sctx.run.run_id, step.id, attempt, rc=None, verdict=outcome.state, message=outcome.message,
                                 node=sctx.node)
    return outcome


# --- run steps --------------------------------------------------------------------------------


def _run(sctx: StepContext, step: RunStep, attempt: int, reattach: bool) -> StepOutcome:
    run = sctx.run
    spec = JobSpec(
        step_id=step.id, attempt=attempt, script=step.command, cwd=step.cwd,
        env=run.runbook.job_env(step, run.secrets, run.env_overrides), mask_values=list(run.secrets.values()),
    )
    if step.outputs:
        spec.env[OUTPUT_ENV] = f"{run.layout.job_dir(spec.name)}/outputs"
    sctx.record(step.id, env={k: "***" if k in run.secrets else v for k, v in spec.env.items()})
    # Watched before it starts: the probe that will see it end is on its way while it starts (a round trip less).
    seq = sctx.monitor.latest.seq
    with sctx.monitor.watching(job=spec.name):
        if reattach:
            handle = JobHandle(spec.name, run.layout.job_dir(spec.name))
            sctx.event("job_reattached", step.id, f"re-attached to job {spec.name}")
        else:
            handle = start_job(run.transport, run.layout, spec)
        started = time.monotonic()
        if not reattach:
            run.journal.start_attempt(run.run_id, step.id, attempt, job_dir=handle.job_dir, window=spec.name, node=sctx.node)
            sctx.event("job_started", step.id, f"job {spec.name} started in tmux window {run.layout.session}:{spec.name}")
        sctx.handles[(step.id, sctx.node)] = handle
        sctx.started(step.id)  # its gates start now; a background job also frees its dependents
        watch = LogWatch(fail_on=step.fail_on, stall_after=step.stall_after)
        prompts = PromptWatch()
        verdict, rc, size = _follow(sctx, step.id, handle, watch, Deadline(step.timeout), stop_on_pass=False,
                                    seq=seq, started=started, prompts=prompts)
        if prompts.prompt is not None:  # the job ended or is no longer followed: nobody can say it still waits
            run.journal.set_step(run.run_id, step.id, waiting_for_input=None)
    if verdict is None:  # the controller stops following; the job runs on
        return StepOutcome("started", f"job {handle.name} left running (tmux {run.layout.session}:{handle.name})")
    if verdict.kind == "unreachable":  # nothing more can be done on the node, nor read from it
        run.journal.end_attempt(run.run_id, step.id, attempt, rc=None, verdict="failed", message=verdict.reason, node=sctx.node)
        return StepOutcome("failed", verdict.reason, kind="unreachable")
    if rc is None:
        kill_job(run.transport, run.layout, handle)
    ok = verdict.passed and rc == 0
    message = verdict.reason if not verdict.passed else (f"exit code {rc}" if rc is not None else "job ended")
    if verdict.passed and rc not in (0, None):
        message = f"exit code {rc}"
    if ok and (step.outputs or step.outputs_file):
        outputs, problem = _read_outputs(run, step, handle)
        sctx.record(step.id, outputs={"outputs": outputs})
        ok, message = problem is None, problem or f"{message}; outputs: {', '.join(outputs) or 'none'}"
    run.journal.end_attempt(run.run_id, step.id, attempt, rc=rc, verdict="succeeded" if ok else "failed",
                            message=message, log_size=size, node=sctx.node)
    tail = watch.last_line or ""
    return StepOutcome("succeeded" if ok else "failed", message + (f" | last line: {tail}" if not ok and tail else ""), tail,
                       handle.log, kind="stopped" if verdict.kind == "stopped" else "")


def _read_outputs(run: RunContext, step: RunStep, handle: JobHandle) -> tuple[dict[str, Any], str | None]:
    """The outputs an ended job wrote ($AGENTOPS_OUTPUT lines, then `outputs_file`), and what is wrong with them."""
    found: dict[str, Any] = {}
    if step.outputs:
        try:
            found.update(parse_output_lines(_read_small(run, f"{handle.job_dir}/outputs").decode("utf-8", "replace")))
        except FileNotFoundError:
            pass  # nothing written: the missing names are reported below
        except ValueError as exc:
            return found, str(exc)
    if step.outputs_file:
        path = on_target(step.outputs_file, step.cwd, run.transport.home())
        try:
            text = _read_small(run, path)
        except (FileNotFoundError, ValueError) as exc:
            return found, f"outputs_file {path}: {'no such file' if isinstance(exc, FileNotFoundError) else exc}"
        try:
            data = json.loads(text)
        except ValueError as exc:
            return found, f"outputs_file {path}: not JSON ({exc})"
        if not isinstance(data, dict):
            return found, f"outputs_file {path}: expected a JSON object of outputs, found {type(data).__name__}"
        found.update(data)
    missing = [name for name in step.outputs if name not in found]
    if missing:
        return found, f"declared outputs not written: {', '.join(missing)} (a job writes NAME=value lines to ${OUTPUT_ENV})"
    return found, None


def _read_small(run: RunContext, path: str) -> bytes:
    data = run.transport.read_from(path, 0, MAX_OUTPUTS + 1)
    if len(data) > MAX_OUTPUTS:
        raise ValueError(f"{path} is larger than {MAX_OUTPUTS} bytes: outputs are values, not files")
    return data


def _follow(sctx: StepContext, step_id: str, handle: JobHandle, watch: LogWatch, deadline: Deadline, *,
            stop_on_pass: bool, seq: int | None = None, started: float = 0.0,
            prompts: PromptWatch | None = None) -> tuple[Verdict | None, int | None, int]:
    """Follow a job's log by offset until it ends, the watch decides, or the deadline passes.

    The caller watches the job on the monitor. `seq`: the snapshots after it count (default: from
    the next one on); `started`: when the job's window was known to exist (monotonic), so that a
    probe sent before then, which could not see the window, never declares the job lost.
    Returns (verdict, rc, bytes read); verdict None means the controller stopped following
    (run finished or cancelled) while the job runs on. `prompts`: whether the job waits at a prompt is
    judged on it and kept on the step (waiting_for_input).
    """
    run, monitor = sctx.run, sctx.monitor
    t0, offset, last_write = time.monotonic(), 0, 0.0
    seq = monitor.latest.seq if seq is None else seq
    while True:
        snap = monitor.wait_next(seq, WAKE_S)
        seq = snap.seq
        now = time.monotonic() - t0
        if monitor.error is not None:  # the transport gave up reconnecting: the node is gone for this run
            _journal_progress(sctx, step_id, watch, now)
            return Verdict(False, f"node {sctx.node} unreachable: {monitor.error}", kind="unreachable"), None, offset
        if handle.name in snap.rcs:  # this probe included our job: its facts are current
            rc = snap.rcs[handle.name]
            # A running job's log is read up to the size the probe saw; an ended job's to its end,
            # unless the probe saw it empty (then there is nothing to read).
            end = snap.sizes.get(handle.log, 0 if rc is None else None)
            offset = _read_new(run, handle.log, offset, end, watch, now)
            if rc is not None:
                watch.end_of_log(now)
                _journal_progress(sctx, step_id, watch, now)
                return watch.verdict(now, ended=True) or Verdict(True, "job ended"), rc, offset
            # The probe read the exit code before it listed windows: a job that ended in between has its rc by now.
            if snap.sent >= started and handle.name not in snap.windows and not exit_code_written(run.transport, handle):
                return Verdict(False, _lost(run, handle), kind="lost"), None, offset
            if prompts is not None and prompts.update(offset, time.monotonic(),
                                                      lambda: capture(run.transport, run.layout, handle.name)):
                _record_prompt(run, step_id, prompts.prompt)
        verdict = watch.verdict(now)
        if verdict is not None and (not verdict.passed or stop_on_pass):
            _journal_progress(sctx, step_id, watch, now)
            return verdict, None, offset
        if deadline.passed():
            return Verdict(False, "step timeout reached", kind="deadline"), None, offset
        if sctx.abort.is_set():
            _journal_progress(sctx, step_id, watch, now)
            return Verdict(False, f"stopped: {_abort_reason(sctx)}", kind="stopped"), None, offset
        if sctx.stop_flag.is_set():
            return None, None, offset
        if time.monotonic() - last_write > JOURNAL_EVERY_S:
            last_write = time.monotonic()
            _journal_progress(sctx, step_id, watch, now)


def _record_prompt(run: RunContext, step_id: str, prompt: str | None) -> None:
    run.journal.set_step(run.run_id, step_id, waiting_for_input=prompt)
    if prompt is not None:
        run.event("job_waiting_for_input", step_id, f"the job waits for input at: {prompt}", {"prompt": prompt})


def _lost(run: RunContext, handle: JobHandle) -> str:
    why = unwritable_reason(run.transport, handle)
    return "job lost: its tmux window is gone and it left no exit code" + (f"; {why}" if why else "")


def _read_new(run: RunContext, path: str, offset: int, size: int | None, watch: LogWatch, now: float) -> int:
    """Read from `offset` up to `size` (None: to the end of the file); feed the watch; new offset."""
    while size is None or offset < size:
        want = READ_CHUNK if size is None else min(READ_CHUNK, size - offset)
        try:
            data = run.transport.read_from(path, offset, want)
        except FileNotFoundError:
            return offset
        if not data:
            break
        offset += len(data)
        watch.feed(data, now)
    return offset


def _abort_reason(sctx: StepContext) -> str:
    return sctx.abort.reason or "another node's part of the step failed"


def _journal_progress(sctx: StepContext, step_id: str, watch: LogWatch, now: float) -> None:
    fields: dict[str, Any] = {"last_line": watch.last_line, "tail": list(watch.tail)}
    if watch.judges_success:
        fields["progress"] = watch.progress(now)
    sctx.record(step_id, **fields)


# --- gates ------------------------------------------------------------------------------------


def _gate(sctx: StepContext, step: GateStep) -> StepOutcome:
    if step.job is None:
        watch = _watch_for(step)
        verdict = _follow_file(sctx, step, watch)
        return _gate_outcome(sctx, step, verdict, watch, None)
    handle = sctx.handles.get((step.job, sctx.node))
    if handle is None:
        return StepOutcome("failed", f"gate: job {step.job!r} has not started on node {sctx.node}")
    while True:
        watch = _watch_for(step)  # fresh deadlines for each attempt of the job
        with sctx.monitor.watching(job=handle.name):
            verdict, rc, _ = _follow(sctx, step.id, handle, watch, Deadline(step.deadline_s + 5), stop_on_pass=True)
        if verdict is None:
            return StepOutcome("cancelled", "stopped")
        if verdict.kind == "stopped":
            return _gate_outcome(sctx, step, verdict, watch, None)
        if verdict.passed and rc not in (None, 0):
            verdict = Verdict(False, f"job {step.job} ended with exit code {rc}", kind="eof")
        if verdict.passed:
            return _gate_outcome(sctx, step, verdict, watch, handle)
        job_ended = rc not in (None, 0) or verdict.kind == "unreachable"
        retried = _next_attempt(sctx, step.job, handle) if job_ended else None
        if retried == MOVED:  # the job went back to the queue (another node will run it): the gate goes with it
            sctx.record(step.id, outputs=watch.results())
            return StepOutcome("cancelled", f"job {step.job} was re-queued ({verdict.reason}): the gate follows it",
                               kind="moved")
        if retried is None:
            return _gate_outcome(sctx, step, verdict, watch, None if verdict.kind == "unreachable" else handle)
        sctx.event("gate_follows_retry", step.id, f"job {step.job} is being retried; following {retried.name}")
        handle = retried


def _watch_for(step: GateStep) -> LogWatch:
    return LogWatch(patterns=step.patterns, metrics=step.metrics, fail_on=step.fail_on, stall_after=step.stall_after)


def _gate_outcome(sctx: StepContext, step: GateStep, verdict: Verdict, watch: LogWatch, handle: JobHandle | None) -> StepOutcome:
    # Passed or not, what the gate read is kept: later steps (a report) read its metrics and named groups.
    sctx.record(step.id, outputs=watch.results())
    message = verdict.reason + (f" | line: {verdict.line}" if verdict.line and not verdict.passed else "")
    return StepOutcome("succeeded" if verdict.passed else "failed", message, verdict.line or "",
                       handle.log if handle else None, kind="" if verdict.passed else verdict.kind)


MOVED = "moved"  # _next_attempt: the job was re-queued, its next attempt will run on another node


def _next_attempt(sctx: StepContext, job: str, old: JobHandle) -> JobHandle | str | None:
    """When the watched job failed, the new attempt a remedy or retry starts here (waiting at most 60 s), MOVED when
    the job went back to the queue (an `on: any` job: another node takes it), else None."""
    deadline = Deadline(60)
    journal, run_id = sctx.run.journal, sctx.run.run_id
    while not deadline.passed() and not sctx.stopping():
        current = sctx.handles.get((job, sctx.node))
        if current is not None and current != old:
            return current
        row = next((s for s in journal.step_nodes(run_id, job) if s.node == sctx.node), None)
        if row is None or row.state in TERMINAL_STEP_STATES:
            # The job's part on this node is over; the job's own fate decides whether it goes on elsewhere. Another
            # node may have taken it (and even finished it) before this gate looks: its re-queue from here says so.
            whole = journal.step(run_id, job)
            if whole is not None and (whole.state == "pending" or _requeued_from(sctx, job, row)):
                return MOVED
            if whole is None or whole.state != "running":
                return None
        time.sleep(0.25)
    return None


def _requeued_from(sctx: StepContext, job: str, part: StepNodeRow | None) -> bool:
    """Whether the job went back to the queue from this node after its part here began."""
    event = sctx.run.journal.last_event(sctx.run.run_id, job, "step_requeued", node=sctx.node)
    if event is None or event.node != sctx.node:
        return False
    return part is None or part.started is None or event.ts >= part.started


def _follow_file(sctx: StepContext, step: GateStep, watch: LogWatch) -> Verdict:
    """A gate on a plain file: only bytes written after the gate began are judged."""
    run, monitor = sctx.run, sctx.monitor
    offset = _file_gate_offset(sctx, step)
    monitor.watch(file=step.file)
    t0, seq = time.monotonic(), monitor.latest.seq
    try:
        while True:
            snap = monitor.wait_next(seq, WAKE_S)
            seq, now = snap.seq, time.monotonic() - t0
            size = snap.sizes.get(step.file)
            if size is not None and size < offset:
                offset = 0  # truncated or rotated: everything in it is new
            if size is not None:
                offset = _read_new(run, step.file, offset, size, watch, now)
            verdict = watch.verdict(now)
            if verdict is not None:
                _journal_progress(sctx, step.id, watch, now)
                return verdict
            if sctx.abort.is_set():
                return Verdict(False, f"stopped: {_abort_reason(sctx)}", kind="stopped")
            if sctx.stop_flag.is_set():
                return Verdict(False, "stopped")
            if monitor.error is not None:
                return Verdict(False, f"node {sctx.node} unreachable: {monitor.error}", kind="unreachable")
            _journal_progress(sctx, step.id, watch, now)
    finally:
        monitor.unwatch(file=step.file)


def _file_gate_offset(sctx: StepContext, step: GateStep) -> int:
    """Where a file gate starts reading, remembered in the journal (FILE_GATE_EVENT).

    The file's size when the gate began; after the controller died, where the attempt it interrupted
    began (lines written meanwhile count, as they do for a gate on a job's log).
    """
    run = sctx.run
    row = next((r for r in run.journal.step_nodes(run.run_id, step.id) if r.node == sctx.node), None)
    attempt = row.attempt if row and row.attempt else 1
    offset = _interrupted_offset(sctx, step) if run.resumed else None
    if offset is None:
        st = run.transport.stat(step.file)
        offset = st.size if st else 0
    sctx.event(FILE_GATE_EVENT, step.id, f"gate reads {step.file} from byte {offset}",
               {"path": step.file, "offset": offset, "attempt": attempt})
    return offset


def _interrupted_offset(sctx: StepContext, step: GateStep) -> int | None:
    """The offset of this gate's newest attempt on this node if the controller died during it (the attempt never ended)."""
    run = sctx.run
    last = run.journal.last_event(run.run_id, step.id, FILE_GATE_EVENT, node=sctx.node)
    if last is None or not isinstance(last.data, dict) or last.data.get("path") != step.file:
        return None
    interrupted = any(a.attempt == last.data.get("attempt") and a.ended is None
                      for a in run.journal.attempts(run.run_id, step.id, node=sctx.node))
    return int(last.data["offset"]) if interrupted else None


# --- checks and file copies -------------------------------------------------------------------


def _check(sctx: StepContext, step: CheckStep) -> StepOutcome:
    results = evaluate_all(step.checks, sctx.run.transport)
    sctx.record(step.id, outputs={"checks": [r.model_dump() for r in results]})
    for r in results:
        sctx.event(f"check_{r.status}", step.id, r.message, r.model_dump())
    failed = [r for r in results if r.status == "failed"]
    if failed:
        return StepOutcome("failed", "; ".join(r.message for r in failed))
    skipped = [r for r in results if r.status == "skipped"]
    note = f" ({len(skipped)} skipped)" if skipped else ""
    return StepOutcome("succeeded", f"{len(results) - len(skipped)} checks passed{note}")


def _put(sctx: StepContext, step: PutStep) -> StepOutcome:
    src = Path(step.src)
    if not src.is_absolute():
        src = sctx.run.loaded.path.parent / src
    try:
        data = src.read_bytes()
    except OSError as exc:
        return StepOutcome("failed", f"put: cannot read {src}: {exc.strerror}")
    sctx.run.transport.put(step.dest, data, mode=step.mode)
    return StepOutcome("succeeded", f"copied {src} -> {step.dest} ({len(data)} bytes)")


def _get(sctx: StepContext, step: GetStep) -> StepOutcome:
    try:
        data = sctx.run.transport.get(step.src)
    except FileNotFoundError:
        return StepOutcome("failed", f"get: {step.src} does not exist on the target")
    # From several nodes, each node's copy lands in a directory of its own (the same path on every box).
    own_dir = sctx.run.artifacts_dir / sctx.node if len(sctx.run.nodes) > 1 else sctx.run.artifacts_dir
    dest = Path(step.dest) if step.dest else own_dir / Path(step.src).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return StepOutcome("succeeded", f"copied {step.src} -> {dest} ({len(data)} bytes)")
