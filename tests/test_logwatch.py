"""Log watching on hostile output: lines without newlines, progress bars, line breaks split across reads."""
from __future__ import annotations

import tracemalloc

from agent_ops.run.logwatch import MAX_LINE_BYTES, LineSplitter, LogWatch
from agent_ops.run.steps import READ_CHUNK
from agent_ops.runbook.schema import GatePattern


def test_a_log_without_newlines_is_held_to_a_bounded_partial_line() -> None:
    # 64 MiB with no line break, read as the step drivers read it, then the line the gate waits for.
    watch = LogWatch(patterns=[GatePattern(regex=r"^READY$", within=60)])
    chunk = b"x" * READ_CHUNK
    tracemalloc.start()
    try:
        for _ in range((64 << 20) // READ_CHUNK):
            watch.feed(chunk, 1.0)
        watch.feed(b"\nREADY\n", 2.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What the watch allocated beyond the chunk it was handed: the bounded partial line and its text, not the log.
    assert peak < 4 * MAX_LINE_BYTES
    verdict = watch.verdict(2.0)
    assert verdict is not None and verdict.passed and watch.lines_seen == 2
    assert watch.patterns[0].matched_at == 2.0


def test_a_long_line_is_judged_on_its_start() -> None:
    splitter = LineSplitter()
    head = b"step=1 loss=0.5 "
    lines = splitter.feed(head + b"y" * (3 * MAX_LINE_BYTES)) + splitter.feed(b"tail\nnext")
    assert len(lines) == 1 and lines[0].startswith(head.decode()) and len(lines[0]) == MAX_LINE_BYTES
    assert splitter.flush() == ["next"]


def test_line_breaks_split_across_reads() -> None:
    splitter = LineSplitter()
    # \r\n cut between two reads is one break; \r alone (a progress bar's rewrite) ends a line.
    assert splitter.feed(b"a\r") == ["a"]
    assert splitter.feed(b"\nb\r\nc") == ["b"]
    assert splitter.feed(b"d\r10%\r20%\n\n") == ["cd", "10%", "20%", ""]
    assert splitter.feed(b"") == [] and splitter.flush() == []
