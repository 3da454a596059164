"""Jobs: a step's command as a script on the box, run in its own tmux window.

Nothing is typed into a shell: the script, a wrapper and a mode-600 env file are
written in one exec (a tar on stdin) and the window is started with
`tmux new-window -d ... 'bash run.sh'`. So seed 003's issue 5 (an unfinished
`export` swallowing the next send-keys) cannot happen by construction. The
wrapper writes the exit code atomically (`rc.tmp` then `mv`) and wakes the
controller with `tmux wait-for -S`; the job outlives the controller and the SSH
connection, and a person can `tmux attach -t <session>` and watch.
"""
from __future__ import annotations

import io
import shlex
import tarfile
import time
from dataclasses import dataclass, field

from agent_ops.secrets import env_file, sed_mask_script
from agent_ops.transport.base import Transport

WRAPPER = """#!/usr/bin/env bash
# Written by agentops: runs one step's script, records its exit code atomically, wakes the controller.
d={job_dir}
echo $$ > "$d/pid"
finish() {{ printf '%s\\n' "$1" > "$d/rc.tmp" && mv -f "$d/rc.tmp" "$d/rc"; {tmux} wait-for -S {channel} 2>/dev/null; exit 0; }}
{cd} || {{ echo "agentops: cannot cd to the step's cwd" > "$d/log"; finish 1; }}
if [ -f "$d/env" ]; then set -a; . "$d/env"; set +a; fi
if [ -f "$d/mask.sed" ]; then
  bash -eo pipefail "$d/script.sh" < /dev/null 2>&1 | sed -u -f "$d/mask.sed" | tee "$d/log"
  rc=${{PIPESTATUS[0]}}
else
  bash -eo pipefail "$d/script.sh" < /dev/null 2>&1 | tee "$d/log"
  rc=${{PIPESTATUS[0]}}
fi
finish "$rc"
"""

# One exec per wake-up reports every watched job and file: exit code (or -) and log size.
PROBE = """#!/usr/bin/env bash
# Written by agentops: wait (bounded) for a job to signal, then report state. Args: SECONDS [job:NAME | file:PATH]...
t=$1; shift
timeout "$t" {tmux} wait-for {channel} >/dev/null 2>&1
{tmux} list-windows -t {session} -F 'W #{{window_name}}' 2>/dev/null
logs=()
for item in "$@"; do
  case $item in
    job:*) n=${{item#job:}}; rc=-; [ -f "{jobs}/$n/rc" ] && read -r rc < "{jobs}/$n/rc"; echo "R $n ${{rc:--}}"; logs+=("{jobs}/$n/log");;
    file:*) logs+=("${{item#file:}}");;
  esac
done
[ ${{#logs[@]}} -gt 0 ] && stat -c 'S %s %n' -- "${{logs[@]}}" 2>/dev/null
exit 0
"""


class Tmux:
    """tmux command lines for one server (the default one, or a private `-L` socket)."""

    def __init__(self, socket: str | None) -> None:
        self.prefix = "tmux" + (f" -L {shlex.quote(socket)}" if socket else "")

    def cmd(self, *args: str) -> str:
        return " ".join([self.prefix, *(shlex.quote(a) for a in args)])


@dataclass(frozen=True)
class RunLayout:
    """Where one run lives on the target: its tmux session, wake-up channel and directories."""

    run_id: str
    run_dir: str  # absolute path on the target
    tmux: Tmux

    @property
    def session(self) -> str:
        return f"agentops-{self.run_id}"

    @property
    def channel(self) -> str:
        return f"agentops-{self.run_id}"

    @property
    def jobs_dir(self) -> str:
        return f"{self.run_dir}/jobs"

    def job_dir(self, name: str) -> str:
        return f"{self.jobs_dir}/{name}"

    def attach_hint(self) -> str:
        return self.tmux.cmd("attach", "-t", self.session)


@dataclass
class JobSpec:
    """Everything one attempt of a run step needs on the box."""

    step_id: str
    attempt: int
    script: str
    cwd: str | None
    env: dict[str, str] = field(default_factory=dict)  # includes secrets; goes only into the mode-600 file
    mask_values: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.step_id}-{self.attempt}"


@dataclass(frozen=True)
class JobHandle:
    """A started job: the names the controller needs to follow it."""

    name: str
    job_dir: str

    @property
    def log(self) -> str:
        return f"{self.job_dir}/log"

    @property
    def rc_path(self) -> str:
        return f"{self.job_dir}/rc"


def prepare_run(transport: Transport, layout: RunLayout) -> None:
    """Create the run directory, the probe script and the tmux session (idempotent)."""
    probe = PROBE.format(tmux=layout.tmux.prefix, channel=shlex.quote(layout.channel),
                         session=shlex.quote(layout.session), jobs=layout.jobs_dir)
    transport.put(f"{layout.run_dir}/probe.sh", probe.encode(), mode=0o755)
    script = (
        f"mkdir -p {shlex.quote(layout.jobs_dir)} && "
        f"{{ {layout.tmux.cmd('has-session', '-t', layout.session)} 2>/dev/null || "
        f"{layout.tmux.cmd('new-session', '-d', '-s', layout.session, '-n', 'agentops', '-x', '200', '-y', '50')}; }}"
    )
    result = transport.exec(script, timeout=30)
    if not result.ok:
        raise RuntimeError(f"cannot create tmux session {layout.session}: {result.stderr.decode(errors='replace').strip()}")


def start_job(transport: Transport, layout: RunLayout, spec: JobSpec) -> JobHandle:
    """Write the job's files and start its window, in one exec; a repeated call starts nothing twice."""
    handle = JobHandle(spec.name, layout.job_dir(spec.name))
    d = shlex.quote(handle.job_dir)
    start = (
        f"set -e; mkdir -p {d}; tar -x -C {d} -f -; "
        # mkdir is atomic: a retried exec (after a reconnect) never starts the job a second time.
        f"if mkdir {d}/.started 2>/dev/null; then "
        f"{layout.tmux.cmd('new-window', '-d', '-t', layout.session + ':', '-n', spec.name, 'bash ' + handle.job_dir + '/run.sh')}; fi"
    )
    result = transport.exec(start, stdin=_bundle(layout, spec, handle), timeout=30)
    if not result.ok:
        raise RuntimeError(f"cannot start job {spec.name}: {result.stderr.decode(errors='replace').strip()}")
    return handle


def _bundle(layout: RunLayout, spec: JobSpec, handle: JobHandle) -> bytes:
    cwd = spec.cwd
    if cwd is None:
        cd = 'cd "$HOME"'
    elif cwd == "~" or cwd.startswith("~/"):
        cd = 'cd "$HOME"' + (f"/{shlex.quote(cwd[2:])}" if cwd[2:] else "")
    else:
        cd = f"cd -- {shlex.quote(cwd)}"
    wrapper = WRAPPER.format(job_dir=shlex.quote(handle.job_dir), tmux=layout.tmux.prefix,
                             channel=shlex.quote(layout.channel), cd=cd)
    files = {"script.sh": (spec.script.encode(), 0o700), "run.sh": (wrapper.encode(), 0o700)}
    if spec.env:
        files["env"] = (env_file(spec.env), 0o600)
    if spec.mask_values:
        files["mask.sed"] = (sed_mask_script(spec.mask_values), 0o600)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def kill_job(transport: Transport, layout: RunLayout, handle: JobHandle) -> None:
    """Stop a job: SIGTERM its process group, then close its window."""
    pid = f"{handle.job_dir}/pid"
    script = (
        f"if [ -f {shlex.quote(pid)} ]; then p=$(cat {shlex.quote(pid)}); "
        f"pkill -TERM -P \"$p\" 2>/dev/null; kill -TERM \"$p\" 2>/dev/null; fi; "
        f"for w in $({layout.tmux.cmd('list-windows', '-t', layout.session, '-F', '#{window_id} #{window_name}')} 2>/dev/null"
        f" | awk '$2==\"{handle.name}\" {{print $1}}'); do {layout.tmux.prefix} kill-window -t \"$w\"; done; true"
    )
    transport.exec(script, timeout=30)


def kill_session(transport: Transport, layout: RunLayout) -> None:
    """End every job of the run (cancel): the whole tmux session goes."""
    transport.exec(f"{layout.tmux.cmd('kill-session', '-t', layout.session)} 2>/dev/null; true", timeout=30)


@dataclass
class Snapshot:
    """What one probe saw: live windows, exit codes of jobs, sizes of logs (by path)."""

    seq: int = 0
    windows: set[str] = field(default_factory=set)
    rcs: dict[str, int | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    at: float = 0.0


def probe(transport: Transport, layout: RunLayout, wait_s: float, jobs: list[str], files: list[str]) -> Snapshot:
    """Wait up to `wait_s` for a job's wake-up signal, then report the state of the given jobs and files."""
    args = " ".join(shlex.quote(a) for a in [f"{wait_s:.3f}", *(f"job:{j}" for j in jobs), *(f"file:{f}" for f in files)])
    result = transport.exec(f"bash {shlex.quote(layout.run_dir)}/probe.sh {args}", timeout=wait_s + 30)
    snap = Snapshot(at=time.monotonic())
    for line in result.text().splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "W":
            snap.windows.add(rest)
        elif tag == "R":
            name, _, rc = rest.partition(" ")
            snap.rcs[name] = int(rc) if rc.lstrip("-").isdigit() else None
        elif tag == "S":
            size, _, path = rest.partition(" ")
            snap.sizes[path] = int(size)
    return snap
