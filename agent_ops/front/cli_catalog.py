"""CLI for the known-issue catalog: `known-issues list|show|propose` and `diagnose LOGFILE`, mounted on the main app.

Mount with `app.add_typer(known_issues_app, name="known-issues")` and
`app.command("diagnose")(diagnose_command)`. With `--json`, stdout carries one JSON document (a failure's too:
`{"error": {code, message, problems}}`), as every command's does. Exit codes: `diagnose` 0 = a known issue matched, 1 = none did,
2 = bad input (unreadable log, invalid catalog); `show` 2 = unknown id; `propose` 0 = admitted
(or, with --dry-run, safe to admit), 1 = refused, 2 = bad input. The catalog is the shipped one
plus the user's entries in `$AGENTOPS_HOME/known_issues/`, unless `--catalog` names another.
"""
from __future__ import annotations

import json
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from agent_ops.bounds import DIAGNOSE_TAIL_BYTES, DIAGNOSE_TAIL_LINES
from agent_ops.front import service as ops
from agent_ops.front.output import Output

if TYPE_CHECKING:  # imported where used: the catalog (and rich) load only for the commands that use them
    from agent_ops.known_issues.catalog import Catalog, KnownIssue
    from agent_ops.known_issues.diagnose import Diagnosis
    from agent_ops.known_issues.propose import Proposal

known_issues_app = typer.Typer(help="The known-issue catalog: failures agentops recognises and fixes.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
CATALOG_OPTION = typer.Option(None, "--catalog", help="Catalog directory or file (default: the shipped catalog).")


EXIT_INPUT = 2


@dataclass(frozen=True)
class IssueSummary:
    """One catalog entry as `known-issues list` shows it."""

    id: str
    title: str
    level: str  # family, cause (inside `family`) or hint
    family: str  # the family id (its own for a family)
    applies_to: list[str]  # step tags; empty = every step
    fix: list[str]  # one line per fix action
    escalates: bool  # whether the entry has text for a person
    seeds: list[str]


def _catalog(path: Path | None, o: Output) -> Catalog:
    from agent_ops.known_issues.catalog import CatalogError, load_catalog

    try:
        return load_catalog([path]) if path is not None else ops.known_issues()
    except CatalogError as exc:
        o.fail(EXIT_INPUT, f"{path}: invalid catalog", exc.code, exc.problems)
    except ops.OpError as exc:
        o.fail(EXIT_INPUT, exc.message, exc.code, exc.problems)


@known_issues_app.command("list")
def list_issues(
    tag: str | None = typer.Option(None, "--tag", help="Only entries that apply to a step with this tag."),
    as_json: bool = JSON_OPTION,
    catalog: Path | None = CATALOG_OPTION,
) -> None:
    """List the known issues."""
    from rich.table import Table
    from rich.text import Text

    o = Output(as_json)
    issues = _catalog(catalog, o).applicable([tag] if tag else None)
    summaries = [_summary(issue) for issue in issues]
    if as_json:
        o.json(summaries)
        return
    table = Table(title=f"{len(summaries)} known issues")
    table.add_column("id", no_wrap=True)
    for name in ("level", "title", "applies to", "fix"):
        table.add_column(name, overflow="fold")
    # A family, then its causes: the catalog read the way diagnosis uses it.
    order = {s.id: i for i, s in enumerate(summaries)}
    for s in sorted(summaries, key=lambda s: (order.get(s.family, order[s.id]), s.level == "cause", order[s.id])):
        fix = "\n".join(s.fix) or ("escalate" if s.escalates else "")
        level = f"cause of {s.family}" if s.level == "cause" else s.level
        table.add_row(Text(s.id if s.level != "cause" else f"  {s.id}"), Text(level), Text(s.title), Text(", ".join(s.applies_to) or "all"), Text(fix))
    o.out.print(table)


@known_issues_app.command("show")
def show_issue(
    issue_id: str = typer.Argument(..., help="Entry id, e.g. vlm-cuda-oom-batch16."),
    as_json: bool = JSON_OPTION,
    catalog: Path | None = CATALOG_OPTION,
) -> None:
    """Show one known issue: signatures, cause, fix, retry, samples."""
    o = Output(as_json)
    try:
        issue = _catalog(catalog, o).get(issue_id)
    except KeyError as exc:
        o.fail(EXIT_INPUT, str(exc.args[0]), "unknown_issue")
    if as_json:
        o.json(issue)
        return
    _print_issue(issue, o)


@known_issues_app.command("propose")
def propose_issue(
    logfile: str = typer.Argument(..., help="A failing log; `-` reads stdin."),
    issue_id: str | None = typer.Option(None, "--id", help="Id of the new entry (default: from the failure's words)."),
    title: str | None = typer.Option(None, "--title", help="One-line title (default: the failure)."),
    fix: str | None = typer.Option(None, "--fix", help='Fix actions as JSON, e.g. \'[{"action": "set_env", "name": "X", "value": "1"}]\'.'),
    healthy: list[Path] = typer.Option([], "--healthy", help="More healthy logs (files or directories of *.log) it must not fire on."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Draft and check only; write nothing."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Teach the catalog a failure: draft an entry from LOGFILE and admit it to $AGENTOPS_HOME/known_issues/ if it is safe."""
    o = Output(as_json)
    text = _read_log(logfile, o)
    try:
        actions = json.loads(fix) if fix else None
    except json.JSONDecodeError as exc:
        o.fail(EXIT_INPUT, f"--fix: not JSON: {exc}", "invalid_fix")
    try:
        proposal = ops.propose_issue(text, issue_id=issue_id, title=title, fix=[actions] if isinstance(actions, dict) else actions,
                                     healthy=[str(h) for h in healthy], admit=not dry_run)
    except ops.OpError as exc:
        o.fail(EXIT_INPUT, exc.message, exc.code, exc.problems)
    if as_json:
        o.json(proposal)
    else:
        _print_proposal(proposal, o)
    raise typer.Exit(1 if proposal.refused else 0)


def _print_proposal(proposal: Proposal, o: Output) -> None:
    entry = proposal.entry
    where = f" under family {entry['family']}" if entry.get("family") else " (a new family)"
    o.line(f"{entry['id']}{where}: {entry['signatures'][0]['regex']}")
    if proposal.admitted:
        o.line(f"admitted: {proposal.path}", style="green")
    for reason in proposal.refused:
        o.line(f"refused: {reason}", style="red")
    if not proposal.admitted and not proposal.refused:
        o.line("safe to admit (dry run: nothing written)")


def diagnose_command(
    logfile: str = typer.Argument(..., help="Log file to diagnose; `-` reads stdin."),
    tags: str | None = typer.Option(None, "--tags", help="Comma-separated step tags (e.g. train,install); default: every entry."),
    tail: int = typer.Option(DIAGNOSE_TAIL_LINES, "--tail", min=0, help="Lines from the end to examine; 0 = the whole log."),
    as_json: bool = JSON_OPTION,
    catalog: Path | None = CATALOG_OPTION,
) -> None:
    """Match a log against the known-issue catalog (exit 0: known issue, 1: none, 2: bad input)."""
    from agent_ops.known_issues.diagnose import diagnose

    o = Output(as_json)
    text = _read_log(logfile, o, whole=tail == 0)
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags else None
    result = diagnose(text, tags=tag_list, catalog=_catalog(catalog, o), tail=tail or None)
    if as_json:
        o.json(result)
    else:
        _print_diagnosis(result, logfile, o)
    raise typer.Exit(0 if result.matches else 1)


def _read_log(logfile: str, o: Output, whole: bool = False) -> str:
    """The log's last DIAGNOSE_TAIL_BYTES (the whole log with `whole`), bytes decoded as they are: a `\\r` stays a rewrite."""
    from agent_ops.known_issues.root_error import read_tail

    try:
        if logfile == "-":
            return _stdin_tail(None if whole else DIAGNOSE_TAIL_BYTES)
        path = Path(logfile)
        return path.read_bytes().decode("utf-8", "replace") if whole else read_tail(path, DIAGNOSE_TAIL_BYTES)
    except OSError as exc:
        o.fail(EXIT_INPUT, f"{logfile}: cannot read: {exc.strerror or exc}", "unreadable_log")


def _stdin_tail(limit: int | None) -> str:
    """stdin, keeping only its last `limit` bytes while reading (a piped GB log needs no GB of memory)."""
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    if stream is None:  # a text-only stdin (tests, some embedders)
        text = sys.stdin.read()
        return text if limit is None else text[-limit:]
    chunks: deque[bytes] = deque()
    kept = 0
    while chunk := stream.read(1 << 20):
        chunks.append(chunk)
        kept += len(chunk)
        while limit is not None and kept - len(chunks[0]) >= limit:
            kept -= len(chunks.popleft())
    data = b"".join(chunks)
    return (data if limit is None else data[-limit:]).decode("utf-8", "replace")


def _summary(issue: KnownIssue) -> IssueSummary:
    return IssueSummary(
        id=issue.id,
        title=issue.title,
        level=issue.level,
        family=issue.family_id,
        applies_to=list(issue.applies_to),
        fix=issue.fix_summary(),
        escalates=issue.escalate is not None,
        seeds=issue.seeds,
    )


def _print_issue(issue: KnownIssue, o: Output) -> None:
    from rich.table import Table
    from rich.text import Text

    o.line(f"{issue.id}: {issue.title}", style="bold")
    table = Table("weight", "signature", "window", show_header=True)
    for sig in issue.signatures:
        table.add_row(f"{sig.weight:g}", Text("\n  then ".join(sig.patterns)), str(sig.window) if len(sig.patterns) > 1 else "")
    o.out.print(table)
    o.line(f"applies to: {', '.join(issue.applies_to) or 'every step'}")
    o.line(f"cause: {issue.cause.strip()}")
    for line in issue.fix_summary():
        o.line(f"fix: {line}")
    o.line(f"retry: {issue.retry.max_attempts} attempt(s), backoff {issue.retry.backoff_s:g}s")
    if issue.escalate:
        o.line(f"escalate: {issue.escalate.strip()}")
    o.line(f"samples: {len(issue.samples.positive)} positive, {len(issue.samples.negative)} negative; seeds: {', '.join(issue.seeds) or '-'}")


def _print_diagnosis(result: Diagnosis, logfile: str, o: Output) -> None:
    from rich.table import Table
    from rich.text import Text

    span = f"lines {result.first_line}-{result.first_line + result.lines_considered - 1}"
    if result.root_error:
        o.line(f"failure seen: {result.root_error}")
    if not result.matches:
        o.line(f"{logfile}: no known issue matched ({span})", style="yellow")
        if result.nearest:
            table = Table("nearest", "partial score", "closest lines", title="nearest candidates")
            for c in result.nearest:
                table.add_row(Text(f"{c.issue_id}\n{c.title}"), f"{c.score:.2f}", Text("\n".join(c.matched_lines)))
            o.out.print(table)
        return
    table = Table(title=f"{logfile}: {len(result.matches)} known issue(s) ({span})")
    table.add_column("issue", no_wrap=True)
    for name in ("score", "title", "matched lines", "fix"):
        table.add_column(name, overflow="fold")
    for m in result.matches:
        name = m.issue_id if m.level == "family" else f"{m.issue_id}\n(cause in {m.family})"
        table.add_row(Text(name), f"{m.score:g}", Text(m.title), Text("\n".join(m.matched_lines)), Text("\n".join(m.fix) or "escalate"))
    o.out.print(table)
    best = result.matches[0]
    o.line(f"cause: {best.cause}")
    if best.escalate:
        o.line(f"if the fix is not enough: {best.escalate}")
