"""The literal prefilter never hides a match: on every catalog pattern, every sample and every dev log line; and a long
alternation reduced to what may match a log finds there exactly what the whole pattern finds."""
from __future__ import annotations

import re

from agent_ops.known_issues.catalog import default_catalog
from agent_ops.known_issues.literals import alternation, may_match, required_literals
from agent_ops.known_issues.root_error import normalise
from tests.logcorpus import corpus


def test_required_literals_of_typical_patterns():
    assert required_literals(re.compile(r"\bResolutionImpossible\b|No matching distribution found for \S+")) == [
        ("ResolutionImpossible", False), ("No matching distribution found for ", False)]
    # Case-insensitive scopes, groups of alternatives the sequence cannot skip, and no literal at all.
    assert required_literals(re.compile(r"(?i:CUDA out of memory)|x")) is None
    assert required_literals(re.compile(r"\b50[234] (?:Service Unavailable|Bad Gateway)\b")) == [
        ("Service Unavailable", False), ("Bad Gateway", False)]
    assert required_literals(re.compile(r"(?i)\bloss\b\s*[:=]\s*nan")) == [("loss", True)]
    assert may_match([("loss", True)], "LOSS: nan", "loss: nan") and not may_match([("loss", True)], "acc: 1", "acc: 1")


def test_a_pattern_that_matches_a_line_always_passes_its_prefilter():
    catalog = default_catalog()
    texts = [s for issue in catalog for s in (*issue.samples.positive, *issue.samples.negative)]
    texts += [log.text() for log in corpus() if log.split == "dev"]
    lines = [line for text in texts for line in normalise(text)]
    patterns = [p for issue in catalog for sig in issue.signatures for p in sig.compiled]
    hidden = []
    for pattern in patterns:
        literals = required_literals(pattern)
        if literals is None:
            continue
        hidden += [(pattern.pattern[:60], line) for line in lines if pattern.search(line) and not may_match(literals, line, line.lower())]
    assert hidden == []
    assert sum(required_literals(p) is not None for p in patterns) >= 0.9 * len(patterns)


def test_an_alternation_is_cut_only_at_its_own_bars():
    # Bars escaped, inside a character class (one that opens with `]` included) or inside a group do not cut.
    pattern = re.compile(r"(?i)out of memory|a\|b [|x]|[]|] y|(?:c|d) e|zz")
    found = alternation(pattern)
    assert found is not None and found.head == "(?i)" and found.tail == ""
    assert found.pieces == ["out of memory", r"a\|b [|x]", "[]|] y", "(?:c|d) e", "zz"]
    assert found.literals[0] == [("out of memory", True)]
    # A group around the whole pattern is opened (its flags stay); named groups and references are left whole.
    wrapped = alternation(re.compile(r"(?i:disk full|no space left|quota exceeded)"))
    assert wrapped is not None and (wrapped.head, wrapped.tail) == ("(?i:", ")") and len(wrapped.pieces) == 3
    assert alternation(re.compile(r"(?:a b c|d e f) g")) is None  # one top-level alternative
    assert alternation(re.compile(r"(?P<value>\d+) nan|inf (\w)\1")) is None
    assert alternation(re.compile(r"(?x) nan | inf  # a comment | with a bar")) is None
    assert alternation(re.compile(r"(a)?nan|inf|(?(1)x|y)")) is None
    # Reduced to the alternatives whose literals occur; none: it cannot match.
    text = "RuntimeError: CUDA error: no space left on device"
    pattern, literals = wrapped.reduced(text, text.lower())
    assert pattern.pattern == "(?i:no space left)" and literals == [("no space left", True)]
    assert wrapped.reduced("all good", "all good") is None


def test_a_reduced_alternation_finds_what_the_whole_pattern_finds():
    catalog = default_catalog()
    texts = [s for issue in catalog for s in (*issue.samples.positive, *issue.samples.negative)]
    texts += [log.text() for log in corpus() if log.split == "dev"]
    patterns = {p.pattern: p for issue in catalog for sig in issue.signatures for p in sig.compiled}
    alternations = [a for a in map(alternation, patterns.values()) if a is not None]
    assert len(alternations) >= 90  # the catalog's long signatures are reduced: this test covers them
    differ, reduced = [], 0
    for text in texts:
        lines = "\n".join(normalise(text))
        for found in alternations:
            pattern = found.reduced(lines, lines.lower())
            spans = [m.span() for m in found.pattern.finditer(lines)]
            if pattern is None:
                if spans:
                    differ.append((found.pattern.pattern[:60], text[:80]))
                continue
            reduced += pattern[0] is not found.pattern
            if [m.span() for m in pattern[0].finditer(lines)] != spans:
                differ.append((found.pattern.pattern[:60], text[:80]))
    assert differ == []
    assert reduced > len(texts)  # most logs leave out some alternatives of some signature
