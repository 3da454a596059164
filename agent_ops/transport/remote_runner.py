"""The remote runner: a tiny stdlib-only program that SSHTransport starts once per connection.

Why it exists: every new SSH channel costs a round trip, and the user's login shell
sources ~/.bashrc for each one (~90 ms with pyenv/conda). The runner is started once
per connection on one long-lived exec channel, so that cost is paid once; afterwards
each exec is one frame out and one frame back.

Protocol, on the channel's stdin/stdout:
  runner -> client, once:  b"AGENTOPS-RUNNER-1 <nonce>\\n"  (anything before it is bashrc noise)
  then frames both ways:   4-byte big-endian length + UTF-8 JSON
  request:  {"id": int, "script": str, "stdin": base64 | null, "timeout": float | null}
            {"id": int, "op": "put", "files": [[path: str, data: base64, mode: int], ...]}
            {"id": int, "op": "tmux", "socket": str | null, "private": bool, "args": [str], "timeout": float | null}
            {"id": int, "op": "probe", ...ProbeRequest's fields}  (answered like an exec: rc 0, the report on stdout)
  response: {"id": int, "rc": int, "stdout": base64, "stderr": base64}
            or {"id": int, "error": str} when the command could not even be started.

`put` writes files the way Transport.put promises (parents made, a temp file created
private then given its mode, renamed into place), in order, with no process and one
round trip for all of them (SFTP takes six per file). `tmux` runs one tmux command,
on a run's own server through a control-mode client kept open (see TmuxControl), so a
job start forks no shell and no tmux client on the box. `probe` is the monitor's look at a
run's jobs (see probe() below), also without a process.

Each request runs in its own thread as `bash --norc --noprofile -c script` in a new
session (process group), so several can be in flight and a timeout kills the whole
group (rc 124). The runner exits when its stdin closes (the connection went away),
killing whatever it still runs so a retried exec never races its first attempt. Jobs
started through tmux survive: the tmux server daemonizes out of our process groups.

This file's source text is sent to the box and run by the box's python3, which may be
old (3.5 on aged images): no annotations, no f-strings, stdlib only.
"""
import base64
import json
import os
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

HELLO = b"AGENTOPS-RUNNER-1"
TIMEOUT_RC = 124
# --norc matters: a bash whose parent is sshd sources ~/.bashrc even when not interactive.
BASH = ["bash", "--norc", "--noprofile", "-c"]
# After killing a timed-out group, how long to wait for output from strays that left it.
DRAIN_AFTER_KILL_S = 5.0


def read_exact(stream, size):
    """`size` bytes from `stream`, or None at end of input."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_request(stream):
    """The next request frame as a dict, or None when the client has gone."""
    header = read_exact(stream, 4)
    if header is None:
        return None
    body = read_exact(stream, struct.unpack(">I", header)[0])
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))


class Writer:
    """Writes response frames; one lock so frames from parallel requests never interleave."""

    def __init__(self, stream):
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message):
        body = json.dumps(message).encode("utf-8")
        with self.lock:
            try:
                self.stream.write(struct.pack(">I", len(body)) + body)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # the client is gone; reading stdin will see EOF and end the runner


class Runner:
    """Runs requests in threads and remembers their processes so they can be killed at exit."""

    def __init__(self, writer):
        self.writer = writer
        self.lock = threading.Lock()
        self.running = {}
        self.tmux = {}  # tmux socket name (None: the default server) -> TmuxControl

    def start(self, request):
        thread = threading.Thread(target=self.serve, args=(request,))
        thread.daemon = True
        thread.start()

    def serve(self, request):
        try:
            reply = self.run(request)
        except Exception as exc:  # a bug here must not kill the runner: report it instead
            reply = {"error": "runner: %s: %s" % (type(exc).__name__, exc)}
        reply["id"] = request.get("id")
        self.writer.send(reply)

    def run(self, request):
        op = request.get("op", "exec")
        if op == "put":
            for path, data, mode in request["files"]:
                put_file(path, base64.b64decode(data), mode)
            return {"rc": 0, "stdout": "", "stderr": ""}
        if op == "tmux":
            control = self.control(request.get("socket"), request.get("private", False))
            rc, out, err = control.run(request["args"], request.get("timeout"))
            return {"rc": rc, "stdout": b64(out), "stderr": b64(err)}
        if op == "probe":
            report = probe(request, self.control(request.get("tmux_socket"), request.get("tmux_private", False)).run)
            return {"rc": 0, "stdout": b64(report.encode("utf-8")), "stderr": ""}
        return self.exec(request)

    def control(self, socket, private):
        """The tmux client for `socket`, made on first use."""
        with self.lock:
            return self.tmux.setdefault(socket, TmuxControl(socket, private))

    def exec(self, request):
        data = request.get("stdin")
        data = None if data is None else base64.b64decode(data)
        try:
            proc = start_bash(request["script"], data is not None)
        except OSError as exc:
            return {"error": "cannot start bash: %s" % exc}
        with self.lock:
            self.running[proc.pid] = proc
        try:
            rc, out, err = communicate(proc, data, request.get("timeout"))
        finally:
            with self.lock:
                self.running.pop(proc.pid, None)
        return {"rc": rc, "stdout": b64(out), "stderr": b64(err)}

    def kill_all(self):
        with self.lock:
            procs = list(self.running.values())
            controls = list(self.tmux.values())
        for proc in procs:
            kill_group(proc.pid)
        for control in controls:
            control.close()


def start_bash(script, with_stdin, env=None):
    """`bash --norc --noprofile -c script` in a new session (so a timeout kills its whole group); OSError if it cannot
    start. LocalTransport runs its commands through this too: one way to run a command, on the box and here."""
    return subprocess.Popen(BASH + [script], stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)


def communicate(proc, data, timeout):
    """(rc, stdout, stderr); on timeout the process group is killed and rc is TIMEOUT_RC."""
    try:
        out, err = proc.communicate(data, timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
    try:
        out, err = proc.communicate(timeout=DRAIN_AFTER_KILL_S)
    except subprocess.TimeoutExpired:
        # Something left the group (setsid) and still holds our pipes: stop waiting for it.
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        proc.wait()
        out, err = b"", b""
    return TIMEOUT_RC, out, err


def probe(request, tmux):
    """jobs.PROBE in Python: the same arguments (ProbeRequest's fields), the same report, and no process at all.

    Waits up to `wait_s` on the run's wake-up FIFO unless a `run:` job has already ended, then
    reports `R NAME RC|-` for each job, and for jobs still running their windows (`W NAME`, through
    `tmux(args, timeout)`) and log sizes (`S SIZE PATH`, also for `file:` items); an ended job's
    empty log is reported as `S 0 PATH`. tests/test_transport_jobs.py holds the two versions to one report.
    """
    jobs_dir = request["jobs_dir"]
    items = [item.partition(":")[::2] for item in request["items"]]
    wait_s = request["wait_s"]
    fifo = open_fifo(request["wake_fifo"])  # first: a job ending from now on wakes the wait below
    try:
        if any(kind == "run" and exit_code(jobs_dir, name) != "-" for kind, name in items):
            wait_s = 0
        if wait_s > 0 and fifo is None:
            time.sleep(wait_s)
        elif wait_s > 0 and select.select([fifo], [], [], wait_s)[0]:
            try:
                os.read(fifo, 1)
            except OSError:  # another probe took the byte: woken all the same
                pass
    finally:
        if fifo is not None:
            os.close(fifo)
    lines, logs, live = [], [], False
    for kind, name in items:
        if kind == "file":
            logs.append(name)
            continue
        rc = exit_code(jobs_dir, name)
        lines.append("R %s %s" % (name, rc))
        log = "%s/%s/log" % (jobs_dir, name)
        if rc == "-":
            live = True
            logs.append(log)
        elif not file_size(log):
            lines.append("S 0 " + log)
    if live:
        rc, out, _ = tmux(["list-windows", "-t", request["session"], "-F", "W #{window_name}"], 10.0)
        if rc == 0:
            lines.extend(out.decode("utf-8", "replace").splitlines())
    for path in logs:
        size = file_size(path)
        if size is not None:
            lines.append("S %d %s" % (size, path))
    return "".join(line + "\n" for line in lines)


def open_fifo(path):
    """A non-blocking read-write descriptor of the FIFO at `path` (never blocks, never creates), or None."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None


def exit_code(jobs_dir, name):
    """A job's exit code as the wrapper wrote it (rc.tmp, then rc; a whole line only), or '-' while it runs."""
    for leaf in ("rc.tmp", "rc"):
        try:
            with open("%s/%s/%s" % (jobs_dir, name, leaf), "rb") as fh:
                line = fh.readline()
        except OSError:
            continue
        if line.endswith(b"\n"):
            return line.decode("utf-8", "replace").strip()
    return "-"


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def put_file(path, data, mode):
    """Write `data` to `path` atomically: parents made, a private temp file given `mode`, then renamed."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".agentops-tmp")
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.close(fd)
        fd = None
        os.rename(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        os.unlink(tmp)
        raise


# A word tmux's command parser takes as it is; anything else goes in single quotes (no ~, $ or # expansion).
TMUX_PLAIN = re.compile(r"^[A-Za-z0-9_./:=,+-]+$")


def tmux_quote(arg):
    if "\n" in arg or "\r" in arg:
        raise ValueError("a tmux argument with a line break cannot be sent in control mode")
    if TMUX_PLAIN.match(arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


class TmuxControl:
    """The tmux commands of one server: a control-mode client (`tmux -C`) kept open where that is safe, else processes.

    Through the kept-open client each command is a line out and a reply block back; through the
    tmux program it costs a process and a client handshake (~3 ms, more on a loaded box). The
    client sits in a session of its own (running `cat`, marked destroy-unattached), so it never
    sees the jobs' output nor changes their window sizes, and its session ends with it.

    Where that is safe: tmux 3.3a crashes (NULL dereferences in control_write and in the server
    loop) when sessions come and go while a control client opens or closes; ten controllers, each
    keeping such a client on one shared server, crashed it in every round, taking every run's jobs
    with it. So a client is kept only on a `private` server, one run's own, which no other
    controller touches, and only by starting that server with it (no server runs on the socket
    yet), so it is identified before anything else happens there. It closes when its controller
    ends, when the run's own commands are over. On a shared server, on a run's server that already
    runs (a resumed run, a reconnect), and wherever control mode cannot be had, each command is a
    plain `tmux ...` process: plain clients get no control notifications, so they cannot hit the
    crash. A private server is checked again a while later (it may have ended).
    """

    RETRY_S = 30.0

    def __init__(self, socket, private, env=None):
        self.prefix = ["tmux"] + (["-L", socket] if socket else [])
        self.env = env  # None: this process's environment (on a box, its login environment)
        self.lock = threading.Lock()
        self.proc = None
        self.buffer = b""
        self.retry_at = 0.0 if private else float("inf")

    def run(self, args, timeout):
        """(rc, stdout, stderr) of `tmux ARGS...`; rc TIMEOUT_RC if no reply came within `timeout`."""
        try:
            line = " ".join(tmux_quote(a) for a in args)
        except ValueError:
            line = None
        with self.lock:
            if line is not None and (self.proc is not None or time.monotonic() >= self.retry_at):
                try:
                    if self.proc is None:
                        self.open(timeout)
                    return self.converse(line, timeout)
                except ControlTimeout as exc:  # the command may have run: never run it a second time
                    self.close()
                    return TIMEOUT_RC, b"", str(exc).encode("utf-8")
                except (OSError, EOFError):
                    self.close()
                    self.retry_at = time.monotonic() + self.RETRY_S
        return run_process(self.prefix + list(args), timeout, self.env)

    def open(self, timeout):
        """Start the server with a control client (EOFError if a server already runs: plain commands then)."""
        timeout = 30.0 if timeout is None else timeout
        rc, _, err = run_process(self.prefix + ["list-sessions", "-F", "."], timeout)
        if rc == 0 or not NO_SERVER.search(err):
            raise EOFError("a tmux server already runs on this socket (or cannot be asked)")
        name = "agentops-ctl-%d-%s" % (os.getpid(), base64.b32encode(os.urandom(5)).decode("ascii").lower())
        self.proc = subprocess.Popen(
            self.prefix + ["-C", "new-session", "-s", name, "cat", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=self.env,
        )
        self.buffer = b""
        for step in (lambda: self.reply(timeout),  # new-session's own block
                     lambda: self.converse("set-option -t " + tmux_quote(name) + " destroy-unattached on", timeout)):
            rc, _, err = step()
            if rc != 0:
                raise EOFError("tmux control mode refused: %s" % err.decode("utf-8", "replace").strip())

    def converse(self, line, timeout):
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def reply(self, timeout):
        """Read to the end of the next reply block; notifications (% lines outside a block) are skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = None
        while True:
            line = self.readline(deadline)
            if out is None:
                if line.startswith(b"%begin "):
                    out = []
                elif line.startswith(b"%exit"):
                    raise EOFError("the tmux control client exited")
            elif line.startswith((b"%end ", b"%error ")):
                text = b"".join(x + b"\n" for x in out)
                return (0, text, b"") if line.startswith(b"%end ") else (1, b"", text)
            else:
                out.append(line)

    def readline(self, deadline):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise ControlTimeout("no reply from the tmux control client in time")
            if not select.select([fd], [], [], wait)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("the tmux control client closed its output")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def close(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the client detaches and exits; destroy-unattached ends its session
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


class ControlTimeout(Exception):
    """A command was sent to the control client and no reply came in time."""


# What a plain tmux client says when no server runs on its socket (ECONNREFUSED, ENOENT): only then may a control
# client start one. Any other failure (a socket directory tmux cannot use) means plain commands, which report it.
NO_SERVER = re.compile(rb"no server running|error connecting to .*\(No such file or directory\)")


def run_process(argv, timeout, env=None):
    """(rc, stdout, stderr) of one program run without a shell; rc TIMEOUT_RC if it ran past `timeout`."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=env)
    except OSError as exc:
        return 127, b"", str(exc).encode("utf-8")
    return communicate(proc, None, timeout)


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def b64(data):
    return base64.b64encode(data or b"").decode("ascii")


def main():
    nonce = sys.argv[1].encode("ascii") if len(sys.argv) > 1 else b"-"
    out = sys.stdout.buffer
    out.write(HELLO + b" " + nonce + b"\n")
    out.flush()
    runner = Runner(Writer(out))
    try:
        while True:
            request = read_request(sys.stdin.buffer)
            if request is None:
                break
            runner.start(request)
    finally:
        runner.kill_all()
        # Daemon threads may sit in communicate(); leave without waiting on them.
        os._exit(0)


if __name__ == "__main__":
    main()
