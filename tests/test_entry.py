"""The `agentops` entry point: the polls agents repeat are answered without the CLI framework, with the very
document the CLI writes; every other command line goes to the CLI.

Real processes on a real journal (written through the journal's API, as tests/bench/bench_status.py does);
`-X importtime` tells which way a process went (the CLI imports typer, the fast path does not).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent_ops.record.journal import Journal
from tests.bench.bench_status import fill_journal

ENTRY = [sys.executable, "-X", "importtime", "-m", "agent_ops.front.entry"]
CLI = [sys.executable, "-m", "agent_ops.front.cli"]
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("entry-home")
    ids = fill_journal(home, 3)
    gone = subprocess.Popen(["true"])
    gone.wait()
    journal = Journal(home / "journal.db")  # a rented run whose controller died while renting: no run row
    journal.event("rent-gone", None, "provisioned", "renting 1 x 1 GPU", {"controller": {"pid": gone.pid, "host": socket.gethostname()}})
    journal.close()
    (home / "ids").write_text(" ".join(ids))
    return home


def _run(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTOPS_HOME": str(home)}
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def _took_the_cli(proc: subprocess.CompletedProcess[str]) -> bool:
    return any(re.search(r"\|\s+typer$", line.rstrip()) for line in proc.stderr.splitlines())


@pytest.mark.parametrize("args", [["status", "--json"], ["status", "RUN", "--json"], ["status", "--json", "RUN"],
                                  ["list", "--json"]])
def test_a_poll_is_answered_without_the_cli_with_the_cli_s_document(home: Path, args: list[str]) -> None:
    run_id = (home / "ids").read_text().split()[1]
    args = [run_id if a == "RUN" else a for a in args]

    fast, cli = _run([*ENTRY, *args], home), _run([*CLI, *args], home)

    assert fast.returncode == cli.returncode == 0, fast.stderr[-2000:] + cli.stderr[-2000:]
    assert fast.stdout == cli.stdout and fast.stdout.startswith(("{", "["))
    assert not _took_the_cli(fast)


@pytest.mark.parametrize("args", [["status", "no-such-run", "--json"], ["status", "rent-gone", "--json"],
                                  ["list", "--json", "--limit", "1"], ["status", "--json", "-v"],
                                  ["status", "a", "b", "--json"], ["status", "--json", "--json"]])
def test_every_other_command_line_goes_to_the_cli(home: Path, args: list[str]) -> None:
    fast, cli = _run([*ENTRY, *args], home), _run([*CLI, *args], home)

    assert (fast.returncode, fast.stdout) == (cli.returncode, cli.stdout)
    assert _took_the_cli(fast)


def test_the_errors_the_cli_words_stay_the_cli_s(home: Path) -> None:
    unknown = _run([*ENTRY, "status", "no-such-run", "--json"], home)
    renting = _run([*ENTRY, "status", "rent-gone", "--json"], home)

    assert unknown.returncode == 4 and '"code": "unknown_run"' in unknown.stdout
    assert renting.returncode == 1 and '"code": "rent_failed"' in renting.stdout
