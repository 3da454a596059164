"""Do concept signatures generalise? Their recall ALONE on the DEV split, and what they fire on that they must not.

    python tests/bench/bench_concepts.py            # the table (about a minute)
    python tests/bench/bench_concepts.py --misses   # also name the dev logs the concepts miss or give another family

Each family carries, beside its phrase signatures (weight 2, written against dev logs), one or two
concept signatures (`on_failure: true`, weight 1) written from the family's definition alone: a
component of the family near a failure of the kind the family is, counted only on the failure lines
root_error extracts. No dev log was read to write them, so their recall on dev is a proxy for how
they do on logs no one has seen (unlike the phrase signatures' 100%, which dev was tuned to).

Columns, with the phrase signatures switched off (each family keeps only its concept signatures;
causes and hints are out): `concept` = dev failure logs whose best family is the right one;
`wrong` = dev failure logs whose best family is another; `also` = logs where another family's
concept fires beside the right one (ranked lower). Then the fires of the concepts on every dev healthy
log, on the catalog's own negative samples and on `data/_negative/`. Last, the full catalog (phrases
and concepts together) on dev: recall (the dev column of the README's corpus table) and healthy fires (must stay 0).

Only `split == "dev"` logs are opened: the split is computed from the path before any file is read.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent_ops.known_issues.catalog import Catalog, load_catalog, shipped_dir  # noqa: E402
from agent_ops.known_issues.diagnose import diagnose  # noqa: E402
from tests.logcorpus import HEALTHY, corpus  # noqa: E402


def concepts_only(catalog: Catalog) -> Catalog:
    """The families with only their `on_failure` signatures (a family without one drops out)."""
    issues = []
    for issue in catalog:
        kept = [sig for sig in issue.signatures if sig.on_failure]
        if issue.level == "family" and kept:
            issues.append(issue.model_copy(update={"signatures": kept}))
    return Catalog(tuple(issues), {i.id: catalog.sources[i.id] for i in issues})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="name the dev logs the concepts miss or misplace")
    args = parser.parse_args()
    full = load_catalog()
    concept = concepts_only(full)
    dev = [log for log in corpus() if log.split == "dev"]  # decided by path; test logs are never opened
    rows: dict[str, Counter[str]] = {}
    notes: list[str] = []
    healthy = Counter()
    for log in dev:
        text = log.text()
        whole, alone = diagnose(text, catalog=full), diagnose(text, catalog=concept)
        fired = [m.family for m in alone.matches]
        if log.family == HEALTHY:
            healthy["logs"] += 1
            healthy["full"] += bool(whole.matches)
            healthy["concept"] += bool(fired)
            if fired:
                notes.append(f"healthy/{log.path.name}: concept {fired[0]} fires")
            continue
        row = rows.setdefault(log.family, Counter())
        row["logs"] += 1
        row["full"] += whole.family == log.family
        row["concept"] += alone.family == log.family
        row["wrong"] += bool(fired) and alone.family != log.family
        row["also"] += alone.family == log.family and len(set(fired)) > 1
        if alone.family != log.family:
            notes.append(f"{log.family}/{log.path.name}: concept -> {alone.family}")
    samples = [(i.id, n, s) for i in full for n, s in enumerate(i.samples.negative)]
    sample_fires = [f"{iid} negative[{n}]: {m.family}" for iid, n, s in samples
                    for m in diagnose(s, catalog=concept).matches[:1]]
    shipped = sorted((shipped_dir() / "_negative").glob("*.log"))
    shipped_fires = [f"_negative/{p.name}: {m.family}" for p in shipped for m in diagnose(p.read_text(), catalog=concept).matches[:1]]

    total = sum(rows.values(), Counter())
    print(f"{'family':22s} {'concept alone':>14s} {'wrong':>6s} {'also':>5s} {'full catalog':>13s}")
    for family in sorted(rows):
        r = rows[family]
        print(f"{family:22s} {r['concept']:>7d}/{r['logs']:<6d} {r['wrong']:>6d} {r['also']:>5d} {r['full']:>6d}/{r['logs']:<6d}")
    pct = 100 * total["concept"] / total["logs"]
    print(f"{'all dev failures':22s} {total['concept']:>7d}/{total['logs']:<6d} {total['wrong']:>6d} {total['also']:>5d} "
          f"{total['full']:>6d}/{total['logs']:<6d}  (concept alone {pct:.1f}%)")
    print(f"concept fires: dev healthy {healthy['concept']}/{healthy['logs']}, catalog negative samples "
          f"{len(sample_fires)}/{len(samples)}, data/_negative {len(shipped_fires)}/{len(shipped)}")
    print(f"full catalog on dev: recall {total['full']}/{total['logs']}, healthy fires {healthy['full']}/{healthy['logs']}")
    for line in sample_fires + shipped_fires + [n for n in notes if n.startswith("healthy/")]:
        print("  FIRE", line)
    if args.misses:
        for line in notes:
            if not line.startswith("healthy/"):
                print("  MISS", line)


if __name__ == "__main__":
    main()
