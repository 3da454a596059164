"""Targets: where a run executes (`local` or `ssh://user@host:port`) and how to reach it.

A target comes from the command line (`parse_target`) or from a small inventory file
(`read_inventory`), whose groups name fleets (`-t gpu_pool`):

    hosts:
      gpu1:
        url: ssh://root@ssh5.vast.ai:31234
        identity: ~/.ssh/vast_ed25519
        accept_new_host_key: false
        address: 10.0.0.5          # where the other boxes reach this one (default: the URL's host)
      gpu2: {url: ssh://root@ssh5.vast.ai:31235}
    groups:
      gpu_pool: [gpu1, gpu2]
    rent:                          # fleets rented for a run: `agentops run X --inventory FILE -t h100_pair`
      h100_pair:
        provider: vast             # default vast
        nodes: 2                   # the rest: a fleet request, as `agentops rent --request FILE` takes it
        offer: {gpu_name: H100_SXM, max_dph: 3.0}
        identity: ~/.ssh/vast_ed25519

Authentication is by key only; passwords are not supported anywhere.
"""
from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_ops.errors import RunbookError
from agent_ops.transport.base import Transport
from agent_ops.yaml_models import LineMap, Report, YamlProblems, did_you_mean, read_yaml

if TYPE_CHECKING:  # imported where used: paramiko is not for a status poll that only reads a target's fields
    from agent_ops.transport.ssh import SSHConfig

LOCAL = "local"
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Fields that only mean something for ssh:// targets.
_SSH_ONLY = ("identity", "known_hosts", "accept_new_host_key")
# Inventory fields holding local file paths: relative ones are taken relative to the inventory file.
_LOCAL_PATHS = ("identity", "known_hosts")


class TargetSpecError(RunbookError):
    """A target URL or inventory entry is invalid; like a bad runbook, nothing runs."""

    code = "invalid_target"


class TargetSpec(BaseModel):
    """One target: where to run and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description='"local" or "ssh://user@host:port" (user defaults to the local user, port to 22)')
    identity: str | None = Field(None, description="private key file (key auth only; passwords are not supported)")
    known_hosts: str | None = Field(None, description="known_hosts file checked for the host key (default ~/.ssh/known_hosts)")
    accept_new_host_key: bool = Field(False, description="trust on first use: record an unknown host key; a changed key is always refused")
    tmux_socket: str | None = Field(None, description="tmux -L socket name for jobs, shared by every run that names it; "
                                    "unset: each run gets a tmux server of its own (agentops-RUN), ended with the run")
    workdir: str = Field("~/.agentops", description="directory on the target for job scripts, logs and exit codes")
    connect_timeout: float = Field(10.0, gt=0, description="seconds for one connection attempt")
    reconnect_timeout: float = Field(120.0, ge=0, description="seconds spent re-trying a lost connection before giving up")
    python: str = Field("python3", min_length=1, description="interpreter on the target for the agentops exec runner")
    address: str | None = Field(None, description="address the other boxes of a fleet reach this one at (default: the URL's "
                                "host; 127.0.0.1 for local): what {{ node.address }} and the rendezvous endpoint use")
    allow_deleting_fixes: bool = Field(False, description="on 'local' (this machine), let known-issue fixes that delete "
                                       "files (caches) run; they always may on a remote box")

    @field_validator("url")
    @classmethod
    def _normalize_url(cls, url: str) -> str:
        if url == LOCAL:
            return url
        from agent_ops.transport.ssh import SSHConfig

        user, host, port = _split_ssh_url(url)
        return SSHConfig(host=host, port=port, user=user).url

    @field_validator("address")
    @classmethod
    def _check_address(cls, address: str | None) -> str | None:
        if address is not None and not re.match(r"^[A-Za-z0-9.:_-]+$", address):
            raise ValueError("an address is a host name or IP address (letters, digits, '.', ':', '_', '-')")
        return address

    @field_validator("tmux_socket")
    @classmethod
    def _check_socket(cls, name: str | None) -> str | None:
        if name is not None and not _NAME.match(name):
            raise ValueError("a tmux socket name may only contain letters, digits, '.', '_' and '-'")
        return name

    @field_validator("workdir")
    @classmethod
    def _check_workdir(cls, workdir: str) -> str:
        # Relative paths would depend on the working directory, which differs between transports.
        if not (workdir.startswith(("/", "~/")) or workdir == "~"):
            raise ValueError("workdir must be absolute or start with ~/")
        if any(c in workdir for c in "\n\0"):
            raise ValueError("workdir must not contain newlines or NUL")
        return workdir

    @model_validator(mode="before")
    @classmethod
    def _no_passwords(cls, data: Any) -> Any:
        given = [k for k in data if "pass" in str(k).lower()] if isinstance(data, dict) else []
        if given:
            raise ValueError(f"{given[0]}: passwords are not supported (key auth only); use identity")
        return data

    @model_validator(mode="after")
    def _ssh_fields_need_ssh(self) -> TargetSpec:
        if self.is_local:
            given = [name for name in _SSH_ONLY if name in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to ssh:// targets, not to 'local'")
        return self

    @property
    def is_local(self) -> bool:
        """Whether this is the controller's own machine."""
        return self.url == LOCAL

    @property
    def host(self) -> str:
        """The machine's host as the URL names it ('127.0.0.1' for local)."""
        return "127.0.0.1" if self.is_local else _split_ssh_url(self.url)[1]

    @property
    def peer_address(self) -> str:
        """Where the other boxes of a fleet reach this one: `address`, else the URL's host."""
        return self.address or self.host

    def ssh_config(self) -> SSHConfig:
        """The SSH transport's settings for this (ssh://) target."""
        from agent_ops.transport.ssh import SSHConfig

        if self.is_local:
            raise TargetSpecError(["target 'local' has no SSH settings"])
        user, host, port = _split_ssh_url(self.url)
        optional = {"known_hosts": self.known_hosts} if self.known_hosts is not None else {}
        return SSHConfig(
            host=host,
            port=port,
            user=user,
            identity=self.identity,
            accept_new_host_key=self.accept_new_host_key,
            connect_timeout=self.connect_timeout,
            reconnect_timeout=self.reconnect_timeout,
            python=self.python,
            **optional,
        )


def parse_target(url: str, **options: Any) -> TargetSpec:
    """A TargetSpec from a URL and TargetSpec fields given as keywords. Raises TargetSpecError."""
    try:
        return TargetSpec(url=url, **options)
    except ValidationError as exc:
        report = Report(f"target {url!r}", None, TargetSpec)
        report.add_errors({"url": url, **options}, exc.errors())
        raise TargetSpecError(report.problems()) from None


@dataclass(frozen=True)
class RentEntry:
    """A fleet to rent, named in an inventory's `rent:`: its provider and its fleet request as written (checked as a
    request where the provider room is known: front/cli_provider.py), with where it stands in the file."""

    name: str
    provider: str
    request: dict[str, Any]
    path: str
    lines: LineMap | None

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("rent", self.name)


@dataclass(frozen=True)
class Inventory:
    """An inventory file: targets by name, groups of them (fleets) by name, and fleets to rent by name."""

    path: str
    hosts: dict[str, TargetSpec]
    groups: dict[str, list[str]] = field(default_factory=dict)
    rent: dict[str, RentEntry] = field(default_factory=dict)


def load_inventory(path: str | os.PathLike[str]) -> dict[str, TargetSpec]:
    """Targets by name from an inventory YAML file (`hosts: {name: {url: ..., ...}}`). Raises TargetSpecError."""
    return read_inventory(path).hosts


def read_inventory(path: str | os.PathLike[str]) -> Inventory:
    """An inventory YAML file: `hosts: {name: {url: ..., ...}}`, optional `groups: {name: [host, ...]}` and optional
    `rent: {name: {provider: vast, ...fleet request}}` (then hosts may be left out).

    Relative identity/known_hosts paths are taken relative to the inventory file's directory.
    Raises TargetSpecError with every problem.
    """
    label = str(path)
    data, lines = _read_yaml(label)
    if not isinstance(data, dict) or not set(data) <= {"hosts", "groups", "rent"} or not ({"hosts", "rent"} & set(data)) \
            or not isinstance(data.get("hosts", {}), dict):
        raise TargetSpecError([f"{label}:1: an inventory is a mapping with hosts: {{name: {{url: ...}}}}, optionally "
                               "groups: {name: [host, ...]}, and rent: {name: {provider: vast, nodes: N, offer: {...}}}"])
    hosts = data.get("hosts") or {}
    specs, problems = _inventory_hosts(label, lines, hosts)
    groups, group_problems = _inventory_groups(label, lines, data.get("groups"), set(hosts))
    rent, rent_problems = _inventory_rent(label, lines, data.get("rent"), {*hosts, *(data.get("groups") or {})})
    if problems or group_problems or rent_problems:
        raise TargetSpecError(problems + group_problems + rent_problems)
    return Inventory(label, specs, groups, rent)


def _inventory_rent(label: str, lines: LineMap, raw: Any, taken: set[str]) -> tuple[dict[str, RentEntry], list[str]]:
    """The inventory's fleets to rent: names and providers checked here, each request where it is used."""
    named, problems = _named_section(label, lines, "rent", raw, "{name: {provider: ..., nodes: ...}}", taken, "host or group")
    entries: dict[str, RentEntry] = {}
    for name, entry, where in named:
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a fleet request (provider, nodes, offer, identity, ...)")
        elif not isinstance(entry.get("provider", "vast"), str):
            problems.append(f"{label}:{lines.line_of(('rent', name, 'provider')) or 1}: rent.{name}.provider: expected a "
                            "provider name (vast)")
        else:
            request = _beside(label, {k: v for k, v in entry.items() if k != "provider"}, ("identity",))
            entries[name] = RentEntry(name, entry.get("provider", "vast"), request, label, lines)
    return entries, problems


def _named_section(label: str, lines: LineMap, section: str, raw: Any, shape: str, taken: set[str],
                   taken_what: str) -> tuple[list[tuple[str, Any, str]], list[str]]:
    """A section of `name: entry` pairs (groups, rent): (name, entry, where it stands) for each well-formed name no
    other section uses, and the problems of the rest."""
    if raw is None:
        return [], []
    if not isinstance(raw, dict):
        return [], [f"{label}:{lines.line_of((section,)) or 1}: {section}: expected a mapping {shape}"]
    named: list[tuple[str, Any, str]] = []
    problems: list[str] = []
    for name, entry in raw.items():
        where = f"{label}:{lines.line_of((section, name)) or 1}: {section}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: a name may only contain letters, digits, '.', '_' and '-'")
        elif name in taken:
            problems.append(f"{where}: {name!r} is also a {taken_what}; -t {name} would be ambiguous")
        else:
            named.append((name, entry, where))
    return named, problems


def _inventory_groups(label: str, lines: LineMap, raw: Any, hosts: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    named, problems = _named_section(label, lines, "groups", raw, "{name: [host, ...]}", hosts, "host")
    groups: dict[str, list[str]] = {}
    for name, members, where in named:
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            problems.append(f"{where}: expected a non-empty list of host names")
        else:
            unknown = [m for m in members if m not in hosts]
            repeated = sorted({m for m in members if members.count(m) > 1})
            if unknown:
                problems.append(f"{where}: unknown host {unknown[0]!r}{did_you_mean(unknown[0], hosts)}")
            elif repeated:
                problems.append(f"{where}: host {repeated[0]!r} is listed twice")
            else:
                groups[name] = members
    return groups, problems


def _inventory_hosts(label: str, lines: LineMap, hosts: dict[Any, Any]) -> tuple[dict[str, TargetSpec], list[str]]:
    specs: dict[str, TargetSpec] = {}
    problems: list[str] = []
    for name, entry in hosts.items():
        where = f"{label}:{lines.line_of(('hosts', name)) or 1}: hosts.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: a host name may only contain letters, digits, '.', '_' and '-'")
        elif not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with at least url")
        else:
            spec, errors = _inventory_entry(label, lines, name, entry)
            problems.extend(errors)
            if spec is not None:
                specs[name] = spec
    return specs, problems


def connect(spec: TargetSpec) -> Transport:
    """An open transport to the target: LocalTransport for 'local', SSHTransport otherwise."""
    if spec.is_local:
        from agent_ops.transport.local import LocalTransport

        return LocalTransport()
    from agent_ops.transport.ssh import SSHTransport

    return SSHTransport(spec.ssh_config())


def _split_ssh_url(url: str) -> tuple[str, str, int]:
    """(user, host, port) of an ssh:// URL, with a message a person can act on when it is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "ssh":
        raise ValueError(f"expected 'local' or ssh://user@host:port, got {url!r}")
    if parts.password is not None:
        raise ValueError("passwords are not supported (key auth only): remove it from the URL and set identity")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an ssh:// target is only user@host:port (no path, query or fragment)")
    try:
        port = parts.port or 22
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    return parts.username or getpass.getuser(), parts.hostname, port


def _inventory_entry(
    label: str, lines: LineMap, name: str, entry: dict[str, Any]
) -> tuple[TargetSpec | None, list[str]]:
    fields = _beside(label, entry, _LOCAL_PATHS)
    try:
        return TargetSpec.model_validate(fields), []
    except ValidationError as exc:
        report = Report(label, lines, TargetSpec, prefix=("hosts", name))
        report.add_errors(fields, exc.errors())
        return None, report.problems()


def _beside(label: str, entry: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`entry` with its relative local paths under `keys` taken relative to the inventory file's directory."""
    out = dict(entry)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str) and not value.startswith(("/", "~")):
            out[key] = str(Path(label).resolve().parent / value)
    return out


def _read_yaml(label: str) -> tuple[Any, LineMap]:
    try:
        data, lines, _ = read_yaml(label, label)
    except FileNotFoundError:
        raise TargetSpecError([f"{label}: no such inventory file"]) from None
    except YamlProblems as exc:
        raise TargetSpecError(exc.problems) from None
    return data, lines
