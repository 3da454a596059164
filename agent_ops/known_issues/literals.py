"""The literal text a regex cannot match without: a cheap test that skips most signatures on most logs.

Python's `re` tries a long alternation at every position of the text; a catalog has a hundred of
them, and most never match a given log. For each top-level alternative of a pattern this finds
its longest run of literal characters (at least MIN_LITERAL); when none of those runs occurs in the
text (a substring search, orders of magnitude faster), the pattern cannot match there. A pattern
with an alternative that has no such run (`\\d+ Killed`, `.{0,80}error`) gets no prefilter.
"""
from __future__ import annotations

import re

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
