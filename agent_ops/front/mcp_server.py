"""`agentops mcp`: the CLI's operations as MCP tools over stdio, for AI agents.

Each tool maps one to one onto a CLI operation (agent_ops.front.service) and returns the same pydantic
model, so clients get JSON Schemas and structured content. Runs start detached (the id comes
back at once); `wait` and every other tool return within 30 s. Errors are structured: the
tool result is an error whose text is JSON `{"code", "message", "problems"}` — never a
traceback. Nothing but protocol goes to stdout; logs go to stderr.

Safety tiers (`AGENTOPS_MCP_TIER`): `readonly` exposes only validate, plan, status, wait,
tail, pane, diagnose, the catalog, offers and rentals; `mutating` (default) adds start, resume and proposing a
catalog entry; `destructive` adds cancel, and rent and down (they spend money and destroy boxes).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from pydantic import BaseModel, Field

from agent_ops.front import service as ops
from agent_ops.front.mcp_provider import register_provider_tools
from agent_ops.front.target_options import TargetOptions
from agent_ops.known_issues.catalog import KnownIssue
from agent_ops.known_issues.diagnose import Diagnosis, diagnose
from agent_ops.known_issues.propose import Proposal
from agent_ops.record.journal import Journal
from agent_ops.record.status import RunStatus

log = logging.getLogger("agentops.mcp")
TIERS = ("readonly", "mutating", "destructive")
TOOL_TIMEOUT_S = 28.0  # a tool that touches the box gives up before the 30 s bound


class ValidateOut(BaseModel):
    results: list[ops.ValidateResult]
    ok: bool


class IssueSummary(BaseModel):
    id: str
    title: str
    applies_to: list[str]
    fix: list[str]


class IssueList(BaseModel):
    issues: list[IssueSummary]


class CancelOut(BaseModel):
    run_id: str
    state: str


def _error(exc: ops.OpError) -> Exception:
    from mcp.server.mcpserver.exceptions import ToolError

    return ToolError(json.dumps(exc.as_dict()))


async def _bounded(fn, *args, **kwargs):
    """Run a blocking operation in a thread, giving up (structured error) after TOOL_TIMEOUT_S."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), TOOL_TIMEOUT_S)
    except ops.OpError as exc:
        raise _error(exc) from None
    except asyncio.TimeoutError:
        raise _error(ops.OpError("timeout", f"gave up after {TOOL_TIMEOUT_S:g}s; ask again")) from None
    except Exception as exc:  # a case no check foresaw: still the documented {code, message}, the traceback to stderr only
        log.exception("tool %s failed", getattr(fn, "__name__", fn))
        raise _error(ops.OpError("internal_error", f"{type(exc).__name__}: {exc}")) from None


def build_server(tier: str | None = None):
    """The MCPServer with the tools this tier allows."""
    from mcp.server.mcpserver import MCPServer

    tier = tier or os.environ.get("AGENTOPS_MCP_TIER", "mutating")
    if tier not in TIERS:
        raise SystemExit(f"AGENTOPS_MCP_TIER={tier!r}: expected one of {', '.join(TIERS)}")
    server = MCPServer("agentops", instructions=__doc__)
    journal = Journal()

    @server.tool(description="Validate runbook files; problems come as FILE:LINE: field: message.")
    async def validate(files: list[str]) -> ValidateOut:
        results = [await _bounded(ops.validate, f) for f in files]
        return ValidateOut(results=results, ok=all(r.ok for r in results))

    @server.tool(description="The runbook's DAG in waves with variables resolved and secrets masked.")
    async def plan(file: str, vars: dict[str, str] | None = None) -> ops.PlanResult:
        return await _bounded(ops.plan, file, vars or {})

    @server.tool(description="A run's structured status: steps, attempts, gate progress, remedies, log tails, next_poll_s.")
    async def status(run_id: str | None = None) -> RunStatus:
        return await _bounded(ops.status, journal, run_id)

    @server.tool(description="Block until the run changes state or timeout_s (<= 30) passes; returns the status.")
    async def wait(run_id: str, timeout_s: float = Field(30.0, ge=0, le=30)) -> ops.WaitResult:
        return await _bounded(ops.wait, journal, run_id, timeout_s)

    @server.tool(description="A step's job log: the last `lines` lines, or bytes from `offset` (use next_offset next time); "
                 "`node`: which node's (default the head; status lists each step's nodes).")
    async def tail(run_id: str, step_id: str, lines: int | None = 50, offset: int | None = None,
                   node: str | None = None) -> ops.TailResult:
        return await _bounded(ops.tail, journal, run_id, step_id, lines=lines, offset=offset, node=node)

    @server.tool(description="What a step's job pane shows now (last `lines` lines, secrets masked) and the prompt it "
                             "waits at, if any: a job at [Y/n] or a password request waits for input its log does not reveal.")
    async def pane(run_id: str, step_id: str, lines: int = Field(50, ge=1, le=2000), node: str | None = None) -> ops.PaneResult:
        return await _bounded(ops.pane, journal, run_id, step_id, lines=lines, node=node)

    @server.tool(description="Match a log excerpt against the known-issue catalog: family, cause, fix, matched lines, the root error.")
    async def diagnose_log(text: str, tags: list[str] | None = None) -> Diagnosis:
        return await _bounded(lambda: diagnose(text, tags=tags, catalog=ops.known_issues()))

    @server.tool(description="List the known issues the executor recognises and fixes.")
    async def known_issues(tag: str | None = None) -> IssueList:
        cat = await _bounded(ops.known_issues)
        issues = [i for i in cat.issues if tag is None or not i.applies_to or tag in i.applies_to]
        return IssueList(issues=[IssueSummary(id=i.id, title=i.title, applies_to=list(i.applies_to), fix=i.fix_summary())
                                 for i in issues])

    @server.tool(description="One known issue in full: signatures, cause, fix actions, retry bounds, samples.")
    async def known_issue(issue_id: str) -> KnownIssue:
        try:
            return (await _bounded(ops.known_issues)).get(issue_id)
        except KeyError:
            raise _error(ops.OpError("unknown_issue", f"no known issue {issue_id!r}")) from None

    if tier in ("mutating", "destructive"):
        @server.tool(description="Start a run in the background; returns its id at once. Then poll status or wait.")
        async def start_run(file: str, vars: dict[str, str] | None = None, target: str = "local",
                            identity: str | None = None, tmux_socket: str | None = None,
                            workdir: str | None = None, allow_deleting_fixes: bool = False) -> ops.StartResult:
            where = TargetOptions(target, identity=identity, tmux_socket=tmux_socket, workdir=workdir,
                                  allow_deleting_fixes=allow_deleting_fixes)
            return await _bounded(ops.start_detached, file, vars or {}, where, journal)

        @server.tool(description="Continue a run whose controller died, in the background.")
        async def resume(run_id: str) -> ops.StartResult:
            return await _bounded(ops.resume_detached, run_id, journal)

        @server.tool(description="Teach the catalog a new failure: draft an entry from a failing log (its root error, "
                                 "variable parts generalised) with optional fix actions, and admit it to the user catalog "
                                 "only if it matches its own log and fires on no healthy log and no other family's samples.")
        async def propose_known_issue(text: str, issue_id: str | None = None, title: str | None = None,
                                      fix: list[dict] | None = None, admit: bool = True) -> Proposal:
            return await _bounded(ops.propose_issue, text, issue_id=issue_id, title=title, fix=fix, admit=admit)

    register_provider_tools(server, tier, journal, _bounded)

    if tier == "destructive":
        @server.tool(description="Cancel a run: its jobs are stopped and the journal records it.")
        async def cancel(run_id: str) -> CancelOut:
            return CancelOut(run_id=run_id, state=await _bounded(ops.cancel, journal, run_id))

    return server


def serve() -> None:
    """Run the server on stdio until the client closes it."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    build_server().run("stdio")
