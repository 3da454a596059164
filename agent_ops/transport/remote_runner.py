"""The remote runner: a tiny stdlib-only program that SSHTransport starts once per connection.

Why it exists: every new SSH channel costs a round trip, and the user's login shell
sources ~/.bashrc for each one (~90 ms with pyenv/conda). The runner is started once
per connection on one long-lived exec channel, so that cost is paid once; afterwards
each exec is one frame out and one frame back.

Protocol, on the channel's stdin/stdout:
  runner -> client, once:  b"AGENTOPS-RUNNER-1 <nonce>\\n"  (anything before it is bashrc noise)
  then frames both ways:   4-byte big-endian length + UTF-8 JSON
  request:  {"id": int, "script": str, "stdin": base64 | null, "timeout": float | null}
  response: {"id": int, "rc": int, "stdout": base64, "stderr": base64}
            or {"id": int, "error": str} when the command could not even be started.

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
import signal
import struct
import subprocess
import sys
import threading

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
        data = request.get("stdin")
        data = None if data is None else base64.b64decode(data)
        try:
            proc = subprocess.Popen(
                BASH + [request["script"]],
                stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
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
        for proc in procs:
            kill_group(proc.pid)


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
