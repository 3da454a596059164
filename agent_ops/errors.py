"""The exceptions agentops raises; foreign ones are converted at the edge that meets them."""
from __future__ import annotations


class AgentOpsError(Exception):
    """Base of every error agentops raises on purpose; carries a machine-readable code."""

    code = "error"


class TransportError(AgentOpsError):
    """An operation on the target failed for reasons of the connection, not of the command."""

    code = "transport_error"


class HostKeyError(TransportError):
    """The target's host key is unknown or changed; nothing is sent to it."""

    code = "host_key_rejected"


class JournalError(AgentOpsError):
    """The journal cannot be opened or written (a full or read-only disk, a lock held too long)."""

    code = "journal_error"


class RunbookError(AgentOpsError):
    """A runbook failed to load or validate; `problems` holds one line per error."""

    code = "invalid_runbook"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
