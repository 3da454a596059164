"""The offline matcher: a log's tail against the known-issue catalog, best match first.

Logs are normalised the way a person reads them before any regex runs (see `root_error`:
ANSI colours, tqdm rewrites, rank prefixes and time stamps go), and the tail is reduced to its
failure: the last traceback's exception chain and the tools' error lines. Matching has two
levels. Families (error classes) are tried on the whole tail; evidence on the failure's own
lines counts more than evidence elsewhere, so when several families match, the one that
names the final exception wins. Causes (specific, automatically fixable) are tried only
inside a family that matched, and come before it. A family with no cause is still a
diagnosis: its match carries the failure as it was seen.

Wrapped lines (a tmux capture, a copied terminal, a logger that breaks long messages) are
joined where a signature needs it: a regex is also tried across two or three neighbouring
lines, with and without a space, and counts there only when its match crosses a line break.
Joining them up front would need a guess at the terminal width, and a wrong guess glues
healthy lines of equal length together.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache

from pydantic import BaseModel, Field

from agent_ops.bounds import DIAGNOSE_TAIL_LINES
from agent_ops.known_issues.catalog import Catalog, KnownIssue, Signature, default_catalog
from agent_ops.known_issues.literals import Alternation, Literal, alternation, may_match, required_literals
from agent_ops.known_issues.root_error import RootError, normalise_labelled, root_error

MAX_SHOWN_LINES = 8  # matched lines reported per entry
MAX_LINE_CHARS = 300  # a matched line is cut to this for reports
NEAREST_MIN = 0.5  # partial score below which a candidate is noise
NEAREST_MAX = 5
# Evidence on the failure's lines outranks evidence elsewhere in the tail (a warning, an earlier retry).
ON_FAILURE_BONUS = 1.0
ON_FINAL_EXCEPTION_BONUS = 1.0
# An exception's header line as Java and Python print it under a logger's line (`pkg.SomeError: message`).
_THROWABLE = re.compile(r"^(?:[\w$]+\.)*[\w$]*(?:Exception|Error)\b: ")

WRAP_CANDIDATE = 50  # a line shorter than this was not wrapped by anyone
MAX_WRAP_SEGMENTS = 3  # a signature's match spans at most this many wrapped lines
# Hard wraps split mid-word (join with nothing); soft wraps drop a space (join with one).
WRAP_SEPARATORS = ("", " ")
WORD = re.compile(r"[a-z][a-z_]{3,}")


class Match(BaseModel):
    """A catalog entry whose signatures hold in the log."""

    issue_id: str = Field(description="Catalog entry id.")
    title: str = Field(description="Entry title.")
    level: str = Field("family", description="`family`, `cause` (a specific cause inside `family`) or `hint`.")
    family: str = Field("", description="The family id (the entry's own id for a family).")
    score: float = Field(description="Summed weight of the signatures that hold; higher is a better match.")
    matched_lines: list[str] = Field(description="`LINE: text` of the lines that matched (line numbers of the original log).")
    cause: str = Field(description="Why it happens.")
    fix: list[str] = Field(description="One line per fix action the entry applies.")
    escalate: str | None = Field(None, description="What a person should do if the fix is not enough.")


class Candidate(BaseModel):
    """An entry that almost matched: some of its evidence is present."""

    issue_id: str = Field(description="Catalog entry id.")
    title: str = Field(description="Entry title.")
    score: float = Field(description="Partial score in [0, 1): share of the best signature's evidence found.")
    matched_lines: list[str] = Field(description="`LINE: text` of the lines closest to its signature.")


class Diagnosis(BaseModel):
    """The matcher's verdict on one log."""

    matches: list[Match] = Field(default_factory=list, description="Entries that matched, best first: a family's causes, then the family.")
    nearest: list[Candidate] = Field(default_factory=list, description="When nothing matched: the closest entries, best first.")
    hints: list[Match] = Field(default_factory=list, description="Observations that explain a stalled gate (never a diagnosis by themselves).")
    root_error: str = Field("", description="The failure as extracted: the final exception and its chain, else the tools' error lines.")
    root_lines: list[str] = Field(default_factory=list, description="`LINE: text` of the failure's lines.")
    lines_considered: int = Field(0, description="Log lines examined (the tail).")
    first_line: int = Field(1, description="Line number of the first examined line in the original log.")

    @property
    def best(self) -> Match | None:
        """The best match, if any."""
        return self.matches[0] if self.matches else None

    @property
    def family(self) -> str | None:
        """The family of the best match, if any."""
        return self.matches[0].family if self.matches else None


@dataclass(frozen=True)
class Hit:
    """A regex match on line `first`, or across wrapped lines `first`..`last`."""

    first: int
    last: int
    match: re.Match[str]


class LogView:
    """A log tail as normalised lines with their original line numbers, searchable by regex."""

    def __init__(self, text: str, tail: int | None = DIAGNOSE_TAIL_LINES):
        total = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        start = max(0, total - tail) if tail else 0
        if start:  # normalise only the tail: its cost follows the tail, not the log (count and rfind allocate nothing)
            cut = len(text)
            for _ in range(total - start + (1 if text.endswith("\n") else 0)):
                cut = text.rfind("\n", 0, cut)
            text = text[cut + 1 :]
        self.labels, self.lines, self.widths = normalise_labelled(text)
        self.numbers = list(range(start + 1, start + len(self.lines) + 1))
        self.first_line = start + 1
        self._found: dict[tuple[re.Pattern[str], bool], list[Hit]] = {}

    @cached_property
    def failure(self) -> RootError:
        """The tail reduced to its failure."""
        return root_error(self.lines, self.labels, self.widths)

    @cached_property
    def _text(self) -> str:
        return "\n".join(self.lines)

    @cached_property
    def _groups(self) -> dict[int, list[int]]:
        """Start indices of runs of `n` lines that may be one wrapped line (all but the last are long)."""
        long = [width >= WRAP_CANDIDATE for width in self.widths]
        return {
            n: [i for i in range(len(self.lines) - n + 1) if all(long[i : i + n - 1])]
            for n in range(2, MAX_WRAP_SEGMENTS + 1)
        }

    @cached_property
    def _joined(self) -> dict[str, str]:
        # Every run of lines is a substring of these: a pattern that misses them misses every run.
        return {sep: sep.join(self.lines) for sep in WRAP_SEPARATORS}

    @cached_property
    def _lowered(self) -> dict[str, str]:
        return {sep: joined.lower() for sep, joined in self._joined.items()}

    @cached_property
    def _lowered_lines(self) -> list[str]:
        return [line.lower() for line in self.lines]

    @cached_property
    def _group_texts(self) -> dict[tuple[int, str], str]:
        return {
            (n, sep): "\n".join(sep.join(self.lines[i : i + n]) for i in starts)
            for n, starts in self._groups.items()
            for sep in WRAP_SEPARATORS
        }

    @cached_property
    def words(self) -> list[set[str]]:
        """Lower-case words of each line, for partial (nearest) scoring."""
        return [set(WORD.findall(line.lower())) for line in self.lines]

    def find(self, pattern: re.Pattern[str], failure_only: bool = False) -> list[Hit]:
        """Every line the pattern matches, plus runs of wrapped lines it matches only when joined; in order.
        `failure_only`: only lines and runs that lie on the failure's lines (what an `on_failure` signature counts);
        searching the other runs of a long tail is most of a diagnosis's time for the anchored concept patterns."""
        key = (pattern, failure_only)
        if key not in self._found:  # entries share patterns, and nearest scoring asks again
            self._found[key] = self._search(pattern, self.failure.lines if failure_only else None)
        return self._found[key]

    def _search(self, pattern: re.Pattern[str], within: set[int] | frozenset[int] | None) -> list[Hit]:
        if (alternatives := _alternation(pattern)) is not None:  # an alternation: only what may match this tail
            joined, spaced = WRAP_SEPARATORS
            reduced = alternatives.reduced(self._joined[joined], self._lowered[joined],
                                           (self._joined[spaced], self._lowered[spaced]))
            if reduced is None:
                return []  # no alternative's literal is anywhere, not even across a wrap
            pattern, literals = reduced
        else:
            literals = _literals(pattern)
            if not any(may_match(literals, self._joined[sep], self._lowered[sep]) for sep in WRAP_SEPARATORS):
                return []  # a literal the pattern needs is nowhere, not even across a wrap
        hits: dict[int, Hit] = {}
        # `^` and `$` hold at a line's (a run's) ends, but in a join of many lines only at its very start and end:
        # a join can rule nothing out for an anchored pattern, so its lines and runs are each searched.
        anchored = "^" in pattern.pattern or "$" in pattern.pattern
        if anchored or pattern.search(self._text):  # cheap filter: most patterns miss most logs
            for i in range(len(self.lines)) if within is None else sorted(within):
                line = self.lines[i]
                if may_match(literals, line, self._lowered_lines[i]) and (m := pattern.search(line)):
                    hits[i] = Hit(i, i, m)
        covered = set(hits)
        for (n, sep), joined in self._group_texts.items():
            if not anchored and not (pattern.search(self._joined[sep]) and pattern.search(joined)):
                continue
            for i in self._groups[n]:
                if within is not None and not within.issuperset(range(i, i + n)):
                    continue
                # A run that overlaps a hit already found is not a second occurrence.
                if covered.isdisjoint(range(i, i + n)) and (m := _spanning(pattern, self.lines[i : i + n], sep)):
                    hits[i] = Hit(i, i + n - 1, m)
                    covered.update(range(i, i + n))
        return [hits[i] for i in sorted(hits)]

    def shown(self, index: int) -> str:
        """`LINE: text` for reports (with its time stamp, without ANSI or rank labels), cut to a readable length."""
        text = f"{self.labels[index]} {self.lines[index]}" if self.labels[index] else self.lines[index]
        cut = text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - 3] + "..."
        return f"{self.numbers[index]}: {cut}"


@lru_cache(maxsize=1024)
def _literals(pattern: re.Pattern[str]) -> list[Literal] | None:
    return required_literals(pattern)


@lru_cache(maxsize=1024)
def _alternation(pattern: re.Pattern[str]) -> Alternation | None:
    return alternation(pattern)


def _spanning(pattern: re.Pattern[str], segments: list[str], sep: str) -> re.Match[str] | None:
    """A match of the joined segments that starts in the first and ends in the last (needs all of them)."""
    joined = sep.join(segments)
    last_start = len(joined) - len(segments[-1])
    for m in pattern.finditer(joined):
        if m.start() < len(segments[0]) and m.end() > last_start:
            return m
    return None


def diagnose(
    log_text: str,
    *,
    tags: Iterable[str] | None = None,
    catalog: Catalog | None = None,
    tail: int | None = DIAGNOSE_TAIL_LINES,
) -> Diagnosis:
    """Match a log against the entries that apply to these step tags; `tail=None` reads the whole log."""
    view = LogView(log_text, tail)
    issues = (catalog if catalog is not None else default_catalog()).applicable(tags)
    families = [_Found(issue, *_evaluate(issue, view)) for issue in issues if issue.level == "family"]
    families = [f for f in families if f.score > 0]
    for found in families:
        causes = [_Found(c, *_evaluate(c, view)) for c in issues if c.family == found.issue.id]
        found.causes = sorted((c for c in causes if c.score > 0), key=_cause_order)
    # Best first; on a tie the stronger cause, then the earlier evidence: a cascade's first error is its cause.
    families.sort(key=lambda f: (-_rank(f, view), -(f.causes[0].score if f.causes else 0.0), min(h.first for h in f.hits)))
    matches = [_as_match(found, view) for family in families for found in (*family.causes, family)]
    hints = [_Found(issue, *_evaluate(issue, view)) for issue in issues if issue.level == "hint"]
    nearest = [] if matches else _nearest([i for i in issues if i.level != "hint"], view)
    failure = view.failure
    return Diagnosis(
        matches=matches,
        nearest=nearest,
        hints=[_as_match(h, view) for h in hints if h.score > 0],
        root_error=failure.summary(),
        root_lines=[view.shown(i) for i in sorted(failure.lines)][-MAX_SHOWN_LINES:],
        lines_considered=len(view.numbers),
        first_line=view.first_line,
    )


@dataclass
class _Found:
    """An entry's evidence in one log, and (for a family) its causes that fired."""

    issue: KnownIssue
    score: float
    hits: list[Hit]
    causes: list[_Found] | None = None


def _cause_order(found: _Found) -> tuple[float, int]:
    return (-found.score, min(h.first for h in found.hits))


def _rank(found: _Found, view: LogView) -> float:
    """A family's standing: its own evidence, more where it lies on the failure's lines.

    A cause's weight does not count here: it says which way a family happened, not that the
    family explains the failure better than another (an OOM on one rank outranks the NCCL
    timeout it causes on the others, however specific the timeout's cause is).
    """
    failure = view.failure
    # Every line the holding signatures match, not only the few reported: an earlier one may be the final exception.
    holding = [sig for sig in found.issue.signatures if signature_hits(sig, view)]
    lines = {i for sig in holding for part in sig.compiled for h in view.find(part, sig.on_failure) for i in range(h.first, h.last + 1)}
    on_failure = ON_FAILURE_BONUS if lines & failure.lines else 0.0
    on_final = ON_FINAL_EXCEPTION_BONUS if lines & set(failure.final_lines) else 0.0
    return found.score + on_failure + on_final


def _evaluate(issue: KnownIssue, view: LogView) -> tuple[float, list[Hit]]:
    score, hits = 0.0, []
    for signature in issue.signatures:
        found = signature_hits(signature, view)
        if found:
            score += signature.weight
            hits += found
    return score, hits


def signature_hits(signature: Signature, view: LogView) -> list[Hit]:
    """The lines that make the signature hold, or [] when it does not."""
    if len(signature.compiled) == 1:
        found = _single(signature, view)
    else:
        found = _sequence(signature, view)
    if found and signature.after is not None:
        last = max(h.last for h in found)
        if any(signature.after.search(line) for line in view.lines[last + 1 :]):
            return []
    return found


def _counted(signature: Signature, pattern: re.Pattern[str], view: LogView) -> list[Hit]:
    """The pattern's hits, less those on lines the signature's `unless` also matches (and, for an
    `on_failure` signature, less those that reach off the failure's lines)."""
    hits = view.find(pattern, failure_only=signature.on_failure)
    if signature.exclude is None:
        return hits
    return [h for h in hits if not any(signature.exclude.search(view.lines[i]) for i in _record(view, h.first, h.last))]


def _record(view: LogView, first: int, last: int) -> range:
    """The lines of the log record a hit lies in, for `unless`: a hit on an exception's header line printed just
    after a logger's line that ends with the same text belongs to that line too (log4j/jetty print the message
    with the throwable, then the throwable: the record says the level and who carried on, the header repeats it)."""
    if first > 0 and _THROWABLE.match(view.lines[first]):
        header = view.lines[first].strip()
        if len(header) > 20 and view.lines[first - 1].rstrip().endswith(header):
            return range(first - 1, last + 1)
    return range(first, last + 1)


def _single(signature: Signature, view: LogView) -> list[Hit]:
    hits = _counted(signature, signature.compiled[0], view)
    if signature.spike_above is not None:
        return _spike(signature, hits)
    recent = hits[-signature.count :]
    if len(hits) < signature.count or not all(_passes(signature, h) for h in recent):
        return []
    return recent[-3:]


def _spike(signature: Signature, hits: list[Hit]) -> list[Hit]:
    """The last `count` values, when each is above spike_above x the mean of the `baseline` values before them."""
    values = [_number(h.match.group("value")) for h in hits]
    recent, before = values[-signature.count :], values[-signature.count - signature.baseline : -signature.count]
    if len(before) < signature.baseline or not all(math.isfinite(v) for v in before):
        return []
    mean = sum(before) / len(before)
    if mean <= 0 or not all(v > signature.spike_above * mean for v in recent):
        return []  # nan compares false: a non-finite loss is another family's
    return hits[-signature.count :][-3:]


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _passes(signature: Signature, hit: Hit) -> bool:
    if signature.ratio_above is None:
        return True
    try:
        return float(hit.match.group("value")) > signature.ratio_above * float(hit.match.group("limit"))
    except (TypeError, ValueError):
        return False


def _sequence(signature: Signature, view: LogView) -> list[Hit]:
    per_part = [_counted(signature, p, view) for p in signature.compiled]
    if not all(per_part):
        return []
    # Latest start first: the most recent occurrence is the one that ended the step.
    for start in reversed(per_part[0]):
        chain = [start]
        for hits in per_part[1:]:
            nxt = next((h for h in hits if h.first >= chain[-1].first), None)
            if nxt is None or nxt.last - start.first > signature.window:
                break
            chain.append(nxt)
        else:
            return chain
    return []


def _as_match(found: _Found, view: LogView) -> Match:
    issue = found.issue
    return Match(
        issue_id=issue.id,
        title=issue.title,
        level=issue.level,
        family=issue.family_id,
        score=round(found.score, 3),
        matched_lines=_shown(found.hits, view),
        cause=issue.cause.strip(),
        fix=issue.fix_summary(),
        escalate=issue.escalate.strip() if issue.escalate else None,
    )


def _shown(hits: list[Hit], view: LogView) -> list[str]:
    indices = sorted({i for h in hits for i in range(h.first, h.last + 1)})
    return [view.shown(i) for i in indices[-MAX_SHOWN_LINES:]]


def _nearest(issues: list[KnownIssue], view: LogView) -> list[Candidate]:
    candidates = []
    for issue in issues:
        score, lines = max((_partial(sig, view) for sig in issue.signatures), key=lambda t: t[0])
        if score >= NEAREST_MIN:
            candidates.append(Candidate(issue_id=issue.id, title=issue.title, score=round(score, 3), matched_lines=[view.shown(i) for i in lines]))
    candidates.sort(key=lambda c: -c.score)
    return candidates[:NEAREST_MAX]


def _partial(signature: Signature, view: LogView) -> tuple[float, list[int]]:
    """How close a signature came: its weakest part decides (found = 1, else the words it shares with a line)."""
    scores, lines = [], []
    for pattern in signature.compiled:
        hits = view.find(pattern)
        if hits:
            scores.append(1.0)
            lines.append(hits[-1].first)
            continue
        share, line = _word_share(pattern, view)
        scores.append(0.8 * share)  # words alone never make a part as good as its regex
        if line is not None and share > 0:
            lines.append(line)
    score = min(scores)
    if score == 1.0:
        # Every part is there, yet the signature does not hold: order or window failed (close), or a
        # condition (count, ratio, not_followed_by) said explicitly that this is not the issue (far).
        conditional = signature.count > 1 or signature.ratio_above is not None or signature.spike_above is not None or signature.after is not None
        score = 0.4 if conditional else 0.9
    return score, sorted(set(lines))


def _word_share(pattern: re.Pattern[str], view: LogView) -> tuple[float, int | None]:
    words = _pattern_words(pattern.pattern)
    if len(words) < 3:  # two shared words are a coincidence, not a near miss
        return 0.0, None
    best, where = 0, None
    for i, line_words in enumerate(view.words):
        n = len(words & line_words)
        if n > best:
            best, where = n, i
    return best / len(words), where


def _pattern_words(source: str) -> set[str]:
    # Drop group names and escapes (\d, \s, \b) so only the literal words of the pattern remain.
    text = re.sub(r"\(\?P<\w+>|\\[A-Za-z]", " ", source)
    return set(WORD.findall(text.lower()))
