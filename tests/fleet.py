"""A fleet of loopback boxes for tests: N real OpenSSH servers on 127.0.0.1, each with its own port, home and tmux socket."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_ops.fleet.nodes import NodeSpec
from agent_ops.record.journal import Journal
from agent_ops.run.context import close_run, start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from agent_ops.transport.target import TargetSpec
from tests.sshd import SSHServer


@dataclass
class Fleet:
    """N boxes (n1 = the head) and an inventory naming them, with the group `pool` of all of them."""

    servers: list[SSHServer]
    specs: list[NodeSpec]
    inventory: Path
    home: Path  # AGENTOPS_HOME: the controller's journal
    scratch: Path  # the runbooks' own files; every box is this machine, so they all see it

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def socket(self, name: str) -> str:
        spec = next(s for s in self.specs if s.name == name)
        assert spec.target.tmux_socket
        return spec.target.tmux_socket

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AGENTOPS_HOME": str(self.home), **extra}

    def kill_tmux(self) -> None:
        """Stop every box's tmux server and remove its socket file."""
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        for spec in self.specs:
            socket = spec.target.tmux_socket
            assert socket
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
            Path(tmpdir, f"tmux-{os.getuid()}", socket).unlink(missing_ok=True)


def make_fleet(root: Path, servers: list[SSHServer], **spec: Any) -> Fleet:
    """A Fleet over `servers` (n1, n2, ...): own tmux socket each; the workdir stays `~/.agentops`, each box's own home."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scratch").mkdir(exist_ok=True)
    hosts: dict[str, dict[str, Any]] = {}
    specs = []
    for i, server in enumerate(servers, 1):
        fields = {"url": f"ssh://{server.user}@{server.host}:{server.port}", "identity": str(server.identity),
                  "known_hosts": str(server.known_hosts), "tmux_socket": f"ao-fleet-{uuid.uuid4().hex[:8]}",
                  "connect_timeout": 5.0, "reconnect_timeout": 30.0, **spec}
        hosts[f"n{i}"] = fields
        specs.append(NodeSpec(f"n{i}", TargetSpec(**fields)))
    inventory = root / "inventory.yaml"
    inventory.write_text(json.dumps({"hosts": hosts, "groups": {"pool": list(hosts)}}))
    return Fleet(servers, specs, inventory, root / "home", root / "scratch")


def run_fleet(fleet: Fleet, runbook: Path, overrides: dict[str, Any] | None = None,
              specs: list[NodeSpec] | None = None) -> tuple[str, str, Journal]:
    """Run a runbook over the fleet to the end in this process (real executor, tmux and sshd): (run id, final state, journal)."""
    loaded = load_runbook(runbook)
    scratch = {"box": str(fleet.scratch)} if "box" in loaded.runbook.vars else {}
    values = resolve_vars(loaded, {**scratch, **(overrides or {})})
    journal = Journal(fleet.home / "journal.db")
    ctx = start_run(loaded, values, {}, specs or fleet.specs, journal)
    try:
        final = Executor(ctx).execute()
    finally:
        close_run(ctx)
    return ctx.run_id, final, journal
