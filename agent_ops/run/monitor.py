"""The run's monitor: the single poller that watches every running job and followed file.

One thread per run sends one probe exec at a time: it blocks on the run's
wake-up FIFO (a finishing job wakes it at once, see jobs.py), but never longer than
the current backoff interval, which starts at 0.25 s and is capped at <= 30 s.
Step drivers wait on the snapshots it publishes instead of each polling the box.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from agent_ops.errors import TransportError
from agent_ops.run.jobs import RunLayout, Snapshot, probe
from agent_ops.run.poll import Backoff
from agent_ops.transport.base import Transport


class Monitor:
    """Publishes Snapshots of watched jobs and files; drivers call wait_next()."""

    def __init__(self, transport: Transport, layout: RunLayout, backoff: Backoff) -> None:
        self.transport = transport
        self.layout = layout
        self.backoff = backoff
        self.latest = Snapshot()
        self.max_interval = 0.0  # the longest wait actually used, recorded for status and tests
        self.error: Exception | None = None
        # Counted: a background job is followed by its own driver and by gates at the same time.
        self._jobs: Counter[str] = Counter()
        self._files: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._stopped = False
        self._asked = False  # watch() was called since the last probe: its caller waits for a fresh snapshot
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{layout.run_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (if it ever started: a run whose preparation failed never starts it)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.ident is None:
            return
        if self.error is not None:
            # The box is unreachable: a wake-up would only spend another reconnect budget. The thread is a daemon
            # blocked in a reconnect that the transport's close() ends; it is not waited for.
            self._thread.join(timeout=1)
            return
        try:  # wake a probe blocked on the FIFO so the thread ends promptly
            self.transport.exec(f"{self.layout.wake_command()}; true", timeout=10)
        except TransportError:
            pass
        self._thread.join(timeout=35)

    def watch(self, *, job: str | None = None, file: str | None = None) -> None:
        with self._cond:
            if job:
                self._jobs[job] += 1
            if file:
                self._files[file] += 1
            self._asked = True
            self.backoff.reset()
            self._cond.notify_all()

    def unwatch(self, *, job: str | None = None, file: str | None = None) -> None:
        with self._cond:
            for counter, key in ((self._jobs, job), (self._files, file)):
                if key and counter[key] > 0:
                    counter[key] -= 1
                    if counter[key] == 0:
                        del counter[key]

    @contextmanager
    def watching(self, *, job: str | None = None, file: str | None = None) -> Iterator[None]:
        """watch() for the duration of a `with` block."""
        self.watch(job=job, file=file)
        try:
            yield
        finally:
            self.unwatch(job=job, file=file)

    def wait_next(self, seq: int, timeout: float) -> Snapshot:
        """The first snapshot newer than `seq`, or the latest one after `timeout` seconds."""
        end = time.monotonic() + timeout
        with self._cond:
            while self.latest.seq <= seq and not self._stopped:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.latest

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._anything_to_learn():
                    self._cond.wait(1.0)
                if self._stopped:
                    return
                jobs, files = sorted(self._jobs), sorted(self._files)
                ended = {j for j in jobs if self.latest.rcs.get(j) is not None}
                self._asked = False
                # Nothing running and no file to follow (a late watcher of ended jobs): look, don't wait.
                interval = self.backoff.next() if files or len(ended) < len(jobs) else 0.0
            self.max_interval = max(self.max_interval, interval)
            try:
                snap = probe(self.transport, self.layout, interval, jobs, files, ended)
            except TransportError as exc:
                # The transport already retried and reconnected where it could; report and keep trying.
                self.error = exc
                time.sleep(min(1.0, interval))
                continue
            self.error = None
            self._publish(snap)

    def _anything_to_learn(self) -> bool:
        """Whether a probe could tell anyone something new (called holding the lock).

        A job whose exit code was published is over for good: probing only such jobs would wait a whole
        interval for nothing, and hold up the probe that the next job needs.
        """
        running = any(self.latest.rcs.get(job) is None for job in self._jobs)
        return running or bool(self._files) or (self._asked and bool(self._jobs))

    def _publish(self, snap: Snapshot) -> None:
        with self._cond:
            prev = self.latest
            if snap.rcs != prev.rcs or snap.sizes != prev.sizes or snap.windows != prev.windows:
                self.backoff.reset()
            snap.seq = prev.seq + 1
            self.latest = snap
            self._cond.notify_all()
