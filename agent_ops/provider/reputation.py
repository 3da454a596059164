"""Machines that failed qualification, remembered under $AGENTOPS_HOME so their offers are skipped next time.

One small JSON file, `{provider: {machine_id: {"reason", "when", "count"}}}`, shared by every
controller on this computer: writes take an exclusive lock and replace the file atomically.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE_NAME = "bad_machines.json"


class Reputation:
    """Which machines of which provider let us down, and why."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def under(cls, home: Path) -> Reputation:
        """The reputation file of an agentops home directory."""
        return cls(home / "provider" / FILE_NAME)

    def is_bad(self, provider: str, machine_id: str) -> bool:
        """Whether this machine failed us before."""
        return machine_id in self._read().get(provider, {})

    def bad_machines(self, provider: str) -> dict[str, dict[str, Any]]:
        """Every machine of `provider` remembered as bad, with its reason."""
        return dict(self._read().get(provider, {}))

    def mark_bad(self, provider: str, machine_id: str, reason: str) -> None:
        """Remember a machine as bad (again: its count goes up, the newest reason is kept)."""
        with self._locked():
            data = self._read()
            entry = data.setdefault(provider, {}).get(machine_id, {"count": 0})
            data[provider][machine_id] = {"reason": reason, "when": time.time(), "count": entry["count"] + 1}
            self._write(data)

    def forget(self, provider: str, machine_id: str) -> None:
        """Give a machine another chance."""
        with self._locked():
            data = self._read()
            if data.get(provider, {}).pop(machine_id, None) is not None:
                self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a damaged file forgets; it never stops a rental
        return data if isinstance(data, dict) else {}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
