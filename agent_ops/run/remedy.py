"""Remediation: match a failed attempt's log tail against the known-issue catalog and apply the fix.

Bounded by construction: each known issue may fire at most `retry.max_attempts` times
per step; an entry without automatic fixes escalates (the step stops with the diagnosis
and what a person should do). Every diagnosis, fix and outcome goes to the journal.
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

from agent_ops.bounds import DIAGNOSE_TAIL_BYTES
from agent_ops.known_issues.catalog import (
    Catalog,
    CatalogError,
    Escalate,
    FixAction,
    KnownIssue,
    RecreateSession,
    RenamePath,
    RollbackCheckpoint,
    RunCommands,
    ScaleVar,
    SetEnv,
    SetVar,
    WaitRetry,
    active_catalog,
    default_catalog,
    user_catalog_dir,
)
from agent_ops.known_issues.diagnose import Diagnosis, Match, diagnose
from agent_ops.run.context import RunContext
from agent_ops.run.jobs import kill_session, prepare_run
from agent_ops.runbook.schema import Step
from agent_ops.runbook.template import ENV, RenderError, names_used, render_text

STEP = re.compile(r"\bstep\W{0,2}[=: ]\s*(\d+)", re.IGNORECASE)  # `step=46/80`, `step 265 -`, `Step: 12`, `'step': 42`


@dataclass(frozen=True)
class RemedyResult:
    """What remediation decided: retry (a fix was applied), stop (escalated/exhausted), or none matched."""

    decision: str  # applied | escalated | exhausted | refused (a deleting fix on this machine) | none
    message: str


class FixNotApplicable(Exception):
    """A fix action cannot be applied here (a variable the runbook lacks, no healthy checkpoint...)."""


def log_tail(run: RunContext, path: str | None) -> str:
    """The last DIAGNOSE_TAIL_BYTES of a log on the target ('' if there is none)."""
    if not path:
        return ""
    st = run.transport.stat(path)
    if st is None:
        return ""
    data = run.transport.read_from(path, max(0, st.size - DIAGNOSE_TAIL_BYTES), DIAGNOSE_TAIL_BYTES)
    return run.masker.mask(data.decode("utf-8", "replace"))


def explain(run: RunContext, step: Step, text: str) -> RemedyResult:
    """Diagnosis only (gates, checks: retrying them cannot fix a job): the known issue, cause and advice."""
    catalog = _catalog(run, step)
    result = _diagnosis(run, step, text, catalog)
    match = result.best or (result.hints[0] if result.hints else None)
    if match is None:
        return RemedyResult("none", _unknown(result))
    issue = catalog.get(match.issue_id)
    return RemedyResult("diagnosed", f"looks like known issue {issue.id} ({issue.title}): {issue.cause.strip()}")


def _catalog(run: RunContext, step: Step) -> Catalog:
    """The shipped catalog and the user's entries beside the run's journal; a broken user entry is reported, not fatal."""
    try:
        return active_catalog(user_catalog_dir(run.journal.path.parent))
    except CatalogError as exc:
        run.event("diagnosis", step.id, f"user catalog ignored: {exc.problems[0]}", {"problems": exc.problems})
        return default_catalog()


def _diagnosis(run: RunContext, step: Step, text: str, catalog: Catalog) -> Diagnosis:
    result = diagnose(text, tags=step.tags or None, catalog=catalog)
    seen = {"root_error": result.root_error}
    if not result.matches:
        run.event("diagnosis", step.id, _unknown(result), {**seen, "nearest": [c.issue_id for c in result.nearest[:3]]},
                  node=run.node.name)
        return result
    match = result.matches[0]
    run.event("diagnosis", step.id, f"known issue {match.issue_id}: {match.title}",
              {"matched_lines": match.matched_lines, "score": match.score, "family": match.family, "level": match.level, **seen},
              node=run.node.name)
    return result


def _unknown(result: Diagnosis) -> str:
    near = ", ".join(f"{c.issue_id} ({c.score:.2f})" for c in result.nearest[:3]) or "none"
    seen = f": {result.root_error.splitlines()[-1]}" if result.root_error else ""
    return f"no known issue matched{seen} (nearest: {near})"


def remediate(run: RunContext, step: Step, attempt: int, text: str) -> RemedyResult:
    """Diagnose `text` (a failed job's log tail) and, for a known issue with budget left, apply its fix."""
    catalog = _catalog(run, step)
    result = _diagnosis(run, step, text, catalog)
    if result.best is None:
        return RemedyResult("none", _unknown(result))
    issue = catalog.get(result.best.issue_id)
    lines = result.best.matched_lines
    # Counted per node: each node's part of a step has its own budget of fixes.
    fired = sum(1 for r in run.journal.remedies(run.run_id) if r.step_id == step.id and r.issue_id == issue.id
                and r.node in (run.node.name, None) and r.result in ("applied", "succeeded", "failed"))
    if not issue.fix or issue.retry.max_attempts == 0 or any(isinstance(f, Escalate) for f in issue.fix):
        return _stop(run, step, attempt, issue, lines, "escalated", _escalation(issue, result))
    if fired >= issue.retry.max_attempts:
        return _stop(run, step, attempt, issue, lines, "exhausted",
                     f"fix already applied {fired} time(s) without success. {_escalation(issue, result)}")
    deletes = issue.deletions()
    if deletes and run.target.is_local and not run.target.allow_deleting_fixes:
        return _stop(run, step, attempt, issue, lines, "refused",
                     f"its fix deletes {'; '.join(deletes)} and the target is this machine: not applied without "
                     f"--allow-deleting-fixes. {_escalation(issue, result)}")
    try:
        applied = [apply_fix(run, action, failed_step=_last_step(text)) for action in issue.fix]
    except FixNotApplicable as exc:
        return _stop(run, step, attempt, issue, lines, "escalated", f"fix not applicable: {exc}. {_escalation(issue, result)}")
    run.journal.remedy(run.run_id, step.id, attempt, issue_id=issue.id, matched_lines=lines, fix=applied, result="applied",
                       node=run.node.name)
    run.event("remedy_applied", step.id, f"{issue.id}: " + "; ".join(applied), {"issue_id": issue.id, "fix": applied},
              node=run.node.name)
    if issue.retry.backoff_s:
        time.sleep(issue.retry.backoff_s)
    return RemedyResult("applied", f"{issue.id}: " + "; ".join(applied))


def _stop(run: RunContext, step: Step, attempt: int, issue: KnownIssue, lines: list[str], result: str, why: str) -> RemedyResult:
    run.journal.remedy(run.run_id, step.id, attempt, issue_id=issue.id, matched_lines=lines, fix={"escalate": why},
                       result=result, node=run.node.name)
    run.event(f"remedy_{result}", step.id, f"{issue.id}: {why}", node=run.node.name)
    return RemedyResult(result, f"known issue {issue.id} ({issue.title}): {why}")


def _escalation(issue: KnownIssue, result: Diagnosis) -> str:
    """What a person should do, and exactly what was seen (the failure, else the lines that matched)."""
    parts = [f.message for f in issue.fix if isinstance(f, Escalate)] + ([issue.escalate] if issue.escalate else [])
    advice = " ".join(p.strip() for p in parts) or f"cause: {issue.cause.strip()}"
    return f"{advice} Seen: {_seen(result.best, result)}"


def _seen(match: Match | None, result: Diagnosis) -> str:
    if result.root_error:
        return " | ".join(result.root_error.splitlines()[-2:])
    return " | ".join(line.split(": ", 1)[-1] for line in (match.matched_lines[-2:] if match else []))


def _last_step(text: str) -> int | None:
    """The highest training step the log shows: where it had got to when it went wrong."""
    steps = [int(m.group(1)) for m in STEP.finditer(text)]
    return max(steps) if steps else None


def apply_fix(run: RunContext, action: FixAction, failed_step: int | None = None) -> str:
    """Apply one fix action; returns what was done, in words (for the journal). `failed_step`: see `_last_step`."""
    if isinstance(action, SetEnv):
        run.env_overrides[action.name] = action.value
        return f"set env {action.name}={action.value}"
    if isinstance(action, SetVar):
        old = _var(run, action.var)
        run.set_values({action.var: action.value})
        return f"set {action.var}: {old!r} -> {action.value!r}"
    if isinstance(action, ScaleVar):
        old = _var(run, action.var)
        new = action.apply(old)
        if new == old:
            raise FixNotApplicable(f"{action.var}={old!r} is already at its bound")
        run.set_values({action.var: new})
        return f"scaled {action.var}: {old!r} -> {new!r}"
    if isinstance(action, RunCommands):
        return _run_commands(run, action)
    if isinstance(action, RenamePath):
        return _rename(run, action)
    if isinstance(action, RollbackCheckpoint):
        return _rollback(run, action, failed_step)
    if isinstance(action, RecreateSession):
        kill_session(run.transport, run.layout)
        prepare_run(run.transport, run.layout)
        return f"recreated tmux session {run.layout.session}"
    if isinstance(action, WaitRetry):
        time.sleep(action.delay_s)
        return f"waited {action.delay_s:g}s"
    raise FixNotApplicable(f"unknown action {getattr(action, 'action', action)!r}")


def _var(run: RunContext, name: str) -> Any:
    if name not in run.loaded.runbook.vars:
        raise FixNotApplicable(f"the runbook has no variable {name!r}")
    return run.values[name]


def _run_commands(run: RunContext, action: RunCommands) -> str:
    unknown = {name for c in action.commands for name in names_used(c)} - set(run.values) - set(ENV.globals)
    if unknown:
        raise FixNotApplicable(f"commands use variables the runbook lacks: {', '.join(sorted(unknown))}")
    try:
        script = "set -e\n" + "\n".join(render_text(c, run.values, "shell") for c in action.commands)
        if action.cwd:
            script = f"cd {shlex.quote(render_text(action.cwd, run.values, 'text'))}\n" + script
    except RenderError as exc:
        raise FixNotApplicable(f"cannot render the fix's commands: {exc.message}") from None
    result = run.transport.exec(script, timeout=action.timeout_s)
    if not result.ok:
        tail = run.masker.mask((result.stdout + result.stderr).decode("utf-8", "replace"))[-500:]
        raise FixNotApplicable(f"fix commands failed (rc {result.rc}): {tail}")
    return f"ran {len(action.commands)} command(s)"


def _rename(run: RunContext, action: RenamePath) -> str:
    old = str(_var(run, action.var))
    new = action.safe_path(old)
    if new == old:
        raise FixNotApplicable(f"{old!r} has no unsafe characters")
    script = f"if [ -e {shlex.quote(old)} ] && [ ! -e {shlex.quote(new)} ]; then mv -- {shlex.quote(old)} {shlex.quote(new)}; fi; test -e {shlex.quote(new)}"
    result = run.transport.exec(script, timeout=60)
    if not result.ok:
        raise FixNotApplicable(f"cannot rename {old!r} to {new!r}")
    run.set_values({action.var: new})
    return f"renamed {old} -> {new}; {action.var} retargeted"


def _rollback(run: RunContext, action: RollbackCheckpoint, failed_step: int | None) -> str:
    base = str(_var(run, action.dir_var))
    if action.resume_var not in run.loaded.runbook.vars:
        raise FixNotApplicable(f"the runbook has no variable {action.resume_var!r}")
    # Newest healthy checkpoint: step number in the name first, then mtime (seed 000's checkpoint-epoch-4).
    script = (
        f"cd {shlex.quote(base)} 2>/dev/null || exit 3; "
        f"for d in {action.glob}; do [ -f \"$d/{action.healthy_marker}\" ] && "
        f"printf '%s %s %s\\n' \"$(printf '%s' \"$d\" | grep -o '[0-9]\\+' | tail -1)\" \"$(stat -c %Y \"$d\")\" \"$d\"; done "
        f"| sort -k1,1n -k2,2n | tail -1"
    )
    result = run.transport.exec(script, timeout=30)
    chosen = result.text().strip().split(" ", 2)[-1] if result.text().strip() else ""
    if not chosen:
        raise FixNotApplicable(f"no checkpoint in {base} has a {action.healthy_marker} marker")
    path = f"{base.rstrip('/')}/{chosen}"
    changes: dict[str, Any] = {action.resume_var: path, **action.set_vars}
    notes = [f"rolled back to {path}"]
    if action.skip_var:
        notes.append(_skip(run, action.skip_var, chosen, failed_step, changes))
    for spec in action.scale_vars:
        old = _var(run, spec.var)
        changes[spec.var] = spec.apply(old)
        notes.append(f"{spec.var}: {old!r} -> {changes[spec.var]!r}")
    for k, v in action.set_vars.items():
        _var(run, k)
        notes.append(f"{k} = {v!r}")
    run.set_values(changes)
    return "; ".join(notes)


def _skip(run: RunContext, var: str, checkpoint: str, failed_step: int | None, changes: dict[str, Any]) -> str:
    """Set `var` to the updates from the checkpoint to the failure, so the batches read then are not replayed."""
    saved = re.findall(r"\d+", checkpoint)
    if var not in run.loaded.runbook.vars:
        return f"the runbook has no {var}: no batches skipped"
    if failed_step is None or not saved:
        return f"{var} unchanged: no step in the log or the checkpoint's name"
    changes[var] = max(0, failed_step - int(saved[-1]) + 1)
    return f"{var} = {changes[var]} (steps {saved[-1].lstrip('0') or '0'}..{failed_step} skipped on resume)"
