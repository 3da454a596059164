"""Jobs: a step's command as a script on the box, run in its own tmux window.

Nothing is typed into a shell: the script, a wrapper and a mode-600 env file are
written with Transport.put_files (one round trip), and the window is opened with
`tmux new-window -d ... bash run.sh` (on a run's own tmux server through the
transport's control-mode client, so a job start forks no shell and no tmux client on
the box, only the window's own processes). Seed 003's issue 5 (an unfinished `export`
swallowing the next send-keys) cannot happen by construction. The wrapper runs the job
only once (an exclusive create of `.started`: a start repeated after a reconnect opens a
window that ends at once), removes the files that hold secrets before the job starts,
sends the job's output straight to its log file (through a masking filter when it has
secrets) while the window's pane follows that file, writes the exit code atomically
(`rc.tmp` then `mv`) and wakes the controller through the run's wake-up FIFO; the job
outlives the controller and the SSH connection, and a person can `tmux -L <socket>
attach -t <session>` and watch.

Each run gets a tmux server of its own (socket `agentops-<run id>`) unless the target
names a socket; RunLayout.on says which, end_run_tmux ends it with the run.

Why a FIFO and not `tmux wait-for`: a wait-for signal sent while nobody waits is
remembered, but a second one then *cancels* it (tmux 3.3a drops the channel), and a
waiter killed by `timeout` stays registered and swallows the next signal; both
lost wake-ups, each costing a whole poll interval. Bytes written to the FIFO are
kept only while a probe holds it open, so nothing goes stale between probes; a
probe opens it before it looks at any exit code, so no end goes unseen.
"""
from __future__ import annotations

import inspect
import shlex
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from agent_ops.errors import AgentOpsError, TransportError
from agent_ops.run import mask_stream
from agent_ops.secret_values import env_file, hex_mask_list, sed_mask_script
from agent_ops.transport.base import ProbeRequest, Transport
from agent_ops.transport.target import TargetSpec
from agent_ops.transport.tmux import Tmux, run_tmux_socket

WRAPPER = """#!/usr/bin/env bash
# Written by agentops: runs one step's script once, its output straight to its log; records its exit code atomically,
# wakes the controller.
d={job_dir}
# Only the first start runs the job (noclobber's create is exclusive): a start repeated after a reconnect ends here.
set -C; {{ : > "$d/.started"; }} 2>/dev/null || exit 0; set +C
echo $$ > "$d/pid"
# The wake-up goes out as soon as rc.tmp holds the whole line (the probe reads it there): the rename, a process of
# its own, is not waited for. rc appears whole, by the rename, a moment later. A line that cannot be written (a full
# disk) leaves no rc at all, never an empty one (that reads as "running"): no exit code and no window is a lost job,
# which the controller then explains.
finish() {{
  if printf '%s\\n' "$1" 2>/dev/null > "$d/rc.tmp"; then {wake}; mv -f "$d/rc.tmp" "$d/rc"; else rm -f "$d/rc.tmp"; {wake}; fi
  exit 0
}}
# Secrets stay on disk only until the job starts: the env file is sourced, the mask opened (fd 3), then all removed.
secret_files=(); for f in env mask.hex mask.sed; do [ -e "$d/$f" ] && secret_files+=("$d/$f"); done
if [ -f "$d/env" ]; then set -a; . "$d/env"; set +a; fi
mask=()
if [ -f "$d/mask.hex" ] && command -v python3 > /dev/null; then exec 3< "$d/mask.hex"; mask=(python3 {mask_program})
elif [ -f "$d/mask.sed" ]; then exec 3< "$d/mask.sed"; mask=(sed -u -f /dev/fd/3); fi
[ ${{#secret_files[@]}} = 0 ] || rm -f -- "${{secret_files[@]}}"
{cd} || {{ echo "agentops: cannot cd to the step's cwd" >> "$d/log"; finish 1; }}
# The job writes to its log file, never through tmux (a pane slowed a 1 GiB write 38x); the pane follows the file.
: >> "$d/log"
tail -n +1 -f "$d/log" 3<&- 2> /dev/null &
follower=$!
# The job's stdin is the pane's terminal (the follower, a background job, reads /dev/null): a prompt (`read -p`, [Y/n],
# a password request) waits there for an answer typed into the pane, and the controller reports it (run/pane.py).
if [ ${{#mask[@]}} -gt 0 ]; then
  bash -eo pipefail "$d/script.sh" 2>&1 3<&- | "${{mask[@]}}" >> "$d/log"
  rc=${{PIPESTATUS[0]}}
else
  bash -eo pipefail "$d/script.sh" >> "$d/log" 2>&1
  rc=$?
fi
kill "$follower" 2> /dev/null
finish "$rc"
"""

# One look per wake-up reports every watched job and file: exit codes (or -), and for what still runs, log sizes.
# Transports run it as remote_runner.probe (Python, no process); this bash version serves a box without python3.
PROBE = """#!/usr/bin/env bash
# Written by agentops: wait (bounded) for a job to end, then report state. Args: SECONDS [run:NAME | job:NAME | file:PATH]...
# run:NAME is a job not yet seen ending, job:NAME one whose exit code is known (reported, never waited for).
t=$1; shift
# A job's exit code: rc.tmp first, then rc (the wrapper renames one to the other, so one of them has it), and only a
# whole line (read fails without the newline); - while it runs.
rc_of() {{ rc=; {{ read -r rc < "{jobs}/$1/rc.tmp" || read -r rc < "{jobs}/$1/rc"; }} 2>/dev/null || rc=-; }}
# Open the wake-up FIFO first: a job that ends from now on writes to it and ends the read below at once; one that
# ended before left its exit code, looked at next (it is written before the wake-up).
fifo=0; if [ -p {wake_path} ]; then exec 9<>{wake_path}; fifo=1; fi
for item in "$@"; do case $item in run:*) rc_of "${{item#run:}}"; [ "$rc" != - ] && t=0;; esac; done
if [ "$t" != 0 ]; then
  # read: 0 woken, >128 timed out; anything else (a bash without fractional -t) must not turn into a busy loop.
  r=1; [ $fifo = 1 ] && {{ read -r -t "$t" -n 1 -u 9 _; r=$?; }}
  [ $r = 0 ] || [ $r -gt 128 ] || sleep "$t"
fi
logs=(); live=0
for item in "$@"; do
  case $item in
    run:*|job:*) n=${{item#*:}}; rc_of "$n"; echo "R $n $rc"
      if [ "$rc" = - ]; then live=1; logs+=("{jobs}/$n/log"); elif [ ! -s "{jobs}/$n/log" ]; then echo "S 0 {jobs}/$n/log"; fi;;
    file:*) logs+=("${{item#file:}}");;
  esac
done
# Windows and log sizes matter only for jobs still running (the follower of an ended job reads its log to the end,
# skipping that when the test above saw it empty), and each costs a process: a probe that sees jobs end runs none.
[ $live = 1 ] && {tmux} list-windows -t {session} -F 'W #{{window_name}}' 2>/dev/null
[ ${{#logs[@]}} -gt 0 ] && stat -c 'S %s %n' -- "${{logs[@]}}" 2>/dev/null
exit 0
"""


class JobError(AgentOpsError):
    """The target could not host a run or start a job (tmux missing or refusing, a directory not writable)."""

    code = "job_error"


@dataclass(frozen=True)
class RunLayout:
    """Where one run lives on the target: its tmux server and session, wake-up FIFO and directories."""

    run_id: str
    run_dir: str  # absolute path on the target
    tmux: Tmux

    @classmethod
    def on(cls, target: TargetSpec, run_id: str, run_dir: str) -> RunLayout:
        """The layout of a run on `target`: the tmux socket the target names (shared), else a server of the run's own."""
        return cls(run_id, run_dir, Tmux(run_tmux_socket(target.tmux_socket, run_id), private=target.tmux_socket is None))

    @property
    def session(self) -> str:
        return f"agentops-{self.run_id}"

    @property
    def wake_path(self) -> str:
        return f"{self.run_dir}/wake"

    def wake_command(self) -> str:
        """Shell that wakes a waiting probe; never blocks (O_RDWR open of a FIFO) and never creates a plain file."""
        fifo = shlex.quote(self.wake_path)
        return f"{{ [ -p {fifo} ] && printf . 1<>{fifo}; }} 2>/dev/null"

    @property
    def jobs_dir(self) -> str:
        return f"{self.run_dir}/jobs"

    @property
    def mask_program(self) -> str:
        """run/mask_stream.py on the box: the filter that masks secrets in the output of jobs that have them."""
        return f"{self.run_dir}/mask.py"

    def job_dir(self, name: str) -> str:
        return f"{self.jobs_dir}/{name}"

    def attach_hint(self) -> str:
        return self.tmux.attach(self.session)


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
    """Create the run directory, the wake-up FIFO, the probe and mask programs and the tmux session (idempotent).

    The session is made through transport.tmux: on a server of the run's own, that first command starts the server
    with the transport's control-mode client, the one way such a client is opened (remote_runner.TmuxControl).
    """
    probe = PROBE.format(tmux=layout.tmux.prefix, wake_path=shlex.quote(layout.wake_path),
                         session=shlex.quote(layout.session), jobs=layout.jobs_dir)
    transport.put_files({f"{layout.run_dir}/probe.sh": (probe.encode(), 0o755),
                         layout.mask_program: (inspect.getsource(mask_stream).encode(), 0o644)})
    wake = shlex.quote(layout.wake_path)
    made = transport.exec(f"mkdir -p {shlex.quote(layout.jobs_dir)} && {{ [ -p {wake} ] || mkfifo -m 600 {wake}; }}", timeout=30)
    if not made.ok:
        raise JobError(f"cannot prepare {layout.run_dir}: {made.stderr.decode(errors='replace').strip()}")
    tmux, session = layout.tmux, layout.session
    if transport.tmux(tmux.socket, ["has-session", "-t", f"={session}"], private=tmux.private, timeout=30).ok:
        return
    result = transport.tmux(tmux.socket, ["new-session", "-d", "-s", session, "-n", "agentops", "-x", "200", "-y", "50"],
                            private=tmux.private, timeout=30)
    if not result.ok:
        raise JobError(f"cannot create tmux session {session}: {result.stderr.decode(errors='replace').strip()}")


def start_job(transport: Transport, layout: RunLayout, spec: JobSpec) -> JobHandle:
    """Write the job's files and open its window; a repeated call runs nothing twice (the wrapper's guard)."""
    handle = JobHandle(spec.name, layout.job_dir(spec.name))
    transport.put_files({f"{handle.job_dir}/{name}": file for name, file in _files(layout, spec, handle).items()})
    # argv, not a shell command: tmux execs bash itself, one shell less per job.
    result = transport.tmux(layout.tmux.socket, ["new-window", "-d", "-t", layout.session + ":", "-n", spec.name,
                                                 "bash", f"{handle.job_dir}/run.sh"], private=layout.tmux.private, timeout=30)
    if not result.ok:
        raise JobError(f"cannot start job {spec.name}: {result.stderr.decode(errors='replace').strip()}")
    return handle


def _files(layout: RunLayout, spec: JobSpec, handle: JobHandle) -> dict[str, tuple[bytes, int]]:
    """The job directory's files: script, wrapper and, for secrets, a mode-600 env file and mask."""
    cwd = spec.cwd
    if cwd is None:
        cd = 'cd "$HOME"'
    elif cwd == "~" or cwd.startswith("~/"):
        cd = 'cd "$HOME"' + (f"/{shlex.quote(cwd[2:])}" if cwd[2:] else "")
    else:
        cd = f"cd -- {shlex.quote(cwd)}"
    wrapper = WRAPPER.format(job_dir=shlex.quote(handle.job_dir), wake=layout.wake_command(), cd=cd,
                             mask_program=shlex.quote(layout.mask_program))
    files = {"script.sh": (spec.script.encode(), 0o700)}
    if spec.env:
        files["env"] = (env_file(spec.env), 0o600)
    if spec.mask_values:  # the wrapper masks with python3 where the box has it, else with sed (slow, but correct)
        files["mask.hex"] = (hex_mask_list(spec.mask_values), 0o600)
        files["mask.sed"] = (sed_mask_script(spec.mask_values), 0o600)
    files["run.sh"] = (wrapper.encode(), 0o700)
    return files


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
    """End every job of the run: its tmux session goes (the server stays, for a session made anew)."""
    transport.exec(f"{layout.tmux.cmd('kill-session', '-t', layout.session)} 2>/dev/null; true", timeout=30)


def end_run_tmux(transport: Transport, layout: RunLayout) -> None:
    """End every job of the run and what tmux kept for it: a server of the run's own goes whole, with the socket
    file tmux leaves behind; on a server that others may share (a socket the target names), only the run's session."""
    if not layout.tmux.private:
        kill_session(transport, layout)
        return
    tmux = layout.tmux
    transport.exec(f"s=$({tmux.cmd('list-sessions', '-F', '#{socket_path}')} 2>/dev/null | head -n 1); "
                   f"{tmux.cmd('kill-server')} 2>/dev/null; [ -z \"$s\" ] || rm -f -- \"$s\"; true", timeout=30)


def exit_code_written(transport: Transport, handle: JobHandle) -> bool:
    """Whether the job's rc file holds its whole line (one a full disk left empty does not)."""
    try:
        return transport.read_from(handle.rc_path, 0, 64).endswith(b"\n")
    except FileNotFoundError:
        return False


def unwritable_reason(transport: Transport, handle: JobHandle) -> str | None:
    """Why a job could leave no exit code, where the box can tell: its directory takes no new bytes (a full disk)."""
    check = f"{handle.job_dir}/.write-check"
    try:
        transport.put(check, b"agentops write check\n", mode=0o600)
    except TransportError as exc:
        return f"its directory cannot be written: {exc}"
    transport.exec(f"rm -f -- {shlex.quote(check)}", timeout=30)
    return None


def probe_request(layout: RunLayout, wait_s: float, jobs: list[str], files: list[str],
                  ended: Collection[str] = ()) -> ProbeRequest:
    """What probe() asks the transport: PROBE's arguments, and PROBE itself as a command line for the fallback."""
    wait = f"{wait_s:.3f}" if wait_s >= 0.001 else "0"
    items = tuple(f"{'job' if j in ended else 'run'}:{j}" for j in jobs) + tuple(f"file:{f}" for f in files)
    args = " ".join(shlex.quote(a) for a in [wait, *items])
    return ProbeRequest(wait_s=float(wait), wake_fifo=layout.wake_path, jobs_dir=layout.jobs_dir, items=items,
                        tmux_socket=layout.tmux.socket, tmux_private=layout.tmux.private, session=layout.session,
                        script=f"bash {shlex.quote(layout.run_dir)}/probe.sh {args}")


@dataclass
class Snapshot:
    """What one probe saw: live windows, exit codes of jobs, sizes of logs (by path)."""

    seq: int = 0
    windows: set[str] = field(default_factory=set)
    rcs: dict[str, int | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    at: float = 0.0  # when the answer came (monotonic)
    sent: float = 0.0  # when the probe was sent: it cannot have seen a window made after this


def probe(transport: Transport, layout: RunLayout, wait_s: float, jobs: list[str], files: list[str],
          ended: Collection[str] = ()) -> Snapshot:
    """Wait up to `wait_s` for a job to end, then report the state of the given jobs and files.

    `ended`: those of `jobs` already seen ending; they are reported but not waited for (if any other
    job has already ended, nothing waits).
    """
    request = probe_request(layout, wait_s, jobs, files, ended)
    sent = time.monotonic()
    report = transport.probe(request)
    snap = Snapshot(at=time.monotonic(), sent=sent)
    for line in report.splitlines():
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
