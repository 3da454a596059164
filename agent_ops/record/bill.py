"""What a run's rented boxes cost: per node $/h, spent so far and projected, and the run's total, from the journal.

Read from the rentals table (when each box was created, stopped and ended, the offer's $/h for the
box and for its disk alone) and the run's `provisioned` event (the budget, the hours the fleet
request expected), so any process can compute it without asking the provider. A stopped box costs
its disk's $/h from the moment it was stopped until it is destroyed (vast.ai bills a stopped box's
storage, not its GPUs); where the offer did not state that price, its full rate: an upper bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from agent_ops.record.journal import LIVE_RENTAL_STATES, Journal, RentalRow

PROVISIONED_EVENT = "provisioned"  # its data: the run's provisioning as recorded when it rented (see run/rented.py)
# A bill is part of `status` (polled as a fresh process): stdlib dataclasses like the status views, field docs as
# attribute docstrings, which pydantic reads where the bill is part of an MCP tool's JSON Schema. The status views
# (record/status.py, which embeds the bill) take this same config from here.
SCHEMA_CONFIG = {"use_attribute_docstrings": True}


@dataclass(frozen=True, kw_only=True)
class NodeBill:
    """One rented box: what it costs per hour, has cost, and will have cost by the end of the expected hours."""

    __pydantic_config__ = SCHEMA_CONFIG
    node: str
    """The fleet node it is ({provider}-{instance id})."""
    instance_id: str
    state: str
    dph: float
    """$/h when rented."""
    storage_dph: float | None = None
    """$/h of its disk alone, what it costs while stopped (None: the offer did not say; a stopped box then counts at `dph`)."""
    dph_now: float
    """What it costs per hour now: `dph` running, its disk's rate stopped, 0 once destroyed."""
    hours: float
    """Hours since it was created (until it was destroyed)."""
    spent_usd: float
    projected_usd: float
    """Its cost at the end of the fleet request's expected hours, or now if later; what it has cost once destroyed."""


@dataclass(frozen=True, kw_only=True)
class Bill:
    """A run's rented boxes together, against its budget."""

    __pydantic_config__ = SCHEMA_CONFIG
    nodes: list[NodeBill]
    dph_now: float
    """$/h of the boxes still live."""
    spent_usd: float
    projected_usd: float
    budget_usd: float | None = None
    budget_left_usd: float | None = None
    budget_reached_in_s: float | None = None
    """At today's $/h, seconds until the budget is spent."""


def node_name(provider: str, instance_id: str) -> str:
    """The fleet node a rented box becomes (a name the journal's rentals map back to)."""
    return f"{provider}-{instance_id}"


def run_bill(journal: Journal, run_id: str, now: float | None = None) -> Bill | None:
    """The run's bill, or None when it rented nothing."""
    rows = journal.rentals(run_id)
    if not rows:
        return None
    provisioned = journal.last_event(run_id, None, PROVISIONED_EVENT)
    data = (provisioned.data if provisioned else None) or {}
    return bill_of(rows, data.get("budget_usd"), data.get("hours"), now)


def bill_of(rows: list[RentalRow], budget_usd: float | None, hours: float | None, now: float | None = None) -> Bill:
    """The bill of these rentals at `now`."""
    now = time.time() if now is None else now
    budget_usd = None if budget_usd is None else float(budget_usd)  # floats as the fields say (JSON: 0.0, not 0)
    nodes = [_node_bill(r, hours or 0.0, now) for r in rows]
    dph_now = sum((n.dph_now for n in nodes), 0.0)
    spent = sum((n.spent_usd for n in nodes), 0.0)
    left = reached_in = None
    if budget_usd is not None:
        left = round(budget_usd - spent, 4)
        if dph_now > 0:
            reached_in = round(max(0.0, budget_usd - spent) / dph_now * 3600, 1)
    return Bill(nodes=nodes, dph_now=round(dph_now, 4), spent_usd=round(spent, 4),
                projected_usd=round(sum((n.projected_usd for n in nodes), 0.0), 4), budget_usd=budget_usd,
                budget_left_usd=left, budget_reached_in_s=reached_in)


def _node_bill(row: RentalRow, expected_h: float, now: float) -> NodeBill:
    dph = float(row.dph or 0.0)
    idle_dph = dph if row.storage_dph is None else float(row.storage_dph)  # stopped: its disk only, if we know that price
    live = row.state in LIVE_RENTAL_STATES
    end = now if live or row.ended is None else row.ended
    stopped = min(row.stopped, end) if row.stopped is not None else end  # running from creation until stopped
    hours = max(0.0, (end - row.created) / 3600)
    running_h = max(0.0, (stopped - row.created) / 3600)
    spent = dph * running_h + idle_dph * (hours - running_h)
    dph_now = 0.0 if not live else idle_dph if row.state == "stopped" else dph
    projected = spent + dph_now * max(0.0, expected_h - hours)
    return NodeBill(node=node_name(row.provider, row.instance_id), instance_id=row.instance_id, state=row.state, dph=dph,
                    storage_dph=row.storage_dph, dph_now=dph_now, hours=round(hours, 4), spent_usd=round(spent, 6),
                    projected_usd=round(projected, 6))
