"""Transports: the one place where agentops talks to a machine."""
from __future__ import annotations

from agent_ops.transport.base import EXEC_TIMEOUT_RC, ExecResult, FileStat, ProbeRequest, Transport
from agent_ops.transport.local import LocalTransport
from agent_ops.transport.ssh import SSHConfig, SSHTransport
from agent_ops.transport.target import TargetSpec, TargetSpecError, connect, load_inventory, parse_target

__all__ = [
    "EXEC_TIMEOUT_RC",
    "ExecResult",
    "FileStat",
    "LocalTransport",
    "ProbeRequest",
    "SSHConfig",
    "SSHTransport",
    "TargetSpec",
    "TargetSpecError",
    "Transport",
    "connect",
    "load_inventory",
    "parse_target",
]
