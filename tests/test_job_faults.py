"""Job faults (issue 11 items 1, 2): many controllers on one target, a full disk under the workdir. Each runs on
this machine and over the loopback sshd.

Every test here failed on the code before its fix; tests/bench/bench_job_faults.py runs the long versions
(10 controllers, 5 rounds) and prints their figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.runs import RUNBOOKS, Box, attempts, lines, make_box, run_api, spawn, step
from tests.sshd import SSHServer

CONTROLLERS = 10  # at once on one target, as in the issue
ROUNDS = 2  # before the fix a round failed about every other time; tests/bench/bench_job_faults.py runs five


@pytest.fixture
def tmux_dir() -> Iterator[Path]:
    """A private TMUX_TMPDIR, where every tmux server of the test lives (the runs' own ones, and the default one that
    the code before the fix used); whatever server is left there is killed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ao-tmux-"))  # short: a socket's path must fit in 108 bytes
    yield path
    for sock in path.glob("tmux-*/*"):
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


# --- item 1: controllers at once on one target --------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["one-named-socket", "server-per-run"])
@pytest.mark.parametrize("kind", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_controllers_at_once_on_one_target_all_succeed(kind: str, shared: bool, tmp_path: Path, tmux_dir: Path,
                                                       make_sshd: Callable[..., SSHServer]) -> None:
    # Before: every controller kept a tmux control-mode client on the one server (the user's default one unless
    # a socket was named), and tmux 3.3a crashes when sessions come and go while such a client opens or closes:
    # runs failed `job lost` / `no server running` in about every other round of ten.
    sshd = make_sshd("MaxStartups 100", env={"TMUX_TMPDIR": str(tmux_dir)}) if kind == "ssh" else None
    box = make_box(kind, tmp_path, sshd, **({} if shared else {"tmux_socket": None}))
    where = ["--target", "local"] if box.inventory is None else ["--inventory", str(box.inventory), "--target", "box"]
    socket = ["--tmux-socket", box.socket] if shared else []
    for round_ in range(ROUNDS):
        tags = [f"round{round_}-run{i}" for i in range(CONTROLLERS)]
        procs = [spawn(box, "run", str(RUNBOOKS / "concurrent.yaml"), *where, *socket, "--workdir", box.spec.workdir,
                       "--var", f"box={box.scratch}", "--var", f"tag={tag}", "--json", TMUX_TMPDIR=str(tmux_dir))
                 for tag in tags]
        results = [(*proc.communicate(timeout=300), proc.returncode) for proc in procs]
        failed = {tag: (rc, err[-600:]) for tag, (_, err, rc) in zip(tags, results) if rc != 0}
        assert not failed, failed
        for tag, (out, _, _) in zip(tags, results):
            assert json.loads(out)["state"] == "succeeded"
            assert sorted(lines(box.scratch / tag)) == ["first", "last", "left", "right"]
        # Nothing was left running: no run left a tmux server (nor its socket file) behind.
        assert [p.name for p in tmux_dir.glob("tmux-*/agentops-*")] == []


# --- item 2: a full disk under the workdir -------------------------------------------------------------


@pytest.fixture
def small_disk(box: Box) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted on the box's workdir (this machine is the box for both transports)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    workdir = Path(box.spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "agentops-test", str(workdir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield workdir
    box.kill_tmux()  # nothing of the run may keep the mount busy
    subprocess.run(["umount", "--lazy", str(workdir)], check=True)


def test_a_full_disk_under_the_workdir_fails_the_step_naming_the_cause(box: Box, small_disk: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the wrapper's rc write failed, `mv` left an empty rc, the probe read it as "running", and the step
    # stayed running with no message until its timeout (forever without one).
    monkeypatch.setenv("HOME", str(tmp_path))  # the catalog's disk-full fix clears caches under $HOME: not this machine's
    run = run_api(box, "disk_full.yaml")
    assert run.final == "failed"
    first = attempts(run.journal, run.run_id, "fill")[0]
    assert "job lost" in first["message"] and "No space left on device" in first["message"], first["message"]
    cap_s = 2  # disk_full.yaml's poll cap
    assert first["ended"] - first["started"] < cap_s + 3, "the job ended in milliseconds: one capped poll sees it gone"
    row = step(run.journal, run.run_id, "fill")
    assert row["state"] == "failed" and "No space left on device" in row["message"], row["message"]
