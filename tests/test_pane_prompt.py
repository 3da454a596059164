"""A job waiting at an interactive prompt is reported (status, --json, event) within the poll cap, on both transports;
an answer typed into its pane lets it finish."""
from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import libtmux
import pytest

from agent_ops.front import service as ops
from agent_ops.record.journal import Journal
from agent_ops.run.pane import prompt_line
from agent_ops.runbook.loader import load_runbook
from agent_ops.transport.target import connect
from tests.runs import RUNBOOKS, Box, agentops, events, lines, only_run_id, spawn, step, wait_for

PROMPT = "Continue? [Y/n]"
SECRET = f"ao-pane-{uuid.uuid4().hex}"


def _answer(box: Box, run_id: str, window: str, keys: str) -> None:
    """Type `keys` and Enter into the job's pane: libtmux on this machine, tmux send-keys through the transport over SSH."""
    session = f"agentops-{run_id}"
    if box.kind == "local":
        found = libtmux.Server(socket_name=box.socket).sessions.get(session_name=session).windows.get(window_name=window)
        found.active_pane.send_keys(keys, enter=True)
        return
    transport = connect(box.spec)
    try:
        assert transport.tmux(box.socket, ["send-keys", "-t", f"={session}:={window}", keys, "Enter"], timeout=10).ok
    finally:
        transport.close()


def test_job_at_a_prompt_is_reported_waiting_and_an_answer_lets_it_finish(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    cap_s = load_runbook(RUNBOOKS / "prompt.yaml").runbook.poll.cap_s
    monkeypatch.setenv("AO_TEST_SECRET", SECRET)  # the pane operation masks with the run's secrets, as `tail` does
    proc = spawn(box, "run", str(RUNBOOKS / "prompt.yaml"), *box.cli_target(), "--var", f"box={box.scratch}", "--json")
    try:
        journal = box.journal()
        run_id = wait_for("the run to start", lambda: only_run_id(journal))
        waiting = wait_for("the step to report its prompt", lambda: step(journal, run_id, "ask").waiting_for_input,
                           timeout=3 * cap_s)
        assert waiting == PROMPT
        started = events(journal, run_id, "job_started")[0]
        seen = events(journal, run_id, "job_waiting_for_input")
        assert [e.data["prompt"] for e in seen] == [PROMPT]
        assert seen[0].ts - started.ts <= cap_s, f"reported {seen[0].ts - started.ts:.1f}s after the job started"

        status = agentops(box, "status", run_id, "--json")
        assert status.returncode == 0, status.stderr
        ask = next(s for s in json.loads(status.stdout)["steps"] if s["id"] == "ask")
        assert ask["state"] == "running" and ask["waiting_for_input"] == PROMPT
        assert f"waiting for input: {PROMPT}" in agentops(box, "status", run_id).stdout
        assert f"waiting for input: {PROMPT}" in agentops(box, "wait", run_id, "--timeout", "0").stdout
        # What the MCP `pane` tool returns: the pane as a person attached sees it, secrets masked.
        shown = ops.pane(journal, run_id, "ask", lines=20)
        assert shown.waiting_for_input == PROMPT and shown.window == "ask-1"
        assert "token is ***" in shown.text and SECRET not in shown.text

        _answer(box, run_id, "ask-1", "y")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = step(journal, run_id, "ask")
    assert done.state == "succeeded" and done.waiting_for_input is None
    # The log holds the prompt and what followed; the typed answer is echoed on the terminal only.
    assert lines(Path(box.spec.workdir, "runs", run_id, "jobs", "ask-1", "log"))[-1] == f"{PROMPT} got y"


@pytest.mark.parametrize("line", [
    "Continue? [Y/n] ", "Do you want to continue? [Y/n]", "Proceed (y/n)?", "[sudo] password for root:",
    "Password for 'https://github.com':", "Username for 'https://github.com': ", "Enter passphrase for key '/root/.ssh/id':",
    "Are you sure you want to continue connecting (yes/no/[fingerprint])?", "Press ENTER to continue",
])
def test_a_prompt_on_the_last_line_is_recognised(line: str) -> None:
    assert prompt_line(f"earlier output\n{line}\n\n") == line.strip()


@pytest.mark.parametrize("text", [
    "Continue? [Y/n] y\n",  # answered: the terminal's echo follows it
    "Continue? [Y/n]\ngot y\n",  # output came after it
    "step=10 loss=0.5\n", "", "password reset done\n",
])
def test_answered_prompts_and_plain_output_are_not(text: str) -> None:
    assert prompt_line(text) is None


def test_a_journal_written_before_the_column_gains_it(tmp_path: Path) -> None:
    """An older journal (no waiting_for_input column, an older schema id) is migrated when opened, its rows kept."""
    path = tmp_path / "journal.db"
    old = Journal(path)
    old.create_run({"id": "r1", "runbook_name": "old", "runbook_path": "/x.yaml", "runbook_sha": "0", "target": {},
                    "vars": {}, "secret_names": [], "tmux_session": "agentops-r1", "run_dir": "/r", "artifacts_dir": "/a"},
                   [("ask", "run")])
    old.close()
    with sqlite3.connect(path) as db:  # as a journal written before this column existed
        db.execute("ALTER TABLE steps DROP COLUMN waiting_for_input")
        db.execute("PRAGMA user_version = 1")
    journal = Journal(path)
    assert journal.step("r1", "ask").waiting_for_input is None
    journal.set_step("r1", "ask", waiting_for_input=PROMPT)
    assert journal.step("r1", "ask").waiting_for_input == PROMPT
