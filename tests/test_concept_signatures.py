"""`on_failure` signatures: generic concept words count only on the failure root_error extracts."""
from __future__ import annotations

from agent_ops.known_issues.catalog import load_catalog
from agent_ops.known_issues.diagnose import diagnose

CONCEPT = r"(?i)(?=.*\b(?:disk|volume|device)\b).*\b(?:full|no space)\b"


def _catalog(tmp_path, on_failure: bool):
    tmp_path = tmp_path / ("concept" if on_failure else "plain")
    tmp_path.mkdir()
    option = "    on_failure: true\n" if on_failure else ""
    text = (
        f"id: space\ntitle: t\nsignatures:\n  - regex: '{CONCEPT}'\n{option}cause: c\nescalate: e\n"
        "samples:\n  positive: ['OSError: device full', 'ERROR: the disk is full']\n"
    )
    (tmp_path / "space.yaml").write_text(text)
    return load_catalog([tmp_path / "space.yaml"])


TRACEBACK = 'Traceback (most recent call last):\n  File "train.py", line 9, in save\n    torch.save(x, p)\n'
FAILING = TRACEBACK + "OSError: write failed: the device is full\n"
WARNING = "step 10 loss 1.2\nWARNING: volume almost full, no space for more than 3 checkpoints\nstep 20 loss 1.1\n"
HEALTHY_LINE = "cleanup: disk has no space issues, 40 GiB free\n" + TRACEBACK + "ValueError: bad learning rate schedule\n"


def test_a_concept_match_on_the_failure_line_counts(tmp_path):
    best = diagnose(FAILING, catalog=_catalog(tmp_path, on_failure=True)).best
    assert best is not None and best.issue_id == "space"
    assert best.matched_lines == ["4: OSError: write failed: the device is full"]


def test_the_same_words_in_a_warning_or_a_healthy_line_do_not(tmp_path):
    # Without the option the words fire anywhere; with it, only on the failure's own lines.
    plain = _catalog(tmp_path, on_failure=False)
    assert diagnose(WARNING, catalog=plain).matches and diagnose(HEALTHY_LINE, catalog=plain).matches
    concept = _catalog(tmp_path, on_failure=True)
    assert diagnose(WARNING, catalog=concept).matches == []
    assert diagnose(HEALTHY_LINE, catalog=concept).matches == []  # a failure is there, but it is another one


def test_every_shipped_concept_signature_fires_on_a_positive_sample_of_its_entry():
    # A concept signature no sample exercises documents nothing and could be dead (a typo in a lookahead).
    from agent_ops.known_issues.catalog import default_catalog
    from agent_ops.known_issues.diagnose import LogView, signature_hits

    catalog = default_catalog()
    concepts = [(issue, sig) for issue in catalog for sig in issue.signatures if sig.on_failure]
    families = {issue.id for issue, _ in concepts}
    assert len(families) >= 20 and all(sig.weight < 2 for _, sig in concepts)
    silent = [f"{issue.id}: {sig.patterns[0][:60]}" for issue, sig in concepts
              if not any(signature_hits(sig, LogView(sample)) for sample in issue.samples.positive)]
    assert silent == []
