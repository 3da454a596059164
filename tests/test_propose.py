"""`known-issues propose`: a new failure is learnt, admitted and remedied; unsafe proposals are refused by name."""
from __future__ import annotations

import json
import re
import textwrap
import uuid
from pathlib import Path

import libtmux
import pytest
import yaml
from typer.testing import CliRunner

from agent_ops.front.cli import app
from agent_ops.known_issues.catalog import load_catalog, shipped_dir
from agent_ops.known_issues.propose import ProposalError, draft, generalise, propose
from agent_ops.record.journal import Journal
from agent_ops.record.status import run_status
from agent_ops.run.context import start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from agent_ops.transport.target import TargetSpec
from tests.logcorpus import HEALTHY, corpus
from tests.runs import events, kill_tmux_server

# A failure no entry knows, with the variable parts a second occurrence would change.
FROB = "FrobnicatorError: the frobnicator at {path} needs {need} widgets (got {got}), handle 0x{handle}"
FROB_RUNBOOK = """
name: frob
steps:
  - id: frob
    kind: run
    tags: [train]
    command: |
      echo "[train] step=0/10 loss=0.91"
      if [ "${{FROB_OK:-}}" != "1" ]; then
        echo "Traceback (most recent call last):"
        echo '  File "/workspace/frob.py", line 12, in <module>'
        echo "    frob.run()"
        echo "{error}"
        exit 1
      fi
      echo "[train] done step=10 final_loss=0.2"
"""
PIP_WARNING = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. "
               "This behaviour is the source of the following dependency conflicts.")


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def _cli(home: Path, *args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin, env={"AGENTOPS_HOME": str(home), "COLUMNS": "200"})


def _run(tmp_path: Path, home: Path, text: str):
    """A real run on this machine (tmux on a private socket) whose journal lives in `home`."""
    path = tmp_path / f"runbook-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(textwrap.dedent(text))
    loaded = load_runbook(path)
    sock = f"ao-propose-{uuid.uuid4().hex[:8]}"
    spec = TargetSpec(url="local", tmux_socket=sock, workdir=str(tmp_path / "box"))
    journal = Journal(home / "journal.db")
    try:
        ctx = start_run(loaded, resolve_vars(loaded, {}), {}, spec, journal)
        final = Executor(ctx).execute()
        ctx.transport.close()
    finally:
        kill_tmux_server(libtmux.Server(socket_name=sock))
    return final, run_status(journal, ctx.run_id)


def test_generalised_regex_matches_other_values_of_the_same_failure():
    seen = FROB.format(path="/workspace/run-7/frob.bin", need=12, got=3, handle="7f3a9c")
    pattern = re.compile(generalise(seen))
    assert pattern.fullmatch(seen)
    assert pattern.fullmatch(FROB.format(path="~/other/dir/f.bin", need=4096, got="1.5", handle="deadbeef01"))
    assert not pattern.search(seen.replace("widgets", "gadgets"))
    assert r"\S+" in generalise("cannot open https://huggingface.co/org/model/resolve/main/config.json")


def test_a_new_failure_is_learnt_admitted_and_remedied(tmp_path: Path, home: Path):
    error = FROB.format(path="/workspace/run-7/frob.bin", need=12, got=3, handle="7f3a9c")
    final, status = _run(tmp_path, home, FROB_RUNBOOK.format(error=error))
    assert final == "failed"
    [step] = status.steps
    assert f"no known issue matched: {error}" in step.message  # unknown, but what was seen is said
    log = "\n".join(step.log_tail) + "\n"

    fix = json.dumps([{"action": "set_env", "name": "FROB_OK", "value": "1"}])
    result = _cli(home, "known-issues", "propose", "-", "--id", "frobnicator-widgets", "--fix", fix, "--json", stdin=log)
    assert result.exit_code == 0, result.output
    proposal = json.loads(result.stdout)
    assert proposal["admitted"] and proposal["refused"] == []
    written = Path(proposal["path"])
    assert written == home / "known_issues" / "frobnicator-widgets.yaml"
    entry = yaml.safe_load(written.read_text())
    assert entry["level"] == "family" and entry["fix"] == [{"action": "set_env", "name": "FROB_OK", "value": "1"}]
    assert "/workspace/run-7" not in entry["signatures"][0]["regex"]  # the path was generalised

    # The same failure with other values, in a new run: the executor loads the user catalog and fixes it.
    again = FROB.format(path="/data/frob-2.bin", need=7, got=0, handle="a1b2c3d4")
    final, status = _run(tmp_path, home, FROB_RUNBOOK.format(error=again))
    assert final == "succeeded"
    [remedy] = status.remedies
    assert (remedy.issue_id, remedy.result, remedy.fix) == ("frobnicator-widgets", "succeeded", ["set env FROB_OK=1"])
    assert _cli(home, "known-issues", "show", "frobnicator-widgets", "--json").exit_code == 0


def test_a_proposal_that_fires_on_a_healthy_log_is_refused_with_the_log_named(home: Path):
    log = f"Collecting tensorflow==2.15.0\n{PIP_WARNING}\n"
    dev_healthy = [str(c.path) for c in corpus() if c.family == HEALTHY and c.split == "dev"]
    args = ["known-issues", "propose", "-", "--json"] + [a for p in dev_healthy for a in ("--healthy", p)]
    result = _cli(home, *args, stdin=log)
    assert result.exit_code == 1
    refused = json.loads(result.stdout)["refused"]
    assert any("a-14-pip-resolver-error-then-successfully-installed.log" in r for r in refused), refused
    assert "it fires on the healthy log pip-resolution-impossible's negative sample 0" in refused
    assert not (home / "known_issues").exists()


def test_a_proposal_inside_a_known_family_becomes_a_cause_and_must_stay_out_of_other_families(home: Path):
    catalog = load_catalog()
    # The family is known (a shape mismatch), its cause is not: the draft is a cause of that family.
    log = "Traceback (most recent call last):\nRuntimeError: mat1 and mat2 shapes cannot be multiplied (4x512 and 768x10)\n"
    entry = draft(log, catalog)
    assert (entry.level, entry.family) == ("cause", "stats-shape-mismatch")
    proposal = propose(log, home / "known_issues", admit=False)
    assert proposal.refused == [] and not proposal.admitted
    assert re.search(proposal.entry["signatures"][0]["regex"], "RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x1024 and 512x7)")
    # The same message as a near miss the catalog keeps (an attention mask, not statistics) is refused by name.
    mask = "Traceback (most recent call last):\nRuntimeError: The size of tensor a (77) must match the size of tensor b (1024) at non-singleton dimension 1\n"
    assert propose(mask, home / "known_issues", admit=False).refused == ["it fires on the healthy log stats-wrong-robot's negative sample 0"]
    # A draft that is too broad for its own good: it fires on another family's samples.
    cut = "Traceback (most recent call last):\nRuntimeError: Error(s) in loading state_dict for L1RegressionActionHead:\n"
    broad = propose(cut, home / "known_issues", admit=False)
    assert broad.entry["level"] == "family"
    assert broad.refused == ["it fires on stats-shape-mismatch's sample 1 (family stats-shape-mismatch)"]


def test_known_failures_and_logs_without_one_are_not_proposed(home: Path):
    oom = (shipped_dir().parent / "data" / "vlm-cuda-oom-batch16.yaml").read_text()
    sample = yaml.safe_load(oom)["samples"]["positive"][0]
    with pytest.raises(ProposalError, match="already known: vlm-cuda-oom-batch16"):
        draft(sample, load_catalog())
    result = _cli(home, "known-issues", "propose", "-", stdin="[AE] step=1/10 loss=0.5\nall good\n")
    assert result.exit_code == 2 and "no failure in the log" in result.stderr
    bad_fix = _cli(home, "known-issues", "propose", "-", "--fix", '[{"action": "reboot"}]', stdin=f"x\n{FROB}\n")
    assert bad_fix.exit_code == 2 and "fix:" in bad_fix.stderr


def test_a_broken_user_entry_is_reported_and_the_shipped_catalog_still_diagnoses(tmp_path: Path, home: Path):
    broken = home / "known_issues" / "broken.yaml"
    broken.parent.mkdir()
    broken.write_text("id: broken\ntitle: [unclosed\n")
    result = _cli(home, "diagnose", "-", stdin="OSError: [Errno 28] No space left on device\n")
    assert result.exit_code == 2 and result.stderr.startswith(f"{broken}:")  # FILE:LINE, nothing diagnosed
    final, status = _run(tmp_path, home, """
        name: locked
        steps:
          - id: apt
            kind: run
            tags: [install]
            command: |
              echo "E: Could not open lock file /var/lib/dpkg/lock-frontend - open (13: Permission denied)"
              exit 100
    """)
    assert final == "failed"
    [remedy] = status.remedies
    assert (remedy.issue_id, remedy.result) == ("apt-lock", "escalated")  # a family without a cause: diagnosed, escalated
    [step] = status.steps
    assert "Seen: E: Could not open lock file /var/lib/dpkg/lock-frontend" in step.message
    ignored = [e for e in events(Journal(home / "journal.db"), status.id, "diagnosis") if "user catalog ignored" in e.message]
    assert ignored and ignored[0].message.startswith(f"user catalog ignored: {broken}:")
