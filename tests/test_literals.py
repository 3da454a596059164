"""The literal prefilter never hides a match: on every catalog pattern, every sample and every dev log line."""
from __future__ import annotations

import re

from agent_ops.known_issues.catalog import default_catalog
from agent_ops.known_issues.literals import may_match, required_literals
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
