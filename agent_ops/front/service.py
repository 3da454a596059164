"""The operations behind both front ends (CLI --json and MCP tools): one model, two front ends.

Every function here returns a pydantic model (a frozen dataclass for what agents poll: status, wait) or raises
OpError (a code and a message an agent can act on). None blocks longer than MAX_BLOCK_S: waits are sliced and bounded.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from agent_ops.bounds import MAX_POLL_S
from agent_ops.errors import AgentOpsError, RunbookError
from agent_ops.record.journal import LIVE_RENTAL_STATES, TERMINAL_RUN_STATES, Journal, journal_home
from agent_ops.record.status import RunStatus, process_alive, run_status

# Status, wait, tail and cancel are what agents poll, each poll a fresh process: the runbook models, the loader and
# the catalog (most of the import time) are imported by the operations that use them, never by those.
if TYPE_CHECKING:
    from agent_ops.front.target_options import TargetOptions
    from agent_ops.known_issues.catalog import Catalog
    from agent_ops.known_issues.propose import Proposal
    from agent_ops.runbook.schema import Runbook, Step
    from agent_ops.secret_values import Masker
    from agent_ops.transport.base import Transport

MAX_BLOCK_S = MAX_POLL_S  # no operation blocks longer than this (seed 003, rule 1)
DETACH_READY_S = 15.0


class Result(BaseModel):
    """Base of the operations' results: each model's schema is built when it is first used, not at import.

    Every CLI call imports this module; a status poll returns none of these models, and building their validators
    and serializers was most of the module's own import time (tests/bench/bench_status.py).
    """

    model_config = ConfigDict(defer_build=True)


class OpError(AgentOpsError):
    """A failure an agent can act on: `code` says which, `problems` lists details (file:line...)."""

    def __init__(self, code: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = problems or []

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "problems": self.problems}


class ValidateResult(Result):
    """Result of validating one runbook."""

    file: str
    ok: bool
    name: str | None = None
    steps: int = 0
    problems: list[str] = Field(default_factory=list, description="FILE:LINE: field: message, one per problem.")


class PlanStep(Result):
    """One step as it will run: dependencies, command and job environment, variables resolved."""

    id: str
    kind: str
    needs: list[str]
    after: list[str] = []  # needs that must have finished (a background job exited), not merely started
    always: bool = False  # `if: always`: runs whatever happened to what it needs
    command: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="A run step's job environment (secrets as ***).")
    reads: list[str] = Field(default_factory=list, description="Steps whose results its templates read: those parts are "
                             "rendered when it starts, and shown here as written.")


class DeletingFix(Result):
    """A known-issue fix that deletes files, and the steps whose failure may apply it."""

    issue_id: str
    title: str
    deletes: list[str]
    steps: list[str]


class PlanResult(Result):
    """The DAG in waves, with variables resolved and secrets masked."""

    runbook: str
    file: str
    vars: dict[str, Any]
    secrets: dict[str, str]
    waves: list[list[PlanStep]]
    deleting_fixes: list[DeletingFix] = Field(
        default_factory=list, description="Fixes that delete files if their known issue matches a failed step; refused on "
        "a local target unless the run allows them (--allow-deleting-fixes).")
    money: list[str] = Field(default_factory=list, description="With `run --provision`: what rents (and at what price), "
                             "what spends, what destroys, from the runbook's provision: block (flags override it).")


class StartResult(Result):
    """A run started in the background: its id, at once."""

    run_id: str
    state: str
    journal: str
    controller_pid: int
    controller_log: str
    next_poll_s: float = 1.0


@dataclass(frozen=True)
class WaitResult:
    """What `wait` saw: whether anything changed, and the status after (a dataclass, as RunStatus is: a poll)."""

    changed: bool
    waited_s: float
    status: RunStatus


class TailResult(Result):
    """A slice of a step's job log: the text and the offset to ask from next time."""

    run_id: str
    step_id: str
    node: str = ""
    attempt: int
    text: str
    offset: int
    next_offset: int
    ended: bool


def validate(file: str) -> ValidateResult:
    from agent_ops.runbook.loader import load_runbook

    try:
        loaded = load_runbook(file)
    except RunbookError as exc:
        return ValidateResult(file=file, ok=False, problems=exc.problems)
    return ValidateResult(file=file, ok=True, name=loaded.runbook.name, steps=len(loaded.runbook.steps))


def plan(file: str, overrides: dict[str, str]) -> PlanResult:
    from agent_ops.runbook.loader import builtin_values, render_runbook
    from agent_ops.runbook.plan import build_plan

    loaded, values = _load(file, overrides)
    builtins = {**builtin_values(**{k: f"<{k}>" for k in ("run_id", "run_dir", "runbook_dir", "artifacts_dir")}),
                "runbook_dir": str(loaded.path.parent)}
    runbook = render_runbook(loaded, {**values, **builtins})
    masked = dict.fromkeys(runbook.secrets, "***")
    waves = [[_plan_step(runbook, runbook.step(sid), masked, loaded.reads.get(sid, [])) for sid in wave]
             for wave in build_plan(runbook.steps).waves]
    return PlanResult(runbook=runbook.name, file=str(loaded.path), vars=values,
                      secrets=dict.fromkeys(runbook.secrets, "***"), waves=waves, deleting_fixes=_deleting_fixes(runbook),
                      money=money_lines(runbook))


def money_lines(runbook: Runbook) -> list[str]:
    """What a `--provision` run of this runbook rents, spends and destroys, in plain words with the money at stake."""
    prov = runbook.provision
    if prov is None:
        return []
    fleet = prov.fleet
    offer = fleet.get("offer") or {}
    nodes, gpus, gpu = fleet.get("nodes", 1), offer.get("gpus", 1), str(offer.get("gpu_name") or "any GPU").replace("_", " ")
    max_dph, hours = offer.get("max_dph"), offer.get("hours", 1)
    price = (f"at most ${float(max_dph):.2f}/h each, ${float(max_dph) * int(nodes):.2f}/h for the fleet, "
             f"${float(max_dph) * int(nodes) * float(hours):.2f} for the {float(hours):g} h expected") if max_dph else "at any price"
    lines = [f"RENT  {nodes} x {gpus} {gpu} from {prov.provider} before the first wave, {price}"]
    if prov.budget_usd is not None:
        ask = f"ask {prov.checkpoint.job} to checkpoint, " if prov.checkpoint else ""
        lines.append(f"SPEND at most ${prov.budget_usd:.2f} (budget): then {ask}copy the artifacts off, give the boxes back")
    else:
        lines.append("SPEND no budget set: the boxes bill until the run ends (--budget-usd sets one)")
    saved = f"copy {len(runbook.artifacts)} artifacts off and check them ({', '.join(a.path for a in runbook.artifacts)}), " \
        if runbook.artifacts else "no artifacts declared: nothing is copied off, "
    lines.append(f"{prov.teardown.success.upper():<5} after success (once no job has run for {prov.idle_s:g} s): "
                 f"{saved}then {prov.teardown.success}")
    lines.append(f"{prov.teardown.failure.upper():<5} after a failure or an interrupt: {saved}then {prov.teardown.failure}")
    return lines


def _deleting_fixes(runbook) -> list[DeletingFix]:
    """The catalog's deleting fixes that apply to a run step of this runbook (only jobs are fixed and re-run)."""
    from agent_ops.known_issues.catalog import default_catalog

    jobs = [s for s in runbook.steps if s.kind == "run"]
    found = []
    for issue in default_catalog():
        steps = [s.id for s in jobs if issue.applies(s.tags)]
        if issue.deletions() and steps:
            found.append(DeletingFix(issue_id=issue.id, title=issue.title, deletes=issue.deletions(), steps=steps))
    return found


def _plan_step(runbook: Runbook, step: Step, secrets: dict[str, str], reads: list[str]) -> PlanStep:
    from agent_ops.runbook.results import OUTPUT_ENV
    from agent_ops.runbook.schema import RunStep

    env = runbook.job_env(step, secrets) if isinstance(step, RunStep) else {}
    if isinstance(step, RunStep) and step.outputs:
        env[OUTPUT_ENV] = "<its job directory>/outputs"
    return PlanStep(id=step.id, kind=step.kind, needs=step.needs, after=step.after, always=step.if_ == "always",
                    command=getattr(step, "command", None), env=env, reads=reads)


def _load(file: str, overrides: dict[str, str]):
    from agent_ops.runbook.loader import load_runbook, resolve_vars

    try:
        loaded = load_runbook(file)
        return loaded, resolve_vars(loaded, overrides)
    except RunbookError as exc:
        raise OpError("invalid_runbook", f"{file}: invalid runbook ({len(exc.problems)} problems)", exc.problems) from None


def start_detached(file: str, overrides: dict[str, str], where: TargetOptions, journal: Journal,
                   provision: list[str] | None = None) -> StartResult:
    """Check the runbook, its variables and secrets, and the target; then start `agentops run` as its own process
    group (the variables as given, `where` as its flags) and return once the journal has the run.

    `provision`: `run --provision`'s flags (cli_provider.provision_args): the run rents its boxes, so `where` names
    no target, and the run is started once its provisioning is recorded (the run row comes with the boxes, minutes on)."""
    from agent_ops.run.context import new_run_id

    loaded, _ = _load(file, overrides)
    missing = [n for n in loaded.runbook.secrets if not os.environ.get(n)]
    if missing:
        raise OpError("missing_secret", f"secrets missing from the environment: {', '.join(missing)}")
    if not provision:
        try:
            where.resolve()
        except RunbookError as exc:
            raise OpError(exc.code, str(exc), exc.problems) from None
    run_id = new_run_id()
    argv = ["run", str(loaded.path), "--run-id", run_id, *where.argv(), *(provision or [])]
    for k, v in overrides.items():
        argv += ["--var", f"{k}={v}"]
    if provision:
        return _spawn(journal, run_id, argv, ready=lambda row: row is not None
                      or journal.last_event(run_id, None, "provisioned") is not None)
    return _spawn(journal, run_id, argv, ready=lambda row: row is not None)


def resume_detached(run_id: str, journal: Journal) -> StartResult:
    """`agentops resume RUN` in the background; returns once the new controller has taken the run."""
    from agent_ops.record.status import controller_alive

    row = journal.run(run_id)
    if row is None:
        raise OpError("unknown_run", f"unknown run {run_id!r}")
    if row.state in ("succeeded", "cancelled"):
        raise OpError("run_finished", f"run {run_id} already {row.state}")
    if controller_alive(row):
        raise OpError("run_active", f"run {run_id} is still driven by pid {row.controller_pid}")
    old_pid = row.controller_pid
    return _spawn(journal, run_id, ["resume", run_id],
                  ready=lambda r: r is not None and r.controller_pid != old_pid and r.state == "running")


def controller_log(journal: Journal, run_id: str) -> Path:
    """Where a detached run's controller writes its output (its own log: the run's errors before the journal has it)."""
    return journal.path.parent / "runs" / run_id / "controller.log"


def _spawn(journal: Journal, run_id: str, cli_args: list[str], ready) -> StartResult:
    log = controller_log(journal, run_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AGENTOPS_HOME": str(journal.path.parent)}
    with open(log, "ab") as fh:
        # A new session: the run survives the caller (a shell, an MCP server) exiting.
        proc = subprocess.Popen([sys.executable, "-m", "agent_ops.front.cli", *cli_args], stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=fh, start_new_session=True, env=env)
    deadline = time.monotonic() + DETACH_READY_S
    while time.monotonic() < deadline:
        row = journal.run(run_id)
        if ready(row):
            return StartResult(run_id=run_id, state=row.state if row else "renting", journal=str(journal.path),
                               controller_pid=proc.pid, controller_log=str(log))
        if proc.poll() is not None:
            row = journal.run(run_id)
            if row is not None and ready(row) or (row is not None and row.state in TERMINAL_RUN_STATES and row.ended):
                return StartResult(run_id=run_id, state=row.state, journal=str(journal.path), controller_pid=proc.pid,
                                   controller_log=str(log))
            tail = log.read_text(errors="replace")[-2000:]
            raise OpError("start_failed", f"the controller exited with code {proc.returncode}: {tail}")
        time.sleep(0.05)
    raise OpError("start_timeout", f"the run was not taken up within {DETACH_READY_S:g}s (see {log})")


class PaneResult(Result):
    """What a step's job pane shows now (secrets masked), and the prompt it waits at, if any."""

    run_id: str
    step_id: str
    attempt: int
    window: str
    text: str = Field(description="The pane's last lines as a person attached to it sees them (secrets masked).")
    waiting_for_input: str | None = Field(None, description="The pane's last line when it is a prompt awaiting an answer.")


def status(journal: Journal, run_id: str | None) -> RunStatus:
    run_id = run_id or journal.latest_run_id()
    if run_id is None:
        raise OpError("no_runs", f"no runs in {journal.path}")
    st = run_status(journal, run_id)
    if st is None:
        raise _before_the_run(journal, run_id) or OpError("unknown_run", f"unknown run {run_id!r}")
    return st


def _before_the_run(journal: Journal, run_id: str) -> OpError | None:
    """What a rented run with no run row yet is: renting its boxes (`renting`: poll again), or ended while renting
    (`rent_failed`: its controller is gone, and no run will come); None when it rented nothing."""
    event = journal.last_event(run_id, None, "provisioned")
    if event is None:
        return None
    rows = journal.rentals(run_id)
    controller = event.data.get("controller") if isinstance(event.data, dict) else None
    if not controller or process_alive(controller["pid"], controller["host"]) is not False:
        return OpError("renting", f"run {run_id} is renting its boxes ({sum(r.state == 'ready' for r in rows)} ready, "
                                  f"{len(rows)} created so far); its status comes once they are: poll again")
    live = [r.instance_id for r in rows if r.state in LIVE_RENTAL_STATES]
    log = controller_log(journal, run_id)
    left = (f"{len(live)} box(es) still recorded live ({', '.join(live)}): give them back with agentops down {run_id}"
            if live else "no box of it is live")
    return OpError("rent_failed", f"run {run_id} ended while renting its boxes, before the run began (its controller "
                                  f"is gone{'; see ' + str(log) if log.exists() else ''}); {left}")


def _status_once_rented(journal: Journal, run_id: str, timeout: float | None,
                        on_renting: Callable[[str], None] | None = None) -> tuple[RunStatus, bool]:
    """The run's status, waiting (at most `timeout` s) while it is still renting its boxes: a detached rented run
    has an id long before its run row. (status, whether it was renting when asked)."""
    t0, said, renting = time.monotonic(), None, False
    while True:
        try:
            return status(journal, run_id), renting
        except OpError as exc:
            if exc.code != "renting" or (timeout is not None and time.monotonic() - t0 >= timeout):
                raise
            renting = True
            if on_renting is not None and exc.message != said:
                on_renting(exc.message)
                said = exc.message
        time.sleep(0.5 if timeout is None else min(0.5, max(0.0, timeout - (time.monotonic() - t0))))


def _fingerprint(st: RunStatus) -> tuple:
    # waiting_for_input counts: an agent blocked in `wait` must hear that a job now waits for its answer.
    return (st.state, len(st.remedies), tuple((s.id, s.state, s.attempt, s.waiting_for_input) for s in st.steps),
            tuple(sum(bool(p.get("matched")) for p in (s.progress or {}).get("patterns", [])) for s in st.steps))


def wait(journal: Journal, run_id: str, timeout: float = MAX_BLOCK_S) -> WaitResult:
    """Return when the run changes state (a step, an attempt, a gate line, a remedy) or after `timeout` <= 30 s."""
    timeout = max(0.0, min(timeout, MAX_BLOCK_S))
    t0 = time.monotonic()
    first, was_renting = _status_once_rented(journal, run_id, timeout)
    if was_renting:  # the run began while we waited: that is its change
        return WaitResult(changed=True, waited_s=round(time.monotonic() - t0, 3), status=first)
    if first.terminal:
        return WaitResult(changed=False, waited_s=0.0, status=first)
    before = _fingerprint(first)
    while True:
        time.sleep(min(0.2, max(0.0, timeout - (time.monotonic() - t0))))
        now = status(journal, run_id)
        waited = time.monotonic() - t0
        if _fingerprint(now) != before or now.terminal or waited >= timeout:
            return WaitResult(changed=_fingerprint(now) != before, waited_s=round(waited, 3), status=now)


def wait_until_done(journal: Journal, run_id: str, timeout: float | None, on_change: Callable[[WaitResult], None],
                    on_renting: Callable[[str], None] | None = None) -> WaitResult:
    """Wait in bounded slices (<= 30 s each) until the run ends or `timeout` seconds pass; report the state at
    the start and at each change. A rented run still renting its boxes is waited for (`on_renting` hears how far
    it got); one whose controller died while renting is an OpError (`rent_failed`) naming what is left live.

    A run that no controller drives any more (interrupted, or its controller died) will not end by waiting:
    that is an OpError naming `agentops resume`.
    """
    t0 = time.monotonic()
    first, _ = _status_once_rented(journal, run_id, timeout, on_renting)
    on_change(WaitResult(changed=False, waited_s=round(time.monotonic() - t0, 3), status=first))
    while True:
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - t0))
        result = wait(journal, run_id, MAX_BLOCK_S if left is None else min(MAX_BLOCK_S, left))
        result = replace(result, waited_s=round(time.monotonic() - t0, 3))
        st = result.status
        if result.changed:
            on_change(result)
        if st.terminal or (left is not None and time.monotonic() - t0 >= timeout):
            return result
        if st.state == "interrupted" or (st.state in ("running", "cancelling") and not st.controller_alive):
            raise OpError("run_stalled", f"run {run_id} is {st.state} and no controller drives it: continue it with "
                                         f"agentops resume {run_id}")


def cancel(journal: Journal, run_id: str) -> str:
    from agent_ops.run.context import RunStateError, cancel_run

    try:
        return cancel_run(journal, run_id)
    except RunStateError as exc:
        raise OpError("unknown_run" if "unknown run" in str(exc) else "run_finished", str(exc)) from None


@dataclass(frozen=True)
class LogSource:
    """Whose job log to read for a step: its own, or (for a gate) the job it watches, with a note saying so."""

    step_id: str
    note: str | None = None


def log_source(journal: Journal, run_id: str, step_id: str) -> LogSource:
    """The step whose job log `logs RUN STEP` shows; a step that has no log is an OpError saying what it has instead."""
    from agent_ops.yaml_models import did_you_mean

    run = journal.run(run_id)
    if run is None:
        raise OpError("unknown_run", f"unknown run {run_id!r}")
    steps = {s.step_id: s for s in journal.steps(run_id)}
    row = steps.get(step_id)
    if row is None:
        raise OpError("unknown_step", f"run {run_id} has no step {step_id!r}{did_you_mean(step_id, steps)}")
    if row.kind == "run":
        return LogSource(step_id=step_id)
    if row.kind != "gate":
        raise OpError("no_log", f"step {step_id!r} is a {row.kind} step: it runs no job and has no log "
                                f"({row.state}{': ' + row.message if row.message else ''})")
    gate = _rendered_step(run, step_id)
    if gate is None:
        raise OpError("no_log", f"step {step_id!r} is a gate; which job it watches cannot be read from {run.runbook_path} "
                                f"(see agentops status {run_id})")
    if gate.job is None:
        raise OpError("no_log", f"step {step_id!r} is a gate on the file {gate.file} on the target, not on a job: read that file")
    return LogSource(step_id=gate.job, note=f"{step_id} is a gate on job {gate.job}: showing {gate.job}'s log")


def _rendered_step(run: Any, step_id: str) -> Any:
    """A step of a run as the run rendered it (vars from the journal), or None when the runbook cannot give it."""
    from pathlib import Path

    from agent_ops.runbook.loader import builtin_values, load_runbook, render_runbook

    try:
        loaded = load_runbook(run.runbook_path)
        builtins = builtin_values(run_id=run.id, run_dir=run.run_dir or "", runbook_dir=str(Path(run.runbook_path).parent),
                                  artifacts_dir=run.artifacts_dir or "")
        return render_runbook(loaded, {**run.vars, **builtins}).step(step_id)
    except (RunbookError, KeyError):
        return None


def node_of(journal: Journal, run_id: str, step_id: str, node: str | None) -> tuple[str, Any]:
    """(name, target) of the node whose log of `step_id` to read: `node` (checked against the run's fleet), else the
    head, or the first node the step ran on when the head ran none of it."""
    from agent_ops.fleet.nodes import fleet_rows

    row = journal.run(run_id)
    if row is None:
        raise OpError("unknown_run", f"unknown run {run_id!r}")
    fleet = {spec.name: spec for spec, _, _ in fleet_rows(journal, row)}
    names = list(fleet)
    if node is not None and node not in fleet:
        raise OpError("unknown_node", f"run {run_id} has no node {node!r} (nodes: {', '.join(names)})")
    if node is None:
        ran = [a.node for a in journal.attempts(run_id, step_id) if a.job_dir]
        node = names[0] if not ran or names[0] in ran or "" in ran else ran[0]
    return node, fleet[node].target


class JobLog:
    """One job's log on the node it ran on, read by byte offset: `tail` slices it, `agentops logs` follows it.

    Made by `open_job_log`; the transport to the node is connected on the first read and closed by `close`.
    """

    def __init__(self, run_id: str, step_id: str, node: str, target: Any, attempt: Any, masker: Masker) -> None:
        self.run_id, self.step_id, self.node, self.target = run_id, step_id, node, target
        self.attempt = attempt  # the journal's AttemptRow: attempt number, job_dir, window
        self.masker = masker
        self._transport: Transport | None = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            from agent_ops.transport.target import connect

            self._transport = connect(self.target)
        return self._transport

    def size(self) -> int:
        st = self.transport.stat(f"{self.attempt.job_dir}/log")
        return st.size if st else 0

    def read(self, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes from `offset` (b'' before the job wrote any)."""
        try:
            return self.transport.read_from(f"{self.attempt.job_dir}/log", offset, limit)
        except FileNotFoundError:
            return b""

    def ended(self) -> bool:
        """Whether the job has exited (its exit code is written)."""
        return self.transport.stat(f"{self.attempt.job_dir}/rc") is not None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def open_job_log(journal: Journal, run_id: str, source: LogSource, node: str | None = None,
                 attempt: int | None = None) -> JobLog:
    """The log of `source`'s job on `node` (node_of picks the default), its newest attempt or `attempt`; OpError
    `not_started` when there is no such job yet."""
    row = journal.run(run_id)
    if row is None:
        raise OpError("unknown_run", f"unknown run {run_id!r}")
    name, target = node_of(journal, run_id, source.step_id, node)
    found = [a for a in journal.attempts(run_id, source.step_id, node=name)
             if a.job_dir and (attempt is None or a.attempt == attempt)]
    if not found:
        step = journal.step(run_id, source.step_id)
        which = f" of attempt {attempt}" if attempt is not None else ""
        raise OpError("not_started", f"step {source.step_id!r} of run {run_id} has no job log{which} yet "
                                     f"({step.state if step else 'unknown'}) on node {name}")
    return JobLog(run_id, source.step_id, name, target, found[-1], run_masker(row))


def run_masker(row: Any) -> Masker:
    """A Masker for the run's secrets, from those present in this environment (missing ones cannot leak here)."""
    from agent_ops.secret_values import Masker

    return Masker(os.environ[n] for n in row.secret_names if os.environ.get(n))


def tail(journal: Journal, run_id: str, step_id: str, *, lines: int | None = 50, offset: int | None = None,
         limit: int = 64 << 10, node: str | None = None) -> TailResult:
    """A step's job log (on `node`, default the head): the last `lines` lines, or `limit` bytes from `offset`."""
    log = open_job_log(journal, run_id, log_source(journal, run_id, step_id), node)  # a gate: the job it watches
    try:
        start = offset if offset is not None else max(0, log.size() - limit)
        data = log.read(start, limit)
        ended = log.ended()
    finally:
        log.close()
    text = log.masker.mask(data.decode("utf-8", "replace"))
    if offset is None and lines is not None:
        text = "\n".join(text.splitlines()[-lines:]) + ("\n" if text.endswith("\n") else "")
    return TailResult(run_id=run_id, step_id=step_id, node=log.attempt.node, attempt=log.attempt.attempt, text=text,
                      offset=start, next_offset=start + len(data), ended=ended)


def known_issues() -> Catalog:
    """The catalog the executor uses: the shipped entries and the user's (`$AGENTOPS_HOME/known_issues/`)."""
    from agent_ops.known_issues.catalog import CatalogError, active_catalog, user_catalog_dir

    try:
        return active_catalog(user_catalog_dir(journal_home()))
    except CatalogError as exc:
        raise OpError("invalid_catalog", "the catalog does not load", exc.problems) from None


def propose_issue(text: str, *, issue_id: str | None = None, title: str | None = None, fix: list[dict] | None = None,
                  healthy: list[str] | None = None, admit: bool = True) -> Proposal:
    """Draft a known issue from a failing log; admit it to the user catalog when it is safe (see known_issues.propose)."""
    from agent_ops.known_issues.catalog import CatalogError, user_catalog_dir
    from agent_ops.known_issues.propose import ProposalError, propose

    try:
        return propose(text, user_catalog_dir(journal_home()), issue_id=issue_id, title=title, fix=fix,
                       healthy=[Path(h) for h in healthy or []], admit=admit)
    except ProposalError as exc:
        raise OpError("invalid_proposal", str(exc)) from None
    except CatalogError as exc:
        raise OpError("invalid_catalog", "the catalog does not load", exc.problems) from None


def pane(journal: Journal, run_id: str, step_id: str, *, lines: int = 50, node: str | None = None) -> PaneResult:
    """What the newest attempt's job pane shows now (on `node`, default the head): its last `lines` lines, and the
    prompt it waits at, if any."""
    from agent_ops.fleet.nodes import fleet_rows
    from agent_ops.run.jobs import RunLayout
    from agent_ops.run.pane import capture, prompt_line

    log = open_job_log(journal, run_id, LogSource(step_id=step_id), node)
    row = journal.run(run_id)
    run_dir = next((d for spec, d, _ in fleet_rows(journal, row) if spec.name == log.node), row.run_dir or "")
    window = log.attempt.window or f"{step_id}-{log.attempt.attempt}"
    try:
        text = capture(log.transport, RunLayout.on(log.target, run_id, run_dir), window, max(1, min(lines, 2000)))
    finally:
        log.close()
    text = log.masker.mask(text)
    return PaneResult(run_id=run_id, step_id=step_id, attempt=log.attempt.attempt, window=window, text=text,
                      waiting_for_input=prompt_line(text))
