"""`agentops mcp` as a real subprocess, driven by the MCP SDK's own stdio client."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path

import libtmux
import pytest

mcp = pytest.importorskip("mcp")
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

from agent_ops.front.mcp_server import TOOL_TIMEOUT_S  # noqa: E402
from tests.runs import kill_tmux_server  # noqa: E402

SECRET = "mcp-secret-value-93c1"


def _runbooks(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent("""
        name: mcp-good
        secrets: [MCP_TOKEN]
        vars: {who: world}
        steps:
          - id: hello
            kind: run
            command: |
              echo "token is $MCP_TOKEN"
              for i in 1 2 3; do echo "step=$i loss=0.$((9 - i))"; sleep 0.2; done
          - id: gate
            kind: gate
            job: hello
            patterns: [{regex: 'step=3 ', within: 30}]
    """))
    slow = tmp_path / "slow.yaml"
    slow.write_text("name: mcp-slow\nsteps:\n  - {id: nap, kind: run, command: sleep 120}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - id: a\n    kind: run\n    comand: echo hi\n")
    return {"good": good, "slow": slow, "bad": bad}


def _data(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content


def _error(result) -> dict:
    assert result.is_error
    text = result.content[0].text  # the SDK prefixes "Error executing tool NAME: " to our JSON
    return json.loads(text[text.index("{"):])


async def _session_run(tmp_path: Path, sock: str) -> dict:
    books = _runbooks(tmp_path)
    env = {**os.environ, "AGENTOPS_HOME": str(tmp_path / "home"), "AGENTOPS_MCP_TIER": "destructive", "MCP_TOKEN": SECRET}
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_ops.front.cli", "mcp"], env=env, cwd=str(tmp_path))
    seen: dict = {"texts": []}
    target = {"tmux_socket": sock, "workdir": str(tmp_path / "box")}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def call(name: str, args: dict):
            result = await session.call_tool(name, args)
            seen["texts"].append(json.dumps(result.structured_content) + "".join(getattr(c, "text", "") for c in result.content))
            return result

        tools = {t.name: t for t in (await session.list_tools()).tools}
        seen["tools"] = sorted(tools)
        seen["wait_schema"] = tools["wait"].input_schema["properties"]["timeout_s"]

        seen["validate"] = _data(await call("validate", {"files": [str(books["bad"])]}))
        seen["unknown"] = _error(await call("status", {"run_id": "no-such-run"}))
        seen["too_long"] = (await call("wait", {"run_id": "x", "timeout_s": 31})).is_error
        seen["nul"] = _error(await call("start_run", {"file": str(books["good"]), "vars": {"who": "a\x00b"}, **target}))

        started = _data(await call("start_run", {"file": str(books["good"]), **target}))
        run_id = started["run_id"]
        deadline = time.monotonic() + 90
        waits = []
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            w = _data(await call("wait", {"run_id": run_id, "timeout_s": 5}))
            waits.append(time.monotonic() - t0)
            if w["status"]["state"] in ("succeeded", "failed", "cancelled"):
                break
        seen["final"] = _data(await call("status", {"run_id": run_id}))
        seen["waits"] = waits
        seen["tail"] = _data(await call("tail", {"run_id": run_id, "step_id": "hello", "lines": 10}))
        seen["diagnosis"] = _data(await call("diagnose_log", {
            "text": "[rank0]: ValueError: API key must be 40 characters long, yours was 86"}))
        seen["issue"] = _data(await call("known_issue", {"issue_id": "wandb-key-86-chars"}))
        learnt = "Traceback (most recent call last):\nFrobnicatorError: the frobnicator at /w/f.bin needs 12 widgets\n"
        seen["proposal"] = _data(await call("propose_known_issue", {"text": learnt, "issue_id": "frob-widgets",
                                                                    "fix": [{"action": "set_env", "name": "FROB_OK", "value": "1"}]}))
        seen["learnt"] = _data(await call("diagnose_log", {"text": learnt.replace("12", "7")}))

        slow = _data(await call("start_run", {"file": str(books["slow"]), **target}))
        for _ in range(50):
            st = _data(await call("status", {"run_id": slow["run_id"]}))
            if st["steps"][0]["state"] == "running":
                break
            await asyncio.sleep(0.2)
        seen["pane"] = _data(await call("pane", {"run_id": slow["run_id"], "step_id": "nap", "lines": 5}))
        seen["cancel"] = _data(await call("cancel", {"run_id": slow["run_id"]}))
        for _ in range(100):
            st = _data(await call("status", {"run_id": slow["run_id"]}))
            if st["state"] == "cancelled":
                break
            await asyncio.sleep(0.2)
        seen["cancelled"] = st
        seen["again"] = _error(await call("cancel", {"run_id": slow["run_id"]}))
    return seen


@pytest.mark.slow
def test_mcp_server_end_to_end(tmp_path: Path) -> None:
    sock = f"ao-mcp-{uuid.uuid4().hex[:8]}"
    try:
        seen = asyncio.run(_session_run(tmp_path, sock))
    finally:
        kill_tmux_server(libtmux.Server(socket_name=sock))

    assert {"validate", "plan", "start_run", "status", "wait", "tail", "diagnose_log", "known_issues", "known_issue",
            "cancel", "resume", "propose_known_issue", "pane"} <= set(seen["tools"])
    # Bounded by contract: the schema refuses waits over 30 s, and server-side work gives up before 30 s.
    assert seen["wait_schema"]["maximum"] == 30 and seen["too_long"] is True
    assert TOOL_TIMEOUT_S < 30
    assert all(w < 30 for w in seen["waits"])

    [bad] = seen["validate"]["results"]
    assert not bad["ok"]
    assert any(p.startswith(f"{tmp_path / 'bad.yaml'}:5: steps.0.comand: unknown field 'comand'") for p in bad["problems"])
    assert seen["unknown"]["code"] == "unknown_run"
    # A NUL byte cannot reach a command line: refused as a bad variable, in the documented shape.
    assert seen["nul"]["code"] == "invalid_runbook"
    assert [p for p in seen["nul"]["problems"] if "--var who: contains a NUL byte" in p]

    final = seen["final"]
    assert final["state"] == "succeeded" and final["next_poll_s"] == 0
    assert [s["state"] for s in final["steps"]] == ["succeeded", "succeeded"]
    assert final["steps"][1]["progress"]["patterns"][0]["matched"]
    assert "step=3 loss=0.6" in seen["tail"]["text"] and seen["tail"]["ended"]
    assert "token is ***" in seen["tail"]["text"]

    assert seen["diagnosis"]["matches"][0]["issue_id"] == "wandb-key-86-chars"
    assert seen["issue"]["id"] == "wandb-key-86-chars" and seen["issue"]["fix"]
    # An agent teaches the catalog: the entry lands in $AGENTOPS_HOME/known_issues/ and diagnoses the next occurrence.
    assert seen["proposal"]["admitted"] and seen["proposal"]["path"] == str(tmp_path / "home" / "known_issues" / "frob-widgets.yaml")
    assert seen["learnt"]["matches"][0]["issue_id"] == "frob-widgets"

    # A running job that waits for nothing: its pane answers, with no prompt.
    assert seen["pane"]["window"] == "nap-1" and seen["pane"]["waiting_for_input"] is None
    assert seen["cancel"]["state"] in ("cancelling", "cancelled")
    assert seen["cancelled"]["state"] == "cancelled"
    assert seen["again"]["code"] == "run_finished"

    leaked = [t for t in seen["texts"] if SECRET in t]
    assert leaked == []
