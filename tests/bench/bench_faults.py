"""Fault suite (issue 11): secrets, hostile runbooks, a log without newlines, a controller killed again and again, sshd restarts.

Run from the repository root::

    python tests/bench/bench_faults.py                      # every part (about 3-5 minutes on 2 cores)
    python tests/bench/bench_faults.py --only malformed,log # some parts: secrets, malformed, log, kill, sshd
    python tests/bench/bench_faults.py --log-mib 64 --kills 5   # smaller, for quick iteration

Every part drives the real CLI (`python -m agent_ops.front.cli`, a fresh process) against this
machine's tmux on a private socket and, where it says so, the loopback sshd of tests/sshd.py:

- secrets: a one-line and a multi-line (PEM-shaped) canary secret, used and printed by a job on a
  local and an SSH target. While the job runs and after the run, every place a secret could land
  is searched: each file under the target's workdir, the scratch directory and AGENTOPS_HOME
  (journal and its WAL included; the mode-600 `env` and `mask.sed` files are the secret's own
  file and are skipped once their mode is checked), the tmux server's global and session
  environment and its /proc environ, every process's /proc cmdline, and what readers whose
  environment lacks the secret print (`status --json`, `logs`, the MCP tail) plus the controller's
  own output. A place counts once if it holds the one-line canary or any line of the multi-line one.
- malformed: 50 malformed runbooks (tests/malformed.py's hostile ones first: alias bombs, 500-deep
  nesting, huge and non-UTF-8 files; then tests/test_runbook_validation.py's everyday mistakes),
  each through `validate`: exit code, a first line of the form FILE:LINE, wall time, and the
  process's peak RSS (ru_maxrss from wait4).
- log: a job writes N MiB without a newline, then a line a gate waits for; the controller's peak
  RSS (wait4), and the gate's latency: journal `ended` of the gate minus the time the job wrote the
  line (it records it just before). Local and SSH.
- kill: a chain of run steps with a job gate and a file gate; the controller is SIGKILLed at random
  moments K times, each time `agentops resume` takes over; re-run = a step whose command ran more
  than once (each appends its id to a counter file), lost = a step that never succeeded.
- sshd: the same chain over SSH while the sshd is stopped (every connection dropped) and restarted
  R times; the controller reconnects on its own.

Prints a table (and writes JSON, path printed). Exit 1 if a goal is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT)  # every CLI process imports this tree

from agent_ops.front import service  # noqa: E402 -- after the sys.path line above
from agent_ops.record.journal import Journal  # noqa: E402
from agent_ops.secret_values import MIN_SECRET_LEN  # noqa: E402
from tests.malformed import hostile  # noqa: E402
from tests.runs import Box, make_box, only_run_id, wait_for  # noqa: E402
from tests.sshd import SSHServer, sshd_available  # noqa: E402
from tests.test_runbook_validation import CASES  # noqa: E402

CLI = [sys.executable, "-m", "agent_ops.front.cli"]
PROBLEM = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+): ")
GOALS = {"malformed_s": 2.0, "malformed_mib": 200.0, "controller_mib": 300.0, "gate_latency_s": 5.0}


@dataclass
class Row:
    """One line of the table: a fault, what was measured, the goal and whether it was met."""

    part: str
    fault: str
    figure: str
    goal: str
    met: bool
    data: dict[str, Any] = field(default_factory=dict)


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Finished:
    rc: int
    wall_s: float
    cpu_s: float  # user + system of the process itself: on a loaded machine, what wall time cannot show
    peak_mib: float
    stdout: str
    stderr: str


def run_measured(args: list[str], env: dict[str, str], timeout: float = 900) -> Finished:
    """Run the CLI; its exit code, wall time and peak RSS (wait4's ru_maxrss: this process alone, not its children)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([*CLI, *args], stdout=out, stderr=err, env=env, cwd=ROOT)
        rc, usage = _wait4(proc, timeout)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return Finished(rc, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"))


def _wait4(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            return proc.returncode, usage
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.02)


def box_env(box: Box, **extra: str) -> dict[str, str]:
    return {**os.environ, "AGENTOPS_HOME": str(box.home), **extra}


def spawn(box: Box, args: list[str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=box_env(box, **extra),
                            cwd=ROOT)


@contextmanager
def boxes(root: Path, kinds: list[str], sshd: SSHServer | None) -> Iterator[dict[str, Box]]:
    made = {kind: make_box(kind, root / kind, sshd) for kind in kinds}
    try:
        yield made
    finally:
        for box in made.values():
            box.kill_tmux()


# --- secrets -----------------------------------------------------------------------------------

SECRETS_RUNBOOK = """
name: canary
vars:
  box: {default: null}
secrets: [AO_CANARY_ONE, AO_CANARY_PEM]
steps:
  - id: use
    kind: run
    command: |
      echo "one-line: $AO_CANARY_ONE"
      printf 'pem:\\n%s\\n' "$AO_CANARY_PEM"
      printf '%s' "$AO_CANARY_PEM" | sha256sum
      touch {{ box }}/running
      sleep 4
      printf '%s\\n' "$AO_CANARY_PEM" | sed -n 3p
"""


def canaries() -> tuple[str, str]:
    body = os.urandom(180).hex()
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + "\n-----END PRIVATE KEY-----\n"
    return f"ao-canary-{os.urandom(8).hex()}", pem


def secret_places(box: Box, run_id: str | None, extra_texts: dict[str, str]) -> dict[str, str]:
    """Every place a secret could land, as text: files, tmux, processes, readers without the secret."""
    places = dict(extra_texts)
    for top in (Path(box.spec.workdir), box.scratch, box.home):
        for path in top.rglob("*") if top.exists() else ():
            if not path.is_file():
                continue
            if path.name in ("env", "mask.sed") and (path.stat().st_mode & 0o777) == 0o600:
                continue  # the secret's own mode-600 file
            places[f"file {path}"] = path.read_bytes().decode("latin-1")
    server_pid = box.tmux("display-message", "-p", "#{pid}").stdout.strip()
    places["tmux global environment"] = box.tmux("show-environment", "-g").stdout
    if run_id:
        places["tmux session environment"] = box.tmux("show-environment", "-t", f"agentops-{run_id}").stdout
    if server_pid.isdigit():
        places["tmux server /proc environ"] = _read(Path(f"/proc/{server_pid}/environ"))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            places[f"cmdline of pid {proc.name}"] = _read(proc / "cmdline")
    if run_id:
        env = box_env(box)  # a reader's environment: no secret in it
        places["status --json"] = subprocess.run([*CLI, "status", run_id, "--json"], capture_output=True, text=True, env=env).stdout
        places["logs"] = subprocess.run([*CLI, "logs", run_id, "use"], capture_output=True, text=True, env=env).stdout
        try:
            places["MCP tail"] = service.tail(Journal(box.home / "journal.db"), run_id, "use", lines=None, offset=0).text
        except service.OpError:
            pass
    return places


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode("latin-1")
    except OSError:
        return ""


def leaks(places: dict[str, str], one: str, pem: str) -> tuple[list[str], list[str]]:
    pieces = [line.strip() for line in pem.splitlines() if len(line.strip()) >= MIN_SECRET_LEN]
    return ([p for p, text in places.items() if one in text], [p for p, text in places.items() if any(x in text for x in pieces)])


def part_secrets(root: Path, sshd: SSHServer | None) -> list[Row]:
    rows = []
    kinds = ["local"] + (["ssh"] if sshd else [])
    with boxes(root, kinds, sshd) as made:
        for kind, box in made.items():
            one, pem = canaries()
            runbook = box.scratch / "canary.yaml"
            runbook.write_text(SECRETS_RUNBOOK)
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                proc = subprocess.Popen([*CLI, "run", str(runbook), *box.cli_target(), "--var", f"box={box.scratch}"],
                                        stdout=out, stderr=err, env=box_env(box, AO_CANARY_ONE=one, AO_CANARY_PEM=pem), cwd=ROOT)
                journal = Journal(box.home / "journal.db")
                run_id = wait_for("the run", lambda j=journal: only_run_id(j), timeout=60)
                wait_for("the job to run", lambda b=box: (b.scratch / "running").exists(), timeout=60)
                during = leaks(secret_places(box, run_id, {}), one, pem)
                proc.wait(timeout=120)
                out.seek(0)
                err.seek(0)
                outputs = {"controller stdout": out.read().decode(errors="replace"), "controller stderr": err.read().decode(errors="replace")}
            after = leaks(secret_places(box, run_id, outputs), one, pem)
            state = journal.run(run_id).state
            for when, (single, multi) in (("while the job runs", during), ("after the run", after)):
                found = single + multi
                rows.append(Row("secrets", f"canary secrets, {kind}, {when}",
                                f"one-line in {len(single)} places, multi-line in {len(multi)} places (run {state})",
                                "0 and 0", not found and state == "succeeded", {"places": found}))
    return rows


# --- malformed runbooks ------------------------------------------------------------------------


def malformed_inputs(count: int) -> list[tuple[str, bytes]]:
    import textwrap

    inputs = [(name, case.data) for name, case in hostile().items()]
    inputs += [(name, textwrap.dedent(case.text).lstrip("\n").encode()) for name, case in CASES.items()]
    return inputs[:count]


def part_malformed(root: Path, count: int) -> list[Row]:
    results = []
    for name, data in malformed_inputs(count):
        path = root / f"{name}.yaml"
        path.write_bytes(data)
        done = run_measured(["validate", str(path)], dict(os.environ), timeout=120)
        first = done.stderr.splitlines()[0] if done.stderr else ""
        match = PROBLEM.match(first)
        results.append({"name": name, "rc": done.rc, "wall_s": round(done.wall_s, 3), "cpu_s": round(done.cpu_s, 3),
                        "peak_mib": round(done.peak_mib, 1),
                        "file_line": bool(match and match["file"] == str(path)), "traceback": "Traceback" in done.stderr,
                        "first": first[:200]})
    good = [r for r in results if r["rc"] == 2 and r["file_line"] and not r["traceback"]]
    slowest = max(results, key=lambda r: r["wall_s"])
    biggest = max(results, key=lambda r: r["peak_mib"])
    return [
        Row("malformed", f"{len(results)} malformed runbooks (alias bombs, 500-deep nesting, ...)",
            f"{len(good)}/{len(results)} exit 2 with FILE:LINE", f"{len(results)}/{len(results)}", len(good) == len(results),
            {"results": results}),
        Row("malformed", "slowest validate (wall, process start included)",
            f"{slowest['wall_s']:.2f} s, {slowest['cpu_s']:.2f} s CPU ({slowest['name']}; load {os.getloadavg()[0]:.1f})",
            f"<= {GOALS['malformed_s']:g} s", slowest["wall_s"] <= GOALS["malformed_s"]),
        Row("malformed", "largest validate (peak RSS)", f"{biggest['peak_mib']:.0f} MiB ({biggest['name']})",
            f"<= {GOALS['malformed_mib']:g} MiB", biggest["peak_mib"] <= GOALS["malformed_mib"]),
    ]


# --- a log without newlines --------------------------------------------------------------------

LOG_RUNBOOK = """
name: longline
vars:
  box: {default: null}
  mib: {default: 256}
steps:
  - id: blob
    kind: run
    background: true
    command: |
      head -c $(({{ mib }} * 1048576)) /dev/zero | tr '\\0' 'x'
      date +%s.%N > {{ box }}/ready_at
      printf '\\nREADY\\n'
      sleep 1
  - id: ready
    kind: gate
    job: blob
    patterns:
      - {regex: '^READY$', within: 900}
"""


def part_log(root: Path, sshd: SSHServer | None, mib: int) -> list[Row]:
    rows = []
    kinds = ["local"] + (["ssh"] if sshd else [])
    with boxes(root, kinds, sshd) as made:
        for kind, box in made.items():
            runbook = box.scratch / "longline.yaml"
            runbook.write_text(LOG_RUNBOOK)
            done = run_measured(["run", str(runbook), *box.cli_target(), "--var", f"box={box.scratch}", "--var", f"mib={mib}",
                                 "--json"], box_env(box))
            journal = Journal(box.home / "journal.db")
            run_id = only_run_id(journal)
            gate = journal.step(run_id, "ready") if run_id else None
            written = float((box.scratch / "ready_at").read_text()) if (box.scratch / "ready_at").exists() else None
            ok = done.rc == 0 and gate is not None and gate.state == "succeeded" and written is not None
            latency = (gate.ended - written) if ok else float("inf")
            rows.append(Row("log", f"{mib} MiB without newlines, {kind}: controller peak RSS",
                            f"{done.peak_mib:.0f} MiB (run rc {done.rc}, {done.wall_s:.1f} s, {done.cpu_s:.1f} s CPU)", f"<= {GOALS['controller_mib']:g} MiB",
                            ok and done.peak_mib <= GOALS["controller_mib"], {"stderr": done.stderr[-2000:]}))
            rows.append(Row("log", f"{mib} MiB without newlines, {kind}: gate after its line was written",
                            f"{latency:.2f} s", f"<= {GOALS['gate_latency_s']:g} s", latency <= GOALS["gate_latency_s"]))
    return rows


# --- a controller killed again and again; sshd restarts ----------------------------------------


def chain_runbook(steps: int) -> str:
    """Run steps in a chain (each appends its id to `counter`), a job gate on a ticker, and a file gate on a line the
    middle step writes 3 s after it starts (the gate begins reading beside it, so the line comes after it began)."""
    mid = steps // 2
    lines = ["name: chain", "vars:", "  box: {default: null}", "steps:",
             "  - id: ticker", "    kind: run", "    background: true",
             "    command: for i in $(seq 1 40); do echo \"tick $i\"; sleep 0.25; done",
             "  - id: ticked", "    kind: gate", "    job: ticker", "    patterns: [{regex: '^tick 10$', within: 600}]",
             "  - id: ready_file", "    kind: gate", f"    needs: [s{mid - 1:02d}]", "    file: '{{ box }}/ready.log'",
             "    patterns: [{regex: '^READY$', within: 600}]"]
    for i in range(steps):
        command = f"echo s{i:02d} >> {{{{ box }}}}/counter; sleep 0.3"
        if i == mid:
            command = f"echo s{i:02d} >> {{{{ box }}}}/counter; sleep 3; echo READY >> {{{{ box }}}}/ready.log"
        lines += [f"  - id: s{i:02d}", "    kind: run", f"    command: {command}"] + ([f"    needs: [s{i - 1:02d}]"] if i else [])
    return "\n".join(lines) + "\n"


def chain_outcome(box: Box, run_id: str, steps: int) -> dict[str, Any]:
    counts = Counter((box.scratch / "counter").read_text().split()) if (box.scratch / "counter").exists() else Counter()
    journal = Journal(box.home / "journal.db")
    states = {s.step_id: s.state for s in journal.steps(run_id)}
    wanted = [f"s{i:02d}" for i in range(steps)]
    return {"state": journal.run(run_id).state, "rerun": sorted(s for s, n in counts.items() if n > 1),
            "lost": sorted(s for s in wanted if counts[s] == 0 or states.get(s) != "succeeded"),
            "gates": {g: states.get(g) for g in ("ticked", "ready_file")}}


def part_kill(root: Path, kills: int, steps: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    with boxes(root, ["local"], None) as made:
        box = made["local"]
        runbook = box.scratch / "chain.yaml"
        runbook.write_text(chain_runbook(steps))
        (box.scratch / "ready.log").write_text("")
        journal = Journal(box.home / "journal.db")
        proc = spawn(box, ["run", str(runbook), *box.cli_target(), "--var", f"box={box.scratch}"])
        run_id = wait_for("the run", lambda: only_run_id(journal), timeout=60)
        done_kills = 0
        while done_kills < kills:
            time.sleep(rng.uniform(0.3, 1.5))
            if proc.poll() is not None:
                break  # the run ended before this kill
            proc.kill()
            proc.wait()
            done_kills += 1
            proc = spawn(box, ["resume", run_id])
        proc.wait(timeout=600)
        if journal.run(run_id).state not in ("succeeded", "failed"):  # the last controller was refused or died: finish
            subprocess.run([*CLI, "resume", run_id], env=box_env(box), cwd=ROOT, capture_output=True, timeout=600)
        out = chain_outcome(box, run_id, steps)
    ok = out["state"] == "succeeded" and not out["rerun"] and not out["lost"] and done_kills == kills
    return [Row("kill", f"SIGKILL + resume x {done_kills} ({steps}-step chain, a job gate, a file gate), local",
                f"{len(out['rerun'])} re-run, {len(out['lost'])} lost, run {out['state']}, gates {out['gates']}",
                f"{kills} kills, 0 re-run, 0 lost", ok, out)]


def part_sshd(root: Path, sshd: SSHServer, restarts: int, steps: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    with boxes(root, ["ssh"], sshd) as made:
        box = made["ssh"]
        runbook = box.scratch / "chain.yaml"
        runbook.write_text(chain_runbook(steps))
        (box.scratch / "ready.log").write_text("")
        journal = Journal(box.home / "journal.db")
        result: dict[str, Finished] = {}
        runner = threading.Thread(target=lambda: result.setdefault("run", run_measured(
            ["run", str(runbook), *box.cli_target(), "--var", f"box={box.scratch}"], box_env(box))))
        runner.start()
        run_id = wait_for("the run", lambda: only_run_id(journal), timeout=60)
        done = 0
        while done < restarts and runner.is_alive():
            time.sleep(rng.uniform(0.3, 1.2))
            sshd.stop()
            time.sleep(rng.uniform(0.3, 1.2))
            sshd.start()
            done += 1
        runner.join(timeout=900)
        out = chain_outcome(box, run_id, steps)
    ok = out["state"] == "succeeded" and not out["rerun"] and not out["lost"] and done == restarts
    return [Row("sshd", f"sshd stopped and restarted x {done} ({steps}-step chain over SSH)",
                f"{len(out['rerun'])} re-run, {len(out['lost'])} lost, run {out['state']} (rc {result['run'].rc})",
                f"{restarts} restarts, 0 re-run, 0 lost", ok, out)]


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="secrets,malformed,log,kill,sshd", help="comma-separated parts")
    parser.add_argument("--malformed", type=int, default=50, help="how many malformed runbooks")
    parser.add_argument("--log-mib", type=int, default=256, help="MiB the job writes without a newline")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILL + resume rounds")
    parser.add_argument("--restarts", type=int, default=5, help="sshd restarts")
    parser.add_argument("--steps", type=int, default=30, help="run steps in the chain of the kill and sshd parts")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    sshd = None
    if {"secrets", "log", "sshd"} & parts and sshd_available():
        sshd = SSHServer(Path(tempfile.mkdtemp(prefix="agentops-faults-sshd-")))
        sshd.start()
    work = Path(tempfile.mkdtemp(prefix="agentops-faults-"))
    plan: list[tuple[str, Callable[[], list[Row]]]] = [
        ("secrets", lambda: part_secrets(work / "secrets", sshd)),
        ("malformed", lambda: part_malformed(_mkdir(work / "malformed"), args.malformed)),
        ("log", lambda: part_log(work / "log", sshd, args.log_mib)),
        ("kill", lambda: part_kill(work / "kill", args.kills, args.steps, args.seed)),
        ("sshd", lambda: part_sshd(work / "sshd", sshd, args.restarts, args.steps, args.seed) if sshd else
         [Row("sshd", "sshd restarts", "skipped: no /usr/sbin/sshd", "-", False)]),
    ]
    rows: list[Row] = []
    try:
        for name, part in plan:
            if name in parts:
                t0 = time.monotonic()
                rows += part()
                print(f"[{name}: {time.monotonic() - t0:.0f} s]", file=sys.stderr)
    finally:
        if sshd:
            sshd.stop()
    width = max(len(r.fault) for r in rows)
    print(f"{'fault':<{width}}  {'figure':<60}  {'goal':<28}  met")
    for r in rows:
        print(f"{r.fault:<{width}}  {r.figure:<60}  {r.goal:<28}  {'yes' if r.met else 'NO'}")
    out = args.out or work / "bench_faults.json"
    out.write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    print(f"details: {out}", file=sys.stderr)
    return 0 if all(r.met for r in rows) else 1


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
