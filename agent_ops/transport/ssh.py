"""SSHTransport: a rented box over one paramiko connection, as cheap per call as the link allows.

Per connection: one TCP socket with TCP_NODELAY (paramiko leaves Nagle on: ~45 ms -> ~3 ms
per exec), one SFTP session for files, and one long-lived exec channel running
`remote_runner`, so an exec is one round trip and never pays for ~/.bashrc. A box without
python3 gets one exec channel per call instead. A lost connection is re-established with
bounded exponential backoff and the operation retried once (every exec the layers above
send is idempotent, see base.py). Host-key and authentication failures are never retried.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import getpass
import inspect
import itertools
import json
import logging
import os
import posixpath
import secrets
import select
import shlex
import socket
import stat as stat_mod
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import paramiko
import tenacity
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile

from agent_ops.errors import AgentOpsError, HostKeyError, TransportError
from agent_ops.transport import remote_runner
from agent_ops.transport.base import EXEC_TIMEOUT_RC, ExecResult, FileStat, ProbeRequest, expand_home
from agent_ops.transport.tmux import Tmux

log = logging.getLogger(__name__)
T = TypeVar("T")

# sshd's default MaxSessions 10 fails channel opens well before 10 are in flight; 5 was clean.
MAX_CHANNELS = 5
# How long past an exec's own timeout we wait for its answer before declaring the connection dead.
ANSWER_GRACE_S = 30.0
# bashrc (conda, pyenv) runs before the runner says hello: allow it a generous while.
RUNNER_HELLO_TIMEOUT_S = 30.0
# Reads up to one SFTP request in size go out as one request; larger ones are pipelined.
SFTP_CHUNK = 32768
# Files up to this size are written by the remote runner (one round trip); larger ones stream over SFTP.
RUNNER_PUT_MAX = 1 << 20
# Longest pause between reconnect attempts.
MAX_BACKOFF_S = 4.0
# A peer that stops acknowledging our data (box gone, NAT entry dropped) is declared dead
# after this long; the keepalive guarantees there is data to acknowledge.
TCP_USER_TIMEOUT_S = 60


@dataclass(frozen=True)
class SSHConfig:
    """How to reach one box: key auth only, known_hosts checked, reconnects bounded in time."""

    host: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    #: private key file; None means ssh-agent and the default ~/.ssh/id_* keys.
    identity: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    #: trust on first use: record an unknown host key in known_hosts. A changed key is always refused.
    accept_new_host_key: bool = False
    #: seconds for one connection attempt (TCP, SSH handshake, auth).
    connect_timeout: float = 10.0
    #: seconds spent in total re-trying a connection before giving up.
    reconnect_timeout: float = 120.0
    keepalive: float = 15.0
    #: interpreter that runs the remote runner on the box.
    python: str = "python3"

    @property
    def url(self) -> str:
        """`ssh://user@host:port`, the transport's name."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name as OpenSSH writes it in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class _ConnectionLost(TransportError):
    """The connection (or the runner on it) went away while an operation was under way."""


class SSHTransport:
    """A box over SSH: execs through the remote runner, files through SFTP, thread-safe."""

    def __init__(self, config: SSHConfig) -> None:
        self.config = config
        self.name = config.url
        self._lock = threading.Lock()  # guards _conn/_epoch; held while (re)connecting
        self._conn: _Connection | None = None
        self._epoch = 0  # bumped on every reconnect, so threads that failed together reconnect once
        self._closed = False
        self._last_failure: AgentOpsError | None = None
        # Connect now: a bad host key or key must surface before anything is planned on this box.
        with self._lock:
            conn = self._reconnect_locked()
        self._home = conn.home

    def __repr__(self) -> str:
        return f"SSHTransport({self.name!r})"

    def home(self) -> str:
        """The remote user's home directory, resolved once at connect."""
        return self._home

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        """Run `script` with `bash --norc --noprofile -c`; rc EXEC_TIMEOUT_RC if it ran past `timeout`."""
        return self._call("exec", lambda conn: conn.execs.run(script, stdin, timeout))

    def tmux(self, socket: str | None, args: Sequence[str], *, private: bool = False, timeout: float | None = None) -> ExecResult:
        """`tmux [-L socket] ARGS...` in the runner: through its control-mode client on a run's own server (no process
        on the box), else a tmux process."""
        return self._call("tmux", lambda conn: conn.execs.tmux(socket, list(args), private, timeout))

    def probe(self, request: ProbeRequest) -> str:
        """The monitor's probe, in the runner (no process on the box); without a runner, request.script."""
        return self._call("probe", lambda conn: conn.execs.probe(request))

    def put(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write `data` atomically (temp file created with `mode`, then rename), making parents."""
        self.put_files({path: (data, mode)})

    def put_files(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        """put() for each file, in order; small ones together in one round trip."""
        files = {self._path(path): spec for path, spec in files.items()}
        self._call(f"put {', '.join(files)}", lambda conn: conn.put_files(files))

    def get(self, path: str) -> bytes:
        """A whole (small) file; FileNotFoundError if it is missing."""
        path = self._path(path)
        return self._call(f"get {path}", lambda conn: conn.with_sftp(_get, path))

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """At most `limit` bytes from `offset` (b'' at or past the end); never reads the whole file."""
        path = self._path(path)
        return self._call(f"read {path}", lambda conn: conn.with_sftp(_read_from, path, offset, limit))

    def stat(self, path: str) -> FileStat | None:
        """Facts about `path` (following symlinks), or None if it does not exist."""
        path = self._path(path)
        return self._call(f"stat {path}", lambda conn: conn.with_sftp(_stat, path))

    def close(self) -> None:
        """Close the connection; the runner on the box exits with it. Safe to call twice."""
        self._closed = True  # outside the lock: stops a reconnect in progress at its next attempt
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _path(self, path: str) -> str:
        return expand_home(path, self._home)

    def _call(self, what: str, op: Callable[[_Connection], T]) -> T:
        """Run `op` on the live connection; on a connection failure reconnect and run it once more."""
        conn, epoch = self._current()
        try:
            return op(conn)
        except Exception as exc:
            if not _connection_failed(exc, conn):
                _raise_at_edge(exc, f"{self.name}: {what}")
            log.warning("%s: %s failed (%s: %s); reconnecting", self.name, what, type(exc).__name__, exc)
        conn = self._after_failure(epoch)
        try:
            return op(conn)
        except Exception as exc:
            _raise_at_edge(exc, f"{self.name}: {what} (after reconnecting)")

    def _current(self) -> tuple[_Connection, int]:
        with self._lock:
            self._check_open()
            if self._conn is None or not self._conn.alive():
                self._reconnect_locked()
            assert self._conn is not None
            return self._conn, self._epoch

    def _after_failure(self, epoch: int) -> _Connection:
        """A fresh connection for a thread whose operation failed on the connection of `epoch`."""
        with self._lock:
            self._check_open()
            if self._epoch == epoch or (self._conn is not None and not self._conn.alive()):
                return self._reconnect_locked()
            if self._conn is None:  # another thread already spent the reconnect budget
                raise TransportError(f"{self.name}: connection lost and reconnecting failed: {self._last_failure}")
            return self._conn

    def _reconnect_locked(self) -> _Connection:
        old, self._conn = self._conn, None
        self._epoch += 1
        if old is not None:
            old.close()
        try:
            self._conn = _connect_with_retry(self.config, lambda: self._closed)
        except AgentOpsError as exc:
            self._last_failure = exc
            raise
        return self._conn

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"{self.name}: transport is closed")


def _connection_failed(exc: BaseException, conn: _Connection) -> bool:
    """Whether `exc` means the connection is gone (retry after reconnect), not that the operation failed."""
    if isinstance(exc, (_ConnectionLost, EOFError)):
        return True
    if isinstance(exc, (AgentOpsError, FileNotFoundError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, paramiko.SSHException)):
        return True
    # SFTP reports its own failures as OSError too; only a dead connection makes them ours.
    return isinstance(exc, OSError) and not conn.alive()


def _raise_at_edge(exc: Exception, where: str) -> NoReturn:
    """Raise `exc` as the protocol promises: FileNotFoundError and our own errors as they are, the rest as TransportError."""
    if isinstance(exc, (AgentOpsError, FileNotFoundError)):
        raise exc
    raise TransportError(f"{where}: {type(exc).__name__}: {exc}") from exc


# --- connecting ------------------------------------------------------------------------------


def _connect_with_retry(cfg: SSHConfig, cancelled: Callable[[], bool]) -> _Connection:
    """Connect, retrying transient failures with exponential backoff for at most cfg.reconnect_timeout."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_worth_retrying),
        stop=tenacity.stop_any(tenacity.stop_before_delay(cfg.reconnect_timeout), lambda _: cancelled()),
        wait=tenacity.wait_exponential(multiplier=0.25, max=MAX_BACKOFF_S),
        before_sleep=functools.partial(_log_retry, cfg),
        reraise=True,
    )
    try:
        return retrying(_connect, cfg)
    except Exception as exc:
        attempts = retrying.statistics.get("attempt_number", 1)
        converted = _connect_error(cfg, exc, attempts)
        if converted is exc:
            raise
        raise converted from exc


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException, AgentOpsError)):
        return False
    return isinstance(exc, (OSError, EOFError, paramiko.SSHException))


def _log_retry(cfg: SSHConfig, state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("%s: connect attempt %d failed (%s); retrying in %.1f s", cfg.url, state.attempt_number, exc, wait)


def _connect_error(cfg: SSHConfig, exc: BaseException, attempts: int) -> BaseException:
    """The error to show a person for a connection that could not be made."""
    if isinstance(exc, AgentOpsError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"{cfg.url}: the host key CHANGED: {exc.key.get_name()} {exc.key.fingerprint} is offered, "
            f"{cfg.known_hosts} has {exc.expected_key.get_name()} {exc.expected_key.fingerprint}. "
            "Refusing to connect (this is never accepted automatically). If the box was re-created, "
            f"remove the old entry with: ssh-keygen -R '{cfg.known_hosts_name}' -f {cfg.known_hosts}"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        keys = cfg.identity or "ssh-agent and ~/.ssh/id_* keys"
        return TransportError(
            f"{cfg.url}: authentication failed for user {cfg.user!r} with {keys}: {exc}. "
            "agentops uses key authentication only (passwords are not supported): check the "
            "identity file and the box's authorized_keys."
        )
    tries = f" (gave up after {attempts} attempts)" if attempts > 1 else ""
    return TransportError(f"{cfg.url}: cannot connect{tries}: {type(exc).__name__}: {exc}")


def _connect(cfg: SSHConfig) -> _Connection:
    """One connection attempt: socket, handshake with host-key check, key auth, SFTP and runner."""
    pkey = _load_identity(cfg)
    sock = _open_socket(cfg)
    client = paramiko.SSHClient()
    try:
        known_hosts = _load_known_hosts(client, cfg)
        policy = _RecordNewKey(known_hosts) if cfg.accept_new_host_key else _RefuseUnknownKey(known_hosts)
        client.set_missing_host_key_policy(policy)
        client.connect(
            cfg.host,
            port=cfg.port,
            username=cfg.user,
            pkey=pkey,
            sock=sock,
            timeout=cfg.connect_timeout,
            banner_timeout=cfg.connect_timeout,
            auth_timeout=cfg.connect_timeout,
            allow_agent=pkey is None,
            look_for_keys=pkey is None,
        )
        return _Connection.start(client, cfg)
    except BaseException:
        client.close()
        sock.close()
        raise


def _load_identity(cfg: SSHConfig) -> paramiko.PKey | None:
    if cfg.identity is None:
        return None
    path = os.path.expanduser(cfg.identity)
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError, TypeError) as exc:
        # paramiko says "password" for an encrypted key either as its own exception or as cryptography's TypeError.
        if isinstance(exc, paramiko.PasswordRequiredException) or "password" in str(exc).lower():
            raise TransportError(
                f"identity {path} is protected by a passphrase: load it into ssh-agent and leave identity unset"
            ) from None
        raise TransportError(f"cannot load identity {path}: {exc}") from None


def _open_socket(cfg: SSHConfig) -> socket.socket:
    sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout)
    # paramiko leaves Nagle on: every small request then waits on a delayed ACK (~45 ms per exec).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: paramiko's keepalive alone never notices a silent peer
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_S * 1000)
    return sock


def _load_known_hosts(client: paramiko.SSHClient, cfg: SSHConfig) -> str:
    path = os.path.expanduser(cfg.known_hosts)
    try:
        # Not load_host_keys(): that remembers the file, and paramiko would rewrite it whole.
        client.get_host_keys().load(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TransportError(f"cannot read known_hosts {path}: {exc}") from None
    return path


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    """The default: a host key not in known_hosts stops the connection before authentication."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"{hostname}: unknown host key {key.get_name()} {key.fingerprint} (not in {self.known_hosts}). "
            "If that fingerprint is the box's, connect once with --accept-new-host-key "
            "(accept_new_host_key: true) to record it; later connections check against it."
        )


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: accept an unknown host key and append it to known_hosts."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        _append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("%s: recorded new host key %s %s in %s", hostname, key.get_name(), key.fingerprint, self.known_hosts)


def _append_known_host(path: str, hostname: str, key: paramiko.PKey) -> None:
    """Append one OpenSSH-format line; the rest of the file is left exactly as it was."""
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line
            fh.write(line.encode("ascii"))
    except OSError as exc:
        raise TransportError(f"cannot record the host key of {hostname} in {path}: {exc}") from None


# --- one connection --------------------------------------------------------------------------


class _ExecPath(Protocol):
    def run(self, script: str, stdin: bytes | None, timeout: float | None) -> ExecResult: ...
    def tmux(self, socket: str | None, args: list[str], private: bool, timeout: float | None) -> ExecResult: ...
    def probe(self, request: ProbeRequest) -> str: ...
    def alive(self) -> bool: ...
    def close(self) -> None: ...


class _Connection:
    """One live SSH connection: the paramiko client, its SFTP session and its way to run commands."""

    def __init__(self, client: paramiko.SSHClient, sftp: paramiko.SFTPClient, home: str, execs: _ExecPath):
        self.client = client
        self.home = home
        self.execs = execs
        self._sftp = sftp
        self._sftp_lock = threading.Lock()

    @classmethod
    def start(cls, client: paramiko.SSHClient, cfg: SSHConfig) -> _Connection:
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(1, round(cfg.keepalive)))
        channel, hello = _launch_runner(transport, cfg)
        try:
            sftp = client.open_sftp()  # while the box's bashrc and python start up
            home = sftp.normalize(".")
            execs = _start_runner_client(channel, hello) or _fallback_execs(transport, cfg)
        except BaseException:
            channel.close()
            raise
        return cls(client, sftp, home, execs)

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active() and self.execs.alive()

    def put_files(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        """Small files through the runner (one round trip, no process); large ones, or without a runner, over SFTP."""
        if isinstance(self.execs, _RunnerClient) and sum(len(data) for data, _ in files.values()) <= RUNNER_PUT_MAX:
            self.execs.put_files(files)
            return
        for path, (data, mode) in files.items():
            self.with_sftp(_put, path, data, mode)

    def with_sftp(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(sftp, *args) holding the SFTP lock: paramiko's SFTP file handles are not thread-safe."""
        with self._sftp_lock:
            return fn(self._sftp, *args)

    def close(self) -> None:
        for closer in (self.execs.close, self._sftp.close, self.client.close):
            try:
                closer()
            except Exception:  # a dead connection may fail to close; nothing is left to save on it
                pass


# --- execs through the remote runner ---------------------------------------------------------


@functools.cache
def _runner_bootstrap() -> str:
    # base64, so that no login shell on the box (bash, zsh, fish, tcsh) can misquote the source.
    source = base64.b64encode(inspect.getsource(remote_runner).encode("utf-8")).decode("ascii")
    return f'import base64;exec(base64.b64decode("{source}"))'


def _launch_runner(transport: paramiko.Transport, cfg: SSHConfig) -> tuple[paramiko.Channel, bytes]:
    """Start the runner on a new channel; returns it and the hello line to wait for."""
    nonce = secrets.token_hex(8)
    channel = transport.open_session(timeout=cfg.connect_timeout)
    # One stream: bashrc noise lands before the hello, and unread stderr can never stall the channel.
    channel.set_combine_stderr(True)
    channel.exec_command(f"exec {shlex.quote(cfg.python)} -u -c '{_runner_bootstrap()}' {nonce}")
    return channel, remote_runner.HELLO + b" " + nonce.encode("ascii") + b"\n"


def _start_runner_client(channel: paramiko.Channel, hello: bytes) -> _RunnerClient | None:
    """A client for the runner once it said hello, or None if it never started (no python3?)."""
    seen = _read_until(channel, hello, RUNNER_HELLO_TIMEOUT_S)
    at = seen.find(hello)
    if at >= 0:
        return _RunnerClient(channel, seen[at + len(hello):])  # everything before it was bashrc noise
    # After EOF the exit status is on its way; a runner that hangs in bashrc has none to give.
    status = channel.recv_exit_status() if channel.eof_received else "none (timed out)"
    channel.close()
    log.warning("remote runner did not start (exit status %s, output %r)", status, bytes(seen[-300:]))
    return None


def _fallback_execs(transport: paramiko.Transport, cfg: SSHConfig) -> _ChannelPerExec:
    if not transport.is_active():  # the network, not the box, stopped the runner: retry the connection
        raise EOFError("connection lost while the remote runner was starting")
    log.warning("%s: no remote runner (is %s installed?); using one SSH channel per exec, ~100x slower", cfg.url, cfg.python)
    return _ChannelPerExec(transport, cfg)


def _read_until(channel: paramiko.Channel, marker: bytes, timeout: float) -> bytearray:
    """What the channel sent until `marker` appeared, it closed, or `timeout` passed."""
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        channel.settimeout(remaining)
        try:
            chunk = channel.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


class _RunnerClient:
    """Sends exec requests to the remote runner; a reader thread hands each answer to its caller by id."""

    def __init__(self, channel: paramiko.Channel, buffered: bytearray) -> None:
        self._channel = channel
        self._buffered = buffered
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None
        channel.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="agentops-ssh-runner", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self._lost is None

    def run(self, script: str, stdin: bytes | None, timeout: float | None) -> ExecResult:
        return self._result(self._ask({"script": script, "stdin": _b64(stdin), "timeout": timeout}, timeout))

    def tmux(self, socket: str | None, args: list[str], private: bool, timeout: float | None) -> ExecResult:
        request = {"op": "tmux", "socket": socket, "private": private, "args": args, "timeout": timeout}
        return self._result(self._ask(request, timeout))

    def probe(self, request: ProbeRequest) -> str:
        fields = {k: v for k, v in dataclasses.asdict(request).items() if k != "script"}
        return self._result(self._ask({"op": "probe", **fields}, request.wait_s + 30)).text()

    def put_files(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        listed = [[path, _b64(data), mode] for path, (data, mode) in files.items()]
        self._ask({"op": "put", "files": listed}, 0.0)  # local writes on the box: answered at once

    def _ask(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send one request and wait for its answer (an error answer raises TransportError)."""
        rid, answer = self._expect()
        patience = None if timeout is None else timeout + ANSWER_GRACE_S
        try:
            self._send({"id": rid, **request})
            reply = answer.result(patience)
        except FutureTimeout:
            raise _ConnectionLost(f"the remote runner did not answer within {patience:.0f} s") from None
        finally:
            with self._lock:
                self._waiting.pop(rid, None)
        if "error" in reply:
            raise TransportError(str(reply["error"]))
        return reply

    @staticmethod
    def _result(reply: dict[str, Any]) -> ExecResult:
        return ExecResult(int(reply["rc"]), base64.b64decode(reply["stdout"]), base64.b64decode(reply["stderr"]))

    def close(self) -> None:
        self._channel.close()  # the runner sees EOF on stdin, kills what it still runs, and exits
        self._reader.join(timeout=2.0)

    def _expect(self) -> tuple[int, Future[dict[str, Any]]]:
        with self._lock:
            if self._lost is not None:
                raise _ConnectionLost(self._lost)
            rid = next(self._ids)
            answer: Future[dict[str, Any]] = Future()
            self._waiting[rid] = answer
            return rid, answer

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode("utf-8")
        with self._send_lock:
            self._channel.sendall(struct.pack(">I", len(body)) + body)

    def _read_loop(self) -> None:
        try:
            while True:
                (size,) = struct.unpack(">I", self._read_exact(4))
                self._deliver(json.loads(self._read_exact(size)))
        except Exception as exc:  # EOF, a dead socket, a garbled frame: this runner is gone either way
            self._fail_all(f"remote runner channel lost ({type(exc).__name__}: {exc})")

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffered) < size:
            chunk = self._channel.recv(max(65536, size - len(self._buffered)))
            if not chunk:
                raise EOFError("the runner closed its output")
            self._buffered += chunk
        data = bytes(self._buffered[:size])
        del self._buffered[:size]
        return data

    def _deliver(self, reply: dict[str, Any]) -> None:
        with self._lock:
            answer = self._waiting.pop(reply.get("id"), None)  # type: ignore[arg-type]
        if answer is not None:  # None: the caller gave up waiting
            answer.set_result(reply)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self._lost = reason
            waiting, self._waiting = list(self._waiting.values()), {}
        for answer in waiting:
            answer.set_exception(_ConnectionLost(reason))


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


# --- execs without python3: one channel per call ---------------------------------------------


class _ChannelPerExec:
    """The fallback for boxes without python3: one exec channel per call, MAX_CHANNELS at a time."""

    def __init__(self, transport: paramiko.Transport, cfg: SSHConfig) -> None:
        self._transport = transport
        self._open_timeout = cfg.connect_timeout
        self._slots = threading.BoundedSemaphore(MAX_CHANNELS)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass  # the channels close with each call; the connection closes with the client

    def tmux(self, socket: str | None, args: list[str], private: bool, timeout: float | None) -> ExecResult:
        return self.run(Tmux(socket).cmd(*args), None, timeout)

    def probe(self, request: ProbeRequest) -> str:
        return self.run(request.script, None, request.wait_s + 30).text()

    def run(self, script: str, stdin: bytes | None, timeout: float | None) -> ExecResult:
        # The login shell still reads bashrc here, once per call, and its noise lands in our streams:
        # a marker printed after bashrc tells where the command's own output starts.
        marker = f"agentops-{secrets.token_hex(8)}:"
        command = _fallback_command(script, timeout, marker)
        deadline = None if timeout is None else time.monotonic() + timeout + 5.0
        with self._slots:
            channel = self._transport.open_session(timeout=self._open_timeout)
            try:
                channel.exec_command(command)
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
                out, err, finished = _drain(channel, deadline)
                rc = channel.recv_exit_status() if finished else EXEC_TIMEOUT_RC
            finally:
                channel.close()
        if not self._transport.is_active():
            raise _ConnectionLost("connection lost during exec")
        if timeout is not None and rc == 137:  # `timeout -k` had to SIGKILL; still a timeout
            rc = EXEC_TIMEOUT_RC
        return ExecResult(rc, _after_marker(out, marker), _after_marker(err, marker))


def _fallback_command(script: str, timeout: float | None, marker: str) -> str:
    command = f"bash --norc --noprofile -c {shlex.quote(script)}"
    if timeout is not None:
        # coreutils timeout signals the whole process group and exits 124; `timeout 0` would mean never.
        command = f"timeout -k 2 {max(timeout, 0.001):.3f} {command}"
    return f"printf %s {marker}; printf %s {marker} >&2; exec {command}"


def _after_marker(data: bytes, marker: str) -> bytes:
    at = data.find(marker.encode("ascii"))
    return data if at < 0 else data[at + len(marker):]


def _drain(channel: paramiko.Channel, deadline: float | None) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr together until EOF (finished=True) or the deadline."""
    out, err = bytearray(), bytearray()
    while True:
        eof = channel.eof_received or channel.closed  # read first: data always precedes EOF
        if channel.recv_ready():
            out += channel.recv(65536)
        elif channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        elif eof:
            return bytes(out), bytes(err), True
        else:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return bytes(out), bytes(err), False
            select.select([channel], [], [], wait)


# --- files over SFTP -------------------------------------------------------------------------


def _put(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int) -> None:
    parent = posixpath.dirname(path)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.agentops-tmp")
    try:
        handle = _create_exclusive(sftp, tmp, mode)
    except FileNotFoundError:  # the parent is missing: only then pay for the mkdir round trips
        _mkdir_p(sftp, parent)
        handle = _create_exclusive(sftp, tmp, mode)
    try:
        with handle:
            handle.chmod(mode)  # the server's umask may have narrowed the mode we created it with
            handle.set_pipelined(True)
            handle.write(data)
            handle.flush()
            # Pipelined write errors are dropped by paramiko; the size tells (as in its own putfo).
            if handle.stat().st_size != len(data):
                raise TransportError(f"short write to {tmp}")
        sftp.posix_rename(tmp, path)
    except BaseException:
        _remove_quietly(sftp, tmp)
        raise


def _create_exclusive(sftp: paramiko.SFTPClient, path: str, mode: int) -> SFTPFile:
    """Create `path` (O_EXCL) with permissions `mode` from the first moment.

    paramiko's open() sends no attributes, so the file would exist as 0644 (and could be opened
    by anyone) until a chmod; a secret must never be readable for even that moment.
    """
    attrs = SFTPAttributes()
    attrs.st_mode = mode
    kind, msg = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs)
    if kind != CMD_HANDLE or msg is None:
        raise TransportError(f"SFTP open of {path} returned no handle")
    return SFTPFile(sftp, msg.get_binary(), "wb")


def _mkdir_p(sftp: paramiko.SFTPClient, path: str) -> None:
    if path in ("", "/", "."):
        return
    found = _stat(sftp, path)
    if found is not None:
        if not found.is_dir:
            raise TransportError(f"{path} exists and is not a directory")
        return
    _mkdir_p(sftp, posixpath.dirname(path))
    try:
        sftp.mkdir(path)
    except OSError:
        found = _stat(sftp, path)
        if found is None or not found.is_dir:  # it exists now: we lost a race to another mkdir, fine
            raise


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except Exception:  # best effort: the connection may be the reason we are cleaning up
        pass


def _get(sftp: paramiko.SFTPClient, path: str) -> bytes:
    with sftp.open(path, "rb") as fh:
        size = fh.stat().st_size or 0
        if size > SFTP_CHUNK:
            fh.prefetch(size)  # pipelined: one round trip's wait, not one per 32 KiB
        return fh.read()


def _read_from(sftp: paramiko.SFTPClient, path: str, offset: int, limit: int) -> bytes:
    with sftp.open(path, "rb") as fh:
        want = min(limit, (fh.stat().st_size or 0) - offset)
        if want <= 0:
            return b""
        if want <= SFTP_CHUNK:
            fh.seek(offset)
            return fh.read(want)
        return b"".join(fh.readv([(offset, want)]))  # pipelined requests for a large backlog


def _stat(sftp: paramiko.SFTPClient, path: str) -> FileStat | None:
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        return None
    mode = attrs.st_mode or 0
    # SFTP v3 carries whole seconds only.
    return FileStat(size=attrs.st_size or 0, mtime=float(attrs.st_mtime or 0), is_dir=stat_mod.S_ISDIR(mode), mode=mode & 0o7777)
