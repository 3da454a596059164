"""MCP tools for renting boxes: `offers` and `rentals` (readonly), `rent` and `down` (destructive: they spend money).

Registered by mcp_server.build_server with its bounded runner, so every tool returns within its
30 s bound: `rent` starts the rental in the background and returns the run id at once; poll
`rentals` for the boxes. Credentials come from the MCP server's environment (VAST_API_KEY).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent_ops.front import provider_ops
from agent_ops.front.service import StartResult, start_detached
from agent_ops.front.target_options import TargetOptions
from agent_ops.provider.base import OfferRequest
from agent_ops.provider.lifecycle import FleetRequest, OfferList, TeardownPolicy
from agent_ops.record.journal import Journal
from agent_ops.run.rented import GiveBack

Bounded = Callable[..., Awaitable[Any]]


def register_provider_tools(server: Any, tier: str, journal: Journal, bounded: Bounded) -> None:
    """Add the provider tools this tier allows to `server`."""

    @server.tool(description="Boxes for rent matching a request (GPU model and count, GPU RAM, disk, CUDA, driver, reliability, "
                             "max $/h, location, download speed), cheapest for the requested work first; machines that "
                             "failed qualification before are left out.")
    async def offers(request: OfferRequest | None = None, provider: str = "vast") -> OfferList:
        return await bounded(provider_ops.offers, request or OfferRequest(), journal, provider)

    @server.tool(description="A run's rented boxes from the journal: state, $/h, spent so far, SSH address, host key.")
    async def rentals(run_id: str) -> provider_ops.RentalList:
        return await bounded(provider_ops.rentals, journal, run_id)

    if tier != "destructive":
        return

    @server.tool(description="SPENDS MONEY. Rent request.nodes boxes in the background (each created with the key "
                             "request.identity.pub, waited for, reached over SSH and qualified; all or none). Returns the "
                             "run id at once; poll `rentals`. Give the boxes back with `down`.")
    async def rent(request: FleetRequest, run_id: str | None = None, provider: str = "vast") -> provider_ops.RentStarted:
        from agent_ops.run.context import new_run_id

        return await bounded(provider_ops.rent_detached, request, journal, run_id or new_run_id(), provider)

    @server.tool(description="SPENDS MONEY, DESTROYS BOXES. Start a run on boxes rented for it: the runbook's provision: "
                             "block says what to rent and how to give it back; nodes, gpus, gpu_name, max_dph, budget_usd, "
                             "on_success and on_failure (keep | stop | destroy) override it; identity is the SSH key whose "
                             ".pub goes on every box. Returns the run id at once (state `renting` until the boxes are up); "
                             "poll `status` (its `bill`). Artifacts are copied off before the boxes are given back.")
    async def start_rented_run(file: str, identity: str, vars: dict[str, str] | None = None, provider: str = "vast",
                               nodes: int | None = None, gpus: int | None = None, gpu_name: str | None = None,
                               max_dph: float | None = None, budget_usd: float | None = None,
                               on_success: TeardownPolicy | None = None, on_failure: TeardownPolicy | None = None,
                               ) -> StartResult:
        from agent_ops.front.cli_provider import provision_args

        flags = {"nodes": nodes, "gpus": gpus, "gpu_name": gpu_name, "max_dph": max_dph, "budget_usd": budget_usd,
                 "on_success": on_success, "on_failure": on_failure}
        where = TargetOptions(identity=identity)  # no target: the run rents its boxes
        return await bounded(start_detached, file, vars or {}, where, journal, provision_args(provider, None, flags))

    @server.tool(description="DESTROYS BOXES. Give back every box a run rented (policy destroy | stop | keep); finds boxes "
                             "by the journal and by the run's label at the provider. The run's declared artifacts are "
                             "copied off and checked first; a destroy is refused (`refused` names them) unless force.")
    async def down(run_id: str, policy: TeardownPolicy = "destroy", provider: str = "vast", force: bool = False) -> GiveBack:
        return await bounded(provider_ops.down, journal, run_id, policy, provider, force)
