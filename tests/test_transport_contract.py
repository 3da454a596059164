"""The Transport contract, run on LocalTransport and on SSHTransport against a real loopback sshd.

The SSH server is this machine, so a test may look at files and processes directly as well as
through the transport.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_ops.errors import TransportError
from agent_ops.transport.base import EXEC_TIMEOUT_RC, Transport
from agent_ops.transport.local import LocalTransport
from agent_ops.transport.ssh import SSHTransport
from agent_ops.transport.target import TargetSpec, TargetSpecError, connect, load_inventory, parse_target
from tests.sshd import SSHServer

# --- exec --------------------------------------------------------------------------------------


def test_is_a_transport(transport: Transport) -> None:
    assert isinstance(transport, Transport)
    assert transport.name == "local" or transport.name.startswith("ssh://")


def test_exec_reports_rc_and_both_streams(transport: Transport) -> None:
    result = transport.exec("echo out; echo err >&2; exit 3")
    assert (result.rc, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.ok


def test_exec_passes_stdin_bytes_unchanged(transport: Transport) -> None:
    data = bytes(range(256)) * 1000
    result = transport.exec("cat", stdin=data)
    assert result.ok and result.stdout == data


def test_exec_without_stdin_reads_eof(transport: Transport) -> None:
    result = transport.exec("cat; echo done", timeout=10)
    assert result.stdout == b"done\n"


def test_exec_returns_large_output(transport: Transport) -> None:
    result = transport.exec("head -c 3000000 /dev/zero | tr '\\0' x; head -c 200000 /dev/zero >&2")
    assert result.ok
    assert result.stdout == b"x" * 3_000_000 and len(result.stderr) == 200_000


def test_exec_timeout_kills_the_process_group(transport: Transport) -> None:
    started = time.monotonic()
    result = transport.exec("sleep 60 & echo $!; wait", timeout=0.5)
    assert result.rc == EXEC_TIMEOUT_RC
    assert time.monotonic() - started < 10
    child = int(result.stdout.split()[0])
    assert _gone(child), f"sleep {child} survived the timeout"


def test_exec_uses_bash_without_startup_files(transport: Transport) -> None:
    result = transport.exec('echo "$BASH_VERSION|$-"; shopt -q login_shell && echo login || echo nologin')
    version, flags = result.text().splitlines()[0].split("|")
    assert version and "i" not in flags
    assert result.text().splitlines()[1] == "nologin"


def test_concurrent_execs_from_eight_threads(transport: Transport) -> None:
    results: dict[int, bytes] = {}

    def run(i: int) -> None:
        results[i] = transport.exec(f"sleep 0.5; echo {i}", timeout=30).stdout

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: f"{i}\n".encode() for i in range(8)}
    assert time.monotonic() - started < 3.0, "execs ran one after another"


# --- files -------------------------------------------------------------------------------------


def test_put_creates_parents_and_mode(transport: Transport, scratch: Path) -> None:
    target = scratch / "a" / "b" / "secret.env"
    transport.put(str(target), b"TOKEN=x\n", mode=0o600)
    assert target.read_bytes() == b"TOKEN=x\n"
    assert target.stat().st_mode & 0o7777 == 0o600
    transport.put(str(scratch / "run.sh"), b"#!/bin/sh\n", mode=0o755)
    assert (scratch / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_put_replaces_atomically(transport: Transport, scratch: Path) -> None:
    target = scratch / "state.json"
    target.write_bytes(b"old contents")
    with open(target, "rb") as reader:  # opened before the put: must keep seeing the old file whole
        transport.put(str(target), b"new", mode=0o644)
        assert reader.read() == b"old contents"
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in scratch.iterdir()) == ["state.json"], "a temp file was left behind"


def test_put_empty_and_large(transport: Transport, scratch: Path) -> None:
    transport.put(str(scratch / "empty"), b"")
    assert (scratch / "empty").read_bytes() == b""
    blob = os.urandom(3 * 1024 * 1024 + 7)
    transport.put(str(scratch / "blob"), blob)
    assert transport.get(str(scratch / "blob")) == blob


def test_get_missing_raises_file_not_found(transport: Transport, scratch: Path) -> None:
    with pytest.raises(FileNotFoundError):
        transport.get(str(scratch / "nope"))


def test_read_from_offsets(transport: Transport, scratch: Path) -> None:
    data = os.urandom(200_000)
    (scratch / "log").write_bytes(data)
    path = str(scratch / "log")
    assert transport.read_from(path, 0, 10) == data[:10]
    assert transport.read_from(path, 1000, 150_000) == data[1000:151_000]  # several SFTP requests
    assert transport.read_from(path, 199_990) == data[199_990:]
    assert transport.read_from(path, 200_000) == b""
    assert transport.read_from(path, 10**9) == b""


def test_read_from_follows_a_growing_file(transport: Transport, scratch: Path) -> None:
    log = scratch / "grow.log"
    log.write_bytes(b"first\n")
    offset = len(transport.read_from(str(log), 0))
    with open(log, "ab") as fh:
        fh.write(b"second\n")
    assert transport.read_from(str(log), offset) == b"second\n"


def test_read_from_missing_raises_file_not_found(transport: Transport, scratch: Path) -> None:
    with pytest.raises(FileNotFoundError):
        transport.read_from(str(scratch / "nope"), 0)


def test_stat(transport: Transport, scratch: Path) -> None:
    (scratch / "f").write_bytes(b"12345")
    os.chmod(scratch / "f", 0o640)
    found = transport.stat(str(scratch / "f"))
    assert found is not None and (found.size, found.is_dir, found.mode) == (5, False, 0o640)
    assert abs(found.mtime - (scratch / "f").stat().st_mtime) < 2
    folder = transport.stat(str(scratch))
    assert folder is not None and folder.is_dir
    assert transport.stat(str(scratch / "nope")) is None


def test_home_and_tilde_expansion(transport: Transport) -> None:
    # home() is the $HOME a command on the target sees (the test sshd gives sessions a HOME of its own).
    home = transport.exec('printf %s "$HOME"').text()
    assert transport.home() == home and os.path.isabs(home)
    name = f".agentops-test-{uuid.uuid4().hex[:8]}"
    try:
        transport.put(f"~/{name}/x", b"hi", mode=0o600)
        assert Path(home, name, "x").read_bytes() == b"hi"
        assert transport.get(f"~/{name}/x") == b"hi"
        assert transport.read_from(f"~/{name}/x", 1) == b"i"
        found = transport.stat(f"~/{name}")
        assert found is not None and found.is_dir
    finally:
        transport.exec(f"rm -rf ~/{name}")


def test_put_under_a_file_is_a_transport_error(transport: Transport, scratch: Path) -> None:
    (scratch / "plain").write_bytes(b"")
    with pytest.raises(TransportError):
        transport.put(str(scratch / "plain" / "child"), b"x")
    with pytest.raises(TransportError):
        transport.get(str(scratch))  # a directory


def test_close_twice(transport: Transport) -> None:
    transport.close()
    transport.close()


# --- what only the SSH transport has: the remote runner and its fallback -------------------------


@pytest.fixture
def noisy_sshd(make_sshd, tmp_path: Path) -> SSHServer:
    """An sshd whose sessions get a HOME with a .bashrc that prints noise and counts its runs."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(
        'echo "noise from bashrc"; echo "noise on stderr" >&2\n'
        "export AGENTOPS_BASHRC_RUNS=$((AGENTOPS_BASHRC_RUNS + 1))\n"
    )
    return make_sshd(home=home)


@pytest.fixture(params=["runner", "channel-per-exec"])
def noisy_ssh(request: pytest.FixtureRequest, noisy_sshd: SSHServer) -> Iterator[SSHTransport]:
    """A transport to the noisy sshd, through the runner or with python3 hidden (the fallback)."""
    python = "python3" if request.param == "runner" else "/nonexistent/python3"
    transport = SSHTransport(noisy_sshd.config(python=python))
    yield transport
    transport.close()


@pytest.mark.ssh
def test_bashrc_noise_and_bashrc_per_exec(noisy_ssh: SSHTransport) -> None:
    # The login shell reads bashrc (once per connection with the runner, once per call without);
    # the bash that runs the script never does, so its output is exactly the script's.
    result = noisy_ssh.exec("echo ${AGENTOPS_BASHRC_RUNS:-0}")
    assert (result.rc, result.stdout, result.stderr) == (0, b"1\n", b"")
    assert noisy_ssh.exec("cat", stdin=b"in").stdout == b"in"
    assert noisy_ssh.exec("exit 7").rc == 7


def test_local_bash_skips_bashrc_even_under_ssh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A controller running inside an SSH session: Debian's bash then sources ~/.bashrc for any
    # `bash -c` at shell level < 2, unless told --norc.
    (tmp_path / ".bashrc").write_text('echo "noise from bashrc"\n')
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SSH_CLIENT", "127.0.0.1 40000 22")
    monkeypatch.setenv("SHLVL", "0")
    monkeypatch.delenv("BASH_ENV", raising=False)
    plain = subprocess.run(["bash", "-c", "echo hi"], capture_output=True, check=True)
    if b"noise" not in plain.stdout:
        pytest.skip("this bash does not source bashrc under ssh (built without SSH_SOURCE_BASHRC)")
    assert LocalTransport().exec("echo hi").stdout == b"hi\n"


@pytest.mark.ssh
@pytest.mark.parametrize(("python", "parent"), [("python3", "python"), ("/nonexistent/python3", "not python")])
def test_exec_path_depends_on_python3(noisy_sshd: SSHServer, python: str, parent: str) -> None:
    transport = SSHTransport(noisy_sshd.config(python=python))
    try:
        comm = transport.exec("cat /proc/$PPID/comm").text().strip()
        assert comm.startswith("python") == (parent == "python"), comm
    finally:
        transport.close()


@pytest.mark.ssh
def test_fallback_honours_the_contract(noisy_sshd: SSHServer) -> None:
    transport = SSHTransport(noisy_sshd.config(python="/nonexistent/python3"))
    try:
        result = transport.exec("echo out; echo err >&2; exit 5")
        assert (result.rc, result.stdout, result.stderr) == (5, b"out\n", b"err\n")
        timed_out = transport.exec("sleep 60 & echo $!; wait", timeout=0.5)
        assert timed_out.rc == EXEC_TIMEOUT_RC
        assert _gone(int(timed_out.stdout.split()[0]))
        outputs = _parallel(transport, 8)
        assert outputs == [f"{i}\n".encode() for i in range(8)]
    finally:
        transport.close()


@pytest.mark.ssh
def test_runner_exits_with_its_connection(sshd: SSHServer) -> None:
    transport = SSHTransport(sshd.config())
    runner_pid = int(transport.exec("echo $PPID").stdout)  # the script's parent is the runner
    transport.close()
    assert _gone(runner_pid, wait=5.0), "the remote runner outlived its connection"


def _parallel(transport: Transport, n: int) -> list[bytes]:
    outputs: list[bytes] = [b""] * n

    def run(i: int) -> None:
        outputs[i] = transport.exec(f"sleep 0.3; echo {i}", timeout=30).stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outputs


def _gone(pid: int, wait: float = 2.0) -> bool:
    """Whether `pid` has ended (a zombie counts: it runs nothing), waiting up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# --- targets -----------------------------------------------------------------------------------


def test_parse_target_normalizes_ssh_urls() -> None:
    spec = parse_target("ssh://root@10.0.0.5", identity="~/.ssh/box")
    assert spec.url == "ssh://root@10.0.0.5:22" and not spec.is_local
    config = spec.ssh_config()
    assert (config.user, config.host, config.port, config.identity) == ("root", "10.0.0.5", 22, "~/.ssh/box")
    assert config.known_hosts == "~/.ssh/known_hosts"
    assert parse_target("local").is_local


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("ssh://root:hunter2@box", {}, "passwords are not supported"),
        ("http://box", {}, "expected 'local' or ssh://"),
        ("ssh://root@box:99999", {}, "invalid port"),
        ("ssh://root@box/tmp", {}, "no path"),
        ("local", {"identity": "k"}, "only apply to ssh://"),
        ("ssh://box", {"password": "x"}, "passwords are not supported"),
        ("ssh://box", {"workdir": "relative/dir"}, "workdir must be absolute"),
        ("ssh://box", {"tmux_socket": "a b"}, "tmux socket name"),
    ],
)
def test_parse_target_rejects(url: str, options: dict, says: str) -> None:
    with pytest.raises(TargetSpecError) as caught:
        parse_target(url, **options)
    assert says in str(caught.value)
    assert caught.value.code == "invalid_target"


def test_load_inventory(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n"
        "  gpu1:\n"
        "    url: ssh://root@1.2.3.4:2222\n"
        "    identity: keys/box\n"
        "    tmux_socket: agentops\n"
        "  here:\n"
        "    url: local\n"
    )
    hosts = load_inventory(inventory)
    assert set(hosts) == {"gpu1", "here"}
    assert hosts["gpu1"].identity == str(tmp_path / "keys" / "box")
    assert hosts["gpu1"].tmux_socket == "agentops"
    assert hosts["here"] == TargetSpec(url="local")


def test_load_inventory_errors_name_file_line_and_host(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n  gpu1:\n    url: ssh://root@box\n    pasword: x\n  gpu2:\n    identity: k\n")
    with pytest.raises(TargetSpecError) as caught:
        load_inventory(inventory)
    problems = caught.value.problems
    assert f"{inventory}:4: hosts.gpu1.pasword: unknown field 'pasword'" in problems[0]
    assert problems[1].startswith(f"{inventory}:5: hosts.gpu2.url:")
    with pytest.raises(TargetSpecError, match="no such inventory file"):
        load_inventory(tmp_path / "missing.yaml")


def test_an_inventory_names_fleets_to_rent_beside_its_hosts(tmp_path: Path) -> None:
    from agent_ops.fleet.nodes import resolve_fleet
    from agent_ops.transport.target import read_inventory

    good = tmp_path / "rent.yaml"
    good.write_text("rent:\n  pair:\n    nodes: 2\n    offer: {gpu_name: H100_SXM}\n    identity: keys/vast\n")
    inventory = read_inventory(good)  # hosts may be left out where rent names the fleets
    entry = inventory.rent["pair"]
    assert (entry.provider, entry.request["nodes"], entry.request["identity"]) == ("vast", 2, str(tmp_path / "keys" / "vast"))
    with pytest.raises(TargetSpecError, match="'pair' is a fleet to rent"):
        resolve_fleet("pair", inventory)  # a path that takes existing boxes says where a rented fleet is run

    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts:\n  gpu1: {url: local}\nrent:\n  gpu1: {nodes: 1}\n  x y: {nodes: 1}\n  p: [1]\n"
                   "groups:\n  gpu1: [gpu1]\n  pool: [nope]\n")
    with pytest.raises(TargetSpecError) as caught:
        read_inventory(bad)
    assert caught.value.problems == [  # groups' problems, then rent's: both sections' names checked alike
        f"{bad}:8: groups.gpu1: 'gpu1' is also a host; -t gpu1 would be ambiguous",
        f"{bad}:9: groups.pool: unknown host 'nope'",
        f"{bad}:4: rent.gpu1: 'gpu1' is also a host or group; -t gpu1 would be ambiguous",
        f"{bad}:5: rent.x y: a name may only contain letters, digits, '.', '_' and '-'",
        f"{bad}:6: rent.p: expected a fleet request (provider, nodes, offer, identity, ...)"]


def test_connect_local() -> None:
    transport = connect(parse_target("local"))
    assert isinstance(transport, LocalTransport)


@pytest.mark.ssh
def test_connect_ssh(sshd: SSHServer) -> None:
    spec = parse_target(
        f"ssh://{sshd.user}@{sshd.host}:{sshd.port}", identity=str(sshd.identity), known_hosts=str(sshd.known_hosts)
    )
    transport = connect(spec)
    try:
        assert isinstance(transport, SSHTransport)
        assert transport.name == spec.url
        assert transport.exec("echo hi").stdout == b"hi\n"
    finally:
        transport.close()
