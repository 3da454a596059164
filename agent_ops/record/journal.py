"""The journal: SQLite (WAL) shared by the executor and every reader (CLI, MCP, another process).

It is the only state the controller keeps: `status`, `resume` and `cancel` read it, and it
survives the controller's death. Every text written passes through the run's Masker, so
secrets never land here.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent_ops.errors import JournalError
from agent_ops.secret_values import Masker

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    runbook_name TEXT NOT NULL,
    runbook_path TEXT NOT NULL,
    runbook_sha TEXT NOT NULL,
    target TEXT NOT NULL,          -- TargetSpec as JSON
    vars TEXT NOT NULL,            -- resolved variables as JSON (no secrets: they are never vars)
    secret_names TEXT NOT NULL,    -- JSON list of names only
    state TEXT NOT NULL,           -- pending | running | succeeded | failed | cancelling | cancelled | interrupted
    message TEXT,
    tmux_session TEXT,
    run_dir TEXT,                  -- the run's directory on the target
    artifacts_dir TEXT,            -- the run's directory on the controller
    controller_pid INTEGER,
    controller_host TEXT,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,           -- pending | running | succeeded | failed | skipped | cancelled
    attempt INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    message TEXT,
    last_line TEXT,
    tail TEXT,                     -- the newest log lines as JSON (masked)
    progress TEXT,                 -- gate/metric progress as JSON
    outputs TEXT,                  -- results later steps' templates read, JSON: {outputs, metrics, checks} (masked)
    env TEXT,                      -- the newest attempt's job environment, JSON (secrets as ***)
    nodes TEXT,                    -- JSON list of the nodes the step runs on (its `on:` resolved)
    blame TEXT,                    -- JSON: the node whose failure came first, when the step failed on several
    waiting_for_input TEXT,        -- the prompt a running job's pane shows while it waits at one (masked), else NULL
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE IF NOT EXISTS nodes (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    rank INTEGER NOT NULL,         -- 0 is the head
    target TEXT NOT NULL,          -- TargetSpec as JSON
    address TEXT NOT NULL,         -- where the other nodes reach it
    run_dir TEXT NOT NULL,         -- the run's directory on this node
    tmux_session TEXT NOT NULL,
    state TEXT NOT NULL,           -- ok | out (failed; with on_node_failure: continue it takes no more steps)
    message TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS step_nodes (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    node TEXT NOT NULL,
    state TEXT NOT NULL,           -- as a step's state, for this node's part of it
    attempt INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    message TEXT,
    last_line TEXT,
    tail TEXT,                     -- JSON list (masked)
    progress TEXT,                 -- JSON
    outputs TEXT,                  -- JSON: this node's results (outputs, metrics, checks)
    failed_at REAL,                -- when this node's part was seen failing on its own (not stopped by us)
    PRIMARY KEY (run_id, step_id, node)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT '',  -- '' in journals from before fleets: the run's only node
    attempt INTEGER NOT NULL,
    job_dir TEXT,
    window TEXT,
    started REAL NOT NULL,
    ended REAL,
    rc INTEGER,
    verdict TEXT,
    message TEXT,
    log_size INTEGER,
    overrides TEXT,                -- vars/env changed by remedies for this attempt, JSON
    PRIMARY KEY (run_id, step_id, node, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step_id TEXT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT,
    node TEXT
);
CREATE TABLE IF NOT EXISTS remedies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    node TEXT,
    ts REAL NOT NULL,
    issue_id TEXT NOT NULL,
    matched_lines TEXT NOT NULL,   -- JSON list
    fix TEXT NOT NULL,             -- JSON description of the actions applied
    result TEXT NOT NULL           -- applied | escalated | exhausted | refused | succeeded | failed
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS rentals (
    run_id TEXT NOT NULL,          -- the run that rented the box (the provider's label names it too)
    provider TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    offer_id TEXT,
    machine_id TEXT,
    state TEXT NOT NULL,           -- created | ready | failed | stopped | destroyed
    dph REAL,                      -- $/h when rented
    storage_dph REAL,              -- $/h of its disk alone (what it costs once stopped), when the offer said
    stopped REAL,                  -- when it was stopped (disk kept, no GPU billed)
    target TEXT,                   -- TargetSpec as JSON once SSH answered
    host_key TEXT,                 -- the box's host key, recorded on first contact ("ssh-ed25519 AAAA...")
    message TEXT,
    created REAL NOT NULL,
    ready REAL,
    ended REAL,
    PRIMARY KEY (provider, instance_id)
);
CREATE INDEX IF NOT EXISTS rentals_run ON rentals (run_id);
"""

# Columns added to `steps` after the first release (ALTER TABLE on older journals).
# Columns newer versions added to older tables (TEXT each); attempts gained `node` in its key (rebuilt in _migrate).
MIGRATED_COLUMNS = {"steps": ("tail", "outputs", "env", "nodes", "blame", "waiting_for_input"), "events": ("node",), "remedies": ("node",),
                    "rentals": ("storage_dph REAL", "stopped REAL")}  # "name TYPE" where not TEXT
# The schema's identity, kept in the journal's user_version once it is created or migrated (a positive 31-bit number).
SCHEMA_ID = zlib.crc32((SCHEMA + repr(MIGRATED_COLUMNS)).encode()) & 0x7FFFFFFF

RunState = Literal["pending", "running", "succeeded", "failed", "cancelling", "cancelled", "interrupted"]
# "started": a background job is up (its dependents may go); "cancelled" also means "not run".
StepState = Literal["pending", "running", "started", "succeeded", "failed", "skipped", "cancelled"]

TERMINAL_RUN_STATES: tuple[RunState, ...] = ("succeeded", "failed", "cancelled")
TERMINAL_STEP_STATES: tuple[StepState, ...] = ("succeeded", "failed", "skipped", "cancelled")
DONE_OK: tuple[StepState, ...] = ("succeeded", "skipped")  # what a dependent waits for


@dataclass(frozen=True)
class RunRow:
    """One run as the journal holds it (JSON columns decoded)."""

    id: str
    runbook_name: str
    runbook_path: str
    runbook_sha: str
    target: dict[str, Any]  # TargetSpec fields
    vars: dict[str, Any]
    secret_names: list[str]
    state: RunState
    message: str | None
    tmux_session: str | None
    run_dir: str | None  # on the target
    artifacts_dir: str | None  # on the controller
    controller_pid: int | None
    controller_host: str | None
    created: float
    started: float | None
    ended: float | None
    heartbeat: float | None


@dataclass(frozen=True)
class StepRow:
    """One step of a run: its state and what the newest attempt showed."""

    run_id: str
    step_id: str
    kind: str
    position: int
    state: StepState
    attempt: int
    started: float | None
    ended: float | None
    message: str | None
    last_line: str | None
    tail: list[str] | None
    progress: dict[str, Any] | None
    outputs: dict[str, Any] | None  # {outputs, metrics, checks}: what `{{ steps.ID... }}` reads
    env: dict[str, str] | None  # the newest attempt's job environment, secrets as ***
    nodes: list[str] | None  # the nodes it runs on
    blame: dict[str, Any] | None  # {node, error, at, why}: whose failure came first
    waiting_for_input: str | None = None  # the prompt line a running job waits at (its pane shows it), else None


@dataclass(frozen=True)
class NodeRow:
    """One node of a run's fleet: where it is, where its run lives, whether it is still in service."""

    run_id: str
    name: str
    rank: int
    target: dict[str, Any]
    address: str
    run_dir: str
    tmux_session: str
    state: str  # ok | out
    message: str | None


@dataclass(frozen=True)
class StepNodeRow:
    """One node's part of a step: its state and what its newest attempt showed."""

    run_id: str
    step_id: str
    node: str
    state: StepState
    attempt: int
    started: float | None
    ended: float | None
    message: str | None
    last_line: str | None
    tail: list[str] | None
    progress: dict[str, Any] | None
    outputs: dict[str, Any] | None
    failed_at: float | None


@dataclass(frozen=True)
class AttemptRow:
    """One attempt of a step on one node: its job, exit code and verdict."""

    run_id: str
    step_id: str
    node: str
    attempt: int
    job_dir: str | None
    window: str | None
    started: float
    ended: float | None
    rc: int | None
    verdict: str | None
    message: str | None
    log_size: int | None
    overrides: dict[str, Any] | None


@dataclass(frozen=True)
class EventRow:
    """One event of a run's timeline."""

    id: int
    run_id: str
    step_id: str | None
    ts: float
    kind: str
    message: str
    data: Any
    node: str | None


@dataclass(frozen=True)
class RemedyRow:
    """One known issue that fired on an attempt, and what was done about it."""

    id: int
    run_id: str
    step_id: str
    attempt: int
    node: str | None
    ts: float
    issue_id: str
    matched_lines: list[str]
    fix: Any
    result: str


RentalState = Literal["created", "ready", "failed", "stopped", "destroyed"]
LIVE_RENTAL_STATES: tuple[RentalState, ...] = ("created", "ready", "failed", "stopped")  # still costing money


@dataclass(frozen=True)
class RentalRow:
    """One box a run rented: from the moment the provider created it until it is destroyed."""

    run_id: str
    provider: str
    instance_id: str
    offer_id: str | None
    machine_id: str | None
    state: RentalState
    dph: float | None
    target: dict[str, Any] | None  # TargetSpec fields
    host_key: str | None
    message: str | None
    created: float
    ready: float | None
    ended: float | None
    storage_dph: float | None = None  # $/h of the disk alone, billed while stopped (None: the offer did not say)
    stopped: float | None = None  # when it was stopped


def journal_home() -> Path:
    """`$AGENTOPS_HOME`, else `.agentops/` of the working directory."""
    env = os.environ.get("AGENTOPS_HOME")
    return Path(env) if env else Path.cwd() / ".agentops"


class Journal:
    """One SQLite file; safe to use from the executor's threads and from other processes."""

    def __init__(self, path: Path | None = None, masker: Masker | None = None) -> None:
        self.path = Path(path) if path else journal_home() / "journal.db"
        self.masker = masker or Masker()
        self._lock = threading.RLock()
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across a controller crash (not a power cut) and keeps a commit well under 1 ms.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            with self._lock:
                # A status poll opens the journal in a fresh process each time: a journal already at this schema
                # (its user_version says so) skips the schema script and the migrations.
                if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_ID:
                    self._db.executescript(SCHEMA)  # executescript manages its own transaction
                    self._migrate()
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_ID}")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """sqlite3's and the file system's errors become JournalError, naming the file (converted here, once)."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal {self.path} cannot be {'opened' if what == 'open' else 'written'}: "
                               f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}") from exc

    def _migrate(self) -> None:
        # Journals written by older versions lack newer columns: add them, never drop anything.
        for table, added in MIGRATED_COLUMNS.items():
            cols = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for col in added:
                name, _, kind = col.partition(" ")
                if name not in cols:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind or 'TEXT'}")
        cols = [row[1] for row in self._db.execute("PRAGMA table_info(attempts)")]
        if "node" not in cols:
            # The node is part of the key, which SQLite cannot change in place: copy the rows into the new table.
            keep = ", ".join(cols)
            self._db.executescript(
                "BEGIN; ALTER TABLE attempts RENAME TO attempts_before_fleets;"
                + SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS attempts"):SCHEMA.index("CREATE TABLE IF NOT EXISTS events")]
                + f"INSERT INTO attempts ({keep}) SELECT {keep} FROM attempts_before_fleets; DROP TABLE attempts_before_fleets; COMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed write or COMMIT (a full disk) leaves it open, or not
                    self._db.execute("ROLLBACK")
                raise

    def _m(self, text: str | None) -> str | None:
        return None if text is None else self.masker.mask(text)

    def _j(self, data: Any) -> str | None:
        return None if data is None else self.masker.mask(json.dumps(data, default=str))

    # --- writes ---------------------------------------------------------------------------

    def create_run(self, run: dict[str, Any], steps: list[tuple[str, str]], nodes: list[dict[str, Any]] = ()) -> None:
        """Insert a run, its steps (id, kind) in order, all pending, and its nodes (NodeRow fields but run_id and state)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, runbook_name, runbook_path, runbook_sha, target, vars, secret_names, state,"
                " tmux_session, run_dir, artifacts_dir, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run["id"], run["runbook_name"], run["runbook_path"], run["runbook_sha"],
                    self._j(run["target"]), self._j(run["vars"]), json.dumps(run["secret_names"]),
                    "pending", run["tmux_session"], run["run_dir"], run["artifacts_dir"], now,
                ),
            )
            db.executemany(
                "INSERT INTO steps (run_id, step_id, kind, position, state) VALUES (?,?,?,?, 'pending')",
                [(run["id"], sid, kind, i) for i, (sid, kind) in enumerate(steps)],
            )
            db.executemany(
                "INSERT INTO nodes (run_id, name, rank, target, address, run_dir, tmux_session, state)"
                " VALUES (?,?,?,?,?,?,?, 'ok')",
                [(run["id"], n["name"], n["rank"], self._j(n["target"]), n["address"], n["run_dir"], n["tmux_session"])
                 for n in nodes],
            )
        self.event(run["id"], None, "run_created", f"run {run['id']} of {run['runbook_name']} created")

    def set_run(self, run_id: str, **fields: Any) -> None:
        """Update run columns (state, message, started, ended, controller_pid, heartbeat...)."""
        if "message" in fields:
            fields["message"] = self._m(fields["message"])
        if "vars" in fields:
            fields["vars"] = self._j(fields["vars"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def set_step(self, run_id: str, step_id: str, **fields: Any) -> None:
        """Update step columns (state, attempt, started, ended, message, last_line, progress, outputs, env,
        waiting_for_input)."""
        for key in ("message", "last_line", "waiting_for_input"):
            if key in fields:
                fields[key] = self._m(fields[key])
        for key in ("progress", "tail", "outputs", "env", "nodes", "blame"):
            if key in fields:
                fields[key] = self._j(fields[key])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE steps SET {cols} WHERE run_id = ? AND step_id = ?", (*fields.values(), run_id, step_id))

    def set_step_node(self, run_id: str, step_id: str, node: str, **fields: Any) -> None:
        """Update one node's part of a step (state, attempt, started, ended, message, last_line, tail, progress,
        failed_at); the row is made, pending, the first time."""
        for key in ("message", "last_line"):
            if key in fields:
                fields[key] = self._m(fields[key])
        for key in ("progress", "tail", "outputs"):
            if key in fields:
                fields[key] = self._j(fields[key])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO step_nodes (run_id, step_id, node, state) VALUES (?,?,?, 'pending')",
                       (run_id, step_id, node))
            if fields:
                db.execute(f"UPDATE step_nodes SET {cols} WHERE run_id = ? AND step_id = ? AND node = ?",
                           (*fields.values(), run_id, step_id, node))

    def set_node(self, run_id: str, name: str, **fields: Any) -> None:
        """Update a node of the run (state, message)."""
        if "message" in fields:
            fields["message"] = self._m(fields["message"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE nodes SET {cols} WHERE run_id = ? AND name = ?", (*fields.values(), run_id, name))

    def start_attempt(self, run_id: str, step_id: str, attempt: int, *, job_dir: str | None, window: str | None,
                      node: str = "", overrides: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO attempts (run_id, step_id, node, attempt, job_dir, window, started, overrides)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, step_id, node, attempt, job_dir, window, time.time(), self._j(overrides or {})),
            )

    def end_attempt(self, run_id: str, step_id: str, attempt: int, *, rc: int | None, verdict: str,
                    message: str, log_size: int | None = None, node: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET ended = ?, rc = ?, verdict = ?, message = ?, log_size = ?"
                " WHERE run_id = ? AND step_id = ? AND node = ? AND attempt = ?",
                (time.time(), rc, verdict, self._m(message), log_size, run_id, step_id, node, attempt),
            )

    def event(self, run_id: str, step_id: str | None, kind: str, message: str, data: Any = None, node: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (run_id, step_id, ts, kind, message, data, node) VALUES (?,?,?,?,?,?,?)",
                (run_id, step_id, time.time(), kind, self._m(message), self._j(data), node),
            )

    def remedy(self, run_id: str, step_id: str, attempt: int, *, issue_id: str, matched_lines: list[str],
               fix: Any, result: str, node: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO remedies (run_id, step_id, attempt, node, ts, issue_id, matched_lines, fix, result)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, step_id, attempt, node, time.time(), issue_id, self._j(matched_lines), self._j(fix), result),
            )

    def remedy_outcome(self, run_id: str, step_id: str, attempt: int, outcome: str, node: str | None = None) -> None:
        """Record how the attempt after a fix went: the fix row's result becomes succeeded or failed."""
        with self._tx() as db:
            db.execute(
                "UPDATE remedies SET result = ? WHERE run_id = ? AND step_id = ? AND attempt = ? AND node IS ?"
                " AND result = 'applied'",
                (outcome, run_id, step_id, attempt, node),
            )

    def add_rental(self, run_id: str, provider: str, instance_id: str, *, offer_id: str | None, machine_id: str | None,
                   dph: float | None, storage_dph: float | None = None) -> None:
        """Record a box the moment the provider created it: from here on `down` can find it."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rentals (run_id, provider, instance_id, offer_id, machine_id, state, dph, storage_dph,"
                " created) VALUES (?,?,?,?,?, 'created', ?, ?, ?)",
                (run_id, provider, instance_id, offer_id, machine_id, dph, storage_dph, time.time()),
            )

    def set_rental(self, provider: str, instance_id: str, **fields: Any) -> None:
        """Update a rental's columns (state, target, host_key, message, ready, stopped, ended)."""
        if "message" in fields:
            fields["message"] = self._m(fields["message"])
        if "target" in fields:
            fields["target"] = self._j(fields["target"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE rentals SET {cols} WHERE provider = ? AND instance_id = ?", (*fields.values(), provider, instance_id))

    # --- reads ----------------------------------------------------------------------------

    def _rows(self, sql: str, args: Any = ()) -> list[sqlite3.Row]:
        """A query's rows, read whole under the connection's lock. An unlocked read in another thread holds a read
        snapshot on the shared connection; a write that begins meanwhile, after another process committed, gets
        SQLITE_BUSY at once (its snapshot is stale: the busy timeout cannot help), and the controller stopped
        driving its run ("database is locked" with ten controllers at once, tests/test_job_faults.py)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _row(self, sql: str, args: Any = ()) -> sqlite3.Row | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def rentals(self, run_id: str) -> list[RentalRow]:
        rows = self._rows("SELECT * FROM rentals WHERE run_id = ? ORDER BY created, rowid", (run_id,))
        return [RentalRow(**_decode(r)) for r in rows]

    def live_rentals(self) -> list[RentalRow]:
        """Every box, of any run, not yet destroyed."""
        marks = ",".join("?" * len(LIVE_RENTAL_STATES))
        rows = self._rows(f"SELECT * FROM rentals WHERE state IN ({marks}) ORDER BY created, rowid", LIVE_RENTAL_STATES)
        return [RentalRow(**_decode(r)) for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        row = self._row("SELECT * FROM runs WHERE id = ?", (run_id,))
        return RunRow(**_decode(row)) if row else None

    def latest_run_id(self) -> str | None:
        row = self._row("SELECT id FROM runs ORDER BY created DESC, rowid DESC LIMIT 1")
        return row["id"] if row else None

    def runs(self, limit: int = 50) -> list[RunRow]:
        rows = self._rows("SELECT * FROM runs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,))
        return [RunRow(**_decode(r)) for r in rows]

    def steps(self, run_id: str) -> list[StepRow]:
        rows = self._rows("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
        return [StepRow(**_decode(r)) for r in rows]

    def step(self, run_id: str, step_id: str) -> StepRow | None:
        row = self._row("SELECT * FROM steps WHERE run_id = ? AND step_id = ?", (run_id, step_id))
        return StepRow(**_decode(row)) if row else None

    def attempts(self, run_id: str, step_id: str | None = None, node: str | None = None) -> list[AttemptRow]:
        sql, args = "SELECT * FROM attempts WHERE run_id = ?", [run_id]
        if step_id is not None:
            sql, args = sql + " AND step_id = ?", args + [step_id]
        if node is not None:
            sql, args = sql + " AND node IN (?, '')", args + [node]  # '': written before fleets, the only node
        return [AttemptRow(**_decode(r)) for r in self._rows(sql + " ORDER BY started, attempt", args)]

    def nodes(self, run_id: str) -> list[NodeRow]:
        """The run's fleet, head (rank 0) first; empty for runs recorded before fleets."""
        rows = self._rows("SELECT * FROM nodes WHERE run_id = ? ORDER BY rank", (run_id,))
        return [NodeRow(**_decode(r)) for r in rows]

    def step_nodes(self, run_id: str, step_id: str | None = None) -> list[StepNodeRow]:
        """Each node's part of the run's steps (of one step), in node rank order."""
        sql = ("SELECT s.* FROM step_nodes s LEFT JOIN nodes n ON n.run_id = s.run_id AND n.name = s.node"
               " WHERE s.run_id = ?")
        args: list[Any] = [run_id]
        if step_id is not None:
            sql, args = sql + " AND s.step_id = ?", args + [step_id]
        return [StepNodeRow(**_decode(r)) for r in self._rows(sql + " ORDER BY n.rank", args)]

    def events(self, run_id: str, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        rows = self._rows(
            "SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?", (run_id, after_id, limit)
        )
        return [EventRow(**_decode(r)) for r in rows]

    def last_event(self, run_id: str, step_id: str | None, kind: str, node: str | None = None) -> EventRow | None:
        """The newest event of one kind for a step (step_id None: for the run), on one node if given."""
        sql, args = "SELECT * FROM events WHERE run_id = ? AND step_id IS ? AND kind = ?", [run_id, step_id, kind]
        if node is not None:
            sql, args = sql + " AND (node = ? OR node IS NULL)", args + [node]
        row = self._row(sql + " ORDER BY id DESC LIMIT 1", args)
        return EventRow(**_decode(row)) if row else None

    def remedies(self, run_id: str) -> list[RemedyRow]:
        rows = self._rows("SELECT * FROM remedies WHERE run_id = ? ORDER BY id", (run_id,))
        return [RemedyRow(**_decode(r)) for r in rows]


_JSON_COLUMNS = ("tail", "outputs", "env", "target", "vars", "secret_names", "progress", "overrides", "data", "matched_lines", "fix",
                 "nodes", "blame")


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out
