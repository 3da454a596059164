"""The poller's clock: the only place agentops decides how long to wait.

Starts fast (first re-check within 0.25 s), backs off while nothing changes, and
never waits longer than the cap, which can never exceed 30 s (seed 003, rule 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent_ops.bounds import MAX_POLL_S
from agent_ops.runbook.schema import PollSpec


@dataclass
class Backoff:
    """Wait intervals: first, first*factor, ... up to cap; reset() when something changed."""

    spec: PollSpec = field(default_factory=PollSpec)
    _current: float = 0.0

    def __post_init__(self) -> None:
        self.reset()

    @property
    def cap(self) -> float:
        return min(self.spec.cap_s, MAX_POLL_S)

    def reset(self) -> None:
        self._current = min(self.spec.first_s, self.cap)

    def next(self) -> float:
        """The interval to wait now; the following one grows by the factor, bounded by the cap."""
        value = self._current
        self._current = min(self._current * self.spec.factor, self.cap)
        return value


class Deadline:
    """A wall-clock deadline (monotonic), or none."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

