"""The journal shared by several controllers, each with threads that read while the run writes (real SQLite, WAL).

Ten controllers at once on one target (tests/test_job_faults.py) now and then lost one: "journal ... cannot be
written: database is locked", seconds into the run, well before the 30 s busy timeout. A read in another thread of
the same process held a read snapshot on the shared connection; a write that began meanwhile, after another process
had committed, got SQLITE_BUSY at once. Here processes write runs while two threads each read; every write must land.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path

from agent_ops.record.journal import Journal

PROCESSES = 3
SECONDS = 2.0


def _run_row(run_id: str) -> dict:
    return {"id": run_id, "runbook_name": "concurrent", "runbook_path": "concurrent.yaml", "runbook_sha": "0",
            "target": {"name": "local"}, "vars": {}, "secret_names": [], "tmux_session": "s", "run_dir": "/tmp/r",
            "artifacts_dir": "/tmp/a"}


def _controller(path: str, queue) -> None:
    """Write runs for SECONDS while two threads poll the journal, as the executor's watchers do."""
    journal = Journal(Path(path))
    errors: list[str] = []
    written = 0
    stop = time.monotonic() + SECONDS

    def poll() -> None:
        while time.monotonic() < stop:
            try:
                journal.runs(20)
                journal.latest_run_id()
            except Exception as exc:  # reported to the test, which names it
                errors.append(f"read: {exc}")

    readers = [threading.Thread(target=poll) for _ in range(2)]
    for t in readers:
        t.start()
    while time.monotonic() < stop:
        run_id = f"run-{uuid.uuid4().hex}"
        try:
            journal.create_run(_run_row(run_id), [("a", "run"), ("b", "run")])
            written += 1
        except Exception as exc:
            errors.append(f"write: {exc}")
    for t in readers:
        t.join()
    journal.close()
    queue.put((written, errors[:3], len(errors)))


def test_writes_land_while_other_threads_and_processes_use_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()  # the schema, once, before the controllers start
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_controller, args=(str(path), queue)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    failed = [(examples, count) for _, examples, count in results if count]
    assert failed == [], failed
    written = sum(w for w, _, _ in results)
    assert written > 0
    assert len(Journal(path).runs(limit=written + 10)) == written  # every write that returned is in the file
