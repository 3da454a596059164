"""Where a run goes, as `agentops run` takes it: the `-t` names and the options every node gets.

The CLI builds one from its flags and MCP's `start_run` from its arguments; the fleet is resolved from it in one
place, and a run started in the background gets the same choice back as flags from `argv` (also one place).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_ops.fleet.nodes import NodeSpec
    from agent_ops.transport.target import Inventory

# The flag `agentops run` takes for each option (the typer declarations in cli.run name the same flags).
FLAGS = {"identity": "--identity", "inventory": "--inventory", "accept_new_host_key": "--accept-new-host-key",
         "tmux_socket": "--tmux-socket", "workdir": "--workdir", "known_hosts": "--known-hosts",
         "allow_deleting_fixes": "--allow-deleting-fixes"}


@dataclass(frozen=True)
class TargetOptions:
    """`-t` (local, a URL, inventory hosts or groups, comma-separated) and what applies to every node."""

    target: str = "local"
    identity: str | None = None
    inventory: str | None = None
    accept_new_host_key: bool = False
    tmux_socket: str | None = None
    workdir: str | None = None
    known_hosts: str | None = None
    allow_deleting_fixes: bool = False

    def resolve(self) -> list[NodeSpec]:
        """The fleet's nodes, head first (a single target is a fleet of one). Raises RunbookError naming every problem."""
        from agent_ops.fleet.nodes import resolve_fleet

        options: dict[str, Any] = {f: getattr(self, f) for f in FLAGS if f != "inventory" and getattr(self, f)}
        return resolve_fleet(self.target, self.inventory_file, options)

    @cached_property
    def inventory_file(self) -> Inventory | None:
        """The --inventory file, read once for this choice: the CLI asks it whether `-t` names a fleet to rent,
        then resolves the fleet from it. Raises RunbookError (FILE:LINE) when it is malformed."""
        from agent_ops.transport.target import read_inventory

        return read_inventory(self.inventory) if self.inventory else None

    def argv(self) -> list[str]:
        """The same choice as `agentops run` flags."""
        args = ["--target", self.target]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in FLAGS and value:
                args += [FLAGS[f.name]] if value is True else [FLAGS[f.name], str(value)]
        return args
