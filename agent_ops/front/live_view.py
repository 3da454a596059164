"""What a person sees while a run goes on: a live step tree on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent_ops.record.journal import Journal
from agent_ops.record.status import RunStatus, run_status

STATE_STYLE = {
    "pending": "dim", "running": "cyan", "started": "cyan", "succeeded": "green", "skipped": "yellow",
    "failed": "bold red", "cancelled": "magenta",
}
ICON = {"pending": "·", "running": "▶", "started": "▶", "succeeded": "✔", "skipped": "↷", "failed": "✘", "cancelled": "■"}


class PlainView:
    """One line per event on a stream (stderr by default): for logs, CI and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, kind: str, step_id: str | None, message: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self._t0:7.2f}s] {step_id or '-':<14} {kind:<18} {message}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class LiveView:
    """A rich table of steps (state, elapsed, last log line, gate progress), redrawn from the journal."""

    def __init__(self, journal_path, run_id: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.journal = Journal(journal_path)
        self.run_id = run_id
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._live.start()
        self._thread.start()

    def __call__(self, kind: str, step_id: str | None, message: str) -> None:
        if kind.startswith(("step_failed", "run_", "remedy")):
            self._live.console.print(Text(f"{step_id or '-'}: {message}", style="dim"))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._live.update(self._render())

    def _render(self):
        status = run_status(self.journal, self.run_id) if hasattr(self, "journal") else None
        return render_status(status) if status else Text("starting…")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._live.update(self._render())
        self._live.stop()
        self.journal.close()


def render_status(status: RunStatus) -> Group:
    """A run's status as a rich renderable (used by the live view and `agentops status`)."""
    head = Text.assemble((f"{status.runbook} ", "bold"), (f"{status.id} ", "dim"),
                         (status.state, STATE_STYLE.get(status.state, "")), f"  on {status.target}")
    table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    for col in ("", "step", "kind", "state", "try", "time", "detail"):
        table.add_column(col, overflow="fold" if col == "detail" else "ellipsis", no_wrap=col != "detail")
    for s in status.steps:
        table.add_row(
            # Text, not markup: a matrix cell's id (`train[seed=42]`) and log lines (`[train] step=...`) hold brackets.
            Text(ICON.get(s.state, "?"), style=STATE_STYLE.get(s.state, "")), Text(s.id), s.kind,
            Text(s.state, style=STATE_STYLE.get(s.state, "")), str(s.attempt or ""),
            f"{s.elapsed_s:.1f}s" if s.elapsed_s is not None else "", Text(_detail(s, len(status.nodes))),
        )
    parts = [head, table]
    if len(status.nodes) > 1:
        parts.append(Text("nodes: " + ", ".join(_node_text(n) for n in status.nodes), style="dim"))
    if status.blame:
        b = status.blame
        parts.append(Text(f"blame: node {b.node} failed first: {b.error} ({b.why})", style="bold red"))
    if status.attach:
        parts.append(Text(f"watch: {status.attach}", style="dim"))
    parts += [Text(line) for line in bill_lines(status.bill)] if status.bill else []
    return Group(*parts)


def bill_lines(bill) -> list[str]:
    """The bill of a run on rented boxes: a line per box, then the total (and the budget)."""
    lines = [f"bill: {n.node:<14} {n.state:<9} ${n.dph:.3f}/h{f' (stopped: ${n.dph_now:.3f}/h)' if n.state == 'stopped' else ''}"
             f"  {n.hours * 60:6.1f} min  ${n.spent_usd:.4f} spent  ${n.projected_usd:.4f} projected" for n in bill.nodes]
    total = f"bill: total ${bill.spent_usd:.4f} spent, ${bill.projected_usd:.4f} projected, ${bill.dph_now:.3f}/h now"
    if bill.budget_usd is not None:
        total += f"; budget ${bill.budget_usd:.2f}, ${bill.budget_left_usd:.4f} left"
        total += f" (reached in {bill.budget_reached_in_s:.0f}s at this rate)" if bill.budget_reached_in_s is not None else ""
    return [*lines, total]


def _node_text(node) -> str:
    out = f" OUT ({node.message})" if node.state == "out" else ""
    return f"{node.rank}:{node.name} {node.address}{out}"


def _nodes_detail(step) -> str:
    """Per node, for a step on several: which are running, done, failed (e.g. `a ✔ b ▶ c ✘`)."""
    return " ".join(f"{p.node} {ICON.get(p.state, '?')}" for p in step.nodes)


def _detail(step, fleet_size: int = 1) -> str:
    """The step's progress or message; on a fleet, led by its nodes' states (a step on one node of several: which)."""
    text = _step_detail(step)
    return f"[{_nodes_detail(step)}] {text}" if step.nodes and fleet_size > 1 else text


def _step_detail(step) -> str:
    progress = step.progress or {}
    pats = progress.get("patterns") or []
    if step.state == "running" and pats:
        done = sum(p["matched"] for p in pats)
        nxt = next((p for p in pats if not p["matched"]), None)
        wait = f", waiting for {nxt['name']!r} ({nxt['deadline_left_s']}s left)" if nxt else ""
        return f"gate {done}/{len(pats)}{wait}"
    if step.state == "running" and step.waiting_for_input:
        return f"waiting for input: {step.waiting_for_input[-100:]}"
    if step.state == "running" and step.last_line:
        return step.last_line[-100:]
    return (step.message or "")[:200]
