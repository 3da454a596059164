"""Diagnosis on real logs no signature was written against: recall per family and false fires (tests/data/logs/).

The protocol: signatures are written against the corpus's `dev` split only; the `test` split is
only scored, here. A log counts as recognised when the family of the best match is its folder's
family; a healthy log fires when anything matches. This test prints the per-family figures and
names the dev logs it misses (those may be read), never the test logs. It fails when a healthy
log of the dev split fires, or when the figures differ from the table in the README (so a drop in
recall or a new false fire on the test split fails, and the README always shows what this test computed).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from agent_ops.known_issues.catalog import load_catalog
from agent_ops.known_issues.diagnose import diagnose
from tests.logcorpus import HEALTHY, corpus

README = Path(__file__).parent.parent / "README.md"
TABLE = re.compile(r"<!-- corpus-table -->\n(.*?)<!-- /corpus-table -->", re.S)
SPLITS = ("dev", "test")


@pytest.fixture(scope="module")
def scored():
    """(family, split) -> [recognised, logs] for failures; (healthy, split) -> [fired, logs]; dev misses by name."""
    catalog = load_catalog()
    counts: dict[tuple[str, str], Counter[str]] = {}
    dev_misses = []
    for log in corpus():
        result = diagnose(log.text(), catalog=catalog)
        tally = counts.setdefault((log.family, log.split), Counter())
        tally["logs"] += 1
        if log.family == HEALTHY:
            tally["fired"] += bool(result.matches)
            if result.matches and log.split == "dev":
                dev_misses.append(f"healthy/{log.path.name} fired {result.best.issue_id}")
            continue
        tally["recognised"] += result.family == log.family
        if result.family != log.family and log.split == "dev":
            dev_misses.append(f"{log.family}/{log.path.name} -> {result.family}")
    return counts, dev_misses


def corpus_table(counts: dict[tuple[str, str], Counter[str]]) -> str:
    """The README's table: recall per family on each split, all families together, false fires on healthy logs."""
    families = sorted({family for family, _ in counts if family != HEALTHY})
    rows = ["| family | dev | test |", "|---|---|---|"]
    for family in families:
        cells = [f"{counts[family, s]['recognised']}/{counts[family, s]['logs']}" for s in SPLITS]
        rows.append(f"| {family} | {' | '.join(cells)} |")
    totals = []
    for split in SPLITS:
        hit = sum(counts[f, split]["recognised"] for f in families)
        n = sum(counts[f, split]["logs"] for f in families)
        totals.append(f"**{hit}/{n} ({hit / n:.1%})**")
    rows.append(f"| **all failures: recognised in the right family** | {' | '.join(totals)} |")
    fires = [f"**{counts[HEALTHY, s]['fired']}/{counts[HEALTHY, s]['logs']}**" for s in SPLITS]
    rows.append(f"| **healthy or misleading logs: false fires** | {' | '.join(fires)} |")
    return "\n".join(rows) + "\n"


def test_no_healthy_log_of_the_dev_split_fires(scored):
    """Signatures are written against the dev split: none of its healthy logs may fire. The test split's false fires
    are scored, never fixed by looking at the log (that would make it one more dev log): their count is in the README
    table, which the next test pins, so a new false fire there fails too."""
    counts, dev_misses = scored
    for split in SPLITS:
        print(f"{split}: {counts[HEALTHY, split]['fired']}/{counts[HEALTHY, split]['logs']} healthy logs fired")
    assert [m for m in dev_misses if m.startswith("healthy/")] == []
    assert counts[HEALTHY, "dev"]["fired"] == 0


def test_recall_per_family_is_the_readme_table(scored):
    counts, dev_misses = scored
    table = corpus_table(counts)
    print("\n" + table)
    for miss in dev_misses:
        print("  dev miss:", miss)
    documented = TABLE.search(README.read_text(encoding="utf-8"))
    assert documented is not None, "README.md lacks the <!-- corpus-table --> block"
    assert documented.group(1) == table, "recall changed: update the README's table with the one printed above (or fix the regression)"
