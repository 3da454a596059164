"""One table for a grid of training runs (seed 001's suites x methods x seeds): a row per run directory.

Usage::

    python -m training.matrix_results --runs DIR --columns suite,craft,seed --out results.md [--json results.json]

Every sub-directory of ``--runs`` is one cell, named by its values joined with ``-`` (``object-true-42``);
``--columns`` names them. A cell that finished has the trainer's ``summary.json`` (final loss, s/step,
samples/s); one that did not is still a row, ``failed``, with the newest line of its ``train_progress.log``:
the table is written whatever failed, so the other cells' results are never lost. Exit 0 when the table was
written, whatever the cells did; 2 when ``--runs`` holds no cell.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def cell_row(directory: Path, columns: list[str]) -> dict[str, Any]:
    """One cell's row: its values (from the directory name) and its result, or why there is none."""
    parts = directory.name.split("-", len(columns) - 1) if columns else []
    row: dict[str, Any] = dict(zip(columns, parts)) if len(parts) == len(columns) else {"cell": directory.name}
    summary = directory / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        return {**row, "result": "done", "final_loss": data.get("final_loss"), "s_per_step": data.get("s_per_step"),
                "samples_per_s": data.get("samples_per_s")}
    log = directory / "train_progress.log"
    last = next((line for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "") if log.is_file() else ""
    return {**row, "result": "failed", "final_loss": None, "s_per_step": None, "samples_per_s": None,
            "note": last or "no train_progress.log: the trainer did not start"}


def markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The rows as a Markdown table, failed cells included; a last line counts them."""
    head = [*(columns or ["cell"]), "result", "final loss", "s/step", "samples/s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        values = [*(str(r.get(c, r.get("cell", ""))) for c in (columns or ["cell"])), r["result"], _num(r["final_loss"], ".4f"),
                  _num(r["s_per_step"], ".3f"), _num(r["samples_per_s"], ".1f"), r.get("note", "")]
        lines.append("| " + " | ".join(values) + " |")
    done = sum(r["result"] == "done" for r in rows)
    lines.append(f"\n{done} of {len(rows)} cells finished" + (f"; failed: {len(rows) - done}" if done < len(rows) else ""))
    return "\n".join(lines) + "\n"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.matrix_results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, type=Path, help="directory holding one sub-directory per cell")
    parser.add_argument("--columns", default="", help="names of the values in a cell's directory name, comma-separated")
    parser.add_argument("--out", required=True, type=Path, help="the Markdown table to write")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    cells = sorted(p for p in args.runs.iterdir() if p.is_dir()) if args.runs.is_dir() else []
    if not cells:
        print(f"[matrix-results] error: no cell directories in {args.runs}", file=sys.stderr)
        return 2
    rows = [cell_row(p, columns) for p in cells]
    table = markdown(rows, columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table, end="")
    print(f"[matrix-results] wrote {args.out} cells={len(rows)} done={sum(r['result'] == 'done' for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
