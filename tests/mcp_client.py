"""Tools called the way an agent calls them: `agentops mcp` in a fresh process over stdio, the MCP SDK's client."""
from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


async def in_session(env: dict[str, str], cwd: Path, tier: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Start the server with this environment and tool tier, initialise a client session, and run `work(session)`."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_ops.front.cli", "mcp"],
                                   env={**env, "AGENTOPS_MCP_TIER": tier}, cwd=str(cwd))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        return await work(client)
