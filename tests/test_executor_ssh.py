"""Runs over SSH that only SSH has: an sshd killed mid-job, and host keys (unknown refused unless accepted)."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_ops.errors import HostKeyError
from tests.runs import RUNBOOKS, ApiRun, Box, agentops, attempts, lines, make_box, run_api, step, wait_for
from tests.sshd import SSHServer

pytestmark = pytest.mark.ssh

OUTAGE_S = 2.0


def _logins(server: SSHServer) -> int:
    return server.log_text().count("Accepted publickey")


@pytest.fixture
def ssh_box(sshd: SSHServer, tmp_path: Path) -> Iterator[Box]:
    box = make_box("ssh", tmp_path, sshd)
    yield box
    box.kill_tmux()


def test_run_finishes_across_an_sshd_restart(make_sshd: Callable[..., SSHServer], tmp_path: Path) -> None:
    server = make_sshd()
    box = make_box("ssh", tmp_path, server)
    result: dict[str, ApiRun | BaseException] = {}

    def drive() -> None:
        try:
            result["run"] = run_api(box, "outage.yaml")
        except BaseException as exc:  # reported in the test's thread below
            result["error"] = exc

    controller = threading.Thread(target=drive)
    controller.start()
    try:
        journal = box.journal()
        counter = box.scratch / "counter"
        run_id = wait_for("the run to start", lambda: [r.id for r in journal.runs()])[0]
        # The attempt's row is written just after the job starts in tmux (the job can print first): wait for both.
        wait_for("the job `during` to run", lambda: step(journal, run_id, "during").state == "running"
                 and "during" in lines(counter) and attempts(journal, run_id, "during"))
        [job] = attempts(journal, run_id, "during")
        assert not Path(job.job_dir, "rc").exists(), "the job ended before the outage began"
        logins = _logins(server)
        server.stop()  # every connection drops; the job runs on in tmux
        assert server.stragglers == []
        time.sleep(OUTAGE_S)  # the outage being simulated
        server.start()
        (box.scratch / "release").touch()  # the job outlived the outage; now it may end
        controller.join(timeout=120)
        assert not controller.is_alive(), "the run did not finish after sshd came back"
    finally:
        controller.join(timeout=120)
        box.kill_tmux()
    assert "error" not in result, result.get("error")
    run = result["run"]
    assert run.final == "succeeded"
    assert _logins(server) > logins, "the controller never reconnected"
    # Nothing ran twice: the job started once, was followed to its end across the outage, and the run went on.
    assert lines(counter) == ["before", "during", "after"]
    [during] = attempts(run.journal, run.run_id, "during")
    assert during.rc == 0 and during.attempt == 1


def test_unknown_host_key_is_refused_through_the_api(sshd: SSHServer, ssh_box: Box, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    logins = _logins(sshd)
    untrusted = ssh_box.spec.model_copy(update={"known_hosts": str(known_hosts)})
    with pytest.raises(HostKeyError) as caught:
        run_api(ssh_box, "hello.yaml", spec=untrusted)
    assert "--accept-new-host-key" in str(caught.value)
    _assert_nothing_ran(sshd, ssh_box, logins)
    assert known_hosts.read_text() == ""

    accepted = run_api(ssh_box, "hello.yaml", spec=untrusted.model_copy(update={"accept_new_host_key": True}))
    assert accepted.final == "succeeded"
    assert known_hosts.read_text() == f"{sshd.known_hosts_name} {sshd.host_public_key()}\n"
    assert lines(ssh_box.scratch / "counter") == ["hello"]


def test_unknown_host_key_is_refused_by_the_cli(sshd: SSHServer, ssh_box: Box, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    logins = _logins(sshd)
    args = ["run", str(RUNBOOKS / "hello.yaml"), "--target", ssh_box.spec.url, "--identity", str(sshd.identity),
            "--known-hosts", str(known_hosts), "--tmux-socket", ssh_box.socket, "--workdir", ssh_box.spec.workdir,
            "--var", f"box={ssh_box.scratch}"]
    refused = agentops(ssh_box, *args)
    assert refused.returncode == 3, refused.stderr
    assert "--accept-new-host-key" in refused.stderr
    as_json = agentops(ssh_box, *args, "--json")
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["error"]["code"] == "host_key_rejected"
    _assert_nothing_ran(sshd, ssh_box, logins)

    accepted = agentops(ssh_box, *args, "--accept-new-host-key", "--json")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["state"] == "succeeded"
    assert known_hosts.read_text() == f"{sshd.known_hosts_name} {sshd.host_public_key()}\n"
    assert lines(ssh_box.scratch / "counter") == ["hello"]


def _assert_nothing_ran(sshd: SSHServer, box: Box, logins_before: int) -> None:
    assert _logins(sshd) == logins_before, "authenticated to a host whose key is not trusted"
    assert box.journal().runs() == []
    assert not Path(box.spec.workdir).exists()
    assert not box.server.is_alive()  # no tmux server was ever started on the socket
    assert not (box.scratch / "counter").exists()
