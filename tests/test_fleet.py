"""Fleets: one runbook over three boxes (three real OpenSSH servers on 127.0.0.1, own ports, homes and tmux sockets).

Steps on all nodes, on the head and on named nodes; per-node template values; the journal's attempts per
(step, node); status --json per node; a node's sshd killed mid-step under each failure policy.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import Fleet, run_fleet
from tests.runs import RUNBOOKS

pytestmark = pytest.mark.ssh

CLI = [sys.executable, "-m", "agent_ops.front.cli"]


def _agentops(fleet: Fleet, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=fleet.env(), timeout=timeout)


def test_steps_on_all_head_and_named_nodes(fleet: Fleet) -> None:
    run_id, final, journal = run_fleet(fleet, RUNBOOKS / "fleet_steps.yaml")
    assert final == "succeeded", [(s.step_id, s.state, s.message) for s in journal.steps(run_id)]
    # Each node rendered its own values, and ran in its own home (its own sshd's HOME).
    for rank, (name, server) in enumerate(zip(fleet.names, fleet.servers)):
        first, home = (fleet.scratch / f"hello-{name}").read_text().splitlines()
        assert first == (f"{name} rank={rank} size=3 head=n1@127.0.0.1 all=n1,n2,n3 "
                         "addresses=127.0.0.1,127.0.0.1,127.0.0.1")
        assert home == str(server.home)
    assert sorted(p.name for p in fleet.scratch.glob("head-*")) == ["head-n1"]
    assert sorted(p.name for p in fleet.scratch.glob("named-*")) == ["named-n2", "named-n3"]
    # The journal: one part per (step, node) that ran, each with its own attempt and job directory on its own box.
    parts = {(p.step_id, p.node): p for p in journal.step_nodes(run_id)}
    expected = {"hello": ["n1", "n2", "n3"], "head_only": ["n1"], "named": ["n2", "n3"], "check_all": ["n1", "n2", "n3"],
                "serve": ["n1", "n2", "n3"], "ready": ["n1", "n2", "n3"]}
    assert sorted(parts) == sorted((sid, n) for sid, nodes in expected.items() for n in nodes)
    assert {p.state for sid, p in parts.items() if sid[0] != "serve"} == {"succeeded"}
    for sid, nodes in expected.items():
        assert journal.step(run_id, sid).nodes == nodes
    hello = journal.attempts(run_id, "hello")
    assert sorted(a.node for a in hello) == ["n1", "n2", "n3"] and {a.attempt for a in hello} == {1}
    for a in hello:
        server = fleet.servers[fleet.names.index(a.node)]
        assert a.job_dir.startswith(f"{server.home}/.agentops/runs/{run_id}/jobs/") and a.rc == 0
    gate = {p.node: p for p in journal.step_nodes(run_id, "ready")}
    assert all(g.progress["patterns"][0]["matched"] for g in gate.values())
    assert {n.name: (n.rank, n.state) for n in journal.nodes(run_id)} == {"n1": (0, "ok"), "n2": (1, "ok"), "n3": (2, "ok")}


def test_cli_runs_an_inventory_group_and_shows_nodes(fleet: Fleet) -> None:
    run = _agentops(fleet, "run", str(RUNBOOKS / "fleet_steps.yaml"), "--inventory", str(fleet.inventory), "-t", "pool",
                    "--var", f"box={fleet.scratch}", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    status = json.loads(_agentops(fleet, "status", json.loads(run.stdout)["id"], "--json").stdout)
    assert [n["name"] for n in status["nodes"]] == ["n1", "n2", "n3"]
    steps = {s["id"]: s for s in status["steps"]}
    assert [(p["node"], p["state"]) for p in steps["named"]["nodes"]] == [("n2", "succeeded"), ("n3", "succeeded")]
    assert sorted((a["node"], a["attempt"]) for a in steps["hello"]["attempts"]) == [("n1", 1), ("n2", 1), ("n3", 1)]
    assert steps["hello"]["message"] == "exit code 0 on 3 nodes"
    logs = _agentops(fleet, "logs", status["id"], "hello", "--node", "n2")
    assert logs.stdout.startswith("n2 rank=1 size=3"), logs.stdout + logs.stderr
    listed = json.loads(_agentops(fleet, "list", "--json").stdout)
    assert listed[0]["nodes"] == ["n1", "n2", "n3"]
    plain = _agentops(fleet, "status", status["id"])
    assert "n1 ✔ n2 ✔ n3 ✔" in plain.stdout and "0:n1 127.0.0.1" in plain.stdout


def test_a_step_on_an_unknown_node_stops_the_run_before_anything_runs(fleet: Fleet, tmp_path: Path) -> None:
    runbook = tmp_path / "typo.yaml"
    runbook.write_text("name: typo\nsteps:\n  - id: a\n    kind: run\n    command: touch ran\n"
                       "  - id: b\n    kind: run\n    on: [n1, n7]\n    command: 'true'\n")
    run = _agentops(fleet, "run", str(runbook), "--inventory", str(fleet.inventory), "-t", "n1,n2,n3")
    assert run.returncode == 2, run.stderr
    assert f"{runbook}:8: steps.1.on: step b: on: node 'n7' is not in the fleet (n1, n2, n3)" in run.stderr
    assert _agentops(fleet, "list", "--json").stdout.strip() == "[]"


OUTAGE_RUNBOOK = """
name: fleet_outage
on_node_failure: {policy}
vars:
  box: {{default: null}}
  ticks: {ticks}
steps:
  - id: work
    kind: run
    command: |
      echo started on {{{{ node.name }}}} | tee {{{{ box }}}}/started-{{{{ node.name }}}}
      for i in $(seq {{{{ ticks }}}}); do sleep 0.1; done
      echo done on {{{{ node.name }}}} | tee {{{{ box }}}}/done-{{{{ node.name }}}}
  - id: after
    kind: run
    needs: [work]
    command: echo after > {{{{ box }}}}/after-{{{{ node.name }}}}
"""


def _outage(make_sshd, tmp_path: Path, policy: str, ticks: int):
    """Run fleet_outage over three fresh boxes and kill n3's sshd once every node's job has started."""
    import threading

    from tests.fleet import make_fleet
    from tests.runs import wait_for

    servers = [make_sshd() for _ in range(3)]
    fleet = make_fleet(tmp_path / "fleet", servers, connect_timeout=2.0, reconnect_timeout=2.0)
    runbook = tmp_path / "outage.yaml"
    runbook.write_text(OUTAGE_RUNBOOK.format(policy=policy, ticks=ticks))
    result: dict = {}
    controller = threading.Thread(target=lambda: result.update(run=run_fleet(fleet, runbook)))
    controller.start()
    try:
        wait_for("every node's job to start", lambda: all((fleet.scratch / f"started-{n}").exists() for n in fleet.names))
        servers[2].stop()  # n3's sshd and every connection to it die; its job runs on in its tmux
        controller.join(timeout=120)
        assert not controller.is_alive(), "the run did not end after a node was lost"
    finally:
        controller.join(timeout=120)
        fleet.kill_tmux()
    return fleet, *result["run"]


def test_a_lost_node_stops_the_others_under_stop_all(make_sshd, tmp_path: Path) -> None:
    fleet, run_id, final, journal = _outage(make_sshd, tmp_path, "stop_all", ticks=600)
    assert final == "failed"
    parts = {p.node: p for p in journal.step_nodes(run_id, "work")}
    assert parts["n3"].state == "failed" and "node n3 unreachable" in parts["n3"].message
    for name in ("n1", "n2"):
        assert parts[name].state == "cancelled" and parts[name].message.startswith("stopped: node n3 failed")
        # Stopped at once, not left to run its minute: ended within a few seconds of n3's failure.
        assert parts[name].ended - parts["n3"].failed_at < 5
        assert not (fleet.scratch / f"done-{name}").exists()
    work = journal.step(run_id, "work")
    assert work.state == "failed" and work.message.startswith("failed on n3; node n3 first: node n3 unreachable")
    assert work.message.endswith("; stopped on n1, n2")
    assert work.blame["node"] == "n3"
    assert journal.step(run_id, "after").state == "cancelled"
    # Nothing is lost: every node's attempt is in the journal and the reachable nodes' logs are on their boxes.
    attempts = {a.node: a for a in journal.attempts(run_id, "work")}
    assert sorted(attempts) == ["n1", "n2", "n3"]
    for name in ("n1", "n2"):
        assert Path(attempts[name].job_dir, "log").read_text() == f"started on {name}\n"
    assert journal.run(run_id).message.startswith("failed: ")


def test_a_lost_node_is_taken_out_under_continue(make_sshd, tmp_path: Path) -> None:
    fleet, run_id, final, journal = _outage(make_sshd, tmp_path, "continue", ticks=60)
    assert final == "succeeded", journal.run(run_id).message
    parts = {p.node: p.state for p in journal.step_nodes(run_id, "work")}
    assert parts == {"n1": "succeeded", "n2": "succeeded", "n3": "failed"}
    assert journal.step(run_id, "work").message.endswith("failed on n3 (out of the fleet)")
    for name in ("n1", "n2"):
        assert (fleet.scratch / f"done-{name}").read_text() == f"done on {name}\n"
    # Later steps run on the nodes left.
    assert journal.step(run_id, "after").nodes == ["n1", "n2"]
    assert sorted(p.name for p in fleet.scratch.glob("after-*")) == ["after-n1", "after-n2"]
    nodes = {n.name: n for n in journal.nodes(run_id)}
    assert nodes["n3"].state == "out" and "failed at step work" in nodes["n3"].message
    assert "out of the fleet: n3" in journal.run(run_id).message


def test_a_check_compares_one_commands_output_across_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    runbook = tmp_path / "compare.yaml"
    runbook.write_text(
        "name: compare\nsteps:\n"
        "  - id: same\n    kind: check\n    checks:\n"
        "      - {kind: same_across_nodes, name: stack, run: 'echo stack-1.0'}\n"
        "      - {kind: clock_skew, max_skew_s: 1}\n"
        "  - id: differs\n    kind: check\n    needs: [same]\n    checks:\n"
        "      - {kind: same_across_nodes, name: version, run: \"echo v-{{ 'old' if node.name == 'n2' else 'new' }}\"}\n")
    run_id, final, journal = run_fleet(fleet, runbook)
    assert final == "failed"
    assert journal.step(run_id, "same").state == "succeeded"
    differs = journal.step(run_id, "differs")
    assert differs.message == "version: differs across nodes: n1, n3: 'v-new'; n2: 'v-old'"
    # Each node's part passed on its own: the disagreement is the fleet's, found over all of them.
    assert {p.state for p in journal.step_nodes(run_id, "differs")} == {"succeeded"}


def test_a_fleet_run_resumes_on_every_node_without_rerunning(fleet: Fleet, tmp_path: Path) -> None:
    import os
    import signal

    from agent_ops.record.journal import Journal
    from tests.runs import wait_for

    runbook = tmp_path / "resume.yaml"
    runbook.write_text(
        "name: fleet_resume\nvars: {box: {default: null}}\nsteps:\n"
        "  - {id: first, kind: run, command: 'echo first >> {{ box }}/counter-{{ node.name }}'}\n"
        # long waits for the test's word, not a clock: on a slow machine a node's sleep could end before the kill,
        # and that node's long would rightly not be re-attached.
        "  - {id: long, kind: run, needs: [first], command: 'echo long >> {{ box }}/counter-{{ node.name }};"
        " until [ -e {{ box }}/release ]; do sleep 0.2; done'}\n"
        "  - {id: last, kind: run, needs: [long], command: 'echo last >> {{ box }}/counter-{{ node.name }}'}\n")
    proc = subprocess.Popen([*CLI, "run", str(runbook), "--inventory", str(fleet.inventory), "-t", "pool",
                             "--var", f"box={fleet.scratch}"], env=fleet.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal = Journal(fleet.home / "journal.db")
    run_id = wait_for("the run to start", journal.latest_run_id)
    counters = [fleet.scratch / f"counter-{n}" for n in fleet.names]
    wait_for("long's job to run on every node",
             lambda: all(c.exists() and "long" in c.read_text() for c in counters), timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (fleet.scratch / "release").touch()  # long ends while no controller follows it
    resumed = _agentops(fleet, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["state"] == "succeeded"
    for counter in counters:  # every node ran each step once: long was re-attached, not restarted
        assert counter.read_text().split() == ["first", "long", "last"]
    assert sorted((a.node, a.attempt) for a in journal.attempts(run_id, "long")) == [("n1", 1), ("n2", 1), ("n3", 1)]
    assert sorted(e.node for e in journal.events(run_id) if e.kind == "job_reattached") == ["n1", "n2", "n3"]


def test_a_pass_on_any_gate_waits_for_the_node_that_shows_the_line(fleet: Fleet, tmp_path: Path) -> None:
    """Under stop_all, a node whose job ends without the line (torchrun's rank 1 finishing first) neither fails the
    gate nor stops the node still on its way to showing it (a CI run failed the multi-node test that way)."""
    import threading

    from agent_ops.record.journal import Journal
    from tests.runs import wait_for

    runbook = tmp_path / "any.yaml"
    runbook.write_text(
        "name: pass_on_any\non_node_failure: stop_all\nvars: {box: {default: null}}\nsteps:\n"
        "  - id: serve\n    kind: run\n    background: true\n    command: |\n"
        "      if [ {{ node.rank }} = 0 ]; then until [ -e {{ box }}/release ]; do sleep 0.2; done; echo leader ready;"
        " else echo follower; fi\n"
        "  - id: leader\n    kind: gate\n    job: serve\n    pass_on: any\n"
        "    patterns: [{regex: '^leader ready$', within: 120}]\n"
        "  - {id: after, kind: run, on: head, needs: [leader], command: 'echo after'}\n")
    result: dict = {}
    controller = threading.Thread(target=lambda: result.update(run=run_fleet(fleet, runbook)))
    controller.start()
    try:
        journal = Journal(fleet.home / "journal.db")
        run_id = wait_for("the run to start", journal.latest_run_id)
        # The followers' parts of the gate end (their jobs ended without the line) before the head's job prints it.
        wait_for("the followers' parts of the gate to end", lambda: {
            p.node for p in journal.step_nodes(run_id, "leader") if p.ended is not None} >= {"n2", "n3"}, timeout=120)
        (fleet.scratch / "release").touch()
        controller.join(timeout=120)
        assert not controller.is_alive(), "the run did not end after the head showed the line"
    finally:
        (fleet.scratch / "release").touch()
        controller.join(timeout=120)
    run_id, final, journal = result["run"]
    leader = journal.step(run_id, "leader")
    assert final == "succeeded", leader.message
    assert leader.message.endswith("(on n1)")
    parts = {p.node: p for p in journal.step_nodes(run_id, "leader")}
    assert parts["n1"].state == "succeeded"
    for name in ("n2", "n3"):  # their parts failed for want of the line, and said so
        assert parts[name].state == "failed" and "the log ended before" in parts[name].message
    assert journal.step(run_id, "after").state == "succeeded"
