"""Artifacts: files a runbook declares (checkpoints, logs, statistics) copied off the boxes and checked before a destroy.

For each declared path on each node that holds it, the box lists the files with their sizes and
sha256 (one exec: coreutils `find`, `stat`, `sha256sum`), the controller reads each file through
the transport by offset (SFTP on a box: no scp, nothing held whole in memory), hashing as it
writes, and compares. An artifact is *safe* when every file's copy matches the box's size and hash;
`missing` when the path is not on the box (safe unless the artifact is `required`: nothing is
lost); `lost` when its box is gone (the provider says so: there is nothing left to copy); `unsafe`
when a copy failed or differs. Only `unsafe` (and a required `missing`) blocks a destroy.
Every verdict is a journal event (`artifact_saved`, `artifact_missing`, `artifact_lost`,
`artifact_unsafe`), so `agentops down RUN` in another process knows what was saved.
"""
from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from agent_ops.errors import TransportError
from agent_ops.record.journal import Journal
from agent_ops.run.nodes import select_nodes
from agent_ops.runbook.schema import ArtifactSpec
from agent_ops.transport.base import Transport, expand_home

CHUNK = 8 << 20  # bytes per read: few round trips for a checkpoint, little memory
LIST_TIMEOUT_S = 600.0  # hashing a large checkpoint on the box takes a while (sha256sum: ~0.5-1 GB/s)
ATTEMPTS = 2  # a file still being written when first hashed gets one more try
ArtifactState = Literal["saved", "missing", "lost", "unsafe"]
_MISSING = "AGENTOPS-MISSING"


class SavedFile(BaseModel):
    """One file of an artifact: where it was on the box, where its copy is, and what both hold."""

    remote: str
    local: str
    size: int
    sha256: str


class ArtifactResult(BaseModel):
    """One declared artifact on one node, after an attempt to save it."""

    node: str
    path: str
    state: ArtifactState
    required: bool = False
    detail: str = ""
    files: list[SavedFile] = []

    @property
    def blocks_destroy(self) -> bool:
        return self.state == "unsafe" or (self.state == "missing" and self.required)

    def line(self) -> str:
        size = sum(f.size for f in self.files)
        what = f"{len(self.files)} files, {size} bytes, sha256 checked" if self.state == "saved" else self.detail
        return f"{self.node}:{self.path}: {self.state} ({what})"


@dataclass(frozen=True)
class NodeArtifacts:
    """A node's declared artifacts (rendered with its values) and its connection, or why there is none."""

    name: str
    specs: Sequence[ArtifactSpec]
    transport: Transport | None
    gone: str | None = None  # the box is gone (the provider says so): its artifacts are lost, not unsafe


def specs_for(node: str, fleet: Sequence[str], declared: Sequence[ArtifactSpec]) -> list[ArtifactSpec]:
    """The declared artifacts this node holds (by each one's `on:`)."""
    return [spec for spec in declared if node in select_nodes(spec.on, fleet, f"artifact {spec.path}")]


def save_all(nodes: Sequence[NodeArtifacts], dest: Path, journal: Journal, run_id: str) -> list[ArtifactResult]:
    """Copy every node's artifacts under `dest/NODE/...`, verify them, and record each verdict in the journal."""
    results = []
    for node in nodes:
        for spec in node.specs:
            result = _save_one(node, spec, dest / node.name)
            journal.event(run_id, None, f"artifact_{result.state}", result.line(), result.model_dump(), node=node.name)
            results.append(result)
    return results


def _save_one(node: NodeArtifacts, spec: ArtifactSpec, dest: Path) -> ArtifactResult:
    base = ArtifactResult(node=node.name, path=spec.path, state="unsafe", required=spec.required)
    if node.gone is not None:
        return base.model_copy(update={"state": "lost", "detail": f"box gone: {node.gone}"})
    if node.transport is None:
        return base.model_copy(update={"detail": "no connection to the box"})
    last = ""
    for _ in range(ATTEMPTS):
        try:
            listed = box_files(node.transport, spec.path)
            if listed is None:
                return base.model_copy(update={"state": "missing", "detail": "not on the box"})
            saved, bad = _copy(node.transport, listed, dest)
        except (TransportError, OSError) as exc:
            last = f"copy failed: {exc}"
            continue
        if not bad:
            return base.model_copy(update={"state": "saved", "files": saved})
        last = bad
    return base.model_copy(update={"detail": last})


def box_files(transport: Transport, path: str) -> list[tuple[str, int, str]] | None:
    """(absolute path, size, sha256) of the file at `path` or of every file under the directory, as the box computes
    them (`~` is the box's home); None when nothing is there."""
    quoted = shlex.quote(expand_home(path, transport.home()))  # the one `~` rule, as the transport reads the copy
    script = (
        f"p={quoted}\n"
        "p=$(realpath -s -- \"$p\" 2>/dev/null || echo \"$p\")\n"
        "if [ -d \"$p\" ]; then find \"$p\" -type f -print0 | sort -z | while IFS= read -r -d '' f; do\n"
        "  printf '%s\\t%s\\t%s\\n' \"$(stat -c %s -- \"$f\")\" \"$(sha256sum -- \"$f\" | cut -d' ' -f1)\" \"$f\"; done\n"
        "elif [ -f \"$p\" ]; then printf '%s\\t%s\\t%s\\n' \"$(stat -c %s -- \"$p\")\" \"$(sha256sum -- \"$p\" | cut -d' ' -f1)\" \"$p\"\n"
        f"else echo {_MISSING}; fi"
    )
    out = transport.exec(script, timeout=LIST_TIMEOUT_S)
    if not out.ok:
        why = (out.stderr.decode("utf-8", "replace") or out.text()).strip()[-300:]
        raise TransportError(f"listing {path} on the box failed (rc {out.rc}): {why}")
    text = out.text()
    if text.strip() == _MISSING:
        return None
    files = []
    for line in text.splitlines():
        size, digest, remote = line.split("\t", 2)
        files.append((remote, int(size), digest))
    return files


def _copy(transport: Transport, listed: list[tuple[str, int, str]], dest: Path) -> tuple[list[SavedFile], str]:
    """Copy each listed file to `dest` + its path on the box; (the files saved, '' or what did not match)."""
    saved = []
    for remote, size, digest in listed:
        local = dest / remote.lstrip("/")
        got_size, got_digest = fetch_file(transport, remote, local)
        if (got_size, got_digest) != (size, digest):
            return saved, (f"{remote}: the copy has {got_size} bytes, sha256 {got_digest[:12]}; the box has {size} bytes, "
                           f"sha256 {digest[:12]}")
        saved.append(SavedFile(remote=remote, local=str(local), size=size, sha256=digest))
    return saved, ""


def fetch_file(transport: Transport, remote: str, local: Path) -> tuple[int, str]:
    """Copy one file by offset, hashing what is written; (bytes, sha256 hex) of the local copy."""
    local.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    offset = 0
    partial = local.with_name(local.name + ".part")
    with open(partial, "wb") as fh:
        while True:
            data = transport.read_from(remote, offset, CHUNK)
            if not data:
                break
            fh.write(data)
            digest.update(data)
            offset += len(data)
    partial.replace(local)  # a copy cut off midway never sits under the artifact's own name
    return offset, digest.hexdigest()


def recorded(journal: Journal, run_id: str) -> dict[tuple[str, str], ArtifactResult]:
    """The latest verdict the journal holds for each (node, path) of a run."""
    found: dict[tuple[str, str], ArtifactResult] = {}
    for event in journal.events(run_id, limit=100_000):
        if event.kind.startswith("artifact_") and isinstance(event.data, dict) and "path" in event.data:
            result = ArtifactResult.model_validate(event.data)
            found[(result.node, result.path)] = result
    return found
