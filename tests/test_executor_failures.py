"""A run whose target cannot host it ends failed, with the target's own words in the journal (never stuck "running")."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.runs import CLI, RUNBOOKS, Box, events, run_api


def _assert_failed_before_any_step(box: Box, run_id: str, final: str, says: str) -> None:
    journal = box.journal()
    row = journal.run(run_id)
    assert final == "failed" and row.state == "failed" and row.ended is not None
    assert says in row.message, row.message
    assert "cannot join thread" not in row.message
    [error] = events(journal, run_id, "run_error")
    assert says in error.message
    [step] = journal.steps(run_id)
    assert step.state == "cancelled" and step.message.startswith("not run:"), step


def test_workdir_that_cannot_be_created_fails_the_run(box: Box) -> None:
    blocker = box.scratch / "a-file"
    blocker.write_text("not a directory\n")
    spec = box.spec.model_copy(update={"workdir": str(blocker / "workdir")})
    run = run_api(box, "hello.yaml", spec=spec)
    _assert_failed_before_any_step(box, run.run_id, run.final, "a-file")
    assert not (box.scratch / "counter").exists()


def test_tmux_that_cannot_start_fails_the_run(box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if box.kind != "local":
        pytest.skip("the tmux server's socket directory is set through this process's environment")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with monkeypatch.context() as env:
        env.setenv("TMUX_TMPDIR", str(blocker))  # tmux cannot create its socket directory under a file
        run = run_api(box, "hello.yaml")
    _assert_failed_before_any_step(box, run.run_id, run.final, "cannot create tmux session")
    assert not (box.scratch / "counter").exists()


def test_a_journal_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    for command in (["run", str(RUNBOOKS / "hello.yaml"), "--var", f"box={tmp_path}"], ["status"], ["list"]):
        proc = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "AGENTOPS_HOME": str(not_a_dir / "home")})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip() == f"journal {not_a_dir}/home/journal.db cannot be opened: Not a directory"
    assert not (tmp_path / "counter").exists()
