"""`agentops run --provision vast`: rent a fleet for a run, run on it, save the artifacts, watch the bill, give back.

Real processes (the CLI), the real `vastai` SDK against the loopback stand-in, whose boxes are real sshd servers with
their own homes and tmux directories. Each case ends with the stand-in holding no instance (conftest's fixture checks)
and the API key in no file, log, status or output the test can reach.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vastai")

from agent_ops.record.journal import Journal
from agent_ops.run.artifacts import recorded
from tests.mcp_client import in_session
from tests.sshd import sshd_available
from tests.standins.vast_api import VastStandIn

pytestmark = [pytest.mark.ssh, pytest.mark.skipif(not sshd_available(), reason="OpenSSH server not installed")]
CLI = [sys.executable, "-m", "agent_ops.front.cli"]
RUNBOOK = str(Path(__file__).parent / "runbooks" / "rented_train.yaml")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def env(home: Path, standin: VastStandIn, api_key: str) -> dict[str, str]:
    """The controller's environment: the key and the stand-in's URL, the box user of this machine's sshd."""
    return {**os.environ, "AGENTOPS_HOME": str(home), "VAST_API_KEY": api_key, "VAST_URL": standin.url,
            "VAST_SSH_USER": getpass.getuser()}


def _cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _run(env: dict[str, str], identity: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return _cli(env, "run", RUNBOOK, "--provision", "vast", "--gpu-name", "RTX_4090", "--max-dph", "100", "-i", identity,
                "--json", *extra, timeout=timeout)


def _key_nowhere(api_key: str, home: Path, standin: VastStandIn, *texts: str) -> None:
    """Only the Authorization header carried the key: not the journal, a log, an artifact, a status, an output."""
    assert not [t for t in texts if api_key in t]
    for root in (home, standin.root):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket():
                assert api_key.encode() not in path.read_bytes(), path


def _saved(home: Path, run_id: str) -> dict[tuple[str, str], object]:
    journal = Journal(home / "journal.db")
    try:
        return recorded(journal, run_id)
    finally:
        journal.close()


def _check_copies(result) -> None:
    """Every saved file's copy has the size and sha256 the box computed."""
    assert result.files
    for f in result.files:
        data = Path(f.local).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256)


def test_a_run_on_two_rented_boxes_saves_its_artifacts_then_destroys_them(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    standin.add_offer(2, machine_id=12, dph_total=0.5)

    done = _run(env, identity, "--nodes", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    run_id, nodes = status["id"], [n["name"] for n in status["nodes"]]
    assert status["state"] == "succeeded" and len(nodes) == 2 and all(n.startswith("vast-") for n in nodes)
    assert standin.live() == [] and len(standin.destroyed) == 2
    saved = _saved(home, run_id)
    head, worker = nodes
    assert {k: r.state for k, r in saved.items()} == {
        (head, "~/work/checkpoints"): "saved", (head, "~/work/dataset_statistics.json"): "saved",
        (head, "~/work/train.log"): "saved", (worker, "~/work/train.log"): "saved"}
    for result in saved.values():
        _check_copies(result)
    checkpoints = [Path(f.local).parent.name for f in saved[(head, "~/work/checkpoints")].files]
    assert "checkpoint-000040" in checkpoints  # training ran to its end before the boxes went (idle_s after it)
    bill = status["bill"]
    assert sorted(n["node"] for n in bill["nodes"]) == sorted(nodes) and {n["state"] for n in bill["nodes"]} == {"destroyed"}
    assert bill["spent_usd"] > 0 and bill["dph_now"] == 0
    assert "2 boxes destroyed" in status["message"] and "4/4 artifacts saved" in status["message"]
    shown = _cli(env, "status", run_id)
    assert "bill: total $" in shown.stdout
    _key_nowhere(api_key, home, standin, done.stdout, done.stderr, shown.stdout)


def test_a_box_that_dies_mid_run_fails_the_run_and_every_box_is_destroyed(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path, tmp_path: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    standin.add_offer(2, machine_id=12, dph_total=0.5)
    fleet = tmp_path / "fleet.yaml"  # the runbook's fleet, with a lost box given up on after 3 s instead of 120
    fleet.write_text("nodes: 2\noffer: {gpu_name: RTX_4090, disk_gb: 20}\nprovision_deadline_s: 60\n"
                     "reconnect_timeout_s: 3\nqualify: {burn_in_s: 0, min_disk_free_gb: 0.001}\n")
    proc = subprocess.Popen([*CLI, "run", RUNBOOK, "--provision", "vast", "--fleet", str(fleet), "-i", identity, "--json",
                             "--var", "train_steps=100000", "--var", "step_s=0.1", "--var", "gate_step=99999"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _wait_for_step(home, "train", ("running", "started"))
        worker = int(_node_names(home, run_id)[1].removeprefix("vast-"))  # rank 1: the head's artifacts stay reachable
        standin.kill(worker)
        out, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + errors
    status = json.loads(out)
    assert status["state"] == "failed" and standin.live() == []
    saved = _saved(home, run_id)
    head = status["nodes"][0]["name"]
    assert saved[(f"vast-{worker}", "~/work/train.log")].state == "lost"  # its box is gone: nothing to save, no block
    assert saved[(head, "~/work/dataset_statistics.json")].state == "saved"
    assert "2 boxes destroyed" in status["message"]
    _key_nowhere(api_key, home, standin, out, errors)


def test_budget_reached_mid_training_checkpoints_saves_and_destroys(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=72.0)  # $0.02 a second: the budget goes in seconds

    done = _run(env, identity, "--nodes", "1", "--budget-usd", "0.2", "--var", "train_steps=100000", "--var", "step_s=0.1")

    status = json.loads(done.stdout)
    assert "budget reached" in status["message"], done.stderr
    assert standin.live() == []
    saved = _saved(home, status["id"])
    head = status["nodes"][0]["name"]
    checkpoints = saved[(head, "~/work/checkpoints")]
    assert checkpoints.state == "saved"
    _check_copies(checkpoints)
    log = Path(saved[(head, "~/work/train.log")].files[0].local).read_text()
    assert "on request" in log  # the trainer saved on SIGUSR1 before the box went
    assert status["bill"]["spent_usd"] >= 0.2 and status["bill"]["budget_usd"] == 0.2
    _key_nowhere(api_key, home, standin, done.stdout, done.stderr)


def test_a_controller_killed_mid_run_leaves_boxes_that_down_finds_and_destroys(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    standin.add_offer(2, machine_id=12, dph_total=0.5)
    proc = subprocess.Popen([*CLI, "run", RUNBOOK, "--provision", "vast", "--nodes", "2", "--gpu-name", "RTX_4090",
                             "-i", identity, "--var", "train_steps=100000", "--var", "step_s=0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = _wait_for_step(home, "train", ("running", "started"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(standin.live()) == 2  # nothing gave them back: the controller is gone

    down = _cli(env, "down", run_id, "--json")

    assert down.returncode == 0, down.stdout + down.stderr
    result = json.loads(down.stdout)
    assert sorted(result["teardown"]["done"]) == sorted(r.instance_id for r in _rentals(home, run_id))
    assert standin.live() == []
    assert {a["state"] for a in result["artifacts"]} == {"saved"}
    status = _cli(env, "status", run_id, "--json")
    assert json.loads(status.stdout)["state"] == "interrupted"
    _key_nowhere(api_key, home, standin, down.stdout, down.stderr, status.stdout)


def _killed_mid_training(env: dict[str, str], standin: VastStandIn, identity: str, home: Path) -> str:
    """A 2-box rented run whose controller is SIGKILLed while training runs on both boxes (its gate still waits):
    the run's id. The boxes bill on, the training with them."""
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    standin.add_offer(2, machine_id=12, dph_total=0.5)
    proc = subprocess.Popen([*CLI, "run", RUNBOOK, "--provision", "vast", "--nodes", "2", "--gpu-name", "RTX_4090",
                             "-i", identity, "--var", "train_steps=150", "--var", "step_s=0.1", "--var", "gate_step=100"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = _wait_for_step(home, "train", ("running", "started"))
        deadline = time.monotonic() + 60
        while len([p for p in standin.root.rglob("work/train.log") if p.stat().st_size]) < 2:  # a job on both boxes
            assert time.monotonic() < deadline, "training never started on both boxes"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(standin.live()) == 2
    return run_id


def _attempts(home: Path, run_id: str) -> dict[tuple[str, str], int]:
    """(step, node) -> how many attempts the journal holds."""
    journal = Journal(home / "journal.db")
    try:
        counts: dict[tuple[str, str], int] = {}
        for a in journal.attempts(run_id):
            counts[(a.step_id, a.node)] = counts.get((a.step_id, a.node), 0) + 1
        return counts
    finally:
        journal.close()


def _creates(standin: VastStandIn) -> int:
    """Instances the stand-in was asked to create (PUT /api/v0/asks/ID/)."""
    return sum(r["method"] == "PUT" and r["path"].startswith("/api/v0/asks/") for r in standin.requests())


def test_resume_after_a_sigkill_finishes_on_the_same_boxes_then_destroys_them(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    run_id = _killed_mid_training(env, standin, identity, home)
    rented = standin.live()
    before = {k: n for k, n in _attempts(home, run_id).items() if k[0] != "started"}  # the gate was still waiting
    assert _creates(standin) == 2 and {s for s, _ in before} == {"deps", "stats", "train"}

    done = _cli(env, "resume", run_id, "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "succeeded" and status["id"] == run_id
    assert _creates(standin) == 2 and sorted(standin.destroyed) == rented and standin.live() == []  # the same boxes
    assert sorted(int(n["name"].removeprefix("vast-")) for n in status["nodes"]) == rented
    after = _attempts(home, run_id)
    assert {k: n for k, n in after.items() if k[0] != "started"} == before  # deps, stats, train: not one re-run
    saved = _saved(home, run_id)
    assert len(saved) == 4 and {r.state for r in saved.values()} == {"saved"}, saved
    head = status["nodes"][0]["name"]
    checkpoints = [Path(f.local).parent.name for f in saved[(head, "~/work/checkpoints")].files]
    assert "checkpoint-000150" in checkpoints  # the training the dead controller started ran to its end on resume's watch
    for result in saved.values():
        _check_copies(result)
    assert "2 boxes destroyed" in status["message"] and "4/4 artifacts saved" in status["message"]
    _key_nowhere(api_key, home, standin, done.stdout, done.stderr)


@pytest.mark.parametrize("fate", ["died", "destroyed"])
def test_resume_after_a_box_went_meanwhile_fails_clearly_and_gives_back_the_rest(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path, fate: str) -> None:
    run_id = _killed_mid_training(env, standin, identity, home)
    head, worker = (int(name.removeprefix("vast-")) for name in _node_names(home, run_id))  # rank 0, rank 1
    if fate == "died":
        standin.kill(worker)
    else:  # destroyed from vast.ai's console, say: the instance no longer exists
        standin.destroy(worker)

    done = _cli(env, "resume", run_id, "--json")

    assert done.returncode == 4, done.stdout + done.stderr  # EXIT_STATE: the run cannot be resumed
    error = json.loads(done.stdout)["error"]
    why = "offline" if fate == "died" else "gone"
    assert error["code"] == "run_state" and f"cannot resume, box gone: vast-{worker} ({why}" in error["message"], error
    assert "3/4 artifacts saved" in error["message"] and "2 boxes destroyed" in error["message"], error
    assert standin.live() == [] and _creates(standin) == 2  # the box left is given back per the failure policy
    status = json.loads(_cli(env, "status", run_id, "--json").stdout)
    assert status["state"] == "failed" and "2 boxes destroyed" in status["message"], status["message"]
    assert {s["state"] for s in status["steps"]} <= {"succeeded", "failed"}  # no step shown running on a dead fleet
    saved = _saved(home, run_id)
    assert saved[(f"vast-{head}", "~/work/dataset_statistics.json")].state == "saved"
    assert saved[(f"vast-{worker}", "~/work/train.log")].state == "lost"
    _key_nowhere(api_key, home, standin, done.stdout, done.stderr)


def test_destroy_waits_for_an_artifact_that_is_not_safe_until_forced(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)

    done = _run(env, identity, "--nodes", "1", "--var", "stats_name=absent.json")

    status = json.loads(done.stdout)
    assert done.returncode == 5, done.stderr  # the steps succeeded, but boxes that still bill are not a success
    assert status["state"] == "succeeded" and "destroy refused, boxes kept" in status["message"]
    assert len(standin.live()) == 1  # kept, and billing: the message says so, and how to finish
    refused = _cli(env, "down", status["id"])
    assert refused.returncode == 1 and "~/work/absent.json: missing" in refused.stdout and len(standin.live()) == 1
    forced = _cli(env, "down", status["id"], "--force", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["teardown"]["done"] and standin.live() == []
    _key_nowhere(api_key, home, standin, done.stdout, done.stderr, refused.stdout, forced.stdout)


def test_plan_marks_what_rents_spends_and_destroys(env: dict[str, str]) -> None:
    shown = _cli(env, "plan", RUNBOOK)
    assert shown.returncode == 0, shown.stderr
    money = [line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("[money] ")]
    assert [line.split()[1] for line in money] == ["RENT", "SPEND", "DESTROY", "DESTROY"]
    assert "2 x 1 RTX 4090 from vast" in money[0] and "copy 3 artifacts off" in money[2]
    as_json = json.loads(_cli(env, "plan", RUNBOOK, "--json").stdout)
    assert [line.split()[0] for line in as_json["money"]] == ["RENT", "SPEND", "DESTROY", "DESTROY"]


def test_mcp_starts_a_rented_run_only_in_the_destructive_tier(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path, tmp_path: Path) -> None:
    pytest.importorskip("mcp")
    import asyncio

    standin.add_offer(1, machine_id=11, dph_total=0.3)

    def session(tier: str, work):
        return in_session(env, tmp_path, tier, work)

    async def names(client):
        return {t.name for t in (await client.list_tools()).tools}

    assert "start_rented_run" not in asyncio.run(session("mutating", names))

    async def rented(client):
        started = (await client.call_tool("start_rented_run", {"file": RUNBOOK, "identity": identity, "nodes": 1,
                                                               "gpu_name": "RTX_4090"})).structured_content
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = await client.call_tool("status", {"run_id": started["run_id"]})
            shown = None if status.is_error else status.structured_content
            # The run ends at its gate (training runs on); its boxes go once training ends: the bill says when.
            if shown and shown["state"] in ("succeeded", "failed") and shown["bill"]["dph_now"] == 0:
                return started, shown
            await asyncio.sleep(1.0)
        raise AssertionError(f"the rented run did not end: {Path(started['controller_log']).read_text()[-2000:]}")

    started, status = asyncio.run(session("destructive", rented))
    assert status["state"] == "succeeded" and status["bill"]["nodes"][0]["state"] == "destroyed", status["message"]
    assert standin.live() == []
    _key_nowhere(api_key, home, standin, json.dumps(started), json.dumps(status))


def test_sigterm_to_the_controller_applies_the_failure_policy(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    proc = subprocess.Popen([*CLI, "run", RUNBOOK, "--provision", "vast", "--nodes", "1", "--gpu-name", "RTX_4090",
                             "-i", identity, "--var", "train_steps=100000", "--var", "step_s=0.1", "--var", "gate_step=99999"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _wait_for_step(home, "train", ("running", "started"))
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + errors
    assert standin.live() == []
    status = json.loads(_cli(env, "status", run_id, "--json").stdout)
    assert status["state"] == "interrupted" and "stopped by SIGTERM; boxes given back on the interrupt" in status["message"]
    assert _saved(home, run_id)[(status["nodes"][0]["name"], "~/work/checkpoints")].state == "saved"
    _key_nowhere(api_key, home, standin, out, errors)


def test_a_detached_rented_run_outlives_its_caller_and_gives_its_boxes_back(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)

    started = _run(env, identity, "--nodes", "1", "--detach", timeout=60)

    assert started.returncode == 0, started.stdout + started.stderr
    shown = json.loads(started.stdout)
    run_id, pid = shown["run_id"], shown["controller_pid"]
    assert run_id and pid != os.getpid()
    waited = _cli(env, "wait", run_id, "--until", "done", "--timeout", "150", "--json", timeout=170)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    # The run ends at its gate while training goes on; its box is given back once training ends (idle_s).
    deadline = time.monotonic() + 120
    while (status := json.loads(_cli(env, "status", run_id, "--json").stdout))["bill"]["dph_now"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status["state"] == "succeeded" and [n["state"] for n in status["bill"]["nodes"]] == ["destroyed"], status
    assert standin.live() == [] and len(standin.destroyed) == 1
    assert _saved(home, run_id)[(status["nodes"][0]["name"], "~/work/checkpoints")].state == "saved"
    _key_nowhere(api_key, home, standin, started.stdout, started.stderr, waited.stdout, waited.stderr)


def test_waiting_on_a_detached_rented_run_whose_rental_fails_ends_with_the_failure(
        env: dict[str, str], standin: VastStandIn, identity: str) -> None:
    # No offer at the stand-in: the detached controller records its provisioning, finds nothing to rent and exits.
    started = _run(env, identity, "--nodes", "1", "--detach", timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = json.loads(started.stdout)["run_id"]

    waited = _cli(env, "wait", run_id, "--until", "done", "--timeout", "120", "--json", timeout=140)

    assert waited.returncode == 1, waited.stdout + waited.stderr
    error = json.loads(waited.stdout)["error"]
    assert error["code"] == "rent_failed" and "before the run began" in error["message"]
    assert "no box of it is live" in error["message"] and "controller.log" in error["message"]
    shown = _cli(env, "status", run_id, "--json")
    assert shown.returncode == 1 and json.loads(shown.stdout)["error"]["code"] == "rent_failed"
    assert standin.live() == []


def _rent_inventory(path: Path, identity: str, nodes: object = 1) -> Path:
    path.write_text(
        "hosts: {}\n"
        "rent:\n"
        "  pair:\n"
        "    provider: vast\n"
        f"    nodes: {nodes}\n"
        "    offer: {gpu_name: RTX_4090, disk_gb: 20, max_dph: 100}\n"
        f"    identity: {identity}\n"
        "    provision_deadline_s: 60\n"
        "    qualify: {burn_in_s: 0, min_disk_free_gb: 0.001}\n")
    return path


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detached"])
def test_an_inventory_names_a_fleet_to_rent_and_a_run_on_it_rents_it(
        env: dict[str, str], standin: VastStandIn, identity: str, api_key: str, home: Path, tmp_path: Path,
        detach: bool) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    standin.add_offer(2, machine_id=12, dph_total=0.5)
    inventory = _rent_inventory(tmp_path / "hosts.yaml", identity)

    done = _cli(env, "run", RUNBOOK, "--inventory", str(inventory), "-t", "pair", "--json", *(["--detach"] if detach else []))

    assert done.returncode == 0, done.stdout + done.stderr
    if detach:  # the controller reads the inventory again: -t pair --inventory FILE travel on its command line
        run_id = json.loads(done.stdout)["run_id"]
        assert _cli(env, "wait", run_id, "--until", "done", "--timeout", "150", timeout=170).returncode == 0
        deadline = time.monotonic() + 120
        while standin.live() and time.monotonic() < deadline:  # training runs on after the gate; then the box goes
            time.sleep(0.5)
    status = json.loads(done.stdout if not detach else _cli(env, "status", run_id, "--json").stdout)
    assert status["state"] == "succeeded" and [n["name"] for n in status["nodes"]] == ["vast-1001"]  # 1 node, as the entry says
    assert standin.live() == [] and len(standin.destroyed) == 1
    _key_nowhere(api_key, home, standin, done.stdout, done.stderr)


def test_a_bad_rent_entry_is_named_at_its_line_and_nothing_is_rented(
        env: dict[str, str], standin: VastStandIn, identity: str, tmp_path: Path) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    inventory = _rent_inventory(tmp_path / "hosts.yaml", identity, nodes="zero")

    bad = _cli(env, "run", RUNBOOK, "--inventory", str(inventory), "-t", "pair")
    clash = _cli(env, "run", RUNBOOK, "--inventory", str(_rent_inventory(tmp_path / "ok.yaml", identity)), "-t", "pair",
                 "--provision", "lambda")

    assert bad.returncode == 2 and f"{inventory}:5: rent.pair.nodes" in bad.stderr, bad.stderr
    assert clash.returncode == 2 and "is rented from vast" in clash.stderr, clash.stderr
    assert _creates(standin) == 0 and standin.live() == []


def _node_names(home: Path, run_id: str) -> list[str]:
    journal = Journal(home / "journal.db")
    try:
        return [n.name for n in journal.nodes(run_id)]
    finally:
        journal.close()


def _rentals(home: Path, run_id: str):
    journal = Journal(home / "journal.db")
    try:
        return journal.rentals(run_id)
    finally:
        journal.close()


def _wait_for_step(home: Path, step_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
    """The id of the journal's run once its step is in one of `states`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (home / "journal.db").exists():
            journal = Journal(home / "journal.db")
            try:
                run_id = journal.latest_run_id()
                row = journal.step(run_id, step_id) if run_id else None
                if row is not None and row.state in states:
                    return run_id
            finally:
                journal.close()
        time.sleep(0.2)
    raise AssertionError(f"step {step_id} never reached {states}")
