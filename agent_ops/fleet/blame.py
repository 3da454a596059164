"""Whose failure came first: when a step fails on several nodes, name the node that died, not its victims.

In a multi-node job one node dies (killed, out of memory, a bug on one rank) and the others then fail
because of it: a collective times out, the peer's socket closes, the rendezvous store goes away, or
agentops stops them. Their errors come as fast as the real one, sometimes faster (a closed socket is
seen at once, while torchrun notices a dead worker on its next look), so the order in which the
controller saw the failures does not say who died. Each node's log tail is reduced to its root error
line; errors that only a peer's death causes are knock-on errors; the blame goes to the earliest node
whose error is not one, and only when every error is a knock-on to the earliest of those.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# torchrun's failure summary names the first failed rank's end; a signal there is how a killed worker shows.
TORCHRUN_CAUSE = re.compile(r"^\s*traceback\s*:\s*(?P<cause>.+?)\s*$", re.M)
SIGNAL = re.compile(r"Signal (?P<num>\d+) \((?P<name>SIG\w+)\) received by PID (?P<pid>\d+)")
EXCEPTION = re.compile(r"^(?:\[rank\d+\]:\s*)?(?P<line>(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure)\b(?::.*)?)$")
# Exceptions that only wrap a worker's failure (the worker's own error is further up the log).
WRAPPERS = re.compile(r"ChildFailedError|elastic\.multiprocessing\.errors")
ERRORISH = re.compile(r"\b(?:error|failed|fatal|killed|terminated|abort(?:ed)?|segmentation fault|out of memory"
                      r"|timeout|timed out)\b", re.I)
# What a node reports when a peer died or agentops stopped it: never the cause.
KNOCK_ON = re.compile(
    r"Connection (?:closed|reset) by peer|Broken pipe|ECONNRESET|Connection refused"
    r"|Watchdog caught collective operation timeout|collective operation timeout|ProcessGroup\w*.*[Tt]ime(?:d )?out"
    r"|NCCL (?:communicator was aborted|error: remote process exited)|ncclRemoteError|remote process exited or there was a network error"
    r"|Socket Timeout|timed out (?:after|waiting)|operation timed out|DistNetworkError|DistStoreError"
    r"|Rendezvous(?:Closed|Timeout)Error|RendezvousClosed|The node '.*' has failed|SIGTERM|SIGHUP|Signal 15\b"
    # torchrun's agent told to stop (our kill of its window hangs it up; a stop sends SIGTERM): never the cause.
    r"|SignalException|got signal: (?:1|2|15)\b"
    r"|stopped: node \S+ failed|another node's part",
)


@dataclass(frozen=True)
class NodeFailure:
    """One node's failed (or stopped) part of a step, as blame reads it."""

    node: str
    text: str  # the log tail ('' if there is no log or it could not be read)
    at: float | None  # when it failed: the log's last write on the box, else when the controller saw it
    reason: str  # the part's own message (what the controller saw), used when the log says nothing
    unreachable: bool = False  # the node itself was lost: its failure is its own, whatever the message says


@dataclass(frozen=True)
class Blame:
    """The node blamed for a step's failure, its root error line, and why."""

    node: str
    error: str
    at: float | None
    why: str
    knock_on: list[str] = field(default_factory=list)  # nodes whose errors were consequences

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node, "error": self.error, "at": self.at, "why": self.why, "knock_on": self.knock_on}


def root_error(text: str) -> str | None:
    """The line that says why a log's job failed, or None if the log says nothing of the kind."""
    causes = [m.group("cause") for m in TORCHRUN_CAUSE.finditer(text)]
    if causes and SIGNAL.search(causes[0]):
        return causes[0]  # a worker killed by a signal prints nothing itself
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        m = EXCEPTION.match(line)
        if m and not WRAPPERS.search(line):
            return m.group("line")
    for line in reversed(lines):
        if ERRORISH.search(line) and not WRAPPERS.search(line) and not line.startswith(("To enable traceback", "error_file")):
            return line
    return None


def is_knock_on(line: str) -> bool:
    """Whether an error line is one that a peer's death (or agentops stopping the job) causes."""
    return bool(KNOCK_ON.search(line))


def blame(failures: Sequence[NodeFailure]) -> Blame | None:
    """The node whose failure came first among those that are not knock-on errors (else the earliest of all)."""
    judged = []
    for f in failures:
        error = f.reason if f.unreachable else root_error(f.text) or f.reason
        judged.append((f, error, not f.unreachable and is_knock_on(error)))
    if not judged:
        return None
    causes = [j for j in judged if not j[2]]
    pool = causes or judged
    first, error, _ = min(pool, key=lambda j: (j[0].at is None, j[0].at or 0.0))
    knock = [f.node for f, _, k in judged if k and f.node != first.node]
    if causes:
        why = (f"its error is not a consequence of another node's failure (the errors on {', '.join(knock)} are)" if knock
               else "the first failure seen" if len(causes) > 1 else "the only node that failed by itself")
    else:
        why = "every error looks like a consequence of another node's; this one came first"
    return Blame(first.node, error, first.at, why, knock)
