"""Asking a training to checkpoint (a rented run's budget reached): the signal reaches the trainer, not its launcher.

Real torchrun, two worker processes on this machine: each saves when SIGUSR1 arrives and exits 0. torchrun's agent
handles TERM/INT/HUP/QUIT only, so had it been signalled too it would have died of SIGUSR1 (exit -10) and failed the
step while its workers were saving.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_ops.run.jobs import RunLayout, Tmux
from agent_ops.run.rented import _signal_script

WORKER = """
import os, signal, sys, time
from pathlib import Path
out, asked = Path(sys.argv[1]), []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
(out / f"ready-{os.environ['RANK']}").write_text("")
for _ in range(1200):
    if asked:
        (out / f"saved-{os.environ['RANK']}").write_text("")
        sys.exit(0)
    time.sleep(0.05)
sys.exit(3)
"""


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is installed with the train extra")
def test_checkpoint_signal_reaches_torchruns_workers_and_spares_the_launcher(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "train-1"
    job.mkdir(parents=True)
    (tmp_path / "worker.py").write_text(WORKER)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    # As a job runs: the wrapper's pid in the job directory, the script (its cmdline names the directory) under it.
    (job / "script.sh").write_text(f"{torchrun} --nproc_per_node=2 {tmp_path / 'worker.py'} {job}\n")
    wrapper = subprocess.Popen(["bash", "-c", f"bash {job / 'script.sh'}; echo $? > {job / 'rc'}"])
    (job / "pid").write_text(str(wrapper.pid))
    try:
        deadline = time.monotonic() + 60
        while len(list(job.glob("ready-*"))) < 2:
            assert time.monotonic() < deadline and wrapper.poll() is None, "the workers never started"
            time.sleep(0.1)
        layout = RunLayout("r", str(tmp_path), Tmux("unused"))
        subprocess.run(["bash", "-c", _signal_script(str(job), layout, "USR1")], check=True, timeout=30)
        wrapper.wait(timeout=60)
    finally:
        if wrapper.poll() is None:
            subprocess.run(["pkill", "-KILL", "-f", str(job)], check=False)
            wrapper.kill()
    assert sorted(p.name for p in job.glob("saved-*")) == ["saved-0", "saved-1"]
    assert (job / "rc").read_text().strip() == "0"  # torchrun saw its workers exit 0, and so did the job
