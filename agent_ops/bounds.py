"""The one bound every floor keeps: nothing waits longer than this without re-checking (seed 003, rule 1)."""
from __future__ import annotations

MAX_POLL_S = 30.0
