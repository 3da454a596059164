"""`on: any` steps (matrix cells) spread over a fleet: the next free node takes the next step, at most
max_per_node at once on a node; a failed step is re-queued on another node within its retry bound, and
a lost node's steps go to the others. Real sshd boxes on 127.0.0.1 (tests/fleet.py)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_ops.fleet.placement import Placement
from tests.fleet import make_fleet, run_fleet
from tests.runs import wait_for
from tests.sshd import SSHServer

pytestmark = pytest.mark.ssh


def _cells(tmp_path: Path, count: int, command: str, *, retries: int = 0, policy: str = "stop_all", per_node: int = 2) -> Path:
    lines = [f"name: cells\non_node_failure: {policy}\nmax_parallel: 8\nmax_per_node: {per_node}\n"
             "vars:\n  box: {default: null}\nsteps:"]
    for i in range(count):
        lines.append(f"  - id: c{i}\n    kind: run\n    on: any\n    retries: {retries}\n    command: |\n"
                     + "".join(f"      {line}\n" for line in command.format(cell=f"c{i}").splitlines()))
    path = tmp_path / "cells.yaml"
    path.write_text("\n".join(lines))
    return path


def _most_at_once(parts) -> int:
    """The largest number of the given parts that ran at the same time (from their journal timestamps)."""
    edges = sorted([(p.started, 1) for p in parts] + [(p.ended, -1) for p in parts])
    now = most = 0
    for _, change in edges:
        now += change
        most = max(most, now)
    return most


def _run_losing_n2(fleet, servers: list[SSHServer], runbook: Path, what: str, ready: Callable[[], bool]):
    """Run the runbook on the fleet; once `ready`, stop n2's sshd (it and its connection die), then create `release` in
    the scratch directory, which the runbook's jobs wait for: a clock could end n2's jobs before n2 is lost on a slow
    machine. (run_id, final, journal)."""
    result: dict = {}
    controller = threading.Thread(target=lambda: result.update(run=run_fleet(fleet, runbook)))
    controller.start()
    try:
        wait_for(what, ready)
        servers[1].stop()
        (fleet.scratch / "release").touch()
        controller.join(timeout=120)
        assert not controller.is_alive()
    finally:
        controller.join(timeout=120)
        fleet.kill_tmux()
    return result["run"]


def test_the_next_free_node_takes_the_next_step_at_most_k_per_node(fleet, tmp_path: Path) -> None:
    two = fleet.specs[:2]
    runbook = _cells(tmp_path, 8, "echo {cell} on {{{{ node.name }}}} > {{{{ box }}}}/{cell}\nsleep 0.6")
    run_id, final, journal = run_fleet(fleet, runbook, specs=two)
    assert final == "succeeded"
    parts = journal.step_nodes(run_id)
    assert len(parts) == 8 and {p.state for p in parts} == {"succeeded"}
    by_node = {n: [p for p in parts if p.node == n] for n in ("n1", "n2")}
    assert all(len(ps) >= 1 for ps in by_node.values()), "every node took steps"
    assert all(_most_at_once(ps) <= 2 for ps in by_node.values())
    assert _most_at_once(parts) > 2, "both nodes worked at once"
    for p in parts:  # each step ran where the journal says, with that node's values
        assert (fleet.scratch / p.step_id).read_text() == f"{p.step_id} on {p.node}\n"
        assert journal.step(run_id, p.step_id).nodes == [p.node]


def test_a_failed_step_is_requeued_on_another_node(fleet, tmp_path: Path) -> None:
    two = fleet.specs[:2]
    # Fails on whichever node runs it first, then succeeds: the retry must have gone elsewhere.
    runbook = _cells(tmp_path, 1, "if [ ! -e {{{{ box }}}}/tried ]; then echo {{{{ node.name }}}} > {{{{ box }}}}/tried; "
                                  "exit 3; fi\necho ok on {{{{ node.name }}}}", retries=1)
    run_id, final, journal = run_fleet(fleet, runbook, specs=two)
    assert final == "succeeded"
    first = (fleet.scratch / "tried").read_text().strip()
    parts = {p.node: p.state for p in journal.step_nodes(run_id, "c0")}
    other = "n2" if first == "n1" else "n1"
    assert parts == {first: "failed", other: "succeeded"}
    assert [(a.node, a.attempt) for a in journal.attempts(run_id, "c0")] == [(first, 1), (other, 2)]
    [requeued] = [e for e in journal.events(run_id) if e.kind == "step_requeued"]
    assert requeued.message.startswith(f"re-queued after failing on {first} (retry 1 of 1): exit code 3")


def test_a_lost_nodes_steps_go_to_the_others(make_sshd: Callable[..., SSHServer], tmp_path: Path) -> None:
    servers = [make_sshd() for _ in range(2)]
    fleet = make_fleet(tmp_path / "fleet", servers, connect_timeout=2.0, reconnect_timeout=2.0)
    runbook = _cells(tmp_path, 4, "echo {cell} > {{{{ box }}}}/started-{cell}-{{{{ node.name }}}}\n"
                                  "until [ -e {{{{ box }}}}/release ]; do sleep 0.2; done\n"
                                  "echo {cell} > {{{{ box }}}}/done-{cell}-{{{{ node.name }}}}", retries=1, policy="continue")
    # n2 and its connection die with two steps on it
    run_id, final, journal = _run_losing_n2(fleet, servers, runbook, "both nodes to run their steps",
                                            lambda: len(list(fleet.scratch.glob("started-*-n2"))) == 2
                                            and len(list(fleet.scratch.glob("started-*-n1"))) == 2)
    assert final == "succeeded", journal.run(run_id).message
    lost = sorted(p.name.split("-")[1] for p in fleet.scratch.glob("started-*-n2"))
    for cell in lost:  # re-queued on n1 and finished there
        assert {p.node: p.state for p in journal.step_nodes(run_id, cell)} == {"n2": "failed", "n1": "succeeded"}
        assert (fleet.scratch / f"done-{cell}-n1").exists()
    assert {n.name: n.state for n in journal.nodes(run_id)} == {"n1": "ok", "n2": "out"}


def test_placement_prefers_the_least_loaded_node_and_avoids_where_a_step_failed() -> None:
    book = Placement(["a", "b", "c"], per_node=1)
    assert book.free_node("s1", gone=()) == "a"
    book.take("s1", "s1", "a")
    assert book.free_node("s2", gone=()) == "b"
    book.take("s2", "s2", "b")
    assert book.free_node("s3", gone={"c"}) is None  # a and b are full, c is out
    book.requeue("s1", "a")
    book.release("s1")
    assert book.free_node("s1", gone=()) == "c"  # not a, where it failed
    assert book.free_node("s1", gone={"c"}) == "a"  # ... unless a is the only node free
    # The steps of one cell share its node and its slot.
    book.take("train[seed=1]", "cell[seed=1]", "c")
    assert book.free_node("cell[seed=1]", gone=()) == "c"
    assert book.free_node("other", gone=()) == "a"


def test_a_lost_nodes_cells_move_with_their_gates(make_sshd: Callable[..., SSHServer], tmp_path: Path) -> None:
    """A matrix group cell (a job and its gate) on a node that is lost goes, gate and all, to the other node."""
    servers = [make_sshd() for _ in range(2)]
    fleet = make_fleet(tmp_path / "fleet", servers, connect_timeout=2.0, reconnect_timeout=2.0)
    runbook = tmp_path / "grid.yaml"
    runbook.write_text("""
name: grid
on_node_failure: continue
max_per_node: 1
vars: {box: {default: null}}
steps:
  - id: cell
    kind: group
    matrix: {i: [0, 1], fail_fast: false}
    steps:
      - id: job
        kind: run
        on: any
        retries: 1
        background: true
        command: |
          echo started > {{ box }}/started-{{ matrix.i }}-{{ node.name }}
          until [ -e {{ box }}/release ]; do sleep 0.2; done
          echo done {{ matrix.i }}
      - {id: gate, kind: gate, job: job, patterns: [{regex: 'done {{ matrix.i }}$', within: 60}]}
""")
    run_id, final, journal = _run_losing_n2(fleet, servers, runbook, "a cell on each node",
                                            lambda: len(list(fleet.scratch.glob("started-*"))) == 2)
    assert final == "succeeded", {s.step_id: s.message for s in journal.steps(run_id)}
    [moved] = [p.name.split("-")[1] for p in fleet.scratch.glob("started-*-n2")]
    job, gate = f"job[i={moved}]", f"gate[i={moved}]"
    assert {p.node: p.state for p in journal.step_nodes(run_id, job)} == {"n2": "failed", "n1": "succeeded"}
    assert {p.node: p.state for p in journal.step_nodes(run_id, gate)} == {"n2": "cancelled", "n1": "succeeded"}
    assert journal.step(run_id, gate).nodes == ["n1"]
