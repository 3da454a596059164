"""The held-out corpus of real failure logs (tests/data/logs/): families, sources and the dev/test split.

Each family folder holds verbatim log excerpts copied from public issue threads, with their
sources in SOURCES*.yaml; `healthy/` holds normal or misleading output that must not fire.
The split is fixed by a hash of each file's path, decided before any signature was written
against the corpus: signatures are written against `dev` only; `test` is only scored.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).parent / "data" / "logs"
HEALTHY = "healthy"


@dataclass(frozen=True)
class CorpusLog:
    """One log of the corpus: its family (or `healthy`), file, split and where it was copied from."""

    family: str
    path: Path
    split: str  # "dev" | "test"
    repo: str
    issue: int | None
    url: str
    what: str

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")


def split_of(family: str, file: str) -> str:
    """`test` for about half the files of each family, chosen by hash (not by looking at them)."""
    return "test" if hashlib.sha1(f"{family}/{file}".encode()).digest()[0] % 2 == 0 else "dev"


def corpus(root: Path = ROOT) -> list[CorpusLog]:
    """Every log with its source, in a stable order."""
    out: list[CorpusLog] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for sources in sorted(folder.glob("SOURCES*.yaml")):
            for entry in yaml.safe_load(sources.read_text(encoding="utf-8")) or []:
                out.append(CorpusLog(folder.name, folder / entry["file"], split_of(folder.name, entry["file"]),
                                     str(entry.get("repo")), entry.get("issue"), str(entry.get("url")), str(entry.get("what"))))
    return out
