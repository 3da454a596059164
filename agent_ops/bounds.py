"""Bounds every floor keeps: how long nothing waits without re-checking, and how much of a log diagnosis reads.

Standard library only, and nothing else here: the CLI's option defaults read these at import.
"""
from __future__ import annotations

MAX_POLL_S = 30.0  # nothing waits longer than this without re-checking (seed 003, rule 1)
DIAGNOSE_TAIL_BYTES = 64 << 10  # diagnosis reads only a log's end: the failure is there, and a log can be GBs
DIAGNOSE_TAIL_LINES = 400  # lines from that end that diagnosis examines
