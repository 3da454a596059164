"""`agentops`: run, validate, plan, status, logs, resume, cancel, known issues.

Exit codes: 0 success; 1 the run (or check) failed; 2 bad input (runbook, vars, target),
nothing ran; 3 the target could not be reached; 4 the run id is unknown or in the wrong
state; 124 `wait --until done` timed out; 130 interrupted. With --json, stdout carries exactly one JSON document and
progress goes to stderr.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer

from agent_ops.errors import AgentOpsError, JournalError, RunbookError, TransportError
from agent_ops.front import service as ops
from agent_ops.front.cli_catalog import diagnose_command, known_issues_app
from agent_ops.front.cli_provider import (
    BUDGET,
    FLEET_FILE,
    GPU_NAME,
    GPUS,
    MAX_DPH,
    NODES,
    ON_FAILURE,
    ON_SUCCESS,
    PROVISION,
    down_command,
    offers_command,
    rent_command,
    rentals_command,
)
from agent_ops.front.output import Output
from agent_ops.front.target_options import TargetOptions
from agent_ops.record.journal import Journal
from agent_ops.secret_values import MissingSecret, read_secrets

# Agents poll `status`, `list`, `logs` and `wait`, each poll a new process: at import this module loads only the
# journal, the status views and the command groups' thin fronts; the runbook models, the loader, the catalog, the
# providers and rich (Output imports it for a person's output only) come with the commands that use them
# (tests/bench/bench_status.py measures it).

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)
app.add_typer(known_issues_app, name="known-issues", help="The known-issue catalog.")
app.command("diagnose", help="Match a log against the known-issue catalog.")(diagnose_command)
app.command("offers", help="Boxes for rent matching a request, cheapest for the work first.")(offers_command)
app.command("rent", help="Rent N boxes, ready over SSH and qualified (all or none).")(rent_command)
app.command("rentals", help="A run's rented boxes: state, $/h, spent so far.")(rentals_command)
app.command("down", help="Give back every box a run rented.")(down_command)

EXIT_FAILED, EXIT_INPUT, EXIT_TRANSPORT, EXIT_STATE, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
EXIT_BOXES_KEPT = 5  # a rented fleet's destroy was refused (an artifact not safe): boxes still bill until `down`
EXIT_TIMEOUT = 124  # `wait --until done --timeout N`: the run had not ended (as timeout(1) says it)
# After the journal refused a write mid-run: how long to keep trying to record the run as interrupted (a disk freed).
JOURNAL_RETRY_S = 10.0

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")
VarOpt = typer.Option(None, "--var", "-v", help="Set a variable: NAME=VALUE (repeatable).")


def _parse_vars(items: list[str] | None, o: Output) -> dict[str, str]:
    values = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            o.fail(EXIT_INPUT, f"--var {item!r}: expected NAME=VALUE", "invalid_var")
        values[name] = value
    return values


def _journal(o: Output) -> Journal:
    try:
        return Journal()
    except JournalError as exc:
        o.fail(EXIT_INPUT, str(exc), exc.code)


def _fleet(where: TargetOptions, o: Output):
    """The fleet `where` names (a single target is a fleet of one); a bad name or inventory ends the command (exit 2)."""
    try:
        return where.resolve()
    except RunbookError as exc:
        o.fail(EXIT_INPUT, str(exc), exc.code, exc.problems)


@app.command()
def validate(files: list[str] = typer.Argument(..., help="Runbook files or shipped names."), as_json: bool = JsonOpt) -> None:
    """Check runbooks without running anything; every problem as FILE:LINE: field: message."""
    o = Output(as_json)
    results = [ops.validate(name) for name in files]
    bad = not all(r.ok for r in results)
    if as_json:
        o.json({"results": results, "ok": not bad})
    else:
        for r in results:
            if r.ok:
                o.note(f"{r.file}: ok ({r.name}, {r.steps} steps)", style="green")
            for p in r.problems:
                o.note(p, style="red")
    raise typer.Exit(EXIT_INPUT if bad else 0)


def _load(file: str, var: list[str] | None, o: Output):
    from agent_ops.runbook.loader import load_runbook, resolve_vars

    try:
        loaded = load_runbook(file)
        values = resolve_vars(loaded, _parse_vars(var, o))
        return loaded, values
    except RunbookError as exc:
        o.fail(EXIT_INPUT, f"{file}: invalid runbook", exc.code, exc.problems)


@app.command()
def plan(file: str, var: list[str] | None = VarOpt, as_json: bool = JsonOpt) -> None:
    """Print the DAG in waves (steps in one wave may run at once), with variables resolved."""
    o = Output(as_json)
    doc = _op(o, ops.plan, file, _parse_vars(var, o))
    if as_json:
        o.json(doc)
        return
    o.line(f"{doc.runbook} ({doc.file})", style="bold")
    for k, v in doc.vars.items():
        o.line(f"  var {k} = {v!r}")
    for name in doc.secrets:
        o.line(f"  secret {name} = ***")
    for i, wave in enumerate(doc.waves, 1):
        o.line(f"wave {i}:", style="bold")
        for s in wave:
            needs = f"  (needs {', '.join(s.needs)})" if s.needs else ""
            needs += f"  (after {', '.join(s.after)} finished)" if s.after else ""
            needs += f"  (reads results of {', '.join(s.reads)}: rendered when it starts)" if s.reads else ""
            needs += "  (if: always)" if s.always else ""
            o.line(f"  {s.id} [{s.kind}]{needs}")
            for k, v in s.env.items():
                o.line(f"      env {k}={v}", style="dim")
            for line in (s.command or "").rstrip().splitlines():
                o.line(f"      $ {line}", style="dim")
    if doc.money:
        o.line("with --provision (money at stake; flags override the runbook's provision:):", style="bold")
    for line in doc.money:
        o.line(f"  [money] {line}")
    if doc.deleting_fixes:
        o.line("fixes that delete (refused on a local target unless --allow-deleting-fixes):", style="bold")
    for fix in doc.deleting_fixes:
        o.line(f"  {fix.issue_id} deletes {'; '.join(fix.deletes)}, if it matches a failure of: {', '.join(fix.steps)}")


def _op(o: Output, fn, *args, **kwargs):
    """Call an operation; an OpError becomes a clean message (or JSON error) and its exit code."""
    try:
        return fn(*args, **kwargs)
    except ops.OpError as exc:
        code = (EXIT_INPUT if exc.code in ("invalid_runbook", "invalid_target", "missing_secret", "invalid_var")
                else EXIT_FAILED if exc.code == "rent_failed" else EXIT_STATE)  # it failed, as its own controller exited
        o.fail(code, exc.message, exc.code, exc.problems)


@app.command()
def schema() -> None:
    """Print the runbook JSON Schema (generated from the models) for editors."""
    from agent_ops.runbook.schema import Runbook

    Output(as_json=True).json(Runbook.model_json_schema())


@app.command()
def run(
    file: str = typer.Argument(..., help="A runbook file, or the name of one shipped with agentops."),
    var: list[str] | None = VarOpt,
    target: str = typer.Option("local", "--target", "-t", help="local, ssh://user@host:port, a host or group of --inventory; "
                               "several, comma-separated, make a fleet (the first is the head)."),
    identity: str | None = typer.Option(None, "--identity", "-i", help="SSH private key."),
    inventory: str | None = typer.Option(None, "--inventory", help="YAML file of named hosts and groups of them."),
    accept_new_host_key: bool = typer.Option(False, "--accept-new-host-key", help="Trust an unknown host key and record it."),
    tmux_socket: str | None = typer.Option(None, "--tmux-socket", help="tmux server (-L name) shared by the runs naming it; default: one per run."),
    workdir: str | None = typer.Option(None, "--workdir", help="Directory on the target for job files (run_dir is WORKDIR/runs/RUN; "
                                       "default ~/.agentops there). The journal stays here, in $AGENTOPS_HOME (default ./.agentops)."),
    known_hosts: str | None = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."),
    allow_deleting_fixes: bool = typer.Option(False, "--allow-deleting-fixes",
                                              help="On --target local, let known-issue fixes that delete files (caches) run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan with every var resolved; run nothing."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start the run in the background; print its id at once."),
    run_id: str | None = typer.Option(None, "--run-id", hidden=True, help="Use this run id (set by --detach)."),
    provision: str | None = PROVISION, fleet_file: Path | None = FLEET_FILE, nodes: int | None = NODES,
    gpus: int | None = GPUS, gpu_name: str | None = GPU_NAME, max_dph: float | None = MAX_DPH,
    budget_usd: float | None = BUDGET, on_success: str | None = ON_SUCCESS, on_failure: str | None = ON_FAILURE,
    as_json: bool = JsonOpt,
) -> None:
    """Run a runbook on a target, step by step, in tmux; the journal records everything."""
    from agent_ops.run.context import start_run

    o = Output(as_json)
    where = TargetOptions(target, identity, inventory, accept_new_host_key, tmux_socket, workdir, known_hosts,
                          allow_deleting_fixes)
    entry = _rent_entry(where, provision, fleet_file, o)
    provision = entry.provider if entry else provision
    if detach and not dry_run and not provision:  # the service checks the runbook, its secrets and the target first
        _started(o, _op(o, ops.start_detached, file, _parse_vars(var, o), where, _journal(o)))
        return
    loaded, values = _load(file, var, o)
    rent_flags = {"nodes": nodes, "gpus": gpus, "gpu_name": gpu_name, "max_dph": max_dph, "budget_usd": budget_usd,
                  "on_success": on_success, "on_failure": on_failure}
    prov = _provisioned(loaded, values, provision, fleet_file, rent_flags, identity, "local" if entry else target, o, entry)
    fleet = None if prov else _fleet(where, o)
    if dry_run:
        plan(file, var, as_json)
        return
    if detach:  # a run that rents its boxes: its provisioning was checked here (exit 2, nothing rented)
        from dataclasses import replace

        from agent_ops.front.cli_provider import provision_args

        where = replace(where, accept_new_host_key=False)  # rented boxes: their host keys come with the rental
        # An inventory's rent entry travels as -t NAME --inventory FILE (in `where`), which the controller reads again.
        _started(o, _op(o, ops.start_detached, file, _parse_vars(var, o), where, _journal(o),
                        provision_args(provision, fleet_file, rent_flags)))
        return
    try:
        secret_values = read_secrets(loaded.runbook.secrets)
    except MissingSecret as exc:
        o.fail(EXIT_INPUT, f"{loaded.path}: secrets missing from the environment: {exc.args[0]}", "missing_secret")
    journal = _journal(o)
    rented = _rent(prov, journal, run_id, o) if prov else None
    if rented:
        fleet, run_id = rented.nodes, rented.run_id

    def make_ctx(observer):
        start = lambda: start_run(loaded, values, secret_values, fleet, journal, run_id=run_id, observer=observer)
        return rented.started(start) if rented else start()

    _execute(journal, o, make_ctx, rented)


def _started(o: Output, started) -> None:
    """A run started in the background: its id (or the StartResult with --json), and how to follow it."""
    if o.as_json:
        o.json(started)
    else:
        o.line(started.run_id)
        o.note(f"started in the background (pid {started.controller_pid}); follow with: agentops wait {started.run_id}")


def _provisioned(loaded, values, provision: str | None, fleet_file: Path | None, flags: dict[str, Any],
                 identity: str | None, target: str, o: Output, entry=None):
    """With --provision (or -t naming an inventory's rent entry): the run's provisioning, checked (exit 2, nothing
    rented), in a RentedRun not yet renting."""
    if not provision:
        return None
    from agent_ops.front.cli_provider import provisioning

    if target != "local":
        o.fail(EXIT_INPUT, f"--provision {provision} rents the run's boxes: give no --target ({target})", "invalid_target")
    return provisioning(loaded, values, provision, fleet_file, flags, identity, o, entry)


def _rent_entry(where: TargetOptions, provision: str | None, fleet_file: Path | None, o: Output):
    """The inventory's rent entry `-t` names (a fleet to rent for the run), or None; a clash with --provision of
    another provider or with --fleet ends the command (exit 2)."""
    if not where.inventory or "," in where.target or where.target == "local":
        return None
    try:
        entry = where.inventory_file.rent.get(where.target)
    except RunbookError as exc:
        o.fail(EXIT_INPUT, str(exc), exc.code, exc.problems)
    if entry is None:
        return None
    if fleet_file is not None:
        o.fail(EXIT_INPUT, f"-t {where.target} is a fleet to rent in {where.inventory}: it is the fleet request; "
                           f"give no --fleet", "invalid_target")
    if provision and provision != entry.provider:
        o.fail(EXIT_INPUT, f"-t {where.target} is rented from {entry.provider} ({where.inventory}), not --provision "
                           f"{provision}", "invalid_target")
    return entry


def _rent(prov, journal: Journal, run_id: str | None, o: Output):
    """Rent the run's boxes; SIGTERM/SIGHUP stop the rental as Ctrl-C does (every box made is destroyed)."""
    from agent_ops.front.cli_provider import rent_for_run
    from agent_ops.run.context import new_run_id
    from agent_ops.run.rented import RentedRun

    rented = RentedRun(prov, journal, run_id or new_run_id())
    stop_signals = {sig: signal.signal(sig, _stop_like_ctrl_c) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rented.nodes = rent_for_run(rented, o)
    except KeyboardInterrupt:
        o.fail(EXIT_INTERRUPTED, f"interrupted while renting; every box it made was destroyed (run {rented.run_id})",
               "interrupted")
    finally:
        for sig, handler in stop_signals.items():
            signal.signal(sig, handler)
    return rented


def _execute(journal: Journal, o: Output, make_ctx, rented=None) -> None:
    from agent_ops.front.live_view import LiveView, PlainView, render_status
    from agent_ops.record.status import run_status
    from agent_ops.run.context import close_run
    from agent_ops.run.executor import Executor

    plain = PlainView()
    try:
        ctx = make_ctx(plain if (o.as_json or not o.err.is_terminal) else None)
    except TransportError as exc:
        o.fail(EXIT_TRANSPORT, f"cannot reach the target: {exc}", exc.code)
    except AgentOpsError as exc:
        o.fail(EXIT_STATE if exc.code == "run_state" else EXIT_INPUT, str(exc), exc.code)
    view = None
    if ctx.observer is None:
        view = LiveView(journal.path, ctx.run_id, o.err)
        ctx.observer = view
    stop_signals = {sig: signal.signal(sig, _stop_like_ctrl_c) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        # A rented fleet's run is driven through its watch (budget, idle) and ends with its boxes given back.
        final = rented.drive(ctx, Executor(ctx).execute) if rented else Executor(ctx).execute()
    except KeyboardInterrupt as exc:
        how = f"stopped by {exc.args[0]}" if isinstance(exc, ControllerStopped) else "interrupted"
        given_back = rented.given_back if rented else None  # a rented fleet was given back per its failure policy
        after = given_back.summary() if given_back else "`agentops resume` continues"
        try:
            journal.set_run(ctx.run_id, state="interrupted", message=f"controller {how}; {after}")
        except JournalError as journal_exc:
            o.note(str(journal_exc))
        o.note(f"{how}; {after}" if given_back else f"{how}; jobs keep running. Continue with: agentops resume {ctx.run_id}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except JournalError as exc:
        _journal_lost(journal, ctx.run_id, exc, o)
    finally:
        for sig, handler in stop_signals.items():
            signal.signal(sig, handler)
        if view:
            view.close()
        close_run(ctx)
    status = run_status(journal, ctx.run_id)
    if o.as_json:
        o.json(status)
    else:
        if view is None:
            o.err.print(render_status(status))
        _print_reports(ctx.loaded.runbook, status, o)
        o.note(f"run {ctx.run_id}: {final} — details: agentops status {ctx.run_id}")
    if rented and rented.given_back and rented.given_back.kept_unsafe:
        # Exit 0 here would let a script walk away from boxes that are still billing.
        o.note(rented.given_back.summary())
        raise typer.Exit(EXIT_BOXES_KEPT)
    raise typer.Exit(0 if final == "succeeded" else EXIT_FAILED)


class ControllerStopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the controller: it stops the way Ctrl-C stops it (the run recorded as interrupted)."""


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    raise ControllerStopped(signal.Signals(signum).name)


def _journal_lost(journal: Journal, run_id: str, exc: JournalError, o: Output) -> None:
    """The journal refused a write mid-run: the controller stops driving (the jobs run on, `resume` re-attaches).

    It still tries, for JOURNAL_RETRY_S, to record the run as interrupted (a full disk may be freed meanwhile),
    so that the journal does not show a run nobody drives as running.
    """
    o.note(f"{exc}: the controller stops driving run {run_id}; its jobs keep running on the target")
    deadline = time.monotonic() + JOURNAL_RETRY_S
    while True:
        try:
            journal.set_run(run_id, state="interrupted", message=f"controller stopped: {exc}; `agentops resume` continues")
            state = "recorded as interrupted"
            break
        except JournalError:
            if time.monotonic() > deadline:
                state = f"could not be recorded (the journal still shows it running, its controller gone) within {JOURNAL_RETRY_S:g}s"
                break
            time.sleep(0.5)
    o.fail(EXIT_FAILED, f"run {run_id}: {state}; once the journal can be written, continue with: agentops resume {run_id}",
           exc.code)


def _print_reports(runbook, status, o: Output) -> None:
    """The output of `report: true` steps (a run's summary), after the table."""
    from rich.text import Text

    reported = {s.id for s in runbook.steps if getattr(s, "report", False)}
    for step in status.steps:
        if step.id in reported and step.log_tail:
            o.err.rule(Text(step.id), style="dim")  # Text: a cell id's brackets are not markup
            for line in step.log_tail:
                o.note(line)


@app.command()
def resume(run_id: str, as_json: bool = JsonOpt) -> None:
    """Finish a run whose controller died: re-attach to its jobs, never re-run a succeeded step."""
    from agent_ops.run.context import resume_run
    from agent_ops.run.rented import RentedRun, RentedRunError

    o = Output(as_json)
    journal = _journal(o)
    rented = RentedRun.recorded(journal, run_id)  # a run on rented boxes re-attaches to them and gives them back after
    try:
        if rented:
            rented.check_resumable()
    except RentedRunError as exc:
        o.fail(EXIT_STATE, str(exc), exc.code)
    try:
        _execute(journal, o, lambda observer: resume_run(journal, run_id, observer=observer), rented)
    except MissingSecret as exc:
        o.fail(EXIT_INPUT, f"secrets missing from the environment: {exc.args[0]}", "missing_secret")


@app.command()
def cancel(run_id: str, as_json: bool = JsonOpt) -> None:
    """Stop a run's jobs and record it (asks a live controller, or stops the jobs itself)."""
    from agent_ops.run.context import cancel_run

    o = Output(as_json)
    journal = _journal(o)
    try:
        state = cancel_run(journal, run_id)
    except AgentOpsError as exc:
        o.fail(EXIT_STATE if exc.code == "run_state" else EXIT_TRANSPORT, str(exc), exc.code)
    if as_json:
        o.json({"id": run_id, "state": state})
    else:
        o.note(f"run {run_id}: {state}")


@app.command()
def status(
    run_id: str | None = typer.Argument(None, help="Run id (default: the latest)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also each step's job environment (secrets ***) and results."),
    as_json: bool = JsonOpt,
) -> None:
    """A run's state from the journal: steps, attempts, gate progress, remedies."""
    o = Output(as_json)
    st = _op(o, ops.status, _journal(o), run_id)
    if as_json:
        o.json(st)
        return
    from agent_ops.front.live_view import render_status

    o.out.print(render_status(st))
    for s in st.steps if verbose and len(st.nodes) > 1 else ():
        for p in s.nodes:
            o.line(f"{s.id}@{p.node}: {p.state} (try {p.attempt}) {p.message or p.last_line or ''}")
    for s in st.steps if verbose else ():
        for k, v in (s.env or {}).items():
            o.line(f"{s.id}: env {k}={v}")
        for line in result_lines(s.outputs):
            o.line(f"{s.id}: {line}")
    if st.message:
        o.line(st.message)
    for r in st.remedies:
        o.line(f"remedy {r.issue_id} on {r.step_id} (attempt {r.attempt}): {r.result}")


@app.command()
def wait(
    run_id: str,
    until: str = typer.Option("change", "--until", help="change: return at the run's next change (<= 30 s); "
                              "done: keep waiting, a progress line per change, until the run ends."),
    timeout: float | None = typer.Option(None, "--timeout", min=0, help="Seconds to wait at most (change: <= 30, default 30; "
                                         "done: default no limit, exit 124 when it passes first)."),
    as_json: bool = JsonOpt,
) -> None:
    """Wait for a run: its next change, or (--until done) its end, with exit code 0 succeeded, 1 failed or cancelled."""
    o = Output(as_json)
    if until not in ("change", "done"):
        o.fail(EXIT_INPUT, f"--until {until!r}: expected change or done", "invalid_option")
    if until == "change":
        if timeout is not None and timeout > ops.MAX_BLOCK_S:
            o.fail(EXIT_INPUT, f"--timeout {timeout:g}: at most {ops.MAX_BLOCK_S:g} s with --until change (--until done waits longer)",
                   "invalid_option")
        result = _op(o, ops.wait, _journal(o), run_id, ops.MAX_BLOCK_S if timeout is None else timeout)
    else:
        result = _op(o, ops.wait_until_done, _journal(o), run_id, timeout, lambda r: _progress_line(r, o), o.note)
    if as_json:
        o.json(result)
    else:
        st = result.status
        changed = "changed" if result.changed else "no change"
        o.line(f"{st.id}: {st.state} ({changed} after {result.waited_s:.1f}s; next poll in {st.next_poll_s:g}s)")
        for s in st.steps:
            waiting = f"waiting for input: {s.waiting_for_input}" if s.waiting_for_input else None
            o.line(f"  {s.id:<16} {s.state:<10} {waiting or s.message or s.last_line or ''}")
    state = result.status.state
    if until == "change":
        raise typer.Exit(EXIT_FAILED if state == "failed" else 0)
    if not result.status.terminal:
        o.note(f"run {run_id} still {state} after {result.waited_s:.0f}s")
        raise typer.Exit(EXIT_TIMEOUT)
    raise typer.Exit(0 if state == "succeeded" else EXIT_FAILED)  # the run's own exit code


def _progress_line(result: ops.WaitResult, o: Output) -> None:
    """One line per change while `wait --until done` waits: the run's state, step counts, what runs now."""
    st = result.status
    counts: dict[str, int] = {}
    for s in st.steps:
        counts[s.state] = counts.get(s.state, 0) + 1
    running = [s.id for s in st.steps if s.state in ("running", "started")]
    now = f"; running: {', '.join(running[:4])}{' ...' if len(running) > 4 else ''}" if running else ""
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    o.note(f"[{result.waited_s:7.1f}s] {st.id}: {st.state}: {summary}{now}")


@app.command()
def mcp() -> None:
    """Serve the agentops tools over MCP (stdio) for AI agents; logs go to stderr."""
    from agent_ops.front.mcp_server import serve

    serve()


@app.command("list")
def list_runs(limit: int = typer.Option(20, help="How many runs."), as_json: bool = JsonOpt) -> None:
    """Recent runs, newest first."""
    from agent_ops.record.status import run_summaries

    o = Output(as_json)
    runs = run_summaries(_journal(o), limit)
    if as_json:
        o.json(runs)
        return
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        where = f"{len(r.nodes)} nodes: {','.join(r.nodes)}" if len(r.nodes) > 1 else r.target
        o.line(f"{r.id}  {when}  {r.state:<10} {r.runbook}  {where}")


@app.command()
def logs(
    run_id: str,
    step: str,
    attempt: int | None = typer.Option(None, help="Attempt number (default: the latest)."),
    node: str | None = typer.Option(None, "--node", "-n", help="The node whose log to print (default: the head, or the "
                                    "first node the step ran on)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output until the job ends."),
    offset: int = typer.Option(0, help="Start at this byte offset."),
    start_timeout: float = typer.Option(600.0, "--start-timeout", min=0, help="With --follow: wait this long for the step to start."),
) -> None:
    """Print a run step's job log from its node (by byte offset; --follow polls <= 1 s).

    A gate shows the log of the job it watches. With --follow, a step that has not started yet is waited for
    (at most --start-timeout seconds, saying so); it exits 4 if the step ends without a job (skipped, not run).
    On a fleet, --node picks the node (default: the head, or the first node the step ran on).
    """
    o = Output()
    journal = _journal(o)
    source = _op(o, ops.log_source, journal, run_id, step)
    if source.note:
        o.note(source.note)
    if follow and attempt is None:
        _wait_for_start(journal, run_id, source.step_id, start_timeout, node, o)
    try:
        log = ops.open_job_log(journal, run_id, source, node, attempt)
    except ops.OpError as exc:
        hint = "; --follow waits for it to start" if exc.code == "not_started" and attempt is None else ""
        o.fail(EXIT_STATE, exc.message + hint, exc.code, exc.problems)
    try:
        while True:
            data = log.read(offset, 1 << 20)
            if data:
                offset += len(data)
                sys.stdout.write(log.masker.mask(data.decode("utf-8", "replace")))
                sys.stdout.flush()
                continue
            if not follow or log.ended():
                break
            time.sleep(1.0)
    finally:
        log.close()


def result_lines(outputs: dict | None) -> list[str]:
    """A step's recorded results as the lines `status -v` prints, named as templates read them."""
    outputs = outputs or {}
    lines = [f"outputs.{k} = {v!r}" for k, v in (outputs.get("outputs") or {}).items()]
    for name, values in (outputs.get("metrics") or {}).items():
        shown = f"{values[0]:g} .. {values[-1]:g}" if values else "no values"
        lines.append(f"metrics.{name}: {len(values)} values, {shown}")
    for i, check in enumerate(outputs.get("checks") or []):
        details = ", ".join(f"{k}={v!r}" for k, v in (check.get("details") or {}).items() if not isinstance(v, (list, dict)))
        lines.append(f"checks[{i}] {check.get('status')}: {details}")
    return lines


def _wait_for_start(journal: Journal, run_id: str, step_id: str, limit: float, node: str | None, o: Output) -> None:
    """Poll the journal (every 0.5 s, at most `limit` seconds) until the step's job exists; exit 4 if it never will."""
    t0 = time.monotonic()
    started = False
    while True:
        if any(a.job_dir for a in journal.attempts(run_id, step_id, node=node)):
            return
        if not started:
            o.note(f"waiting for step {step_id} of run {run_id} to start (up to {limit:g}s)")
            started = True
        row, run = journal.step(run_id, step_id), journal.run(run_id)
        if row is not None and row.state in ("skipped", "cancelled", "failed", "succeeded"):
            o.fail(EXIT_STATE, f"step {step_id!r} ended without a job log: {row.state}{': ' + row.message if row.message else ''}",
                   "no_log")
        if run is not None and run.state in ("succeeded", "failed", "cancelled"):
            o.fail(EXIT_STATE, f"run {run_id} {run.state} before step {step_id!r} started", "no_log")
        if time.monotonic() - t0 >= limit:
            o.fail(EXIT_STATE, f"step {step_id!r} did not start within {limit:g}s (state {row.state if row else 'unknown'})",
                   "not_started")
        time.sleep(0.5)


POLL_COMMANDS = frozenset({"status", "list", "logs", "wait"})


def main() -> None:
    """Console-script entry point."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command in POLL_COMMANDS:
        # typer builds every registered command's parameters (type hints and all) before it runs one: a poll builds
        # only its own. The callback keeps the subcommand form (`agentops status ...`), help and errors alike.
        only = typer.Typer(add_completion=False, rich_markup_mode=None, help=__doc__)
        only.callback()(lambda: None)
        only.registered_commands = [c for c in app.registered_commands if _command_name(c) == command]
        only()
        return
    app()


def _command_name(info: typer.models.CommandInfo) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


if __name__ == "__main__":
    main()
