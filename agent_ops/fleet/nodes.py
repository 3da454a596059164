"""A run's fleet as named nodes, resolved from `-t`: URLs, inventory hosts and inventory groups, comma-separated.

`-t box1,box2,box3`, `--inventory hosts.yaml -t gpu_pool` and `-t ssh://a:22,ssh://b:22` all give a list
of NodeSpec, head (rank 0) first in the order written. A single target is a fleet of one: the rest of
agentops has no other code path for it.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent_ops.transport.target import LOCAL, Inventory, TargetSpec, TargetSpecError, parse_target
from agent_ops.yaml_models import did_you_mean

if TYPE_CHECKING:
    from agent_ops.record.journal import Journal, RunRow

NODE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # node names go into file names, tmux names and templates


@dataclass(frozen=True)
class NodeSpec:
    """One box of a fleet before anything connects: its name and how to reach it."""

    name: str
    target: TargetSpec

    @property
    def address(self) -> str:
        """Where the other nodes reach this one (the inventory's `address:`, else the URL's host)."""
        return self.target.peer_address


def node_name(target: TargetSpec) -> str:
    """The name a target given by URL gets: `local`, else its host (characters unfit for names become '-')."""
    return LOCAL if target.is_local else re.sub(r"[^A-Za-z0-9._-]", "-", target.host)[:64]


def fleet_of_one(target: TargetSpec, name: str | None = None) -> list[NodeSpec]:
    """A single target as a fleet."""
    return [NodeSpec(name or node_name(target), target)]


def resolve_fleet(target: str, inventory: Inventory | None = None, options: dict[str, Any] | None = None) -> list[NodeSpec]:
    """The nodes `-t TARGET` names: comma-separated URLs, inventory hosts or groups; `options` apply to every node.

    Raises TargetSpecError naming every part that names nothing, and nodes listed twice.
    """
    options = options or {}
    parts = [p.strip() for p in target.split(",")]
    problems: list[str] = []
    found: list[tuple[str | None, TargetSpec]] = []  # (inventory name or None for a URL, target)
    for part in parts:
        if not part:
            problems.append(f"-t {target!r}: an empty name between commas")
        elif inventory is not None and part in inventory.groups:
            found += [(h, _with(inventory.hosts[h], options)) for h in inventory.groups[part]]
        elif inventory is not None and part in inventory.hosts:
            found.append((part, _with(inventory.hosts[part], options)))
        elif part == LOCAL or "://" in part:
            try:
                found.append((None, parse_target(part, **options)))
            except TargetSpecError as exc:
                problems += exc.problems
        elif inventory is not None and part in inventory.rent:
            problems.append(f"{inventory.path}: {part!r} is a fleet to rent (rent:), not boxes that exist: "
                            f"`agentops run RUNBOOK --inventory {inventory.path} -t {part}` rents it for the run")
        elif inventory is not None:
            known = [*inventory.hosts, *inventory.groups]
            problems.append(f"{inventory.path}: no host or group {part!r}{did_you_mean(part, known)} "
                            f"(hosts: {', '.join(inventory.hosts)}; groups: {', '.join(inventory.groups) or 'none'})")
        else:
            problems.append(f"-t {part!r}: not a target: expected local, ssh://user@host:port, or a host or group of --inventory")
    if problems:
        raise TargetSpecError(problems)
    nodes = _named(found)
    twice = [n for n, count in Counter(n.name for n in nodes).items() if count > 1]
    if twice:
        raise TargetSpecError([f"-t {target!r}: node {twice[0]!r} is named twice; a box can take one place in a fleet"])
    return nodes


def _with(spec: TargetSpec, options: dict[str, Any]) -> TargetSpec:
    return spec.model_copy(update=options) if options else spec


def _named(found: Sequence[tuple[str | None, TargetSpec]]) -> list[NodeSpec]:
    """Names for URL targets: the host, or host-port where two URLs share a host (boxes behind one gateway)."""
    hosts = Counter(node_name(t) for name, t in found if name is None)
    out = []
    for name, spec in found:
        if name is None:
            name = node_name(spec)
            if hosts[name] > 1 and not spec.is_local:
                name = f"{name}-{spec.ssh_config().port}"
        out.append(NodeSpec(name, spec))
    return out


def fleet_rows(journal: Journal, run: RunRow) -> list[tuple[NodeSpec, str, str]]:
    """A recorded run's nodes as (spec, run_dir, tmux session), head first (a run from before fleets: its one target)."""
    rows = journal.nodes(run.id)
    if rows:
        return [(NodeSpec(r.name, TargetSpec.model_validate(r.target)), r.run_dir, r.tmux_session) for r in rows]
    target = TargetSpec.model_validate(run.target)
    return [(fleet_of_one(target)[0], run.run_dir or "", run.tmux_session or "")]
