"""tmux as the controller names and spells it: a run's socket, and shell command lines for one server.

Every tmux line the controller writes for a shell (job windows, the probe, `status`'s attach hint) is built by
`Tmux.cmd`, so each argument is quoted one way. The remote runner (stdlib only, on the box) speaks tmux's own
control-mode quoting instead (`remote_runner.tmux_quote`): those lines go to tmux, never to a shell.
Standard library only: `agentops status` imports it, and it must stay cheap.
"""
from __future__ import annotations

import shlex


def run_tmux_socket(tmux_socket: str | None, run_id: str) -> str:
    """The tmux socket a run's jobs live on: the one its target names, else a server of the run's own.

    Never the user's default server unless named (`default` is its socket): a tmux crash there would take the
    user's own sessions with it, and a server per run keeps runs from meeting on one at all.
    """
    return tmux_socket or f"agentops-{run_id}"


class Tmux:
    """One tmux server (its `-L` socket) and command lines for it.

    `private`: the server is one run's own, used by nothing else (Transport.tmux: only there does a transport keep
    a control-mode client), and the run's end ends it.
    """

    def __init__(self, socket: str | None, private: bool = False) -> None:
        self.socket = socket
        self.private = private
        self.prefix = "tmux" + (f" -L {shlex.quote(socket)}" if socket else "")

    def cmd(self, *args: str) -> str:
        """A shell command line: this server's tmux with `args`, each quoted for the shell."""
        return " ".join([self.prefix, *(shlex.quote(a) for a in args)])

    def attach(self, session: str) -> str:
        """The command a person runs (on the box) to watch a session's windows."""
        return self.cmd("attach", "-t", session)
