"""What a job's tmux pane shows: captured, and judged for an interactive prompt the job waits at.

A job's stdin is its pane's terminal, so a `read -p`, an `apt` `[Y/n]`, a git password request waits there; its log
shows the prompt's text but not that nothing comes after it. One function (prompt_line) decides from the captured
text; there are two ways to capture: on a local target the controller asks the run's tmux server itself through
libtmux; on an SSH target libtmux cannot reach the box's tmux (it drives a local binary), so the same capture-pane
goes through Transport.tmux (the box's control-mode client: no process per look).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import libtmux
from libtmux.exc import LibTmuxException

from agent_ops.run.jobs import RunLayout
from agent_ops.transport.base import Transport
from agent_ops.transport.local import LocalTransport

# A line that ends in one of these is a question a person is meant to answer. Anchored at the end: once answered,
# the terminal's echo ("Continue? [Y/n] y") follows the prompt on its line and it no longer matches.
PROMPT = re.compile(
    r"(\[[yn]/[yn]\]\??"  # [Y/n] [y/N]
    r"|\((yes/no|y/n)[^)]*\)\??"  # (yes/no/[fingerprint])? (y/n)
    r"|\b(password|passphrase|username)\b.*:"  # Password:, Password for 'https://...':, Username for ...:
    r"|\bpress (enter|return|any key)\b.*"
    r"|\bcontinue\?)\s*$",
    re.IGNORECASE,
)
QUIET_S = 2.0  # a job's log must have stopped growing this long before its pane is looked at
LOOK_EVERY_S = 3.0  # and the pane is captured no more often than this (never per byte of output)
CAPTURE_LINES = 50


def prompt_line(text: str) -> str | None:
    """The last non-empty line of `text` if it looks like a prompt waiting for an answer, else None."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines and PROMPT.search(lines[-1]) else None


def capture(transport: Transport, layout: RunLayout, window: str, lines: int = CAPTURE_LINES) -> str:
    """What the job's pane shows now, its last `lines` lines; "" if the window is gone."""
    if isinstance(transport, LocalTransport):
        return _capture_local(layout, window, lines)
    target = f"={layout.session}:={window}"
    result = transport.tmux(layout.tmux.socket, ["capture-pane", "-p", "-J", "-t", target, "-S", f"-{lines}"],
                            private=layout.tmux.private, timeout=10)
    return result.stdout.decode("utf-8", "replace") if result.ok else ""


def _capture_local(layout: RunLayout, window: str, lines: int) -> str:
    server = libtmux.Server(socket_name=layout.tmux.socket)
    try:
        session = server.sessions.get(session_name=layout.session, default=None)
        found = session.windows.get(window_name=window, default=None) if session else None
        if found is None or not found.panes:
            return ""
        # The same capture-pane arguments as over SSH (a job's window has one pane), so both ways see the same text.
        return "\n".join(found.panes[0].cmd("capture-pane", "-p", "-J", "-S", f"-{lines}").stdout)
    except LibTmuxException:  # the server or window went between the look-up and the capture
        return ""


@dataclass
class PromptWatch:
    """Whether a running job waits at a prompt: its log quiet for QUIET_S and its pane's last line a prompt.

    `prompt` is the line it waits at, or None; output that resumes clears it at once.
    """

    quiet_s: float = QUIET_S
    every_s: float = LOOK_EVERY_S
    size: int = -1
    quiet_since: float = 0.0
    looked: float = float("-inf")
    prompt: str | None = None

    def update(self, size: int, now: float, look: Callable[[], str]) -> bool:
        """Feed the log's size at `now` (monotonic); `look` captures the pane. True when `prompt` changed."""
        if size != self.size:
            self.size, self.quiet_since = size, now
            changed, self.prompt = self.prompt is not None, None
            return changed
        if now - self.quiet_since < self.quiet_s or now - self.looked < self.every_s:
            return False
        self.looked = now
        found = prompt_line(look())
        changed, self.prompt = found != self.prompt, found
        return changed
