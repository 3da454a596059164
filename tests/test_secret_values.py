"""Secrets are masked everywhere, one-line and multi-line alike (a PEM key, a service-account JSON)."""
from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
from pathlib import Path

from agent_ops.front import service
from agent_ops.secret_values import MASK, MIN_SECRET_LEN, Masker, sed_mask_script
from tests.runs import Box, agentops, attempts, run_api


def pem() -> str:
    """A fresh PEM-shaped secret: random base64 body lines of 64 characters, a short last line."""
    body = base64.b64encode(os.urandom(150)).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"


def secret_lines(value: str) -> list[str]:
    """The parts of a multi-line secret that must never be seen: every line long enough to be secret-like."""
    return [line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_SECRET_LEN]


def test_masker_masks_each_line_of_a_multi_line_secret() -> None:
    key = pem()
    account = json.dumps({"type": "service_account", "private_key_id": os.urandom(20).hex(),
                          "client_email": "svc@proj.iam.gserviceaccount.com"}, indent=2)
    masker = Masker([key, account])
    body = secret_lines(key)[1]
    # Whole, a line alone (a status's last line), and a tail that starts mid-value.
    assert masker.mask(f"key={key}") == f"key={MASK}"
    assert masker.mask(f"last line: {body}") == f"last line: {MASK}"
    assert masker.mask(key[len(key) // 2:]).count(MASK) >= 1
    for line in secret_lines(key) + secret_lines(account):
        assert line not in masker.mask(key + account)
    # The JSON's braces are too short to be secret-like: ordinary text keeps them.
    assert masker.mask("{ok}") == "{ok}"


def test_sed_script_masks_each_line_of_a_multi_line_secret(tmp_path: Path) -> None:
    key = pem()
    script = tmp_path / "mask.sed"
    script.write_bytes(sed_mask_script([key, "one-line.s3cr3t/[x]*"]))
    text = f"before\n{key}between one-line.s3cr3t/[x]* after\n"
    masked = subprocess.run(["sed", "-u", "-f", str(script)], input=text, capture_output=True, text=True, check=True).stdout
    for line in [*secret_lines(key), "one-line.s3cr3t/[x]*"]:
        assert line not in masked
    assert masked.startswith("before\n***\n") and "between *** after" in masked


def test_multi_line_secret_never_reaches_a_reader(box: Box) -> None:
    key = pem()
    run = run_api(box, "secret_lines.yaml", secrets={"AO_PEM_SECRET": key})
    assert run.final == "succeeded"
    assert (box.scratch / "secret.copy").read_text() == key  # the job did get it whole
    [attempt] = attempts(run.journal, run.run_id, "show")
    # Readers whose environment lacks the secret (an MCP server, another shell): the log itself must be clean.
    assert "AO_PEM_SECRET" not in os.environ
    tail = service.tail(run.journal, run.run_id, "show", lines=None, offset=0)
    status = agentops(box, "status", run.run_id, "--json")
    logs = agentops(box, "logs", run.run_id, "show")
    places = {
        "job log": (Path(attempt.job_dir) / "log").read_text(),
        "MCP tail": tail.text,
        "status --json": status.stdout,
        "logs": logs.stdout,
        **{f"journal file {p.name}": p.read_bytes().decode("latin-1") for p in box.home.glob("journal.db*")},
    }
    db = sqlite3.connect(box.home / "journal.db")
    places["journal rows"] = "\n".join(str(row) for table in ("runs", "steps", "attempts", "events")
                                       for row in db.execute(f"SELECT * FROM {table}"))
    assert status.returncode == 0 and logs.returncode == 0, status.stderr + logs.stderr
    assert tail.text.startswith("the key:\n***\n"), tail.text
    assert json.loads(status.stdout)["steps"][0]["last_line"] == MASK
    leaks = [(where, line) for where, text in places.items() for line in secret_lines(key) if line in text]
    assert not leaks
