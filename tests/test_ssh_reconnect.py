"""Reconnects against a real sshd that is killed (connections really drop) and started again on the same port."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_ops.errors import TransportError
from agent_ops.transport.ssh import SSHTransport
from tests.sshd import SSHServer

pytestmark = pytest.mark.ssh

OUTAGE_S = 2.0


@pytest.fixture
def server(make_sshd: Callable[..., SSHServer]) -> SSHServer:
    """A private sshd this module may stop and start."""
    return make_sshd()


@pytest.fixture
def transport(server: SSHServer) -> Iterator[SSHTransport]:
    transport = SSHTransport(server.config(reconnect_timeout=30.0))
    yield transport
    transport.close()


def _restart_later(server: SSHServer, delay: float = OUTAGE_S) -> threading.Thread:
    def restart() -> None:
        time.sleep(delay)  # the outage being simulated
        server.start()

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


def test_stop_really_drops_the_connection(server: SSHServer, transport: SSHTransport) -> None:
    assert transport.exec("true").ok
    server.stop()
    assert server.stragglers == [], "the remote runner outlived its sshd"
    restart = _restart_later(server, delay=0.5)
    try:
        assert transport.exec("echo up").stdout == b"up\n"  # needed a new connection: the old one is gone
    finally:
        restart.join()


def test_exec_issued_during_an_outage_succeeds_after_reconnect(server: SSHServer, transport: SSHTransport) -> None:
    assert transport.exec("true").ok
    server.stop()
    restart = _restart_later(server)
    try:
        started = time.monotonic()
        result = transport.exec("echo back")
        assert result.stdout == b"back\n"
        assert time.monotonic() - started >= OUTAGE_S * 0.9
    finally:
        restart.join()


def test_exec_in_flight_when_the_connection_drops_is_retried(
    server: SSHServer, transport: SSHTransport, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    outcome: dict[str, object] = {}

    def long_exec() -> None:
        try:
            outcome["result"] = transport.exec(f"echo run >> {runs}; sleep 1; echo finished", timeout=30)
        except Exception as exc:  # reported below, in the test's own thread
            outcome["error"] = exc

    worker = threading.Thread(target=long_exec)
    worker.start()
    _wait_for(lambda: runs.exists())
    server.stop()
    restart = _restart_later(server)
    worker.join(timeout=60)
    restart.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].stdout == b"finished\n"  # type: ignore[attr-defined]
    assert runs.read_text() == "run\nrun\n"  # killed with its connection, then run once more


def test_many_threads_share_one_reconnect(server: SSHServer, transport: SSHTransport) -> None:
    assert transport.exec("true").ok
    logins = server.log_text().count("Accepted publickey")
    server.stop()
    restart = _restart_later(server)
    results: list[bytes] = []
    errors: list[Exception] = []

    def work(i: int) -> None:
        try:
            results.append(transport.exec(f"echo {i}").stdout)
            assert transport.stat("/") is not None
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    restart.join()
    assert errors == []
    assert sorted(results) == sorted(f"{i}\n".encode() for i in range(6))
    assert server.log_text().count("Accepted publickey") == logins + 1, "each thread reconnected on its own"


def test_files_survive_a_reconnect(server: SSHServer, transport: SSHTransport, tmp_path: Path) -> None:
    transport.put(str(tmp_path / "before"), b"1")
    server.stop()
    restart = _restart_later(server)
    try:
        transport.put(str(tmp_path / "after"), b"2")
        assert transport.get(str(tmp_path / "before")) == b"1"
        assert transport.read_from(str(tmp_path / "after"), 0) == b"2"
    finally:
        restart.join()


def test_reconnecting_gives_up_within_its_budget(server: SSHServer) -> None:
    transport = SSHTransport(server.config(reconnect_timeout=2.0, connect_timeout=1.0))
    try:
        server.stop()
        started = time.monotonic()
        with pytest.raises(TransportError, match="cannot connect"):
            transport.exec("true")
        assert time.monotonic() - started < 10
    finally:
        transport.close()


def test_close_ends_a_reconnect_in_progress(server: SSHServer) -> None:
    transport = SSHTransport(server.config(reconnect_timeout=60.0))
    server.stop()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            transport.exec("true")
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)  # let it start retrying
    started = time.monotonic()
    transport.close()
    worker.join(timeout=30)
    assert not worker.is_alive() and time.monotonic() - started < 10
    assert isinstance(outcome[0], TransportError)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
