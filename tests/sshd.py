"""A private OpenSSH server on 127.0.0.1 for tests: real sshd, real keys, and a stop that really drops connections."""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from agent_ops.transport.ssh import SSHConfig

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "internal-sftp"
START_TIMEOUT_S = 10.0
# After sshd is gone, the sessions' own processes (the remote runner and what it ran) should end by themselves.
ORPHAN_GRACE_S = 5.0


def sshd_available() -> bool:
    """Whether OpenSSH's server is installed here."""
    return os.access(SSHD, os.X_OK)


class SSHServer:
    """One private sshd: its keys, config and log live in `root`; stop() and start() keep the port.

    Sessions get `home` as their HOME (and SFTP's starting directory, so the transport's home()
    agrees with `$HOME` and `~`): by default an empty directory under `root`. Why not the user's
    own: sshd's non-interactive bash sources ~/.bashrc, and root's here runs `pyenv init`, whose
    rehash lock (~/.pyenv/shims/.pyenv-shim) can stall a login shell for many seconds when tests
    run side by side; the remote runner's 30 s start timeout then fires and the test fails for a
    reason that is not ours. Tests about ~/.bashrc give a `home` with the .bashrc they need.
    """

    host = "127.0.0.1"

    def __init__(self, root: Path, extra_config: Iterable[str] = (), home: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.env = dict(env or {})  # more variables for sessions (sshd takes only its first SetEnv line, so they join HOME's)
        self.user = getpass.getuser()
        self.home = home or root / "home"
        self.home.mkdir(exist_ok=True)
        self.env = {"HOME": str(self.home), **(env or {})}  # what sessions get, besides what sshd sets itself
        self.port = _free_port()
        self.host_key = root / "host_ed25519"
        self.identity = root / "client_ed25519"
        self.known_hosts = root / "known_hosts"
        self.log_path = root / "sshd.log"
        self.config_path = root / "sshd_config"
        self._proc: subprocess.Popen[bytes] | None = None
        #: processes that outlived sshd past ORPHAN_GRACE_S and had to be killed, by the last stop().
        self.stragglers: list[str] = []
        _keygen(self.host_key)
        _keygen(self.identity)
        (root / "authorized_keys").write_bytes(self.identity.with_suffix(".pub").read_bytes())
        self.known_hosts.write_text(f"{self.known_hosts_name} {self.host_public_key()}\n")
        self.config_path.write_text(self._config(extra_config))

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server."""
        return f"[{self.host}]:{self.port}"

    def host_public_key(self) -> str:
        """`ssh-ed25519 AAAA...` of the server's host key."""
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def config(self, **overrides: object) -> SSHConfig:
        """SSHConfig for this server with the test client key and a known_hosts that trusts it."""
        base = SSHConfig(
            host=self.host,
            port=self.port,
            user=self.user,
            identity=str(self.identity),
            known_hosts=str(self.known_hosts),
            connect_timeout=5.0,
            reconnect_timeout=30.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @property
    def pid(self) -> int | None:
        """The listening sshd's process id while it runs (its ended sessions' CPU time is counted in its own)."""
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        """What sshd has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Start sshd on this server's port and wait until it accepts connections."""
        os.makedirs("/run/sshd", exist_ok=True)  # sshd refuses to start without its privsep directory
        log = open(self.log_path, "ab")  # noqa: SIM115 -- closed by the `with` below, after Popen took the fd
        with log:
            self._proc = subprocess.Popen(
                [SSHD, "-f", str(self.config_path), "-D", "-e"], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start on port {self.port}:\n{self.log_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the listener and every per-connection sshd, so live connections drop; wait for their sessions to end."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.kill(proc.pid, signal.SIGSTOP)  # no new connection is forked while we collect the tree
        except ProcessLookupError:
            pass
        tree = _descendants(proc.pid)
        sshds = [pid for pid in tree if _comm(pid).startswith("sshd")]
        for pid in [proc.pid, *sshds]:
            _kill(pid, signal.SIGKILL)
        proc.wait()
        self.stragglers = _wait_gone([pid for pid in tree if pid not in sshds], ORPHAN_GRACE_S)

    def _config(self, extra: Iterable[str]) -> str:
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            f"PidFile {self.root / 'sshd.pid'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin yes",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "LogLevel INFO",
            " ".join(["SetEnv", f"HOME={self.home}", *(f"{k}={v}" for k, v in self.env.items())]),  # sshd takes only its first SetEnv line
            f"Subsystem sftp {SFTP_SERVER} -d {self.home}",
            *extra,
        ]
        return "\n".join(lines) + "\n"


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agentops-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _descendants(root: int) -> list[int]:
    """All processes below `root`, from /proc (sshd's connection children run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _stat_field(int(entry), 1)
            if ppid is not None:
                children.setdefault(int(ppid), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat_field(pid: int, index: int) -> str | None:
    """A field of /proc/PID/stat after the command name (0 = state, 1 = ppid), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[index]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    return _stat_field(pid, 0) not in (None, "Z")  # a zombie has ended; only its parent can reap it


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: list[int], grace: float) -> list[str]:
    """Wait for `pids` to end; SIGKILL those still there after `grace` and return their names."""
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    stragglers = [f"{pid} {_comm(pid)}" for pid in pids if _alive(pid)]
    for pid in pids:
        if _alive(pid):
            _kill(pid, signal.SIGKILL)
    return stragglers
