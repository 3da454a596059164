"""Benchmark: one 10-step runbook fanned out to N = 1, 4, 16 boxes, agentops vs ansible-playbook (forks = N).

Run from the repository root::

    python tests/bench/bench_fleet.py                     # N = 1, 4, 16; 10 steps; 3 rounds
    python tests/bench/bench_fleet.py --nodes 1,4 --repeat 1 --no-ansible   # quick iteration

Every box is a private OpenSSH server on 127.0.0.1 (tests/sshd.py: its own port, host key, client key,
known_hosts entry and empty HOME, so no ~/.bashrc runs: Ansible's best case), all on this machine.
Both contenders run in the same invocation, interleaved, each in a fresh process:

- agentops: `agentops run` of a runbook of 10 `run` steps (`command: "true"`, each `needs` the one
  before, `on: all` by default) with `--inventory FILE -t fleet` (a group of the N boxes, each its own
  tmux socket), the journal under a temporary AGENTOPS_HOME;
- Ansible: `ansible-playbook` of the same 10 tasks (`ansible.builtin.command: "true"`, `gather_facts:
  false`, the linear strategy: each task on every box before the next), `forks = N`, the ssh plugin
  with pipelining and ControlMaster (a fresh ControlPath directory per run, masters closed after: a
  cold start, as agentops has), host keys checked against the same known_hosts.

Per run: wall time, and the controller's CPU seconds (user + system) and peak RSS from wait4() on
the process, which covers what it ran and reaped (Ansible's forked workers and ssh clients; agentops
runs no local processes); and the boxes' CPU seconds: what the sshd servers' sessions (the remote
runner, Ansible's modules) and the runs' tmux servers (agentops' job shells) used, read from
/proc. All boxes share this machine's cores with the controller, so the boxes' CPU is wall time
the controller waits for on a host with fewer cores than boxes. Figures are medians over --repeat rounds. Goals (issue 13): agentops
wall(16) <= 1.5 x wall(1); controller memory grows <= 10 MB per box; at N = 16 agentops >= 5x
faster than Ansible. They are reported, not enforced; the JSON result file holds every sample.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_executor import close_masters, write_playbook, write_runbook  # noqa: E402 -- after the sys.path line above
from tests.sshd import SSHServer, sshd_available  # noqa: E402

STEPS = 10
WALL_GOAL = 1.5  # wall(16) <= 1.5 x wall(1)
MB_PER_BOX_GOAL = 10.0  # controller RSS growth per box
SPEEDUP_GOAL = 5.0  # Ansible's wall / agentops' wall at the largest N


@dataclass
class Sample:
    """One timed run of one contender on N boxes."""

    tool: str
    nodes: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    ok: bool
    box_cpu_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float, float, float]:
    """Run `cmd`; (result, wall s, CPU s of it and what it reaped, its peak RSS in MB) from wait4()."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return result, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """A process's CPU seconds, its reaped children's included (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime


def _tmux_servers(sockets: list[str]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"tmux") and any(s.encode() in args for s in sockets):
                found.append(int(entry.name))
    return found


class FleetBench:
    def __init__(self, root: Path, servers: list[SSHServer], python3: str, ansible: str) -> None:
        self.root, self.servers, self.python3, self.ansible = root, servers, python3, ansible
        self.home = root / "agentops-home"
        self.runbook = write_runbook(root / "runbook.yaml", STEPS, name="bench_fleet")
        self.playbook = write_playbook(root / "playbook.yml", STEPS, hosts="fleet")
        self.sockets = [f"agentops-bench-fleet-{os.getpid()}-{i}" for i in range(len(servers))]
        self._runs = 0

    def inventory(self, n: int) -> Path:
        path = self.root / f"agentops-inventory-{n}.yaml"
        hosts = {f"b{i:02d}": {"url": f"ssh://{s.user}@{s.host}:{s.port}", "identity": str(s.identity),
                               "known_hosts": str(s.known_hosts), "tmux_socket": self.sockets[i]}
                 for i, s in enumerate(self.servers[:n])}
        path.write_text(json.dumps({"hosts": hosts, "groups": {"fleet": list(hosts)}}))
        return path

    def box_cpu(self) -> float:
        """CPU seconds used so far by every box: sshd servers (their ended sessions) and the runs' tmux servers."""
        pids = [s.pid for s in self.servers if s.pid] + _tmux_servers(self.sockets)
        return sum(_cpu_of(pid) for pid in pids)

    def agentops(self, n: int) -> Sample:
        cmd = [sys.executable, "-m", "agent_ops.front.cli", "run", str(self.runbook), "--inventory", str(self.inventory(n)),
               "-t", "fleet", "--json"]
        before = self.box_cpu()
        proc, wall, cpu, rss = timed(cmd, {**os.environ, "AGENTOPS_HOME": str(self.home)}, ROOT)
        box_cpu = self._settled_box_cpu() - before
        detail: dict[str, Any] = {"rc": proc.returncode}
        try:
            status = json.loads(proc.stdout)
            detail["run_id"] = status["id"]
            detail["executor_s"] = status["elapsed_s"]
            parts = sum(len(s["nodes"]) for s in status["steps"] if s["state"] == "succeeded")
            ok = proc.returncode == 0 and parts == STEPS * n
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            ok, detail["error"] = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            detail["output"] = (proc.stdout[-1500:], proc.stderr[-1500:])
        return Sample("agentops", n, wall, cpu, rss, ok, detail=detail, box_cpu_s=box_cpu)

    def ansible_inventory(self, n: int) -> Path:
        path = self.root / f"ansible-inventory-{n}.ini"
        lines = ["[fleet]"] + [
            f"b{i:02d} ansible_host={s.host} ansible_port={s.port} ansible_user={s.user} "
            f"ansible_ssh_private_key_file={s.identity} ansible_python_interpreter={self.python3} "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={s.known_hosts} -o StrictHostKeyChecking=yes'"
            for i, s in enumerate(self.servers[:n])]
        path.write_text("\n".join(lines) + "\n")
        return path

    def ansible_run(self, n: int) -> Sample:
        self._runs += 1
        control_dir = self.root / f"ansible-cp-{self._runs}"  # a fresh master per run: every run starts cold
        control_dir.mkdir()
        cfg = self.root / f"ansible-{n}.cfg"
        cfg.write_text(
            "[defaults]\n"
            f"inventory = {self.ansible_inventory(n)}\n"
            f"forks = {n}\n"
            "host_key_checking = True\n"
            "retry_files_enabled = False\n"
            f"local_tmp = {self.root / 'ansible-local'}\n"
            "[ssh_connection]\n"
            "pipelining = True\n"
            "ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s\n"
        )
        env = {**os.environ, "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
               "ANSIBLE_NOCOLOR": "1"}
        before = self.box_cpu()
        proc, wall, cpu, rss = timed([self.ansible, str(self.playbook)], env, self.root)
        close_masters(control_dir)
        box_cpu = self._settled_box_cpu() - before
        recaps = [line for line in proc.stdout.splitlines() if line.startswith("b") and " : ok=" in line]
        ok = proc.returncode == 0 and len(recaps) == n and all(f"ok={STEPS} " in r and "failed=0" in r for r in recaps)
        detail: dict[str, Any] = {"rc": proc.returncode, "hosts_ok": len(recaps)}
        if not ok:
            detail["output"] = (proc.stdout[-1500:], proc.stderr[-1500:])
        return Sample("ansible", n, wall, cpu, rss, ok, detail=detail, box_cpu_s=box_cpu)

    def _settled_box_cpu(self, grace: float = 2.0) -> float:
        """The boxes' CPU once the sessions of the run that just ended have been reaped (their CPU lands in sshd's)."""
        deadline = time.monotonic() + grace
        last = self.box_cpu()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.box_cpu()
            if now == last:
                return now
            last = now
        return last

    def cleanup(self) -> None:
        for socket in self.sockets:
            subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, capture_output=True)


def summarize(samples: list[Sample], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in ("agentops", "ansible"):
        rows = {}
        for n in sizes:
            mine = [s for s in samples if s.tool == tool and s.nodes == n]
            if mine:
                rows[n] = {"wall_s": statistics.median(s.wall_s for s in mine), "cpu_s": statistics.median(s.cpu_s for s in mine),
                           "peak_rss_mb": statistics.median(s.peak_rss_mb for s in mine),
                           "box_cpu_s": statistics.median(s.box_cpu_s for s in mine),
                           "wall_s_range": [min(s.wall_s for s in mine), max(s.wall_s for s in mine)]}
        if rows:
            out[tool] = rows
    a, lo, hi = out.get("agentops", {}), min(sizes), max(sizes)
    if lo in a and hi in a and hi > lo:
        out["wall_ratio"] = a[hi]["wall_s"] / a[lo]["wall_s"]
        out["mb_per_box"] = (a[hi]["peak_rss_mb"] - a[lo]["peak_rss_mb"]) / (hi - lo)
        out["wall_goal_met"] = out["wall_ratio"] <= WALL_GOAL
        out["memory_goal_met"] = out["mb_per_box"] <= MB_PER_BOX_GOAL
        # The wall time this host allows at best: the extra CPU the larger fleet costs (controller and boxes, which
        # share this host's cores) spread perfectly over every core, on top of the small fleet's wall. On boxes with
        # CPUs of their own only the controller's share would be on this host.
        extra_cpu = (a[hi]["cpu_s"] - a[lo]["cpu_s"]) + (a[hi]["box_cpu_s"] - a[lo]["box_cpu_s"])
        out["host_cores"] = os.cpu_count() or 1
        out["wall_floor_s"] = a[lo]["wall_s"] + max(0.0, extra_cpu) / out["host_cores"]
        out["wall_floor_ratio"] = out["wall_floor_s"] / a[lo]["wall_s"]
    b = out.get("ansible", {})
    if hi in a and hi in b:
        out["speedup_at_max"] = b[hi]["wall_s"] / a[hi]["wall_s"]
        out["speedup_goal_met"] = out["speedup_at_max"] >= SPEEDUP_GOAL
    return out


def print_table(summary: dict[str, Any], sizes: list[int], repeat: int) -> None:
    print(f"\nFleet benchmark: {STEPS} sequential trivial steps on every box, N loopback sshd boxes, median of {repeat} rounds\n")
    head = f"{'':<10} {'N':>3} {'wall':>9} {'CPU':>9} {'peak RSS':>10} {'boxes CPU':>10}"
    print(head)
    print("-" * len(head))
    for tool in ("agentops", "ansible"):
        for n, row in summary.get(tool, {}).items():
            print(f"{tool:<10} {n:>3} {row['wall_s']:>7.2f} s {row['cpu_s']:>7.2f} s {row['peak_rss_mb']:>7.1f} MB "
                  f"{row['box_cpu_s']:>8.2f} s")
    print()
    if "wall_ratio" in summary:
        print(f"agentops wall({max(sizes)}) / wall({min(sizes)}): {summary['wall_ratio']:.2f} (goal <= {WALL_GOAL}: "
              f"{'met' if summary['wall_goal_met'] else 'NOT met'})")
        print(f"  the best this host allows: {summary['wall_floor_ratio']:.2f} (wall({min(sizes)}) + the extra controller and "
              f"box CPU over {summary['host_cores']} cores = {summary['wall_floor_s']:.2f} s)")
        print(f"agentops controller memory per extra box: {summary['mb_per_box']:.2f} MB (goal <= {MB_PER_BOX_GOAL:g}: "
              f"{'met' if summary['memory_goal_met'] else 'NOT met'})")
    if "speedup_at_max" in summary:
        print(f"at N = {max(sizes)}: Ansible wall / agentops wall = {summary['speedup_at_max']:.1f}x (goal >= {SPEEDUP_GOAL:g}x: "
              f"{'met' if summary['speedup_goal_met'] else 'NOT met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,4,16", help="fleet sizes, comma-separated (default 1,4,16)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file (default: $TMPDIR/agentops-bench/...)")
    parser.add_argument("--no-ansible", action="store_true", help="agentops only (quick iteration)")
    parser.add_argument("--python3", default="/usr/bin/python3", help="Ansible's interpreter on the boxes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (keys, inventories, journal)")
    args = parser.parse_args()
    sizes = sorted({int(x) for x in args.nodes.split(",")})
    ansible = shutil.which("ansible-playbook") or str(Path(sys.executable).parent / "ansible-playbook")
    missing = [name for name, ok in (("sshd (openssh-server)", sshd_available()), ("tmux", shutil.which("tmux")),
                                     ("ansible-playbook", args.no_ansible or os.access(ansible, os.X_OK))) if not ok]
    if missing:
        print(f"bench_fleet: missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="agentops-bench-fleet-"))
    servers = []
    for i in range(max(sizes)):
        (root / f"sshd{i}").mkdir()
        servers.append(SSHServer(root / f"sshd{i}"))
        servers[-1].start()  # at once: the free port it picked is free only until someone else takes it
    bench = FleetBench(root, servers, args.python3, ansible)
    samples: list[Sample] = []
    try:
        runs = [(tool, n) for n in sizes for tool in ("agentops", *(() if args.no_ansible else ("ansible",)))]
        for rnd in range(args.repeat):
            order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]  # rotated: noise falls on every contender alike
            for tool, n in order:
                sample = bench.agentops(n) if tool == "agentops" else bench.ansible_run(n)
                samples.append(sample)
                print(f"round {rnd + 1}/{args.repeat}: {tool:<8} N={n:<3} {sample.wall_s:6.2f} s wall {sample.cpu_s:6.2f} s CPU "
                      f"{sample.peak_rss_mb:6.1f} MB, boxes {sample.box_cpu_s:6.2f} s CPU{'' if sample.ok else '  FAILED'}", flush=True)
                if not sample.ok:
                    print(json.dumps(sample.detail, indent=2), file=sys.stderr)
                    return 1
        summary = summarize(samples, sizes)
        print_table(summary, sizes, args.repeat)
        out = args.out or Path(tempfile.gettempdir()) / "agentops-bench" / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "bench_fleet", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": STEPS, "sizes": sizes,
            "repeat": args.repeat, "host": platform.node(), "cpus": os.cpu_count(), "load_avg_after": os.getloadavg(),
            "summary": summary, "samples": [asdict(s) for s in samples],
        }, indent=2, default=str) + "\n")
        print(f"\nresult: {out}")
    finally:
        bench.cleanup()
        for server in servers:
            server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
