"""Blame and cross-node checks on their own: which node's failure came first, and what differs across nodes.

The log excerpts are the shapes torchrun 2.x and gloo/NCCL print (a killed worker, a peer's closed socket,
a collective's watchdog timeout); the end-to-end case is in test_multinode_train.py.
"""
from __future__ import annotations

from agent_ops.fleet.blame import NodeFailure, blame, is_knock_on, root_error
from agent_ops.fleet.compare import disagreements
from checks.kinds import ClockSkewCheck, SameAcrossNodesCheck

KILLED = """[train] step=40/5000 loss=0.6021 lr=2.000e-03 grad_norm=0.512 s/step=0.190
W1206 04:20:13.521000 2431 torch/distributed/elastic/multiprocessing/api.py:908] Sending process 2452 closing signal SIGTERM
E1206 04:20:13.600000 2431 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: -9) local_rank: 0 (pid: 2452) of binary: python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
training.train FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_04:20:13
  host      : box2
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 2452)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 2452
============================================================
"""
PEER_CLOSED = """[train] step=40/5000 loss=0.6021 lr=2.000e-03 grad_norm=0.512 s/step=0.190
[rank0]: Traceback (most recent call last):
[rank0]:   File "/work/training/train.py", line 120, in train_loop
[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.0.0.2]:31665: Connection reset by peer.
E1206 04:20:13.400000 2400 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1) local_rank: 0 (pid: 2410) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  exitcode  : 1 (pid: 2410)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
"""
NCCL_TIMEOUT = """[rank3]:[E1206 04:30:00.000000 ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught collective operation timeout: \
WorkNCCL(SeqNum=812, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600031 milliseconds before timing out.
"""
OOM = """[rank1]: Traceback (most recent call last):
[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity of 79.19 GiB
"""


def test_root_error_reads_through_torchruns_summary() -> None:
    assert root_error(KILLED) == "Signal 9 (SIGKILL) received by PID 2452"
    assert root_error(PEER_CLOSED).startswith("RuntimeError: [/__w/pytorch/pytorch/third_party/gloo")
    assert root_error(OOM).startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert root_error("[train] step=3/10 loss=0.5\n") is None
    assert is_knock_on(root_error(PEER_CLOSED)) and is_knock_on(root_error(NCCL_TIMEOUT))
    assert not is_knock_on(root_error(KILLED)) and not is_knock_on(root_error(OOM))
    hung_up = "torch.distributed.elastic.multiprocessing.api.SignalException: Process 18737 got signal: 1"
    assert root_error(f"Traceback (most recent call last):\n{hung_up}\n") == hung_up and is_knock_on(hung_up)


def test_the_node_that_died_is_blamed_even_when_its_victims_were_seen_first() -> None:
    found = blame([NodeFailure("head", PEER_CLOSED, at=100.0, reason="fail_on matched"),
                   NodeFailure("box2", KILLED, at=100.4, reason="exit code 1"),
                   NodeFailure("box3", NCCL_TIMEOUT, at=700.0, reason="fail_on matched")])
    assert found is not None and found.node == "box2"
    assert found.error == "Signal 9 (SIGKILL) received by PID 2452"
    assert found.knock_on == ["head", "box3"]


def test_among_causes_the_earliest_is_blamed_and_a_lost_node_is_a_cause() -> None:
    first = blame([NodeFailure("a", OOM, at=12.0, reason="x"), NodeFailure("b", OOM, at=10.0, reason="x")])
    assert first is not None and first.node == "b"
    lost = blame([NodeFailure("a", PEER_CLOSED, at=5.0, reason="x"),
                  NodeFailure("c", "", at=9.0, reason="node c unreachable: Connection refused", unreachable=True)])
    assert lost is not None and lost.node == "c"
    only_victims = blame([NodeFailure("a", NCCL_TIMEOUT, at=9.0, reason="x"), NodeFailure("b", PEER_CLOSED, at=3.0, reason="x")])
    assert only_victims is not None and only_victims.node == "b" and "consequence" in only_victims.why
    assert blame([]) is None


def test_disagreements_across_nodes() -> None:
    versions = SameAcrossNodesCheck(kind="same_across_nodes", run="python -c 'import torch'", name="stack")
    clocks = ClockSkewCheck(kind="clock_skew", max_skew_s=1.0)
    same = {"details": {"output": "torch 2.13.0 cuda 12.8 nccl 2.21.5"}}
    older = {"details": {"output": "torch 2.12.0 cuda 12.8 nccl 2.21.5"}}

    def clock(offset: float) -> dict:
        return {"details": {"offset_s": offset, "rtt_s": 0.01}}

    assert disagreements([versions, clocks], {"a": [same, clock(0.2)], "b": [same, clock(-0.3)]}) == []
    problems = disagreements([versions, clocks], {"a": [same, clock(0.0)], "b": [older, clock(1.6)], "c": [same, clock(0.1)]})
    assert problems == [
        "stack: differs across nodes: a, c: 'torch 2.13.0 cuda 12.8 nccl 2.21.5'; b: 'torch 2.12.0 cuda 12.8 nccl 2.21.5'",
        "clock_skew: clocks 1.600 s apart across nodes (a +0.000 s, b +1.600 s, c +0.100 s); allowed 1 s",
    ]


def test_a_journal_from_before_fleets_is_migrated_keeping_every_attempt(tmp_path) -> None:
    import sqlite3

    from agent_ops.record.journal import Journal

    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE attempts (run_id TEXT NOT NULL, step_id TEXT NOT NULL, attempt INTEGER NOT NULL, job_dir TEXT,
            window TEXT, started REAL NOT NULL, ended REAL, rc INTEGER, verdict TEXT, message TEXT, log_size INTEGER,
            overrides TEXT, PRIMARY KEY (run_id, step_id, attempt));
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step_id TEXT, ts REAL NOT NULL,
            kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
        INSERT INTO attempts VALUES ('r1', 'train', 1, '/w/jobs/train-1', 'train-1', 1.0, 2.0, 0, 'succeeded', 'ok', 10, '{}');
        INSERT INTO events (run_id, step_id, ts, kind, message) VALUES ('r1', 'train', 1.0, 'step_started', 'x');
    """)
    db.close()
    journal = Journal(path)
    [attempt] = journal.attempts("r1", "train", node="box")  # '' = the run's only node, whatever its name
    assert (attempt.node, attempt.attempt, attempt.job_dir, attempt.rc) == ("", 1, "/w/jobs/train-1", 0)
    journal.start_attempt("r1", "train", 1, job_dir="/w2", window="train-1", node="n2")  # same attempt, another node
    assert sorted(a.node for a in journal.attempts("r1", "train")) == ["", "n2"]
    assert journal.events("r1")[0].node is None
