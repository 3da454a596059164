"""The known-issue catalog and the offline matcher: every shipped sample, normalisation, bad files, CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from agent_ops.front.cli_catalog import diagnose_command, known_issues_app
from agent_ops.known_issues.catalog import (
    CatalogError,
    RenamePath,
    ScaleSpec,
    WaitRetry,
    catalog_schema,
    load_catalog,
    shipped_dir,
)
from agent_ops.known_issues.diagnose import LogView, diagnose

NEGATIVE_DIR = shipped_dir() / "_negative"
OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _entry_yaml(issue_id: str, body: str = "") -> str:
    """A minimal valid entry; `body` replaces the signature block when given."""
    signatures = body or "signatures:\n  - regex: 'BOOM happened'\n"
    return (
        f"id: {issue_id}\ntitle: t\n{signatures}cause: c\nescalate: e\n"
        "samples:\n  positive: ['BOOM happened', 'x BOOM happened']\n"
    )


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped catalog -------------------------------------------------------------------


def test_every_entry_loads_with_samples(catalog):
    assert len(catalog) >= 25
    for issue in catalog:
        assert len(issue.samples.positive) >= 2, issue.id
        assert catalog.sources[issue.id].name == f"{issue.id}.yaml"
        assert issue.fix or issue.escalate, issue.id


def test_seed_issues_are_covered(catalog):
    refs = {ref for issue in catalog for ref in issue.seeds}
    # Seed 003's known issues 1-5 and 7-10; issue 6 (AE ~14 s/step) is normal speed, a negative sample.
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 10):
        assert f"seed003#{n}" in refs
    assert (NEGATIVE_DIR / "ae_14s_per_step.log").is_file()
    assert {"hf-repo-id-unsafe-path", "policy-collapse"} <= set(catalog.ids)


def test_all_samples_recall_and_false_matches(catalog):
    """Positive samples: the intended entry is the top match (a hint: the top hint). Negative samples:
    an entry's own negatives fire neither it nor any cause (a family may still name the error class);
    the healthy logs of `_negative/` match nothing at all."""
    misses, false_matches, rows = [], [], []
    positives = 0
    for issue in catalog:
        hits = 0
        for i, sample in enumerate(issue.samples.positive):
            positives += 1
            for tags in (None, issue.applies_to or None):
                result = diagnose(sample, tags=tags, catalog=catalog)
                found = result.hints if issue.level == "hint" else result.matches
                top = found[0].issue_id if found else None
                if top != issue.id:
                    misses.append(f"{issue.id} positive[{i}] tags={tags}: top={top} {[(m.issue_id, m.score) for m in found]}")
                    break
            else:
                hits += 1
        rows.append(f"  {issue.id:40s} {issue.level:6s} {hits}/{len(issue.samples.positive)} positive, {len(issue.samples.negative)} own negative")
    for issue in catalog:
        for n, sample in enumerate(issue.samples.negative):
            wrong = [m for m in diagnose(sample, catalog=catalog).matches if m.issue_id == issue.id or m.level == "cause"]
            if wrong:
                false_matches.append(f"{issue.id} negative[{n}]: {[(m.issue_id, m.matched_lines) for m in wrong]}")
    healthy = sorted(NEGATIVE_DIR.glob("*.log"))
    for path in healthy:
        if matched := diagnose(path.read_text(), catalog=catalog).matches:
            false_matches.append(f"_negative/{path.name}: {[(m.issue_id, m.matched_lines) for m in matched]}")
    negatives = sum(len(i.samples.negative) for i in catalog) + len(healthy)
    recall = (positives - len(misses)) / positives
    print(f"\nknown-issue catalog: {len(catalog)} entries, {positives} positive samples, {negatives} negative samples")
    print("\n".join(rows))
    print(f"recall (intended entry is the top match): {recall:.1%} ({positives - len(misses)}/{positives})")
    print(f"false matches on negative samples: {len(false_matches)}/{negatives}")
    for line in misses + false_matches:
        print("  FAIL", line)
    assert len(healthy) >= 15
    assert not misses, "\n".join(misses)
    assert not false_matches, "\n".join(false_matches)


def test_matches_report_lines_cause_and_fix(catalog):
    log = "\n".join(["[AE] step=1/10 loss=0.9"] * 5 + ["[rank1]: " + OOM_LINE.replace("2.00", "15.68")])
    best = diagnose(log, catalog=catalog).best
    assert best is not None and best.issue_id == "vlm-cuda-oom-batch16"
    assert best.matched_lines == [f"6: {OOM_LINE.replace('2.00', '15.68')}"]
    assert "set_env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in best.fix
    assert any(f.startswith("scale_var batch_size x0.75") for f in best.fix)
    assert best.cause and best.escalate


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[rank4]: ValueError: API key must be 40 characters long, yours was 86",
        "[default0]:ValueError: API key must be 40 characters long, yours was 86",
        "rank0: ValueError: API key must be 40 characters long, yours was 86",
        "[default1]:[rank1]: ValueError: API key must be 40 characters long, yours was 86",
        "\x1b[31;1mValueError: API key must be 40 characters long, yours was 86\x1b[0m",
        "Epoch 1:  10%|█         | 1/10\rEpoch 1:  20%|██        | 2/10\rValueError: API key must be 40 characters long, yours was 86",
    ],
)
def test_normalisation_strips_prefixes_ansi_and_carriage_returns(raw):
    view = LogView(raw + "\n")
    assert view.lines == ["ValueError: API key must be 40 characters long, yours was 86"]


def test_hard_wrapped_lines_are_joined_where_a_signature_spans_them():
    # Seed 000's error at an 80-column tmux pane: the signature runs over three segments.
    line = (
        "[rank4]: huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
        "'namespace/repo_name': '/root/SFTvsRL/train_ckpt/virl_vl/output_2025-10-02\\|\\|12\\:35\\:19/checkpoint-epoch-4'."
    )
    segments = [line[i : i + 80] for i in range(0, len(line), 80)]
    assert len(segments) == 3
    result = diagnose("\n".join(["step 3 ok"] + segments + ["wandb:"]))
    assert result.best.issue_id == "hf-repo-id-unsafe-path"
    assert [m.split(":")[0] for m in result.best.matched_lines] == ["2", "3", "4"]


def test_anchored_patterns_match_any_line_and_any_wrapped_run():
    # `^`/`$` hold at a line's ends; the whole-log filter once searched the join, where they hold only at its very
    # start and end, so an anchored signature (the concept ones, `^Killed$`) never saw a line below the first.
    view = LogView("step 1 ok\nstep 2 ok\nKilled\nERROR: port 8080 already in use\n")
    assert [h.first for h in view.find(re.compile(r"^Killed$"))] == [2]
    assert [h.first for h in view.find(re.compile(r"(?i)^(?=.*\bport\b).*already in use"))] == [3]
    head = "x" * 90 + " ERROR: the server socket could not bind: port"
    wrapped = LogView("\n".join(["step 1 ok", head[:80], head[80:] + " 29500 already in use"]))
    assert [(h.first, h.last) for h in wrapped.find(re.compile(r"^x{90} ERROR: .*port 29500 already in use$"))] == [(1, 2)]


def test_equal_length_healthy_lines_are_not_glued():
    lines = [f"Step {i}/20000 | Loss: 0.12{i} | Ret: 0.0821/0.1000 | LR: 5.00e-04".ljust(80, ".") for i in range(10, 13)]
    view = LogView("\n".join(lines + ["CRaFT/Retention NonFinite: 0"]))
    assert view.lines == lines + ["CRaFT/Retention NonFinite: 0"]


def test_soft_wrapped_line_still_matches():
    head = "2026-02-21 10:01:02 wandb: ERROR API key must be 40 characters long,"
    result = diagnose(f"{head}\nyours was 86\n")
    assert result.best is not None and result.best.issue_id == "wandb-key-86-chars"
    assert result.best.matched_lines == [f"1: {head}", "2: yours was 86"]


def test_only_the_tail_is_read_unless_asked(catalog):
    log = "OSError: [Errno 28] No space left on device\n" + "[AE] step=1/10 loss=0.5\n" * 500
    assert diagnose(log, catalog=catalog).matches == []
    whole = diagnose(log, catalog=catalog, tail=None)
    assert whole.best.issue_id == "disk-full" and whole.best.matched_lines[0].startswith("1: OSError")
    tailed = diagnose(log + "OSError: [Errno 28] No space left on device\n", catalog=catalog)
    assert tailed.first_line == 103 and tailed.lines_considered == 400
    assert tailed.best.matched_lines == ["502: OSError: [Errno 28] No space left on device"]


# --- matching rules ---------------------------------------------------------------------------


def test_tags_select_the_entries_that_apply(catalog):
    assert diagnose(OOM_LINE, tags=["train"], catalog=catalog).best.issue_id == "cuda-oom"
    assert diagnose(OOM_LINE, tags=["install"], catalog=catalog).matches == []
    # Entries without applies_to (disk full) apply to every step.
    assert diagnose("OSError: [Errno 28] No space left on device", tags=["install"], catalog=catalog).best.issue_id == "disk-full"


UNKNOWN_FAILURE = "Traceback (most recent call last):\nRuntimeError: Expected to have finished reduction of every bucket before the optimizer step\n"


def test_nearest_candidates_when_nothing_matches(catalog):
    result = diagnose(UNKNOWN_FAILURE, catalog=catalog)
    assert result.matches == []
    assert result.nearest and result.nearest[0].issue_id == "ddp-unused-parameters"
    assert 0.5 <= result.nearest[0].score < 1
    assert result.nearest[0].matched_lines == ["2: RuntimeError: Expected to have finished reduction of every bucket before the optimizer step"]
    # Unknown, yet not silent: the failure as it was seen.
    assert result.root_error == "RuntimeError: Expected to have finished reduction of every bucket before the optimizer step"
    assert diagnose(OOM_LINE, catalog=catalog).nearest == []  # only when nothing matched


def test_sequence_needs_order_and_window(tmp_path):
    body = "signatures:\n  - regex: ['^Traceback', 'BoomError: disk']\n    window: 5\n"
    catalog = load_catalog([_write(tmp_path, "seq.yaml", _entry_yaml("seq", body))])
    traceback = "Traceback (most recent call last):\n" + '  File "x.py", line 1\n' * 3 + "BoomError: disk\n"
    assert diagnose(traceback, catalog=catalog).best.matched_lines == ["1: Traceback (most recent call last):", "5: BoomError: disk"]
    assert diagnose("BoomError: disk\nTraceback (most recent call last):\n", catalog=catalog).matches == []
    far = "Traceback (most recent call last):\n" + "  frame\n" * 10 + "BoomError: disk\n"
    assert diagnose(far, catalog=catalog).matches == []
    assert diagnose(far, catalog=catalog).nearest[0].score == 0.9  # all parts there, too far apart


def test_count_ratio_and_not_followed_by(tmp_path):
    body = (
        "signatures:\n"
        "  - regex: 'r=(?P<value>[\\d.]+)/(?P<limit>[\\d.]+)'\n    ratio_above: 2\n    count: 2\n"
        "  - regex: 'waiting for data'\n    not_followed_by: 'step='\n"
    )
    catalog = load_catalog([_write(tmp_path, "num.yaml", _entry_yaml("num", body))])
    assert diagnose("r=0.5/0.1\nr=0.3/0.1\n", catalog=catalog).matches
    assert not diagnose("r=0.5/0.1\nr=0.15/0.1\n", catalog=catalog).matches  # the latest is within the ratio
    assert not diagnose("r=0.5/0.1\n", catalog=catalog).matches  # one spike is not enough
    assert diagnose("waiting for data\n", catalog=catalog).matches
    assert not diagnose("waiting for data\nstep=0 loss=1\n", catalog=catalog).matches


def test_weights_rank_specific_entries_first(catalog):
    log = "[rank0]: ModuleNotFoundError: No module named 'safetensors'\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    ids = [m.issue_id for m in diagnose(log, catalog=catalog).matches]
    assert ids[0] == "system-torchrun-no-venv" and "module-not-found-system-python" in ids


# --- fix actions --------------------------------------------------------------------------------


def test_scale_spec_bounds_and_rounding():
    batch = ScaleSpec(var="batch_size", factor=0.75, min=1, max=12, round="int")
    assert [batch.apply(v) for v in (16, 24, 12, 1)] == [12, 12, 9, 1]
    lr = ScaleSpec(var="learning_rate", factor=0.5, min=1e-9)
    assert lr.apply(1e-7) == pytest.approx(5e-8) and isinstance(lr.apply(1e-7), float)
    with pytest.raises(ValidationError, match="above max"):
        ScaleSpec(var="x", factor=2, min=5, max=1)


def test_rename_path_makes_seed_000_name_safe(catalog):
    rename = next(a for a in catalog.get("hf-repo-id-unsafe-path").fix if isinstance(a, RenamePath))
    path = "train_ckpt/virl_vl/output_2025-10-02||12:35:19/checkpoint-epoch-4"
    assert rename.safe_path(path) == "train_ckpt/virl_vl/output_2025-10-02_12-35-19/checkpoint-epoch-4"
    with pytest.raises(ValidationError, match="must not match '/'"):
        RenamePath(action="rename_path", var="p", pattern="[/:]")


def test_waits_never_exceed_30_seconds():
    with pytest.raises(ValidationError):
        WaitRetry(action="wait_retry", delay_s=31, max=2)


def test_schema_is_generated_with_descriptions():
    schema = catalog_schema()
    assert schema["properties"]["signatures"]["description"]
    fix_items = schema["properties"]["fix"]["items"]
    assert set(fix_items["discriminator"]["mapping"]) == {
        "set_env", "set_var", "scale_var", "run", "rename_path", "rollback_checkpoint", "recreate_session", "wait_retry", "escalate"
    }
    assert schema["additionalProperties"] is False


# --- bad catalog files ------------------------------------------------------------------------


def _problems(*paths: Path) -> list[str]:
    with pytest.raises(CatalogError) as info:
        load_catalog(list(paths))
    return info.value.problems


def test_duplicate_ids_are_rejected(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    a, b = _write(tmp_path / "a", "dup.yaml", _entry_yaml("dup")), _write(tmp_path / "b", "dup.yaml", _entry_yaml("dup"))
    assert _problems(a, b) == [f"{b}:1: id: duplicate id 'dup' (also in {a})"]


def test_bad_regex_names_file_line_field_and_entry(tmp_path):
    body = "signatures:\n  - regex: 'fine'\n  - regex: ['ok', '(unclosed']\n"
    path = _write(tmp_path, "bad-re.yaml", _entry_yaml("bad-re", body))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:5: signatures.1.regex.1: part 1: invalid regex '(unclosed': missing ), unterminated subpattern")
    assert problem.endswith("(entry 'bad-re')")


def test_unknown_field_and_unknown_action(tmp_path):
    text = _entry_yaml("typo") + "retry:\n  max_attempt: 2\nfix:\n  - action: reboot\n"
    problems = _problems(_write(tmp_path, "typo.yaml", text))
    assert any(p.startswith(f"{tmp_path / 'typo.yaml'}:12: fix.0.action: unknown fix action 'reboot'") for p in problems), problems
    assert any(f"{tmp_path / 'typo.yaml'}:10: retry.max_attempt: unknown field 'max_attempt'" in p for p in problems), problems


def test_file_name_yaml_errors_and_missing_samples(tmp_path):
    assert _problems(_write(tmp_path, "other.yaml", _entry_yaml("mine"))) == [
        f"{tmp_path / 'other.yaml'}:1: id: 'mine' must match the file name (other.yaml)"
    ]
    (broken,) = _problems(_write(tmp_path, "broken.yaml", "id: broken\ntitle: [unclosed\n"))
    assert broken.startswith(f"{tmp_path / 'broken.yaml'}:") and "(yaml)" in broken
    few = _entry_yaml("few").replace("positive: ['BOOM happened', 'x BOOM happened']", "positive: ['BOOM happened']")
    (problem,) = _problems(_write(tmp_path, "few.yaml", few))
    assert problem.startswith(f"{tmp_path / 'few.yaml'}:8: samples.positive: needs at least 2 items (got 1)")


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture()
def cli():
    app = typer.Typer()
    app.add_typer(known_issues_app, name="known-issues")
    app.command("diagnose")(diagnose_command)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(app, list(args), **kw)


def test_cli_list_and_show(cli, catalog):
    listed = cli("known-issues", "list", "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == catalog.ids
    assert {r["id"] for r in json.loads(cli("known-issues", "list", "--tag", "install", "--json").stdout)} >= {"av-ffmpeg7-override", "disk-full"}
    human = cli("known-issues", "list")
    assert human.exit_code == 0 and "vlm-cuda-oom-batch16" in human.stdout
    shown = cli("known-issues", "show", "policy-collapse", "--json")
    assert json.loads(shown.stdout)["fix"][0]["action"] == "rollback_checkpoint"
    assert "rollback_checkpoint" in cli("known-issues", "show", "policy-collapse").stdout
    missing = cli("known-issues", "show", "no-such-issue")
    assert missing.exit_code == 2 and "no known issue 'no-such-issue'" in missing.stderr


def test_cli_diagnose_exit_codes_and_json(cli, tmp_path):
    failing = _write(tmp_path, "fail.log", "[rank0]: " + OOM_LINE + "\n")
    result = cli("diagnose", str(failing), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["matches"][0]["issue_id"] == "cuda-oom"
    healthy = (NEGATIVE_DIR / "ae_startup_healthy.log").read_text()
    none = cli("diagnose", "-", "--json", input=healthy)
    assert none.exit_code == 1 and json.loads(none.stdout)["matches"] == []
    assert cli("diagnose", str(failing), "--tags", "install,download").exit_code == 1
    human = cli("diagnose", str(failing))
    assert human.exit_code == 0 and "cuda-oom" in human.stdout and "set_env" in human.stdout
    unreadable = cli("diagnose", str(tmp_path / "missing.log"), "--json")
    assert unreadable.exit_code == 2 and "cannot read" in json.loads(unreadable.stdout)["error"]["message"]
    assert "cannot read" in cli("diagnose", str(tmp_path / "missing.log")).stderr


def test_cli_reports_a_bad_catalog(cli, tmp_path):
    bad = _write(tmp_path, "bad.yaml", _entry_yaml("bad") + "colour: red\n")
    result = cli("diagnose", "-", "--catalog", str(bad), "--json", input="x\n")
    assert result.exit_code == 2 and result.stderr == ""
    [problem] = json.loads(result.stdout)["error"]["problems"]
    assert problem.startswith(f"{bad}:9: colour: unknown field 'colour'")
    assert f"{bad}:9: colour: unknown field 'colour'" in cli("diagnose", "-", "--catalog", str(bad), input="x\n").stderr


def test_cli_prints_nearest_for_unknown_failures(cli):
    result = cli("diagnose", "-", input=UNKNOWN_FAILURE)
    assert result.exit_code == 1 and "nearest" in result.stdout


def test_causes_must_name_a_family_of_the_catalog_and_stay_inside_its_steps(tmp_path):
    family = _entry_yaml("boom").replace("title: t\n", "title: t\napplies_to: [train]\n")
    stray = _entry_yaml("stray").replace("title: t\n", "title: t\nlevel: cause\nfamily: nowhere\n")
    wide = _entry_yaml("wide").replace("title: t\n", "title: t\nlevel: cause\nfamily: boom\napplies_to: [install]\n")
    paths = [_write(tmp_path, f"{n}.yaml", t) for n, t in (("boom", family), ("stray", stray), ("wide", wide))]
    problems = _problems(*paths)
    assert problems[0].startswith(f"{paths[1]}:4: family: 'nowhere' is not a family of this catalog (families: boom")
    assert problems[1] == f"{paths[2]}:4: family: applies_to must stay inside its family's (train)"
    orphan = _entry_yaml("orphan").replace("title: t\n", "title: t\nlevel: cause\n")
    (problem,) = _problems(_write(tmp_path, "orphan.yaml", orphan))
    assert "a cause needs `family`" in problem


def test_a_cause_fires_only_where_its_family_matched(tmp_path):
    family = _entry_yaml("boom", "signatures:\n  - regex: 'BOOM happened'\n")
    cause = _entry_yaml("boom-disk", "signatures:\n  - regex: 'disk'\n").replace(
        "title: t\n", "title: t\nlevel: cause\nfamily: boom\n").replace("'BOOM happened', 'x BOOM happened'", "'a', 'b'")
    catalog = load_catalog([_write(tmp_path, "boom.yaml", family), _write(tmp_path, "boom-disk.yaml", cause)])
    assert [(m.issue_id, m.level, m.family) for m in diagnose("BOOM happened on disk 3\n", catalog=catalog).matches] == [
        ("boom-disk", "cause", "boom"), ("boom", "family", "boom")]
    assert diagnose("the disk is fine\n", catalog=catalog).matches == []  # no family, no cause
    family_only = diagnose("BOOM happened\n", catalog=catalog)
    assert [m.issue_id for m in family_only.matches] == ["boom"] and family_only.root_error == ""


def test_a_fix_that_deletes_must_say_what(tmp_path):
    text = _entry_yaml("cleaner") + "fix:\n  - action: run\n    commands: ['df -h', 'rm -rf ~/.cache/huggingface']\n"
    (problem,) = _problems(_write(tmp_path, "cleaner.yaml", text))
    assert problem.startswith(f"{tmp_path / 'cleaner.yaml'}:10: fix.0: command 'rm -rf ~/.cache/huggingface' deletes files: say what in `deletes`")
    said = text + "    deletes: the Hugging Face cache\n"
    [issue] = load_catalog([_write(tmp_path, "cleaner.yaml", said)]).issues
    assert issue.deletions() == ["the Hugging Face cache"]
