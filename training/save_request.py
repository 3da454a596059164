"""A request from outside to save a checkpoint and stop: SIGUSR1.

agentops sends it to a rented run's training when the run's budget is reached (runbook
`provision.checkpoint`), then copies the checkpoint off the box before giving the box back.
The handler only sets a flag; the training loop reads it once per step, inside the step's one
all-reduce, so every rank sees the request at the same step and saves together.
"""
from __future__ import annotations

import signal
import threading

SIGNAL = signal.SIGUSR1
_requested = threading.Event()


def install() -> None:
    """Listen for the request (from the main thread, as Python's signal handlers must be set)."""
    signal.signal(SIGNAL, lambda signum, frame: _requested.set())


def requested() -> bool:
    """Whether this process was asked to save and stop."""
    return _requested.is_set()
