"""How a command answers: one JSON document on stdout (`--json`), or lines and tables for a person.

Each command makes one `Output` from its `--json` flag and speaks only through it, so no helper below a command
takes `as_json`. rich is imported on the first line written for a person: a `--json` poll (`status`, `list`,
`wait`), which agents run as a fresh process every few seconds, never loads it.
"""
from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from agent_ops.front.json_doc import to_json

if TYPE_CHECKING:
    from rich.console import Console


class Output:
    """Where one command's results, notes and failures go, chosen once from its `--json` flag.

    stdout carries the result (with `--json`, exactly one JSON document, a failure's included); stderr carries
    notes and, for a person, failures. Text is printed as given (no rich markup, no highlighting, never
    re-wrapped): a `FILE:LINE: field: message` line or a log line must stay greppable.
    """

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json

    @cached_property
    def out(self) -> Console:
        """stdout for rich renderables (tables, the status view)."""
        from rich.console import Console

        return Console(soft_wrap=True, highlight=False)

    @cached_property
    def err(self) -> Console:
        """stderr for rich renderables (the live view, rules between reports)."""
        from rich.console import Console

        return Console(stderr=True, soft_wrap=True, highlight=False)

    def json(self, doc: Any) -> None:
        """The command's one JSON document on stdout."""
        print(to_json(doc))
        sys.stdout.flush()

    def line(self, text: str, style: str | None = None) -> None:
        """A result line on stdout, for a person."""
        self.out.print(text, style=style, markup=False, highlight=False)

    def note(self, text: str, style: str | None = None) -> None:
        """A progress or context line on stderr (never mixed into a JSON document)."""
        self.err.print(text, style=style, markup=False, highlight=False)

    def fail(self, code: int, message: str, kind: str = "error", problems: list[str] | None = None) -> NoReturn:
        """End the command with exit `code`: a JSON error document, or the problems and the message on stderr."""
        if self.as_json:
            self.json({"error": {"code": kind, "message": message, "problems": problems or []}})
        else:
            for problem in problems or []:
                self.note(problem, style="red")
            self.note(message, style="red")
        raise typer.Exit(code)
