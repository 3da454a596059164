"""Would a vocabulary fallback recognise failures the family regexes miss? Cross-validated on the DEV split only.

    python tests/bench/bench_vocabulary_cv.py            # the table (seconds)
    python tests/bench/bench_vocabulary_cv.py --misses   # also name the held-out dev logs it gets wrong

Issue 15's regexes score 100% on the corpus's dev split (they were written against it) but less on
logs no one tuned them on. The idea tested here: when no family regex fires, classify the failure's
text by its words. The classifier is a TF-IDF nearest neighbour over tokens (identifiers split on
punctuation and camelCase, paths cut to their last component, URLs and hex replaced by a class
word, numbers dropped, plus adjacent-token bigrams) with a "none" class trained on text that must not
fire (the catalog's negative samples and the shipped healthy logs of `data/_negative/`). It fires
only when the nearest sample is a family's, its cosine is at least FLOOR, and it beats the nearest
sample of any other class (family or "none") by MARGIN.

What a log is reduced to (the classifier's input): root_error's exception chain and its last tool
error lines; when it found neither, the last few lines of the tail with an error word. A log that
yields no text never fires, which keeps most healthy logs out on its own.

The protocol: only `split == "dev"` corpus entries are opened (the split is computed from the path
before any file is read); failure logs are put in K folds stratified by family. For each held-out
fold the model is trained on:

- `catalog`: the catalog's positive samples only (what ships today);
- `catalog+dev`: those plus the other folds' dev failure texts;
- `catalog+dev(shippable)`: those plus only the other folds' texts that could ship as a positive
  sample in the YAML (test_catalog.py requires that the regexes make its entry the top match, so a
  text the regexes do not recognise cannot be added).

Thresholds are either the fixed FLOOR/MARGIN below (picked by looking at all dev folds, so
optimistic) or chosen by nested cross-validation: inside each outer training set, inner folds
score the training logs and the pair with the most right fires (less 5 per wrong fire) and no
fire on the training healthy logs wins; dev healthy logs are split into the same K folds, so the
held-out healthy fold is never seen when choosing. The nested figure is the honest one.

Columns: `recall` = held-out failure logs given the right family by the fallback ALONE; `wrong` =
held-out failure logs given another family; `healthy fires` = dev healthy logs (held-out fold) and
shipped `_negative/` logs that fire. Regex-only vs regex+fallback on dev is printed last; the regexes
were written on all of dev, so that combined figure is optimistic by construction (the fallback
only runs where no regex fired, which on dev is never).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent_ops.known_issues.catalog import Catalog, load_catalog, shipped_dir  # noqa: E402
from agent_ops.known_issues.diagnose import LogView, diagnose  # noqa: E402
from tests.logcorpus import HEALTHY, split_of  # noqa: E402
from tests.logcorpus import ROOT as CORPUS_ROOT  # noqa: E402

K = 5
FLOOR = 0.35  # cosine of the nearest sample, at least
MARGIN = 0.10  # over the nearest sample of any other class (another family, or "none")
NONE = "none"  # the class of text that must not fire
FLOORS = [x / 20 for x in range(3, 17)]  # the grid nested CV chooses from
MARGINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
TWIN = 0.8  # a catalog sample this close (cosine) to a held-out log's text is likely copied from it
WRONG_COST = 5  # a wrong family costs this many right ones when thresholds are chosen
TOOL_LINES = 4  # root_error's latest tool error lines kept
ERROR_WORD = re.compile(
    r"(?i)\b(?:error|errno|failed|failure|fatal|killed|denied|refused|timed? ?out|cannot|can't|unable|not found|no space"
    r"|invalid|exception|abort|mismatch|incompatible|nan\b|exit(?:ed)? (?:code|status))"
)
ERROR_LINES, LAST_LINES = 5, 60  # without a root error: the last 5 lines with an error word among the last 60

# Variable parts, in the order propose.py generalises them.
VARIABLE = re.compile(
    r"(?P<url>[a-z][a-z0-9+.-]*://[^\s'\"<>()]+)"
    r"|(?P<path>(?<![\w.])(?:~?/|\./|\.\./|[A-Za-z]:\\)[^\s'\"<>(),:]*[^\s'\"<>(),:.])"
    r"|(?P<hex>\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,}\b)"
    r"|(?P<number>\d+(?:[.,]\d+)*)"
)
IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")
STOP = frozenset(
    ("the", "a", "an", "of", "to", "in", "is", "it", "be", "on", "at", "by", "or", "and", "for", "with", "as", "was", "are", "this",
     "that", "from", "you", "your", "if", "can", "could")
)


def words(text: str) -> list[str]:
    """Lower-case identifiers, each with its camelCase/underscore parts (OutOfMemoryError: out, memory, error, ...)."""
    out = []
    for ident in IDENT.findall(text):
        parts = [p.lower() for p in CAMEL.findall(ident)]
        out += [w for w in dict.fromkeys([*parts, ident.lower()]) if len(w) > 1 and w not in STOP]
    return out


def tokens(text: str) -> list[str]:
    """Words with variable parts generalised (a path keeps its last component's words), plus adjacent bigrams."""
    out, pos = [], 0
    for m in VARIABLE.finditer(text):
        out += words(text[pos : m.start()])
        if m.lastgroup in ("url", "path"):
            out += [f"<{m.lastgroup}>", *words(re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1])]
        elif m.lastgroup == "hex":
            out.append("<hex>")
        pos = m.end()
    out += words(text[pos:])
    return out + [f"{a}_{b}" for a, b in zip(out, out[1:])]


def failure_text(text: str) -> str:
    """The text the fallback classifies: the root error, else the tail's last lines with an error word."""
    view = LogView(text)
    failure = view.failure
    parts = [e.text for e in (*failure.chain, failure.exception)] if failure.exception else []
    parts += [line for _, _, line in failure.tool_lines[-TOOL_LINES:]]
    if not parts:
        parts = [line.strip() for line in view.lines[-LAST_LINES:] if ERROR_WORD.search(line)][-ERROR_LINES:]
    return "\n".join(dict.fromkeys(parts))


@dataclass(frozen=True)
class Verdict:
    family: str  # a family id, or NONE
    score: float  # cosine of the nearest sample
    margin: float  # over the nearest sample of any other class
    words: tuple[str, ...]  # the shared tokens that weighed most


class NearestSample:
    """TF-IDF (sublinear tf, smoothed idf) cosine nearest neighbour over labelled texts, through an inverted index."""

    def __init__(self, docs: list[tuple[str, str]]):
        counted = [(label, Counter(tokens(text))) for label, text in docs if text]
        df = Counter(w for _, c in counted for w in c)
        n = len(counted)
        self.idf = {w: math.log((1 + n) / (1 + d)) + 1 for w, d in df.items()}
        self.labels = [label for label, _ in counted]
        self.vectors = [self._vector(c) for _, c in counted]
        self.postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for i, vec in enumerate(self.vectors):
            for w, x in vec.items():
                self.postings[w].append((i, x))

    def _vector(self, counts: Counter[str]) -> dict[str, float]:
        vec = {w: (1 + math.log(k)) * self.idf[w] for w, k in counts.items() if w in self.idf}
        norm = math.sqrt(sum(x * x for x in vec.values())) or 1.0
        return {w: x / norm for w, x in vec.items()}

    def classify(self, text: str) -> Verdict | None:
        query = self._vector(Counter(tokens(text))) if text else {}
        sims: dict[int, float] = defaultdict(float)
        for w, q in query.items():
            for i, x in self.postings[w]:
                sims[i] += q * x
        if not sims:
            return None
        best: dict[str, tuple[float, int]] = {}
        for i, s in sims.items():
            if s > best.get(self.labels[i], (-1.0, -1))[0]:
                best[self.labels[i]] = (s, i)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
        label, (score, doc) = ranked[0]
        runner_up = ranked[1][1][0] if len(ranked) > 1 else 0.0
        shared = sorted((w for w in query if w in self.vectors[doc] and "_" not in w), key=lambda w: -query[w] * self.vectors[doc][w])
        return Verdict(label, score, score - runner_up, tuple(shared[:5]))


def fires(verdict: Verdict | None, floor: float, margin: float) -> str | None:
    if verdict is None or verdict.family == NONE or verdict.score < floor or verdict.margin < margin:
        return None
    return verdict.family


# --- the data: dev only ----------------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    family: str
    name: str
    text: str  # the failure text, not the log
    regex_family: str | None  # what the frozen regexes say about the whole log
    shippable: bool  # the regexes make its family the top match of the text alone (it could ship as a sample)


def dev_logs(catalog: Catalog) -> list[Log]:
    """Every dev-split corpus log; the split is computed from the path before the file is opened."""
    import yaml

    logs = []
    for folder in sorted(p for p in CORPUS_ROOT.iterdir() if p.is_dir()):
        for sources in sorted(folder.glob("SOURCES*.yaml")):
            for entry in yaml.safe_load(sources.read_text(encoding="utf-8")) or []:
                if split_of(folder.name, entry["file"]) != "dev":
                    continue  # never opened
                raw = (folder / entry["file"]).read_text(encoding="utf-8")
                text = failure_text(raw)
                regex = diagnose(raw, catalog=catalog).family
                alone = diagnose(text, catalog=catalog).family if text else None
                logs.append(Log(folder.name, entry["file"], text, regex, alone == folder.name))
    return logs


def catalog_docs(catalog: Catalog) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(family, text) of every positive sample (a cause's under its family); (NONE, text) of the must-not-fire texts."""
    positive = [(i.family_id, failure_text(s) or s) for i in catalog if i.level != "hint" for s in i.samples.positive]
    negative = [(NONE, failure_text(s)) for i in catalog for s in i.samples.negative]
    negative += [(NONE, failure_text(p.read_text(encoding="utf-8"))) for p in sorted((shipped_dir() / "_negative").glob("*.log"))]
    return positive, [d for d in negative if d[1]]


def folds(logs: list[Log]) -> dict[str, int]:
    """Fold of each log by name, stratified by family (healthy logs are a family here), in hash order."""
    out: dict[str, int] = {}
    by_family: dict[str, list[Log]] = defaultdict(list)
    for log in logs:
        by_family[log.family].append(log)
    for members in by_family.values():
        members.sort(key=lambda log: hashlib.sha1(f"{log.family}/{log.name}".encode()).hexdigest())
        for i, log in enumerate(members):
            out[f"{log.family}/{log.name}"] = i % K
    return out


def key(log: Log) -> str:
    return f"{log.family}/{log.name}"


# --- the evaluation -------------------------------------------------------------------------


def training_set(kind: str, base: list[tuple[str, str]], failures: list[Log]) -> list[tuple[str, str]]:
    if kind == "catalog":
        return base
    return base + [(log.family, log.text) for log in failures if log.text and (kind == "catalog+dev" or log.shippable)]


def choose_thresholds(kind: str, base, negative, failures: list[Log], healthy: list[str]) -> tuple[float, float]:
    """Inner K-fold over `failures` only: the (floor, margin) with the best right - WRONG_COST x wrong and no healthy fire."""
    inner = folds(failures)
    scored: list[tuple[str, Verdict | None]] = []
    healthy_verdicts: list[Verdict | None] = []
    for k in range(K):
        model = NearestSample(training_set(kind, base, [f for f in failures if inner[key(f)] != k]) + negative)
        scored += [(f.family, model.classify(f.text)) for f in failures if inner[key(f)] == k]
        healthy_verdicts += [model.classify(t) for t in healthy]
    best = (-math.inf, math.inf, 0.0)  # no pair without a healthy fire: never fire
    for floor in FLOORS:
        for margin in MARGINS:
            if any(fires(v, floor, margin) for v in healthy_verdicts):
                continue
            got = [(family, fires(v, floor, margin)) for family, v in scored]
            right = sum(a == b for a, b in got)
            wrong = sum(b is not None and a != b for a, b in got)
            best = max(best, (right - WRONG_COST * wrong, floor, margin))  # a tie goes to the stricter pair
    return best[1], best[2]


@dataclass
class Tally:
    right: int = 0
    wrong: int = 0
    logs: int = 0
    healthy_fires: int = 0
    healthy_logs: int = 0
    hard_right: int = 0
    hard_logs: int = 0


def without_twins(base: list[tuple[str, str]], held: list[Log]) -> list[tuple[str, str]]:
    """The catalog's samples less those within TWIN of a held-out failure text (an excerpt of that very log, most likely)."""
    index = NearestSample([(log.family, log.text) for log in held if log.family != HEALTHY and log.text])
    return [(family, text) for family, text in base if (v := index.classify(text)) is None or v.score < TWIN]


def evaluate(kind: str, nested: bool, twins: bool, logs: list[Log], catalog: Catalog,
             misses: list[str] | None) -> tuple[Tally, dict[str, Counter]]:
    shipped, negative = catalog_docs(catalog)
    shipped_healthy = [t for _, t in negative if t]  # for the threshold choice only; they are also training data
    fold = folds(logs)
    tally, per_family = Tally(), defaultdict(Counter)
    for k in range(K):
        train = [log for log in logs if fold[key(log)] != k]
        held = [log for log in logs if fold[key(log)] == k]
        train_failures = [log for log in train if log.family != HEALTHY]
        base = shipped if twins else without_twins(shipped, held)
        if nested:
            train_healthy = [log.text for log in train if log.family == HEALTHY and log.text]
            floor, margin = choose_thresholds(kind, base, negative, train_failures, train_healthy + shipped_healthy)
        else:
            floor, margin = FLOOR, MARGIN
        model = NearestSample(training_set(kind, base, train_failures) + negative)
        for log in held:
            verdict = model.classify(log.text)
            got = fires(verdict, floor, margin)
            if log.family == HEALTHY:
                tally.healthy_logs += 1
                tally.healthy_fires += got is not None
                if got and misses is not None:
                    misses.append(f"fold {k} healthy/{log.name} fired {got} {verdict}")
                continue
            tally.logs += 1
            per_family[log.family]["logs"] += 1
            if not log.shippable:  # the regexes do not recognise its failure text alone: the fallback's real customers
                tally.hard_logs += 1
                tally.hard_right += got == log.family
            if got == log.family:
                tally.right += 1
                per_family[log.family]["right"] += 1
            elif got is not None:
                tally.wrong += 1
                per_family[log.family]["wrong"] += 1
                if misses is not None:
                    misses.append(f"fold {k} {log.family}/{log.name} -> {got} {verdict}")
        # The shipped healthy logs are training text ("none"): scored once per fold they say nothing; left out here.
    return tally, per_family


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="name the held-out dev logs the fallback gets wrong or fires on")
    args = parser.parse_args()
    started = time.monotonic()
    catalog = load_catalog()
    logs = dev_logs(catalog)
    failures = [log for log in logs if log.family != HEALTHY]
    print(f"dev split: {len(failures)} failure logs in {len({f.family for f in failures})} families, "
          f"{len(logs) - len(failures)} healthy; {sum(bool(f.text) for f in failures)} failures and "
          f"{sum(bool(log.text) for log in logs if log.family == HEALTHY)} healthy logs yield a failure text; "
          f"{sum(f.shippable for f in failures)} failure texts could ship as samples. K={K} folds.\n")
    print("| training text | catalog twins of held-out logs | thresholds | recall (fallback alone) | wrong family | healthy fires |")
    print("|---|---|---|---|---|---|")
    misses: list[str] = []
    best_per_family, hard = None, (0, 0)
    for kind in ("catalog", "catalog+dev(shippable)", "catalog+dev"):
        for twins in (True, False):
            for nested in (False, True):
                chosen = nested and not twins and kind == "catalog+dev(shippable)"
                tally, per_family = evaluate(kind, nested, twins, logs, catalog, misses if args.misses and chosen else None)
                label = "nested CV" if nested else f"fixed {FLOOR}/{MARGIN}"
                print(f"| {kind} | {'kept' if twins else f'removed (cos >= {TWIN})'} | {label} | {tally.right}/{tally.logs} "
                      f"({tally.right / tally.logs:.1%}) | {tally.wrong} | {tally.healthy_fires}/{tally.healthy_logs} |", flush=True)
                if chosen:
                    best_per_family, hard = per_family, (tally.hard_right, tally.hard_logs)
    print("\nper family, catalog+dev(shippable), twins removed, nested CV (right / wrong / held-out logs):")
    for family, c in sorted((best_per_family or {}).items()):
        print(f"  {family:24s} {c['right']:3d} / {c['wrong']:2d} / {c['logs']:3d}")
    print(f"  of which held-out logs whose failure text alone no regex recognises (a proxy for what regexes miss): "
          f"{hard[0]}/{hard[1]} recalled")
    regex_right = sum(f.regex_family == f.family for f in failures)
    healthy_regex = sum(log.regex_family is not None for log in logs if log.family == HEALTHY)
    print(f"\nregex only on dev: {regex_right}/{len(failures)}, healthy fires {healthy_regex}; regex+fallback can only add where no"
          f" regex fired: {sum(f.regex_family is None for f in failures)} dev failure logs (optimistic: the regexes were written on dev).")
    for line in misses:
        print("  ", line)
    print(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
