"""The provider operations behind both front ends (CLI --json and MCP tools): offers, rent, rentals, down.

Each returns a pydantic model or raises service.OpError. Credentials come from the environment
(VAST_API_KEY) of the process that calls the provider, never from an argument: a detached rental
inherits the environment, and its request travels in a file, not on the command line.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from agent_ops.front.service import OpError
from agent_ops.provider.base import OfferRequest, ProviderError
from agent_ops.provider.lifecycle import FleetRequest, OfferList, RentedBox, TeardownPolicy, find_offers, rent
from agent_ops.provider.registry import open_provider
from agent_ops.provider.reputation import Reputation
from agent_ops.record.bill import bill_of
from agent_ops.record.journal import LIVE_RENTAL_STATES, Journal

if TYPE_CHECKING:
    from agent_ops.run.rented import GiveBack

T = TypeVar("T")


class RentalView(BaseModel):
    """One box a run rented, as status shows it."""

    instance_id: str
    provider: str
    state: str
    offer_id: str | None
    machine_id: str | None
    dph: float | None
    ssh: str | None
    host_key: str | None
    message: str | None
    hours: float
    spent_usd: float


class RentalList(BaseModel):
    """A run's boxes, what they cost per hour now and what they have cost so far."""

    run_id: str
    rentals: list[RentalView]
    live: int
    dph_live: float
    spent_usd: float


class RentResult(BaseModel):
    """Boxes rented, ready and qualified."""

    run_id: str
    boxes: list[RentedBox]


class RentStarted(BaseModel):
    """A rental started in the background: poll `rentals` with its run id."""

    run_id: str
    controller_pid: int
    controller_log: str
    request_file: str
    next_poll_s: float = 5.0


def offers(request: OfferRequest, journal: Journal, provider: str = "vast") -> OfferList:
    """Offers for the request, cheapest for the work first, machines remembered as bad left out."""
    return _call(lambda p: find_offers(p, request, Reputation.under(journal.path.parent)), provider)


def rent_boxes(request: FleetRequest, journal: Journal, run_id: str, provider: str = "vast") -> RentResult:
    """Rent, wait for and qualify `request.nodes` boxes (blocks for minutes); all or none."""
    _check_identity(request)
    boxes = _call(lambda p: rent(p, request, journal, run_id, Reputation.under(journal.path.parent)), provider)
    return RentResult(run_id=run_id, boxes=boxes)


def rent_detached(request: FleetRequest, journal: Journal, run_id: str, provider: str = "vast") -> RentStarted:
    """`agentops rent --request FILE` as its own process group; returns at once."""
    _check_identity(request)
    folder = journal.path.parent / "rentals" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    request_file = folder / "request.json"
    request_file.write_text(request.model_dump_json(indent=1))
    log = folder / "rent.log"
    argv = [sys.executable, "-m", "agent_ops.front.cli", "rent", "--request", str(request_file), "--run-id", run_id,
            "--provider", provider, "--json"]
    env = {**os.environ, "AGENTOPS_HOME": str(journal.path.parent)}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True, env=env)
    return RentStarted(run_id=run_id, controller_pid=proc.pid, controller_log=str(log), request_file=str(request_file))


def rentals(journal: Journal, run_id: str) -> RentalList:
    """What the journal knows of a run's boxes (no provider call: cheap enough to poll)."""
    rows = journal.rentals(run_id)
    bill = bill_of(rows, None, None)  # the one place that knows what a box costs (running, stopped, destroyed)
    views = [RentalView(
        instance_id=row.instance_id, provider=row.provider, state=row.state, offer_id=row.offer_id,
        machine_id=row.machine_id, dph=row.dph, ssh=(row.target or {}).get("url"), host_key=row.host_key,
        message=row.message, hours=node.hours, spent_usd=round(node.spent_usd, 4)) for row, node in zip(rows, bill.nodes)]
    live = [v for v in views if v.state in LIVE_RENTAL_STATES]
    return RentalList(run_id=run_id, rentals=views, live=len(live), dph_live=bill.dph_now, spent_usd=round(bill.spent_usd, 4))


def down(journal: Journal, run_id: str, policy: TeardownPolicy = "destroy", provider: str = "vast",
         force: bool = False) -> GiveBack:
    """Give back every box the run rented (by the journal, and by the run's label at the provider), its declared
    artifacts copied off and checked first: a destroy is refused while one is not safe, unless `force`."""
    from agent_ops.run.rented import give_back_run

    return _call(lambda p: give_back_run(journal, run_id, policy, p, force), provider)


def _check_identity(request: FleetRequest) -> None:
    if not Path(request.identity + ".pub").is_file():
        raise OpError("invalid_request", f"{request.identity}.pub: no public key beside the identity (it is attached to every box)")


def _call(fn: Callable[..., T], provider: str) -> T:
    """Open the provider, run `fn` with it; provider errors become OpErrors with their own codes."""
    try:
        opened = open_provider(provider)
        try:
            return fn(opened)
        finally:
            opened.close()
    except ProviderError as exc:
        raise OpError(exc.code, str(exc)) from None
