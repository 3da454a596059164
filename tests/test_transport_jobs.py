"""The transport methods jobs are made of: tmux (a kept-open control-mode client), put_files, and the probe.

Each runs on LocalTransport and on SSHTransport (through the remote runner); the probe's Python
version is held to the report of the bash version that serves boxes without python3.
"""
from __future__ import annotations

import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libtmux
import pytest

from agent_ops.run.jobs import RunLayout, prepare_run, probe_request
from agent_ops.transport.base import ProbeRequest, Transport
from agent_ops.transport.local import LocalTransport
from agent_ops.transport.tmux import Tmux
from tests.runs import kill_tmux_server, make_box, run_api
from tests.sshd import SSHServer


@pytest.fixture(params=[True, False], ids=["own-server", "shared-server"])
def layout(request: pytest.FixtureRequest, transport: Transport, scratch: Path) -> Iterator[RunLayout]:
    """A prepared run (directories, wake-up FIFO, probe.sh, tmux session) on a tmux server of the test's own, used
    as a run's own server (commands through a control-mode client) and as a shared one (tmux processes)."""
    tmux = Tmux(f"ao-test-{uuid.uuid4().hex[:10]}", private=request.param)
    run = RunLayout(run_id="t1", run_dir=str(scratch / "run"), tmux=tmux)
    prepare_run(transport, run)
    yield run
    kill_tmux_server(libtmux.Server(socket_name=run.tmux.socket))


def _control_clients(socket: str) -> int:
    clients = libtmux.Server(socket_name=socket).cmd("list-clients", "-F", "#{client_control_mode}")
    return clients.stdout.count("1")


# --- tmux ----------------------------------------------------------------------------------------


def test_tmux_arguments_reach_tmux_as_they_are(transport: Transport, layout: RunLayout) -> None:
    # Control mode parses a command line: quoting must keep $, ~, ;, quotes and spaces from its parser.
    text = "it's $HOME ~ ; \"x\" {y}"
    result = transport.tmux(layout.tmux.socket, ["display-message", "-p", "-t", layout.session, text],
                            private=layout.tmux.private, timeout=10)
    assert (result.rc, result.stdout.decode()) == (0, text + "\n")
    again = transport.tmux(layout.tmux.socket, ["display-message", "-p", "-t", layout.session, "#{session_name}"],
                           private=layout.tmux.private)
    assert again.stdout.decode() == layout.session + "\n"


def test_tmux_error_is_rc_and_stderr(transport: Transport, layout: RunLayout) -> None:
    result = transport.tmux(layout.tmux.socket, ["kill-window", "-t", f"{layout.session}:no-such-window"],
                            private=layout.tmux.private, timeout=10)
    assert result.rc != 0 and result.stderr.strip()


def test_tmux_opens_windows_that_run_argv(transport: Transport, layout: RunLayout, scratch: Path) -> None:
    out = scratch / "out file"
    result = transport.tmux(layout.tmux.socket, ["new-window", "-d", "-t", f"{layout.session}:", "-n", "w 1",
                                                 "bash", "-c", 'printf "%s" "$0" > "$1"', "a $b", str(out)],
                            private=layout.tmux.private, timeout=10)
    assert result.ok, result.stderr
    deadline = time.monotonic() + 10
    # The shell creates the file (`> "$1"`) before printf writes to it: wait for the content, not the name.
    while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert out.read_text() == "a $b"


def test_tmux_works_again_after_its_server_was_killed(transport: Transport, layout: RunLayout) -> None:
    socket, private = layout.tmux.socket, layout.tmux.private
    assert transport.tmux(socket, ["display-message", "-p", "x"], private=private).ok
    libtmux.Server(socket_name=socket).kill()
    assert not transport.tmux(socket, ["has-session", "-t", layout.session], private=private, timeout=10).ok
    prepare_run(transport, layout)  # a new server and session: commands reach it
    assert transport.tmux(socket, ["has-session", "-t", layout.session], private=private, timeout=10).ok


def test_a_control_client_is_kept_only_on_a_server_of_a_runs_own_that_it_started(transport: Transport,
                                                                                  layout: RunLayout) -> None:
    # tmux 3.3a crashes when sessions come and go while a control client opens or closes (remote_runner.TmuxControl):
    # one is kept only where no other controller goes, and started with the server, before anything happens there.
    assert transport.tmux(layout.tmux.socket, ["display-message", "-p", "x"], private=layout.tmux.private).ok
    assert _control_clients(layout.tmux.socket) == (1 if layout.tmux.private else 0)
    if not layout.tmux.private:
        return
    # A fresh transport (a resumed run, a reconnect) finds the server running: plain commands, no second client.
    again = LocalTransport()
    try:
        assert again.tmux(layout.tmux.socket, ["display-message", "-p", "x"], private=True).ok
        assert _control_clients(layout.tmux.socket) == 1
    finally:
        again.close()


# --- put_files -----------------------------------------------------------------------------------


def test_put_files_makes_parents_and_modes(transport: Transport, scratch: Path) -> None:
    files = {str(scratch / "a" / "b" / "script.sh"): (b"echo hi\n", 0o700),
             str(scratch / "a" / "b" / "env"): (b"TOKEN=x\n", 0o600),
             str(scratch / "a" / "big"): (bytes(range(256)) * 8192, 0o644)}
    transport.put_files(files)
    for path, (data, mode) in files.items():
        assert Path(path).read_bytes() == data
        assert stat.S_IMODE(Path(path).stat().st_mode) == mode
    transport.put_files({str(scratch / "a" / "b" / "env"): (b"TOKEN=y\n", 0o600)})  # replaced whole
    assert (scratch / "a" / "b" / "env").read_bytes() == b"TOKEN=y\n"
    assert not [p for p in (scratch / "a" / "b").iterdir() if "agentops-tmp" in p.name]


# --- the probe -----------------------------------------------------------------------------------


def _job(layout: RunLayout, name: str, log: bytes | None, **files: bytes) -> None:
    d = Path(layout.job_dir(name))
    d.mkdir(parents=True)
    if log is not None:
        (d / "log").write_bytes(log)
    for leaf, data in files.items():
        (d / leaf.replace("_", ".")).write_bytes(data)


def _request(layout: RunLayout, wait_s: float, *items: str) -> ProbeRequest:
    """The request jobs.probe would send for these `run:`, `job:` and `file:` items."""
    jobs = [i.partition(":")[2] for i in items if not i.startswith("file:")]
    ended = [i[4:] for i in items if i.startswith("job:")]
    return probe_request(layout, wait_s, jobs, [i[5:] for i in items if i.startswith("file:")], ended)


def _lines(report: str) -> set[str]:
    return set(report.splitlines())


def test_native_probe_reports_what_the_bash_probe_reports(transport: Transport, layout: RunLayout, scratch: Path) -> None:
    _job(layout, "ran-1", b"hello\n", rc_tmp=b"0\n")  # woke the probe; the rename to rc has not happened yet
    _job(layout, "done-1", b"", rc=b"3\n")  # ended, and its log is empty
    _job(layout, "torn-1", b"x", rc_tmp=b"")  # rc.tmp created, its line not yet written: still running
    _job(layout, "live-1", b"abc")
    session = libtmux.Server(socket_name=layout.tmux.socket).sessions.get(session_name=layout.session)
    session.new_window("live-1", window_shell="sleep 60", attach=False)
    (scratch / "followed.txt").write_bytes(b"12345")
    request = _request(layout, 5.0, "run:ran-1", "job:done-1", "run:torn-1", "run:live-1",
                       f"file:{scratch / 'followed.txt'}", f"file:{scratch / 'missing.txt'}")
    started = time.monotonic()
    native = _lines(transport.probe(request))
    assert time.monotonic() - started < 4, "a job had ended: the probe must not wait"
    bash = _lines(transport.exec(request.script, timeout=30).text())
    jobs = layout.jobs_dir
    expected = {"R ran-1 0", "R done-1 3", f"S 0 {jobs}/done-1/log", "R torn-1 -", "R live-1 -", "W live-1",
                f"S 1 {jobs}/torn-1/log", f"S 3 {jobs}/live-1/log", f"S 5 {scratch / 'followed.txt'}"}
    assert expected <= native and expected <= bash
    assert native == bash


@pytest.mark.parametrize("kind", ["native", "bash"])
def test_probe_waits_until_woken_and_no_longer_than_asked(transport: Transport, layout: RunLayout, kind: str) -> None:
    _job(layout, "live-1", b"")
    run = transport.probe if kind == "native" else (lambda r: transport.exec(r.script, timeout=60).text())
    started = time.monotonic()
    assert "R live-1 -" in run(_request(layout, 0.3, "run:live-1"))
    assert 0.25 < time.monotonic() - started < 5
    # A job ending writes its rc, then wakes the FIFO, as the wrapper does.
    def finish() -> None:
        time.sleep(0.3)
        Path(layout.job_dir("live-1"), "rc.tmp").write_bytes(b"0\n")
        transport.exec(f"{layout.wake_command()}; true", timeout=10)

    waker = threading.Thread(target=finish)
    started = time.monotonic()
    waker.start()
    report = run(_request(layout, 20.0, "run:live-1"))
    waker.join()
    assert "R live-1 0" in report and time.monotonic() - started < 10


# --- a box without python3: the bash probe and a tmux process per command, end to end ---------------


@pytest.mark.ssh
def test_run_succeeds_on_a_box_without_python3(sshd: SSHServer, tmp_path: Path) -> None:
    box = make_box("ssh", tmp_path, sshd)
    try:
        run = run_api(box, "hello.yaml", spec=box.spec.model_copy(update={"python": "/nonexistent/python3"}))
        assert run.final == "succeeded"
        assert (box.scratch / "counter").read_text() == "hello\n"
    finally:
        box.kill_tmux()
