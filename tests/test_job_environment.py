"""Jobs get exactly the environment their runbook gives them: on a local target, nothing of the controller's."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.runs import make_box, run_api


def env_of(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_a_local_job_never_sees_the_controllers_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A secret the user exported for another runbook, in the controller's environment: this runbook declares none of it.
    canary = f"ao-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("AO_OTHER_RUNBOOKS_SECRET", canary)
    box = make_box("local", tmp_path)
    try:
        run = run_api(box, "job_env.yaml", secrets={"AO_DECLARED_SECRET": "declared-" + uuid.uuid4().hex})
        assert run.final == "succeeded"
        job, check = env_of(box.scratch / "job.env"), env_of(box.scratch / "check.env")
        server = "\n".join(box.server.cmd("show-environment", "-g").stdout)  # what every window of the server inherits
    finally:
        box.kill_tmux()
    assert canary not in server
    for env in (job, check):
        assert "AO_OTHER_RUNBOOKS_SECRET" not in env
        assert env["HOME"] and env["PATH"]  # enough to find programs and the user's home
    # What the runbook gives reaches the job.
    assert job["AO_RUNBOOK_ENV"] == "from-the-runbook" and job["AO_DECLARED_SECRET"].startswith("declared-")
