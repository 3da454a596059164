"""Host keys and authentication against a real sshd: unknown refused, trust on first use recorded, changed refused."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from agent_ops.errors import HostKeyError, TransportError
from agent_ops.transport.ssh import SSHTransport
from tests.sshd import SSHServer

pytestmark = pytest.mark.ssh


def _other_key(tmp_path: Path, kind: str = "ed25519") -> str:
    """`type base64` of a freshly generated key that is not the server's."""
    path = tmp_path / f"other_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _accepted_logins(sshd: SSHServer) -> int:
    return sshd.log_text().count("Accepted publickey")


def test_unknown_host_key_is_refused_before_auth(sshd: SSHServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    logins = _accepted_logins(sshd)
    started = time.monotonic()
    with pytest.raises(HostKeyError) as caught:
        SSHTransport(sshd.config(known_hosts=str(known_hosts)))
    assert "--accept-new-host-key" in str(caught.value)
    assert "SHA256:" in str(caught.value)
    assert time.monotonic() - started < 10, "a host-key refusal must not be retried"
    assert known_hosts.read_text() == ""
    assert _accepted_logins(sshd) == logins, "we authenticated to a host we do not trust"


def test_missing_known_hosts_file_means_unknown(sshd: SSHServer, tmp_path: Path) -> None:
    with pytest.raises(HostKeyError):
        SSHTransport(sshd.config(known_hosts=str(tmp_path / "absent")))
    assert not (tmp_path / "absent").exists()


def test_accept_new_host_key_records_it(sshd: SSHServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "dot-ssh" / "known_hosts"  # neither the file nor its directory exist yet
    first = SSHTransport(sshd.config(known_hosts=str(known_hosts), accept_new_host_key=True))
    try:
        assert first.exec("echo hi").stdout == b"hi\n"
    finally:
        first.close()
    assert known_hosts.read_text() == f"{sshd.known_hosts_name} {sshd.host_public_key()}\n"
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    assert known_hosts.parent.stat().st_mode & 0o777 == 0o700
    second = SSHTransport(sshd.config(known_hosts=str(known_hosts)))  # no flag: the recorded key is trusted
    try:
        assert second.exec("echo again").stdout == b"again\n"
    finally:
        second.close()
    assert known_hosts.read_text().count("\n") == 1, "a known key was recorded twice"


def test_accept_new_host_key_keeps_other_entries(sshd: SSHServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    original = f"# a comment paramiko would drop\nother.example {_other_key(tmp_path)}"  # no final newline
    known_hosts.write_text(original)
    SSHTransport(sshd.config(known_hosts=str(known_hosts), accept_new_host_key=True)).close()
    assert known_hosts.read_text() == f"{original}\n{sshd.known_hosts_name} {sshd.host_public_key()}\n"


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_changed_host_key_is_refused_even_with_accept(sshd: SSHServer, tmp_path: Path, kind: str) -> None:
    known_hosts = tmp_path / "known_hosts"
    stale = f"{sshd.known_hosts_name} {_other_key(tmp_path, kind)}\n"
    known_hosts.write_text(stale)
    logins = _accepted_logins(sshd)
    with pytest.raises(HostKeyError) as caught:
        SSHTransport(sshd.config(known_hosts=str(known_hosts), accept_new_host_key=True))
    assert "CHANGED" in str(caught.value) and "ssh-keygen -R" in str(caught.value)
    assert known_hosts.read_text() == stale
    assert _accepted_logins(sshd) == logins


def test_hashed_known_hosts_entry_is_honoured(sshd: SSHServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known_hosts)], check=True, capture_output=True)
    assert sshd.host not in known_hosts.read_text()
    transport = SSHTransport(sshd.config(known_hosts=str(known_hosts)))
    try:
        assert transport.exec("true").ok
    finally:
        transport.close()


def test_wrong_key_fails_auth_without_retrying(sshd: SSHServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        SSHTransport(sshd.config(identity=str(stranger)))
    assert not isinstance(caught.value, HostKeyError)
    assert "authentication failed" in str(caught.value) and "passwords are not supported" in str(caught.value)
    assert time.monotonic() - started < 10, "an auth failure must not be retried"


def test_unusable_identity_is_reported(sshd: SSHServer, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot load identity"):
        SSHTransport(sshd.config(identity=str(tmp_path / "missing_key")))
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)], check=True)
    with pytest.raises(TransportError, match="passphrase"):
        SSHTransport(sshd.config(identity=str(locked)))

