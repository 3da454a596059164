"""`agentops offers | rent | rentals | down` and the MCP provider tools, as real processes against the vast.ai stand-in."""
from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vastai")

from tests.mcp_client import in_session
from tests.sshd import sshd_available
from tests.standins.vast_api import VastStandIn

pytestmark = [pytest.mark.ssh, pytest.mark.skipif(not sshd_available(), reason="OpenSSH server not installed")]
CLI = [sys.executable, "-m", "agent_ops.front.cli"]


@pytest.fixture
def standin(standin: VastStandIn) -> VastStandIn:
    """conftest's stand-in with two offers to list and rent."""
    standin.add_offer(1, machine_id=11, dph_total=0.3)
    standin.add_offer(2, machine_id=12, dph_total=0.5)
    return standin


@pytest.fixture
def env(tmp_path: Path, standin: VastStandIn, api_key: str) -> dict[str, str]:
    """The controller's environment: the key and the stand-in's URL, the box user of this machine's sshd."""
    return {**os.environ, "AGENTOPS_HOME": str(tmp_path / "home"), "VAST_API_KEY": api_key, "VAST_URL": standin.url,
            "VAST_SSH_USER": getpass.getuser()}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def _no_key(api_key: str, *texts: str, roots: tuple[Path, ...] = ()) -> None:
    assert not [t for t in texts if api_key in t]
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket():
                assert api_key.encode() not in path.read_bytes(), path


def test_offers_as_json_and_as_a_table(env: dict[str, str], api_key: str) -> None:
    as_json = _cli(env, "offers", "--gpu-name", "RTX_4090", "--max-dph", "1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [o["id"] for o in json.loads(as_json.stdout)["offers"]] == ["1", "2"]

    table = _cli(env, "offers", "--gpu-name", "RTX_4090")
    assert table.returncode == 0 and "RTX 4090" in table.stdout and "$/h" in table.stdout
    _no_key(api_key, as_json.stdout, as_json.stderr, table.stdout, table.stderr)


def test_bad_flags_and_missing_credentials_exit_2_and_rent_nothing(env: dict[str, str], standin: VastStandIn,
                                                                   tmp_path: Path, identity: str) -> None:
    bad = _cli(env, "offers", "--gpus", "0")
    assert bad.returncode == 2 and bad.stderr.startswith("--gpus:")

    no_key = _cli({k: v for k, v in env.items() if k != "VAST_API_KEY"}, "offers", "--json")
    assert no_key.returncode == 2 and "VAST_API_KEY" in json.loads(no_key.stdout)["error"]["message"]

    request = tmp_path / "fleet.yaml"
    request.write_text(f"nodes: 1\nidentity: {identity}\noffer:\n  gpu_name: RTX_4090\n  dsik_gb: 20\n")
    typo = _cli(env, "rent", "--request", str(request))
    assert typo.returncode == 2 and f"{request}:5: offer.dsik_gb" in typo.stderr
    assert not [r for r in standin.requests() if r["method"] == "PUT"]  # nothing was created


def test_rent_rentals_down_by_hand(env: dict[str, str], standin: VastStandIn, identity: str, api_key: str,
                                   tmp_path: Path) -> None:
    rented = _cli(env, "rent", "--gpu-name", "RTX_4090", "--disk", "20", "--identity", identity, "--burn-in", "0",
                  "--deadline", "60", "--run-id", "by-hand", "--json")
    assert rented.returncode == 0, rented.stdout + rented.stderr
    [box] = json.loads(rented.stdout)["boxes"]
    assert box["offer"]["id"] == "1" and standin.live() == [int(box["instance_id"])]

    listed = json.loads(_cli(env, "rentals", "by-hand", "--json").stdout)
    assert listed["live"] == 1 and listed["dph_live"] == box["offer"]["dph"] and listed["rentals"][0]["host_key"]

    down = _cli(env, "down", "by-hand", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["teardown"]["done"] == [box["instance_id"]]
    assert standin.live() == []
    assert json.loads(_cli(env, "rentals", "by-hand", "--json").stdout)["live"] == 0
    _no_key(api_key, rented.stdout, rented.stderr, down.stdout, down.stderr, roots=(tmp_path / "home", standin.root))


def test_mcp_tiers_and_a_rental_through_the_tools(env: dict[str, str], standin: VastStandIn, identity: str,
                                                  api_key: str, tmp_path: Path) -> None:
    pytest.importorskip("mcp")

    def session(tier: str, work):
        return in_session(env, tmp_path, tier, work)

    async def readonly(client):
        names = {t.name for t in (await client.list_tools()).tools}
        found = await client.call_tool("offers", {"request": {"gpu_name": "RTX_4090", "max_dph": 0.4}})
        return names, found.structured_content

    names, found = asyncio.run(session("readonly", readonly))
    assert {"offers", "rentals"} <= names and not {"rent", "down"} & names
    assert [o["id"] for o in found["offers"]] == ["1"]

    async def destructive(client):
        request = {"nodes": 1, "identity": identity, "offer": {"gpu_name": "RTX_4090", "disk_gb": 20},
                   "qualify": {"burn_in_s": 0}, "provision_deadline_s": 60}
        started = (await client.call_tool("rent", {"request": request, "run_id": "via-mcp"})).structured_content
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            listed = (await client.call_tool("rentals", {"run_id": "via-mcp"})).structured_content
            if any(r["state"] == "ready" for r in listed["rentals"]):
                break
            await asyncio.sleep(0.5)
        down = (await client.call_tool("down", {"run_id": "via-mcp"})).structured_content
        return started, listed, down

    started, listed, down = asyncio.run(session("destructive", destructive))
    assert started["run_id"] == "via-mcp"
    assert [r["state"] for r in listed["rentals"]] == ["ready"], Path(started["controller_log"]).read_text()
    assert down["teardown"]["done"] == [listed["rentals"][0]["instance_id"]] and standin.live() == []
    _no_key(api_key, json.dumps(started), json.dumps(listed), roots=(tmp_path / "home", standin.root))
