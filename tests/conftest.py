"""Shared fixtures: a real loopback sshd, and transports to run one set of contract tests on both sides."""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_ops.transport.local import LocalTransport
from agent_ops.transport.ssh import SSHTransport
from tests.fleet import Fleet, make_fleet
from tests.runs import Box, make_box
from tests.sshd import SSHServer, sshd_available
from tests.standins.vast_api import VastStandIn

NO_SSHD = "OpenSSH server not installed (/usr/sbin/sshd missing; apt-get install openssh-server)"


def _require_sshd() -> None:
    if not sshd_available():
        pytest.skip(NO_SSHD)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """A private sshd shared by the session (sessions get a clean HOME, see SSHServer); tests that stop it use `make_sshd`."""
    _require_sshd()
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


FLEET_SIZE = 3  # the acceptance: a fleet of at least three boxes


@pytest.fixture(scope="session")
def fleet_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SSHServer]]:
    """Three private sshd servers (own ports and homes), shared by the session's fleet tests that leave them running."""
    _require_sshd()
    servers = []
    for i in range(FLEET_SIZE):
        servers.append(SSHServer(tmp_path_factory.mktemp(f"fleet-sshd{i}")))
        servers[-1].start()  # at once: the free port it picked is free only until someone else takes it
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def fleet(fleet_servers: list[SSHServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """The three loopback boxes as a fleet (n1 the head), each on a fresh tmux socket, with a private journal home."""
    made = make_fleet(tmp_path, fleet_servers)
    monkeypatch.setenv("AGENTOPS_HOME", str(made.home))
    yield made
    made.kill_tmux()


@pytest.fixture
def make_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SSHServer]]:
    """Factory for private sshd servers (extra sshd_config lines, a HOME and environment for sessions), stopped after the test."""
    _require_sshd()
    servers: list[SSHServer] = []

    def make(*extra_config: str, home: Path | None = None, env: dict[str, str] | None = None) -> SSHServer:
        server = SSHServer(tmp_path_factory.mktemp("sshd"), extra_config, home, env)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def local_transport() -> Iterator[LocalTransport]:
    """This machine through the Transport protocol."""
    transport = LocalTransport()
    yield transport
    transport.close()


@pytest.fixture
def ssh_transport(sshd: SSHServer) -> Iterator[SSHTransport]:
    """This machine over a real SSH connection to the session's sshd."""
    transport = SSHTransport(sshd.config())
    yield transport
    transport.close()


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def transport(request: pytest.FixtureRequest) -> LocalTransport | SSHTransport:
    """Each transport in turn, so the same contract tests run on both."""
    return request.getfixturevalue(f"{request.param}_transport")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory both transports can reach (the SSH server is this machine)."""
    return tmp_path


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def box(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    """A private target on each transport in turn: own tmux socket, workdir and journal; its tmux server is killed after."""
    sshd = request.getfixturevalue("sshd") if request.param == "ssh" else None
    target = make_box(request.param, tmp_path, sshd)
    monkeypatch.setenv("AGENTOPS_HOME", str(target.home))
    yield target
    target.kill_tmux()


@pytest.fixture
def identity(tmp_path: Path) -> str:
    """The user's SSH key pair a rental attaches (its public half) and connects with."""
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


@pytest.fixture
def api_key() -> str:
    """A fresh vast.ai API key per test: tests search every file, log and argv for it afterwards."""
    return f"vast-test-key-{uuid.uuid4().hex}"


@pytest.fixture
def standin(tmp_path: Path, api_key: str) -> Iterator[VastStandIn]:
    """The loopback stand-in of vast.ai's API; a test that leaves an instance running fails."""
    root = tmp_path / "vast"
    root.mkdir()
    server = VastStandIn(root, api_key)
    yield server
    left = server.close()
    assert left == [], f"instances left running at the stand-in: {left}"
