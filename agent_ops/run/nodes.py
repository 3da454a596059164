"""The nodes of a run: each with its own connection, run directory and tmux session; and which of them a step runs on."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent_ops.errors import AgentOpsError, TransportError
from agent_ops.fleet.nodes import NodeSpec
from agent_ops.run.jobs import RunLayout
from agent_ops.runbook.schema import GateStep, Step
from agent_ops.transport.base import Transport
from agent_ops.transport.target import TargetSpec, connect

MAX_CONNECTS = 16  # connections opened at once: a fleet of 16 connects in about one round of SSH handshakes


@dataclass
class Node:
    """One box of the run: its spec, rank (0 = head), the one connection the controller holds to it, and its layout."""

    spec: NodeSpec
    rank: int
    transport: Transport
    layout: RunLayout

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def target(self) -> TargetSpec:
        return self.spec.target

    @property
    def address(self) -> str:
        return self.spec.address


def connect_all(specs: Sequence[NodeSpec]) -> list[Transport]:
    """One open transport per node, opened side by side; if any node cannot be reached, none is kept open.

    The error names the node (and carries the first failure's type, so a host-key refusal stays one).
    """
    with ThreadPoolExecutor(max_workers=min(MAX_CONNECTS, len(specs)) or 1, thread_name_prefix="connect") as pool:
        futures = [pool.submit(connect, spec.target) for spec in specs]
    transports: list[Transport] = []
    failures: list[tuple[NodeSpec, BaseException]] = []
    for spec, future in zip(specs, futures):
        try:
            transports.append(future.result())
        except Exception as exc:
            failures.append((spec, exc))
    if failures:
        for transport in transports:
            transport.close()
        spec, exc = failures[0]
        if len(specs) == 1 or not isinstance(exc, AgentOpsError):
            raise exc
        others = f" (and {len(failures) - 1} more: {', '.join(s.name for s, _ in failures[1:])})" if len(failures) > 1 else ""
        raise type(exc)(f"node {spec.name}: {exc}{others}") if isinstance(exc, TransportError) else exc
    return transports


class NodeSelectionError(AgentOpsError):
    """A step's `on:` names nodes the fleet does not have."""

    code = "invalid_runbook"


def step_node_names(step: Step, fleet: Sequence[str], job_nodes: Sequence[str] | None = None) -> list[str]:
    """The names of the nodes a step runs on, in fleet order (`job_nodes`: for a gate without `on:`, its job's)."""
    if step.on is None:
        return list(job_nodes) if isinstance(step, GateStep) and job_nodes is not None else list(fleet)
    return select_nodes(step.on, fleet, f"step {step.id}")


def select_nodes(selector: str | list[str], fleet: Sequence[str], what: str) -> list[str]:
    """The nodes an `on:` selector names, in fleet order (`any`: every node may take it); `what` names the owner in errors."""
    if selector in ("all", "any"):
        return list(fleet)
    if selector == "head":
        return list(fleet[:1])
    if selector == "workers":
        return list(fleet[1:])
    unknown = [n for n in selector if n not in fleet]
    if unknown:
        raise NodeSelectionError(f"{what}: on: node {unknown[0]!r} is not in the fleet ({', '.join(fleet)})")
    return [n for n in fleet if n in selector]
