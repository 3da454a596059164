"""A run on rented boxes: rent the fleet, drive the run on it, watch the bill, and give the boxes back safely.

The order that keeps every box findable: the run's provisioning (request, teardown policy, budget)
is recorded in the journal first (a `provisioned` event), then lifecycle.rent records each box the
moment the provider creates it; only then does anything happen on a box. So `agentops resume RUN`
re-attaches to the same boxes (their nodes, host keys and known_hosts files are in the journal)
and `agentops down RUN` finds every one, even after the controller was SIGKILLed.

Giving back: the run ends (succeeded, failed, cancelled, interrupted by SIGINT/SIGTERM/SIGHUP, or
the budget is reached); a training left running (`keep_running`) keeps its boxes until no job of
the run has run on them for `idle_s`. Then the declared artifacts are copied off and checked
(run/artifacts.py), and the policy for the outcome is applied (`success` for a success, an idle
fleet or a reached budget; `failure` otherwise). A destroy is refused while an artifact is unsafe,
unless forced; the boxes are then kept and the message says how to finish by hand.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent_ops.bounds import MAX_POLL_S
from agent_ops.errors import AgentOpsError, RunbookError
from agent_ops.fleet.nodes import NodeSpec, fleet_rows
from agent_ops.provider.base import FAILED_STATES, Provider, ProviderError
from agent_ops.provider.lifecycle import FleetRequest, TeardownResult, rent, teardown
from agent_ops.provider.registry import open_provider
from agent_ops.provider.reputation import Reputation
from agent_ops.record.bill import PROVISIONED_EVENT, node_name, run_bill
from agent_ops.record.journal import LIVE_RENTAL_STATES, TERMINAL_RUN_STATES, TERMINAL_STEP_STATES, Journal
from agent_ops.run.artifacts import ArtifactResult, NodeArtifacts, save_all, specs_for
from agent_ops.run.context import RunContext
from agent_ops.run.jobs import RunLayout, end_run_tmux
from agent_ops.runbook.schema import ArtifactSpec, CheckpointSpec, TeardownPolicy, TeardownSpec
from agent_ops.transport.base import Transport
from agent_ops.transport.target import connect

log = logging.getLogger(__name__)

BUDGET_POLL_S = 1.0  # the bill is read from the journal (one query): cheap enough to look every second
IDLE_POLL_S = 10.0  # after the steps ended: how often the boxes are asked whether a job still runs


class Provisioning(BaseModel):
    """What a run rents and how it gives the boxes back, as recorded in the journal before anything is rented."""

    provider: str = "vast"
    request: FleetRequest
    teardown: TeardownSpec = Field(default_factory=TeardownSpec)
    budget_usd: float | None = Field(None, gt=0)
    idle_s: float = Field(600.0, gt=0)
    checkpoint: CheckpointSpec | None = None

    def record(self) -> dict[str, Any]:
        """The event data: this, plus what the bill reads (budget, expected hours)."""
        return {**self.model_dump(), "hours": self.request.offer.hours}


class GiveBack(BaseModel):
    """What giving a run's boxes back did: artifacts saved (or not), and the teardown."""

    run_id: str
    policy: TeardownPolicy
    reason: str
    artifacts: list[ArtifactResult] = []
    refused: list[str] = Field(default_factory=list, description="Artifacts not safe: the destroy was refused for them.")
    teardown: TeardownResult | None = None

    @property
    def kept_unsafe(self) -> bool:
        """The destroy was refused (an artifact not safe): the boxes still run, and bill, until someone acts."""
        return bool(self.refused) and self.teardown is None

    def summary(self) -> str:
        saved = sum(a.state == "saved" for a in self.artifacts)
        parts = [f"{saved}/{len(self.artifacts)} artifacts saved"] if self.artifacts else []
        if self.kept_unsafe:
            parts.append(f"destroy refused, boxes kept: not safe: {'; '.join(self.refused)} "
                         f"(agentops down {self.run_id} --force destroys anyway)")
        elif self.refused:
            parts.append(f"not safe, destroyed anyway (forced): {'; '.join(self.refused)}")
        if self.teardown is not None:
            verb = {"destroy": "destroyed", "stop": "stopped", "keep": "kept"}[self.policy]
            parts.append(f"{len(self.teardown.done)} boxes {verb}" if self.policy != "keep" else "boxes kept")
            parts += [f"could not give back {f}" for f in self.teardown.failed]
        return f"{self.reason}: " + ", ".join(parts)


class RentedRun:
    """One run's rented fleet, from the rental to the give-back; the provider is opened once and kept."""

    def __init__(self, provisioning: Provisioning, journal: Journal, run_id: str, provider: Provider | None = None) -> None:
        self.prov, self.journal, self.run_id = provisioning, journal, run_id
        self._provider = provider
        self.nodes: list[NodeSpec] = []  # the fleet once rented
        self.ended_by: str | None = None  # "budget reached" / "idle": why the watch ended the run
        self.given_back: GiveBack | None = None  # what the last give-back did

    @classmethod
    def recorded(cls, journal: Journal, run_id: str) -> RentedRun | None:
        """The run's provisioning as its journal holds it (None: the run rented nothing)."""
        event = journal.last_event(run_id, None, PROVISIONED_EVENT)
        if event is None or not isinstance(event.data, dict):
            return None
        return cls(Provisioning.model_validate({k: v for k, v in event.data.items() if k not in ("hours", "controller")}),
                   journal, run_id)

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = open_provider(self.prov.provider)
        return self._provider

    def close(self) -> None:
        if self._provider is not None:
            self._provider.close()

    # --- renting -----------------------------------------------------------------------------------

    def rent(self) -> list[NodeSpec]:
        """Record the provisioning, rent the fleet (all or none), and name its nodes `{provider}-{instance id}`."""
        req = self.prov.request
        # The controller renting is named, so that `status`/`wait` can tell a rental under way from one whose
        # controller died before the run began (no run row will ever come).
        controller = {"pid": os.getpid(), "host": socket.gethostname()}
        self.journal.event(self.run_id, None, PROVISIONED_EVENT,
                           f"renting {req.nodes} x {req.offer.gpus} {req.offer.gpu_name or 'GPU'} at most "
                           f"${req.offer.max_dph or 0:g}/h each from {self.prov.provider}",
                           {**self.prov.record(), "controller": controller})
        reputation = Reputation.under(self.journal.path.parent)
        boxes = rent(self.provider, req, self.journal, self.run_id, reputation)
        return [NodeSpec(node_name(b.provider, b.instance_id), b.target) for b in boxes]

    def started(self, make: Callable[[], RunContext]) -> RunContext:
        """`make()` (start_run on the rented nodes); if it fails, nothing will run on the boxes: give them back."""
        try:
            return make()
        except BaseException:
            with _signals_held():
                self.give_back(self.prov.teardown.failure, "the run could not start")
            raise

    def check_resumable(self) -> None:
        """A rented run is resumed on its own boxes: refuse when none is left. When the provider reports one of them
        dead or gone, the run cannot finish on its fleet: its artifacts are saved from the boxes left, the failure
        policy gives those back, the run is recorded as failed, and the refusal says so."""
        if not [r for r in self.journal.rentals(self.run_id) if r.state in ("created", "ready")]:
            raise RentedRunError(f"run {self.run_id}: its rented boxes were given back; nothing to resume on "
                                 f"(start it again with --provision)")
        from agent_ops.record.status import controller_alive

        row = self.journal.run(self.run_id)
        if row is None or row.state in ("succeeded", "cancelled") or controller_alive(row):
            return  # resume_run refuses these, and says why; boxes another controller drives are not ours to give back
        gone = self._gone_boxes()
        if not gone:
            return
        # Without this, resume waited out the reconnect timeout on the dead box, failed to connect, and left every
        # other box of the fleet billing with nothing to drive it (seen in the test of this case).
        lost = ", ".join(f"{name} ({why})" for name, why in gone.items())
        try:
            with _signals_held():
                result = self.give_back(self.prov.teardown.failure, f"cannot resume, box gone: {lost}")
        finally:
            self.close()
        now = time.time()
        for step in self.journal.steps(self.run_id):
            if step.state not in TERMINAL_STEP_STATES:
                self.journal.set_step(self.run_id, step.step_id, state="failed", ended=now, message=f"box gone: {lost}")
        self.journal.set_run(self.run_id, state="failed", ended=now, message=result.summary())
        raise RentedRunError(f"run {self.run_id}: {result.summary()}")

    # --- driving -----------------------------------------------------------------------------------

    def drive(self, ctx: RunContext, execute: Callable[[], str]) -> str:
        """Run `execute()` (the executor) while the bill is watched; then give the boxes back per policy."""
        try:
            return self._drive(ctx, execute)
        finally:
            self.close()

    def _drive(self, ctx: RunContext, execute: Callable[[], str]) -> str:
        watch = _BudgetWatch(self, ctx)
        watch.start()
        try:
            final = execute()
        except KeyboardInterrupt:
            watch.stop()
            with _signals_held():
                self.give_back(self.prov.teardown.failure, "boxes given back on the interrupt", ctx)
            raise  # the front end records the run as interrupted, with what the give-back did
        watch.stop()
        if final == "succeeded" and self.ended_by is None:
            self._watch_jobs(ctx)
        ok = final == "succeeded" or self.ended_by is not None
        reason = self.ended_by or f"run {final}"
        with _signals_held():
            result = self.give_back(self.prov.teardown.success if ok else self.prov.teardown.failure, reason, ctx)
        _note(ctx, result)
        return final

    def _watch_jobs(self, ctx: RunContext) -> None:
        """After success: while a job (a training left running) runs on a box, watch the budget; end once no job has
        run for idle_s, or at the budget. Returns at once when no job runs."""
        running = _jobs_running(ctx)
        if not running:
            return
        ctx.event("watching", None, f"jobs run on ({', '.join(running)}): the boxes are given back {self.prov.idle_s:g}s "
                  f"after the last one ends, or at the budget")
        idle_since: float | None = None
        next_look = time.monotonic() + min(IDLE_POLL_S, self.prov.idle_s / 4)
        while True:
            if self._budget_reached():
                self._budget_stop(ctx)
                return
            now = time.monotonic()
            if now >= next_look:
                next_look = now + min(IDLE_POLL_S, self.prov.idle_s / 4)
                idle_since = None if _jobs_running(ctx) else (idle_since or now)
            if idle_since is not None and now - idle_since >= self.prov.idle_s:
                self.ended_by = f"idle: no job ran for {self.prov.idle_s:g}s"
                return
            time.sleep(BUDGET_POLL_S)

    def _budget_reached(self) -> bool:
        bill = run_bill(self.journal, self.run_id)
        return bool(self.prov.budget_usd and bill and bill.spent_usd >= self.prov.budget_usd)

    def _budget_stop(self, ctx: RunContext) -> None:
        """The budget is spent: ask the training to checkpoint, wait for it (bounded), end the run's jobs."""
        bill = run_bill(self.journal, self.run_id)
        spent = bill.spent_usd if bill else 0.0
        self.ended_by = f"budget reached: ${spent:.2f} of ${self.prov.budget_usd:.2f} spent"
        ctx.event("budget_reached", None, self.ended_by, asdict(bill) if bill else None)
        boxes = [Box(n.name, n.transport, n.layout) for n in ctx.nodes]
        if self.prov.checkpoint is not None:
            ask_checkpoint(self.journal, self.run_id, boxes, self.prov.checkpoint)
        end_jobs(boxes)

    # --- giving back -------------------------------------------------------------------------------

    def give_back(self, policy: TeardownPolicy, reason: str, ctx: RunContext | None = None, force: bool = False) -> GiveBack:
        """Unless the boxes are kept: ask a training still running to checkpoint, end the run's jobs, save the
        artifacts. Then apply `policy`; a destroy waits for every artifact to be safe (unless `force`)."""
        result = GiveBack(run_id=self.run_id, policy=policy, reason=reason)
        if policy != "keep":
            boxes = self._boxes(ctx)
            try:
                if self.prov.checkpoint is not None:
                    ask_checkpoint(self.journal, self.run_id, boxes, self.prov.checkpoint)
                end_jobs(boxes)  # a file still being written could never match its copy
                result.artifacts = self._save_artifacts(boxes, ctx)
            finally:
                if ctx is None:
                    for box in boxes:
                        if box.transport is not None:
                            box.transport.close()
            result.refused = [a.line() for a in result.artifacts if a.blocks_destroy]
        if result.refused and policy == "destroy" and not force:
            self.journal.event(self.run_id, None, "destroy_refused", result.summary(), result.model_dump())
            self.given_back = result
            return result
        try:
            result.teardown = teardown(self.provider, self.journal, self.run_id, policy)
        except ProviderError as exc:
            result.teardown = TeardownResult(run_id=self.run_id, policy=policy, failed=[str(exc)])
        self.journal.event(self.run_id, None, "teardown", result.summary(), result.model_dump())
        self.given_back = result
        return result

    def _boxes(self, ctx: RunContext | None) -> list[Box]:
        """The run's nodes as boxes: the run's own connections, or (`down`, another process) fresh ones; a box the
        provider reports dead is not connected to."""
        gone = self._gone_boxes()
        if ctx is not None:
            return [Box(n.name, n.transport if n.name not in gone else None, n.layout, gone.get(n.name)) for n in ctx.nodes]
        row = self.journal.run(self.run_id)
        boxes = []
        for spec, run_dir, _ in fleet_rows(self.journal, row) if row else ():
            transport = None
            if spec.name not in gone:
                with contextlib.suppress(AgentOpsError, OSError):
                    transport = connect(spec.target.model_copy(update={"reconnect_timeout": 0.0}))
            boxes.append(Box(spec.name, transport, RunLayout.on(spec.target, self.run_id, run_dir), gone.get(spec.name)))
        return boxes

    def _save_artifacts(self, boxes: list[Box], ctx: RunContext | None) -> list[ArtifactResult]:
        declared = _declared(self.journal, self.run_id, ctx)
        nodes = [NodeArtifacts(b.name, declared.get(b.name, []), b.transport, b.gone) for b in boxes if declared.get(b.name)]
        if not nodes:
            return []
        row = self.journal.run(self.run_id)
        dest = Path(row.artifacts_dir if row and row.artifacts_dir else self.journal.path.parent / "runs" / self.run_id)
        return save_all(nodes, dest / "artifacts", self.journal, self.run_id)

    def _gone_boxes(self) -> dict[str, str]:
        """Nodes whose box the provider reports dead or gone: nothing on them can be saved any more."""
        gone = {}
        for row in self.journal.rentals(self.run_id):
            if row.state not in LIVE_RENTAL_STATES:
                continue
            try:
                shown = self.provider.show(row.instance_id)
            except ProviderError:
                continue  # unknown: treated as alive, so its artifacts must be saved (or the destroy waits)
            if shown.state in FAILED_STATES:
                gone[node_name(row.provider, row.instance_id)] = f"{shown.state} {shown.status_message or ''}".strip()
        return gone


@dataclass(frozen=True)
class Box:
    """A node of the run as giving back sees it: its connection (None: unreachable), its layout, why it is gone."""

    name: str
    transport: Transport | None
    layout: RunLayout
    gone: str | None = None


class RentedRunError(AgentOpsError):
    """A rented run cannot do what was asked (resume with its boxes gone)."""

    code = "run_state"


class _BudgetWatch:
    """A thread that reads the bill every second while the executor runs; at the budget it checkpoints the training,
    ends the jobs and asks the executor to stop (the run is then recorded as cancelled: budget reached)."""

    def __init__(self, rented: RentedRun, ctx: RunContext) -> None:
        self.rented, self.ctx = rented, ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="budget", daemon=True)

    def start(self) -> None:
        if self.rented.prov.budget_usd is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(BUDGET_POLL_S):
            try:
                if self.rented._budget_reached():
                    self.rented._budget_stop(self.ctx)
                    self.ctx.journal.set_run(self.ctx.run_id, state="cancelling")  # the executor stops at its next look
                    return
            except AgentOpsError as exc:  # a journal or box error here must not kill the run: the next look retries
                log.warning("budget watch: %s", exc)


def ask_checkpoint(journal: Journal, run_id: str, boxes: list[Box], spec: CheckpointSpec) -> None:
    """Ask the job `spec.job`, where it still runs, to save (its processes get the signal, or the command runs), then
    wait for it to exit (at most spec.wait_s)."""
    jobs = {b.name: (b, d) for b, d in _latest_jobs(journal, run_id, boxes, spec.job) if not _exited(b, d)}
    if not jobs:
        return
    how = f"signal SIG{spec.signal}" if spec.command is None else "its checkpoint command"
    journal.event(run_id, spec.job, "checkpoint_asked", f"asking {spec.job} to save ({how}) on {', '.join(jobs)}; "
                  f"waiting up to {spec.wait_s:g}s for it to exit")
    for box, job_dir in jobs.values():
        script = spec.command if spec.command is not None else _signal_script(job_dir, box.layout, spec.signal or "USR1")
        with contextlib.suppress(AgentOpsError):
            box.transport.exec(script, timeout=MAX_POLL_S)
    deadline = time.monotonic() + spec.wait_s
    while jobs and time.monotonic() < deadline:
        jobs = {name: (b, d) for name, (b, d) in jobs.items() if not _exited(b, d)}
        time.sleep(0.5)
    journal.event(run_id, spec.job, "checkpoint_done" if not jobs else "checkpoint_timeout",
                  f"{spec.job} exited after the checkpoint request" if not jobs else
                  f"{spec.job} still running after {spec.wait_s:g}s on {', '.join(jobs)}; going on")


def _exited(box: Box, job_dir: str) -> bool:
    """Whether the job has an exit code (a box that cannot be asked counts as done: nothing can be waited for)."""
    try:
        return box.transport is None or box.transport.stat(f"{job_dir}/rc") is not None
    except AgentOpsError:
        return True


def end_jobs(boxes: list[Box]) -> None:
    """End every job of the run on the boxes that answer (their tmux server or session goes)."""
    for box in boxes:
        if box.transport is not None:
            with contextlib.suppress(AgentOpsError):
                end_run_tmux(box.transport, box.layout)


# torchrun's launcher (the elastic agent) handles TERM/INT/HUP/QUIT only: SIGUSR1's default action would end it, and
# with it the step, while its workers save. It is left alone (known by its first arguments, not by any argument that
# happens to hold the word); its workers get the signal, save and exit 0, and so does it.
LAUNCHER = r"(.*/)?torchrun|torch\.distributed\.(run|launch)"


def _signal_script(job_dir: str, layout: RunLayout, sig: str) -> str:
    """Signal the job's own processes: every descendant of its wrapper but agentops' (wrapper, script shell, log
    follower, mask filter) and a launcher's, whose default action would end them before the job could save."""
    d = shlex.quote(job_dir)
    return (f"d={d}; p=$(cat \"$d/pid\" 2>/dev/null) || exit 0\n"
            "kids() { for c in $(pgrep -P \"$1\"); do echo \"$c\"; kids \"$c\"; done; }\n"
            "for c in $(kids \"$p\"); do a=$(tr '\\0' '\\n' < /proc/$c/cmdline 2>/dev/null) || continue\n"
            f"  printf '%s\\n' \"$a\" | grep -qF -e \"$d/\" -e {shlex.quote(layout.mask_program)} && continue\n"
            f"  printf '%s\\n' \"$a\" | head -n 3 | grep -qxE {shlex.quote(LAUNCHER)} && continue\n"
            f"  kill -{sig} \"$c\" 2>/dev/null; done; true")


def _latest_jobs(journal: Journal, run_id: str, boxes: list[Box], step_id: str) -> list[tuple[Box, str]]:
    """(box, job directory of the step's newest attempt there) for each reachable box the step ran on."""
    found: dict[str, str] = {}
    for attempt in journal.attempts(run_id, step_id):
        if attempt.job_dir:
            found[attempt.node or boxes[0].name] = attempt.job_dir
    return [(b, found[b.name]) for b in boxes if b.name in found and b.transport is not None]


def _jobs_running(ctx: RunContext) -> list[str]:
    """`job@node` for every job of the run still running (no exit code yet, its process alive) on a reachable node."""
    script = ("for d in {jobs}/*/; do [ -f \"$d/rc\" ] && continue; p=$(cat \"$d/pid\" 2>/dev/null) || continue; "
              "kill -0 \"$p\" 2>/dev/null && basename \"$d\"; done; true")
    running = []
    for node in ctx.nodes:
        try:
            out = node.transport.exec(script.format(jobs=shlex.quote(node.layout.jobs_dir)), timeout=MAX_POLL_S)
        except AgentOpsError:
            continue  # a lost box runs nothing we can wait for
        running += [f"{job}@{node.name}" for job in out.text().split()]
    return running


def _declared(journal: Journal, run_id: str, ctx: RunContext | None) -> dict[str, list[ArtifactSpec]]:
    """node -> the artifacts it holds, rendered with its values (from the run, or from the journal and its runbook)."""
    if ctx is not None:
        names = [n.name for n in ctx.nodes]
        return {n.name: specs_for(n.name, names, ctx.for_node(n).runbook.artifacts) for n in ctx.nodes}
    row = journal.run(run_id)
    if row is None:
        return {}
    from agent_ops.runbook.loader import builtin_values, load_runbook, render_runbook

    try:
        loaded = load_runbook(row.runbook_path)
    except RunbookError:
        return {}
    recorded = fleet_rows(journal, row)
    pairs = [(spec.name, spec.address) for spec, _, _ in recorded]
    names = [name for name, _ in pairs]
    found = {}
    for rank, (spec, run_dir, _) in enumerate(recorded):
        builtins = builtin_values(run_id=run_id, run_dir=run_dir, runbook_dir=str(Path(row.runbook_path).parent),
                                  artifacts_dir=row.artifacts_dir or "", nodes=pairs, rank=rank)
        runbook = render_runbook(loaded, {**row.vars, **builtins})
        found[spec.name] = specs_for(spec.name, names, runbook.artifacts)
    return found


def _note(ctx: RunContext, result: GiveBack) -> None:
    """The give-back's summary appended to the run's message (status shows it)."""
    row = ctx.journal.run(ctx.run_id)
    message = row.message if row and row.message else ""
    if result.reason.startswith("budget reached"):
        message = message.replace("cancelled: ", "", 1)
    ctx.journal.set_run(ctx.run_id, message=f"{result.summary()}; {message}" if message else result.summary())
    ctx.event("boxes_given_back" if not result.refused else "destroy_refused", None, result.summary())


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Giving boxes back is not cut short by a second Ctrl-C or SIGTERM: the money is the point (it is bounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def give_back_run(journal: Journal, run_id: str, policy: TeardownPolicy, provider: Provider, force: bool = False) -> GiveBack:
    """`agentops down RUN`: save the run's artifacts from its boxes, then give them back (a destroy waits for them)."""
    rented = RentedRun.recorded(journal, run_id)
    prov = rented.prov if rented else Provisioning(provider=provider.name, request=_placeholder_request())
    rented = RentedRun(prov, journal, run_id, provider)
    result = rented.give_back(policy, "agentops down", force=force)
    row = journal.run(run_id)
    if row is not None and result.teardown is not None and policy == "destroy":
        note = f"boxes destroyed by agentops down ({result.summary()})"
        from agent_ops.record.status import controller_alive

        if row.state in TERMINAL_RUN_STATES or row.state == "interrupted" or controller_alive(row):
            journal.set_run(run_id, message=f"{row.message}; {note}" if row.message else note)
        else:  # a run whose controller died: nothing can drive it any more
            journal.set_run(run_id, state="interrupted", message=note)
    return result


def _placeholder_request() -> FleetRequest:
    """A rental made by `agentops rent` (no run provisioning recorded): only the provider matters to give it back."""
    return FleetRequest(identity="-")

