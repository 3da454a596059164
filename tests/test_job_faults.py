"""Job faults (issue 11 items 1, 2, 7, 10): many controllers on one target, a full disk under the workdir, a job's
output kept out of tmux, secrets kept off the box's disk. Each runs on this machine and over the loopback sshd.

Every test here failed on the code before its fix; tests/bench/bench_job_faults.py runs the long versions
(10 controllers, 5 rounds; 1 GiB of output) and prints their figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libtmux
import pytest

from agent_ops.run import mask_stream
from agent_ops.secret_values import hex_mask_list
from tests.runs import RUNBOOKS, Box, attempts, kill_tmux_server, lines, make_box, run_api, spawn, step
from tests.sshd import SSHServer

CONTROLLERS = 10  # at once on one target, as in the issue
ROUNDS = 2  # before the fix a round failed about every other time; tests/bench/bench_job_faults.py runs five
SECRET = f"ao-s3cr3t.v/x*y&z-{uuid.uuid4().hex}"


@pytest.fixture
def tmux_dir() -> Iterator[Path]:
    """A private TMUX_TMPDIR, where every tmux server of the test lives (the runs' own ones, and the default one that
    the code before the fix used); whatever server is left there is killed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ao-tmux-"))  # short: a socket's path must fit in 108 bytes
    yield path
    for sock in path.glob("tmux-*/*"):
        kill_tmux_server(libtmux.Server(socket_path=sock))
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
    assert "job lost" in first.message and "No space left on device" in first.message, first.message
    cap_s = 2  # disk_full.yaml's poll cap
    assert first.ended - first.started < cap_s + 3, "the job ended in milliseconds: one capped poll sees it gone"
    row = step(run.journal, run.run_id, "fill")
    assert row.state == "failed" and "No space left on device" in row.message, row.message


# --- item 7: output to the log file, not through the pane ------------------------------------------------


def test_a_jobs_output_goes_to_its_log_file_and_the_pane_follows_it(box: Box) -> None:
    # Before: output went `| tee log` and so through the pane; a job writing 1 GiB took 36 s instead of 0.95 s.
    run = run_api(box, "output.yaml", {"sock": box.socket})
    assert run.final == "succeeded", [(s.step_id, s.message) for s in run.journal.steps(run.run_id)]
    [where] = attempts(run.journal, run.run_id, "where")
    assert lines(box.scratch / "job-fds") == [f"{where.job_dir}/log"] * 2  # stdout and stderr: the file itself
    assert step(run.journal, run.run_id, "pane").state == "succeeded"  # the talker's line showed in its pane


def test_a_chatty_job_with_a_secret_is_masked_at_the_speed_of_its_writes(box: Box, tmp_path: Path) -> None:
    # Before: `sed -u` masked the output reading a byte at a time: this job's ~110 MiB took it about a minute here.
    count = 1_000_000
    run = run_api(box, "chatty_secret.yaml", {"lines": count}, secrets={"AO_TEST_SECRET": SECRET})
    assert run.final == "succeeded"
    [attempt] = attempts(run.journal, run.run_id, "chatty")
    log = Path(attempt.job_dir, "log").read_bytes()
    assert log.count(b"\n") == count and log.count(b"token=*** ") == count and SECRET.encode() not in log
    # The same lines written to a file here, by the same shell pipeline outside agentops:
    started = time.monotonic()
    subprocess.run(["bash", "-c", f'{{ yes "step=1/100 loss=0.5123 token=$S lr=1e-4" || true; }} | head -n {count} > out'],
                   cwd=tmp_path, env={**os.environ, "S": SECRET}, check=True)
    outside = time.monotonic() - started
    assert attempt.ended - attempt.started < max(10.0, 20 * outside), outside


def test_the_mask_filter_passes_output_on_at_once_and_masks_a_secret_split_between_reads(tmp_path: Path) -> None:
    (tmp_path / "mask.py").write_text(Path(mask_stream.__file__).read_text())
    (tmp_path / "mask.hex").write_bytes(hex_mask_list([SECRET]))
    proc = subprocess.Popen(["bash", "-c", "exec python3 mask.py 3< mask.hex"], cwd=tmp_path,  # as the wrapper runs it
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    proc.stdin.write(b"line one\nsecret: " + SECRET[:7].encode())
    proc.stdin.flush()
    # What cannot be the start of a secret comes out at once; the start of the secret waits for the rest.
    assert os.read(proc.stdout.fileno(), 4096) == b"line one\nsecret: "
    time.sleep(0.2)
    proc.stdin.write(SECRET[7:].encode() + b" end\n")
    proc.stdin.close()
    assert proc.stdout.read() == b"*** end\n"
    assert proc.wait(timeout=10) == 0


# --- item 10 (part): the files that hold secrets ---------------------------------------------------------


@pytest.mark.parametrize("masker", ["python3", "sed"])
def test_secret_files_are_gone_from_the_box_while_the_job_still_runs(box: Box, masker: str, tmp_path: Path) -> None:
    # Before: the mode-600 env file and sed mask stayed in the job's directory for good.
    path = "/usr/local/bin:/usr/bin:/bin"
    if masker == "sed":  # a box without python3: the wrapper masks with sed; its PATH holds only what it and the job use
        path = str(tmp_path / "bin")
        Path(path).mkdir()
        for tool in ("bash", "sed", "tail", "rm", "mv", "ls", "dirname", "cat"):
            Path(path, tool).symlink_to(shutil.which(tool) or tool)
    run = run_api(box, "secret_files.yaml", {"path": path}, secrets={"AO_TEST_SECRET": SECRET})
    assert run.final == "succeeded", [(s.step_id, s.message) for s in run.journal.steps(run.run_id)]
    # Listed by the job itself, halfway through: no env or mask file, yet the job has the secret and it is masked.
    seen = set(lines(box.scratch / "listing"))
    assert not seen & {"env", "mask.hex", "mask.sed"} and {"script.sh", "run.sh"} <= seen, seen
    assert (box.scratch / "secret.copy").read_text() == SECRET
    [attempt] = attempts(run.journal, run.run_id, "holder")
    assert Path(attempt.job_dir, "log").read_text() == "token is ***\n"
