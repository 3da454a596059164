"""The literal text a regex cannot match without: a cheap test that skips most signatures on most logs.

Python's `re` tries a long alternation at every position of the text; a catalog has a hundred of
them, and most never match a given log. For each top-level alternative of a pattern this finds
its longest run of literal characters (at least MIN_LITERAL); when none of those runs occurs in the
text (a substring search, orders of magnitude faster), the pattern cannot match there. A pattern
with an alternative that has no such run (`\\d+ Killed`, `.{0,80}error`) gets no prefilter.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator

try:  # the parser `re` itself uses; `sre_parse` before Python 3.11
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse  # type: ignore[no-redef]

MIN_LITERAL = 3  # shorter runs are in every log
Literal = tuple[str, bool]  # (text, case-insensitive)


def required_literals(pattern: re.Pattern[str]) -> list[Literal] | None:
    """One literal per top-level alternative (the pattern needs at least one of them), or None."""
    try:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:  # an internal API; without it there is simply no prefilter
        return None
    icase = bool(parsed.state.flags & re.IGNORECASE)
    return _alternatives(list(parsed), icase)


def _alternatives(items: list, icase: bool) -> list[Literal] | None:
    """Literals for a sequence: one per alternative of a top-level alternation, else its longest run."""
    if len(items) == 1:
        op, av = items[0]
        if op is sre_parse.BRANCH:
            return _union([list(b) for b in av[1]], icase)
        if op is sre_parse.SUBPATTERN and _is_branch(av[3]):
            return _alternatives(list(av[3]), _flag(icase, av[1], av[2]))
    run = _longest_run(items, icase)
    if run is not None:
        return run
    # No long literal run: a group the sequence cannot skip may still give one literal per alternative.
    for op, av in items:
        if op is sre_parse.BRANCH:
            literals = _union([list(b) for b in av[1]], icase)
        elif op is sre_parse.SUBPATTERN:
            literals = _alternatives(list(av[3]), _flag(icase, av[1], av[2]))
        else:
            continue
        if literals is not None:
            return literals
    return None


def _union(branches: list[list], icase: bool) -> list[Literal] | None:
    found: list[Literal] = []
    for branch in branches:
        literals = _alternatives(branch, icase)
        if literals is None:
            return None
        found += literals
    return found


def _is_branch(sub) -> bool:
    items = list(sub)
    return len(items) == 1 and items[0][0] is sre_parse.BRANCH


def _flag(icase: bool, add: int, remove: int) -> bool:
    return (icase or bool(add & re.IGNORECASE)) and not remove & re.IGNORECASE


def _longest_run(items: list, icase: bool) -> list[Literal] | None:
    """The longest run of consecutive literal characters of one alternative (groups without branches are seen through)."""
    best, run = "", []
    run_icase = icase

    def close() -> None:
        nonlocal best, run
        if len(run) > len(best):
            best = "".join(run)
            best_flags[0] = run_icase
        run = []

    best_flags = [icase]
    for op, av in _flatten(items, icase):
        if op is sre_parse.LITERAL:
            char, char_icase = av
            if run and char_icase != run_icase:
                close()
            run_icase = char_icase
            run.append(chr(char))
        else:
            close()
    close()
    return [(best, best_flags[0])] if len(best) >= MIN_LITERAL else None


def _flatten(items: list, icase: bool):
    """(op, av) in order, with groups that hold no alternation opened up; LITERAL's av is (char, case-insensitive)."""
    for op, av in items:
        if op is sre_parse.LITERAL:
            yield op, (av, icase)
        elif op is sre_parse.SUBPATTERN and not any(o is sre_parse.BRANCH for o, _ in av[3]):
            yield from _flatten(list(av[3]), _flag(icase, av[1], av[2]))
        else:
            yield op, av


def may_match(literals: list[Literal] | None, text: str, lowered: str) -> bool:
    """Whether a pattern with these required literals can match `text` (`lowered` is `text.lower()`)."""
    if literals is None:
        return True
    return any((lit.lower() in lowered) if icase else (lit in text) for lit, icase in literals)


# --- one log's alternation -------------------------------------------------------------------------------------
#
# The prefilter above says whether a pattern can match at all; once one of its literals is in the log, `re` still
# tries every alternative of a long alternation (hundreds, in a family's widest signature) at every position. Most
# of them cannot match this log (their own literal is nowhere in it), and dropping them changes nothing: at each
# position `re` takes the first alternative that matches, and one that matches nowhere is never that one. So per
# log the alternation is compiled again from only the alternatives that may match.

GLOBAL_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
# A group around the whole pattern whose inside is the alternation: non-capturing, or with local flags.
OPENER = re.compile(r"\(\?(?:[aiLmsux]*(?:-[imsx]+)?):")
MIN_ALTERNATIVES = 2  # one alternative: nothing to leave out


class Alternation:
    """A pattern's top-level alternatives as source text, each with the literals it needs (None: cannot tell)."""

    def __init__(self, pattern: re.Pattern[str], head: str, pieces: list[str], tail: str) -> None:
        self.pattern, self.head, self.tail = pattern, head, tail
        self.pieces = pieces
        self.literals = [_piece_literals(head, piece, tail, pattern.flags) for piece in pieces]

    def reduced(self, text: str, lowered: str, also: tuple[str, str] | None = None) -> tuple[re.Pattern[str], list[Literal] | None] | None:
        """The pattern with only the alternatives whose literals occur in `text` (or in `also`, another join of the
        same lines), and the literals the reduced pattern needs; None when no alternative can match."""
        kept, literals = [], []
        for piece, need in zip(self.pieces, self.literals):
            if need is None or may_match(need, text, lowered) or (also is not None and may_match(need, *also)):
                kept.append(piece)
                if literals is not None:
                    literals = None if need is None else literals + need
        if not kept:
            return None
        if len(kept) == len(self.pieces):
            return self.pattern, literals
        return _compiled(self.head + "|".join(kept) + self.tail, self.pattern.flags), literals


def alternation(pattern: re.Pattern[str]) -> Alternation | None:
    """The pattern's top-level alternatives (inside a group around the whole pattern, if any); None for a single
    alternative, or where dropping alternatives would renumber groups that are read (names, back-references,
    conditionals)."""
    source = pattern.pattern
    if pattern.groupindex or re.search(r"\\\d|\(\?P=|\(\?\(", source) or pattern.flags & re.VERBOSE:
        return None  # (verbose: a comment may hold bars and parentheses)
    head = ""
    while m := GLOBAL_FLAGS.match(source, len(head)):
        head = source[: m.end()]
    body, tail = source[len(head) :], ""
    pieces = _split(body)
    if pieces == [body] and (m := OPENER.match(body)) and _closes_at_end(body):
        head, tail = head + body[: m.end()], ")"
        pieces = _split(body[m.end() : -1])
    if pieces is None or len(pieces) < MIN_ALTERNATIVES:
        return None
    return Alternation(pattern, head, pieces, tail)


def _structure(source: str) -> Iterator[tuple[int, str]]:
    """(index, character) of the parentheses and bars that give `source` its structure: not escaped, not inside a
    character class (one that opens with `]` or `^]` included)."""
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i += 1
            i += source.startswith("^", i)
            i += source.startswith("]", i)
            while i < n and source[i] != "]":
                i += 2 if source[i] == "\\" else 1
        elif c in "()|":
            yield i, c
        i += 1


def _split(source: str) -> list[str] | None:
    """`source` cut at its top-level bars (outside any group); None if its parentheses do not balance."""
    pieces, depth, start = [], 0, 0
    for i, c in _structure(source):
        depth += {"(": 1, ")": -1, "|": 0}[c]
        if depth < 0:
            return None
        if c == "|" and depth == 0:
            pieces.append(source[start:i])
            start = i + 1
    if depth != 0:
        return None
    pieces.append(source[start:])
    return pieces


def _closes_at_end(body: str) -> bool:
    """Whether the group that opens `body` closes at its last character (it is a group around the whole)."""
    depth = 0
    for i, c in _structure(body):
        depth += {"(": 1, ")": -1, "|": 0}[c]
        if depth == 0 and c == ")":
            return i == len(body) - 1
    return False


def _piece_literals(head: str, piece: str, tail: str, flags: int) -> list[Literal] | None:
    try:  # the piece inside its group (the group's flags apply to it)
        return required_literals(re.compile(head + piece + tail, flags))
    except re.error:
        return None


@functools.lru_cache(maxsize=4096)  # logs of one kind keep the same alternatives: compiled once
def _compiled(source: str, flags: int) -> re.Pattern[str]:
    return re.compile(source, flags)
