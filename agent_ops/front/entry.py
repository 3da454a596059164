"""The `agentops` command. A status poll in the shapes agents repeat every few seconds is answered here, from the
journal, without loading the CLI framework; every other command line goes to the CLI (front/cli.py).

Why: an agent polls as a fresh process, and typer builds a pydantic validator per parameter before it runs a
command (~110 ms of a ~200 ms poll, tests/bench/bench_status.py). The shapes answered here are exactly

    agentops status --json          agentops status RUN --json          agentops list --json

(`--json` anywhere among them), and only when the answer is a document: an unknown run, an empty or unreadable
journal, a rented run still renting, or any other flag goes to the CLI, which words the error. The document is
the one the CLI writes (the same functions: record/status, front/json_doc), which tests/test_entry.py checks
byte for byte.
"""
from __future__ import annotations

import sys

POLLS = ("status", "list")


def main() -> None:
    """Console-script entry point."""
    answer = _poll(sys.argv[1:])
    if answer is None:
        from agent_ops.front.cli import main as cli_main

        cli_main()
        return
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()


def _poll(args: list[str]) -> str | None:
    """The JSON document of a poll in one of the shapes above, or None: the CLI answers it."""
    if not args or args[0] not in POLLS or "--json" not in args[1:]:
        return None
    rest = [a for a in args[1:] if a != "--json"]
    if len(rest) > (1 if args[0] == "status" else 0) or any(a.startswith("-") for a in rest) or args.count("--json") > 1:
        return None
    try:
        return _answer(args[0], rest[0] if rest else None)
    except Exception:  # whatever went wrong, the CLI runs the poll again and words it
        return None


def _answer(command: str, run_id: str | None) -> str | None:
    from agent_ops.front.json_doc import to_json
    from agent_ops.record.journal import Journal
    from agent_ops.record.status import run_status, run_summaries

    journal = Journal()
    try:
        if command == "list":
            return to_json(run_summaries(journal, 20))  # `list`'s default --limit
        run_id = run_id or journal.latest_run_id()
        status = run_status(journal, run_id) if run_id else None
        return None if status is None else to_json(status)
    finally:
        journal.close()


if __name__ == "__main__":
    main()
