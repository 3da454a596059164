"""Malformed runbooks: each gets one precise `FILE:LINE: path.to.field: message`, and `validate` exits 2.

Also the good paths the loader owns: quoting in templates, plan waves, shipped names, the JSON Schema.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

from agent_ops.errors import RunbookError
from agent_ops.front.cli import app
from agent_ops.runbook.loader import (
    find_runbook,
    load_runbook,
    render_runbook,
    resolve_vars,
    shipped_runbooks,
)
from agent_ops.runbook.plan import build_plan
from agent_ops.runbook.schema import Runbook
from tests.malformed import Hostile, hostile

PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<path>\S+): (?P<message>.+)$")


class Case(NamedTuple):
    """A malformed runbook and what its first problem must say."""

    text: str
    line: int
    path: str
    words: tuple[str, ...]


def write(tmp_path: Path, text: str, name: str = "book.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    return caught.value.problems


def parse(problem: str) -> dict[str, str]:
    match = PROBLEM.match(problem)
    assert match, f"not FILE:LINE: path: message: {problem!r}"
    return match.groupdict()


CASES: dict[str, Case] = {
    "yaml-syntax": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: "echo
        """, 5, "(yaml)", ("unexpected end of stream", "quoted scalar")),
    "yaml-indentation": Case("""
        name: x
        steps:
          - id: a
             kind: run
        """, 4, "(yaml)", ("mapping values are not allowed",)),
    "duplicate-yaml-key": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo one
            command: echo two
        """, 6, "(yaml)", ("duplicate key 'command'", "first at line 5")),
    "top-level-list": Case("""
        - name: x
        - steps: []
        """, 1, "(top)", ("top level is a list", "mapping with name and steps")),
    "empty-file": Case("\n", 1, "(top)", ("file is empty",)),
    "missing-name": Case("""
        description: no name
        steps:
          - {id: a, kind: run, command: echo}
        """, 1, "name", ("field required",)),
    "missing-steps": Case("""
        name: x
        description: nothing to do
        """, 1, "steps", ("field required",)),
    "empty-steps": Case("""
        name: x
        steps: []
        """, 2, "steps", ("must not be empty",)),
    "unknown-top-level-field": Case("""
        name: x
        stpes:
          - {id: a, kind: run, command: echo}
        """, 2, "stpes", ("unknown field 'stpes'", "did you mean 'steps'")),
    "unknown-step-field": Case("""
        name: x
        steps:
          - id: a
            kind: run
            comand: echo hi
        """, 5, "steps.0.comand", ("unknown field 'comand'", "did you mean 'command'")),
    "unknown-step-field-far-from-any": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo hi
            colour: blue
        """, 6, "steps.0.colour", ("unknown field 'colour'", "allowed:", "background")),
    "unknown-step-kind": Case("""
        name: x
        steps:
          - id: a
            kind: shell
            command: echo
        """, 4, "steps.0.kind", ("unknown step kind 'shell' (expected one of run, check, gate, put, get, group)",)),
    "missing-step-kind": Case("""
        name: x
        steps:
          - id: a
            command: echo
        """, 3, "steps.0.kind", ("field required", "run, check, gate, put, get")),
    "step-not-a-mapping": Case("""
        name: x
        steps:
          - echo hi
        """, 3, "steps.0", ("expected a mapping", "'echo hi'")),
    "steps-not-a-list": Case("""
        name: x
        steps:
          a: {kind: run, command: echo}
        """, 2, "steps", ("expected a list", "got a mapping")),
    "missing-command": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
          - id: b
            kind: run
            needs: [a]
        """, 6, "steps.1.command", ("field required",)),
    "put-missing-dest": Case("""
        name: x
        steps:
          - id: up
            kind: put
            src: local.txt
        """, 3, "steps.0.dest", ("field required",)),
    "bad-step-id": Case("""
        name: x
        steps:
          - id: "train model"
            kind: run
            command: echo
        """, 3, "steps.0.id", ("'train model'", "does not match the pattern")),
    "duplicate-step-id": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo one
          - id: a
            kind: run
            command: echo two
        """, 6, "steps.1.id", ("duplicate step id 'a'", "steps.0")),
    "unknown-need": Case("""
        name: x
        steps:
          - id: fetch
            kind: run
            command: echo
          - id: train
            kind: run
            command: echo
            needs:
              - fetch
              - fetchh
        """, 11, "steps.1.needs.1", ("unknown step 'fetchh'", "did you mean 'fetch'")),
    "unknown-after": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: resume
            kind: run
            command: echo
            after: [trian]
        """, 10, "steps.1.after.0", ("unknown step 'trian' in after of 'resume'", "did you mean 'train'")),
    "self-need": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            needs:
              - a
        """, 7, "steps.0.needs.0", ("step 'a' needs itself",)),
    "cycle-of-three": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            needs:
              - c
          - id: b
            kind: run
            command: echo
            needs: [a]
          - id: c
            kind: run
            command: echo
            needs: [b]
        """, 7, "steps.0.needs.0", ("dependency cycle", "a -> c -> b -> a")),
    "gate-on-unknown-step": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            job: trian
            patterns:
              - {regex: started, within: 5}
        """, 9, "steps.1.job", ("watches unknown step 'trian'", "did you mean 'train'")),
    "gate-on-check-step": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks:
              - {kind: path_exists, path: /}
          - id: watch
            kind: gate
            job: pre
            patterns:
              - {regex: started, within: 5}
        """, 9, "steps.1.job", ("watches 'pre'", "check step, not a run step")),
    "gate-with-job-and-file": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            needs: [train]
            file: /tmp/train.log
            job: train
            patterns:
              - {regex: started, within: 5}
        """, 11, "steps.1.job", ("exactly one of `job` or `file`",)),
    "gate-with-no-source": Case("""
        name: x
        steps:
          - id: watch
            kind: gate
            patterns:
              - {regex: started, within: 5}
        """, 3, "steps.0", ("exactly one of `job` or `file`",)),
    "gate-with-nothing-to-match": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            needs: [train]
            job: train
        """, 7, "steps.1", ("at least one pattern or metric",)),
    "gate-pattern-bad-regex": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            job: train
            patterns:
              - regex: "step=(\\\\d+"
                within: 5
        """, 11, "steps.1.patterns.0.regex", ("invalid regex", "missing )")),
    "gate-pattern-missing-within": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            job: train
            patterns:
              - regex: started
        """, 11, "steps.1.patterns.0.within", ("field required",)),
    "fail-on-bad-regex": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            fail_on:
              - Traceback
              - "[unclosed"
        """, 8, "steps.0.fail_on.1", ("invalid regex '[unclosed'",)),
    "metric-without-value-group": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            job: train
            metrics:
              - name: loss
                regex: "loss=([0-9.]+)"
                within: 60
        """, 12, "steps.1.metrics.0.regex", ("named group (?P<value>...)",)),
    "falling-metric-needs-three-values": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: echo
            background: true
          - id: watch
            kind: gate
            job: train
            metrics:
              - name: loss
                regex: "loss=(?P<value>[0-9.]+)"
                within: 60
                falling: true
                count: 2
        """, 14, "steps.1.metrics.0.falling", ("count >= 3",)),
    "poll-cap-over-30s": Case("""
        name: x
        poll:
          cap_s: 60
        steps:
          - {id: a, kind: run, command: echo}
        """, 3, "poll.cap_s", ("must be at most 30 (got 60)",)),
    "poll-first-check-too-late": Case("""
        name: x
        poll:
          first_s: 1.0
        steps:
          - {id: a, kind: run, command: echo}
        """, 3, "poll.first_s", ("must be at most 0.25 (got 1.0)",)),
    "retries-99": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            retries: 99
        """, 6, "steps.0.retries", ("must be at most 10 (got 99)",)),
    "unknown-variable-in-template": Case("""
        name: x
        vars:
          model: tiny
        steps:
          - id: a
            kind: run
            command: |
              set -x
              echo {{ model }}
              echo {{ modle }}
        """, 10, "steps.0.command", ("unknown variable 'modle'", "did you mean 'model'")),
    "unknown-variable-in-env": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            env:
              MODEL: "{{ model }}"
        """, 7, "steps.0.env.MODEL", ("unknown variable 'model'", "declare it under vars")),
    "unknown-variable-in-folded-text": Case("""
        name: x
        steps:
          - id: a
            kind: gate
            file: /tmp/log
            patterns:
              - within: 5
                regex: >
                  {{ step_pattern }}
        """, 9, "steps.0.patterns.0.regex", ("unknown variable 'step_pattern'",)),
    "secret-in-template": Case("""
        name: x
        secrets: [HF_TOKEN]
        steps:
          - id: a
            kind: run
            command: huggingface-cli login --token {{ HF_TOKEN }}
        """, 6, "steps.0.command", ("secret 'HF_TOKEN' cannot be templated", "$HF_TOKEN")),
    "unknown-template-filter": Case("""
        name: x
        vars:
          model: tiny
        steps:
          - id: a
            kind: run
            command: echo {{ model | uppercase }}
        """, 7, "steps.0.command", ("unknown filter 'uppercase'", "did you mean 'upper'", "raw, q")),
    "bad-var-name": Case("""
        name: x
        vars:
          model: tiny
          data-dir: /data
        steps:
          - {id: a, kind: run, command: echo}
        """, 4, "vars.data-dir", ("variable name 'data-dir'",)),
    "var-spec-typo": Case("""
        name: x
        vars:
          model:
            defualt: tiny
        steps:
          - {id: a, kind: run, command: echo}
        """, 4, "vars.model.defualt", ("unknown field 'defualt'", "did you mean 'default'")),
    "var-of-wrong-shape": Case("""
        name: x
        vars:
          sizes: [1, 2]
        steps:
          - {id: a, kind: run, command: echo}
        """, 3, "vars.sizes", ("expected a mapping, a string, an integer, a number or a boolean, got a list",)),
    "bad-secret-name": Case("""
        name: x
        secrets:
          - HF_TOKEN
          - wandb-key
        steps:
          - {id: a, kind: run, command: echo}
        """, 4, "secrets.1", ("secret name 'wandb-key'", "environment variable name")),
    "keep-running-without-background": Case("""
        name: x
        steps:
          - id: train
            kind: run
            command: python train.py
            keep_running: true
        """, 6, "steps.0.keep_running", ("keep_running only makes sense with background: true",)),
    "unknown-check-kind": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks:
              - kind: path_exits
                path: /data
        """, 6, "steps.0.checks.0.kind", ("unknown check kind 'path_exits'", "did you mean 'path_exists'")),
    "bad-check-field": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks:
              - kind: path_exists
                path: /data
                tpye: dir
        """, 8, "steps.0.checks.0.tpye", ("unknown field 'tpye'", "did you mean 'type'")),
    "bad-check-value": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks:
              - kind: path_exists
                path: /data
                type: folder
        """, 8, "steps.0.checks.0.type", ("'folder' is not one of", "'dir'")),
    "check-command-timeout-over-30s": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks:
              - kind: command
                run: nvidia-smi
                timeout: 60
        """, 8, "steps.0.checks.0.timeout", ("must be at most 30 (got 60)",)),
    "file-count-without-bound": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks:
              - kind: file_count
                dir: /data
        """, 6, "steps.0.checks.0", ("give count, min or max",)),
    "skip-if-unknown-check-kind": Case("""
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            skip_if:
              kind: file_exists
              path: /done
        """, 7, "steps.0.skip_if.kind", ("unknown check kind 'file_exists'",)),
    "check-step-without-checks": Case("""
        name: x
        steps:
          - id: pre
            kind: check
            checks: []
        """, 5, "steps.0.checks", ("must not be empty",)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_malformed_runbook_gets_a_precise_first_problem(tmp_path: Path, case: Case) -> None:
    path = write(tmp_path, case.text)
    first = parse(problems(path)[0])
    assert (first["file"], int(first["line"]), first["path"]) == (str(path), case.line, case.path)
    for word in case.words:
        assert word in first["message"]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_validate_command_exits_2_with_the_same_problems(tmp_path: Path, case: Case) -> None:
    path = write(tmp_path, case.text)
    result = CliRunner().invoke(app, ["validate", "--json", str(path)])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["results"][0]["problems"] == problems(path)


def test_one_mistake_gives_one_problem(tmp_path: Path) -> None:
    # A misspelt field is not also reported as the required field it was meant to be.
    for name in ("unknown-step-field", "unknown-top-level-field", "var-spec-typo", "var-of-wrong-shape", "cycle-of-three"):
        assert len(problems(write(tmp_path, CASES[name].text))) == 1, name


def test_every_problem_is_reported_in_one_pass_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name: x
        stpes: 1
        poll: {cap_s: 45}
        steps:
          - id: a
            kind: run
            command: echo {{ nope }}
            retries: -1
          - id: b
            kind: shell
          - id: c
            kind: put
            src: x
        """)
    found = [parse(p) for p in problems(path)]
    assert [(int(p["line"]), p["path"]) for p in found] == [
        (2, "stpes"), (3, "poll.cap_s"), (7, "steps.0.command"), (8, "steps.0.retries"), (10, "steps.1.kind"), (11, "steps.2.dest"),
        (13, "steps.2.src"),  # the put's local source does not exist: found at validation, not when the run gets there
    ]


def test_graph_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name: x
        steps:
          - id: a
            kind: run
            command: echo
            needs: [b]
          - id: b
            kind: run
            command: echo
            needs: [a, z]
        """)
    found = [parse(p) for p in problems(path)]
    assert [(p["line"], p["path"]) for p in found] == [("6", "steps.0.needs.0"), ("10", "steps.1.needs.1")]
    assert "dependency cycle" in found[0]["message"] and "unknown step 'z'" in found[1]["message"]


def test_a_missing_file_names_the_shipped_runbooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunbookError) as caught:
        load_runbook("no_such_runbook")
    assert caught.value.problems[0].startswith("no_such_runbook: no such file (shipped runbooks:")


# --- YAML corner cases ---------------------------------------------------------------------------


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name: x
        steps:
          - &base
            id: a
            kind: run
            command: echo base
            retries: 2
          - <<: *base
            id: b
            command: echo override
            needs: [a]
        """)
    step = load_runbook(path).runbook.step("b")
    assert (step.command, step.retries) == ("echo override", 2)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("name: x\nsteps:\n  - &s\n    id: a\n    kind: run\n    command: echo\n    x: *s\n", 3, "recursive alias"),
    ("name: x\n? [a, b]\n: 1\nsteps: []\n", 2, "mapping key must be a plain value"),
    ("name: x\nsteps:\n  - <<: [1]\n    id: a\n", 3, "merges a mapping"),
    ("name: x\n---\nname: y\n", 2, "single document"),
    ("name: !!python/object:os.system x\nsteps: []\n", 1, "could not determine a constructor"),
], ids=["recursive-alias", "complex-key", "bad-merge", "two-documents", "unsafe-tag"])
def test_yaml_the_safe_loader_refuses(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "book.yaml"
    path.write_text(text)
    first = parse(problems(path)[0])
    assert (int(first["line"]), first["path"]) == (line, "(yaml)")
    assert words in first["message"]


@pytest.mark.parametrize("case", hostile().values(), ids=hostile().keys())
def test_hostile_yaml_is_refused_at_its_line(tmp_path: Path, case: Hostile) -> None:
    # Alias bombs, 500-deep nesting, huge and non-UTF-8 files: one FILE:LINE problem, never a traceback or a hang.
    path = tmp_path / "book.yaml"
    path.write_bytes(case.data)
    [first] = problems(path)
    assert parse(first)["file"] == str(path) and (int(parse(first)["line"]), parse(first)["path"]) == (case.line, "(yaml)")
    assert case.words in first


@pytest.mark.parametrize("name", ["alias-bomb-9x9", "nesting-500-block", "not-utf8-line-4"])
def test_validate_exits_2_on_hostile_yaml(tmp_path: Path, name: str) -> None:
    path = tmp_path / "book.yaml"
    path.write_bytes(hostile()[name].data)
    result = subprocess.run([sys.executable, "-m", "agent_ops.front.cli", "validate", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:{hostile()[name].line}: (yaml): ")


# --- variables at resolve time -------------------------------------------------------------------

VARS = """
    name: x
    vars:
      work: /tmp/work
      epochs: 3
      robot:
        default: libero
        choices: [libero, bridge]
      gpus:
        choices: [1, 2, 4]
      data: null
    steps:
      - {id: a, kind: run, command: "echo {{ work }} {{ epochs }} {{ robot }} {{ gpus }} {{ data }}"}
    """


def resolve_problems(tmp_path: Path, overrides: dict[str, str]) -> list[dict[str, str]]:
    loaded = load_runbook(write(tmp_path, VARS))
    with pytest.raises(RunbookError) as caught:
        resolve_vars(loaded, overrides)
    return [parse(p) for p in caught.value.problems]


def test_required_var_missing(tmp_path: Path) -> None:
    [first] = resolve_problems(tmp_path, {"gpus": "2"})
    assert (first["line"], first["path"]) == ("10", "vars.data")
    assert "variable 'data' is required (pass --var data=VALUE)" in first["message"]


def test_var_of_unknown_name(tmp_path: Path) -> None:
    [first] = resolve_problems(tmp_path, {"gpus": "2", "data": "/d", "epoch": "5"})
    assert (first["line"], first["path"]) == ("2", "vars")
    assert "--var epoch: not a variable of this runbook (did you mean 'epochs'?)" in first["message"]


def test_var_not_in_choices(tmp_path: Path) -> None:
    [first] = resolve_problems(tmp_path, {"gpus": "2", "data": "/d", "robot": "aloha"})
    assert (first["line"], first["path"]) == ("5", "vars.robot")
    assert "'aloha' is not one of the choices ['libero', 'bridge']" in first["message"]


def test_var_bad_int(tmp_path: Path) -> None:
    [first] = resolve_problems(tmp_path, {"gpus": "2", "data": "/d", "epochs": "three"})
    assert (first["line"], first["path"]) == ("4", "vars.epochs")
    assert "--var epochs: expected an integer, got 'three'" in first["message"]


def test_var_problems_are_reported_together(tmp_path: Path) -> None:
    found = resolve_problems(tmp_path, {"epochs": "x", "gpus": "3"})
    assert [p["path"] for p in found] == ["vars.epochs", "vars.gpus", "vars.data"]


def test_required_var_takes_the_type_of_its_choices(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, VARS))
    values = resolve_vars(loaded, {"gpus": "4", "data": "/d", "epochs": "7"})
    assert values == {"work": "/tmp/work", "epochs": 7, "robot": "libero", "gpus": 4, "data": "/d"}


def test_a_value_that_breaks_a_field_is_reported_where_it_is_used(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, """
        name: x
        vars:
          pattern: Traceback
        steps:
          - id: a
            kind: run
            command: echo
            fail_on:
              - "{{ pattern | raw }}"
        """))
    with pytest.raises(RunbookError) as caught:
        render_runbook(loaded, resolve_vars(loaded, {"pattern": "(oops"}))
    first = parse(caught.value.problems[0])
    assert (first["line"], first["path"]) == ("9", "steps.0.fail_on.0")
    assert "invalid regex '(oops'" in first["message"] and "after substituting variables" in first["message"]


# --- templating ----------------------------------------------------------------------------------

TEMPLATED = """
    name: x
    vars:
      value: plain
      flags: "-a -b"
      dir: /tmp/a dir
    steps:
      - id: a
        kind: run
        command: printf '%s\\n' {{ value }}
        cwd: "{{ dir }}"
        env: {WHERE: "{{ dir }}", QUOTED: "{{ dir | q }}"}
      - id: b
        kind: run
        command: set -- {{ flags | raw }}; echo $#
      - id: c
        kind: check
        checks:
          - {kind: command, run: "test -n {{ value }}", regex: "{{ value }}"}
    """


def rendered(tmp_path: Path, **overrides: str) -> Runbook:
    loaded = load_runbook(write(tmp_path, TEMPLATED))
    return render_runbook(loaded, resolve_vars(loaded, overrides))


def bash(command: str) -> str:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True, timeout=10).stdout


def test_command_values_are_one_literal_word(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    nasty = f"two  words 'single' \"double\" $(touch {marker}) `touch {marker}` ; touch {marker} \\ $HOME *"
    runbook = rendered(tmp_path, value=nasty)
    assert bash(runbook.step("a").command) == nasty + "\n"
    assert not marker.exists()


def test_raw_inserts_verbatim(tmp_path: Path) -> None:
    command = rendered(tmp_path).step("b").command
    assert command == "set -- -a -b; echo $#"
    assert bash(command) == "2\n"


def test_description_is_prose_not_a_template(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, """
        name: x
        description: "write {{ anything }} in commands"
        steps:
          - {id: a, kind: run, command: echo}
        """))
    assert render_runbook(loaded, {}).description == "write {{ anything }} in commands"


def test_non_command_fields_are_not_quoted(tmp_path: Path) -> None:
    runbook = rendered(tmp_path, value="a b")
    step = runbook.step("a")
    assert step.cwd == "/tmp/a dir"
    assert step.env == {"WHERE": "/tmp/a dir", "QUOTED": "'/tmp/a dir'"}
    check = runbook.step("c").checks[0]
    # A check's `run` is bash too; its `regex` is a regex, where a value matches literally.
    assert (check.run, check.regex) == ("test -n 'a b'", re.escape("a b"))
    assert re.fullmatch(check.regex, "a b")


NUMERIC = """
    name: x
    vars:
      n_steps: 60
      deadline: {default: 120, description: seconds}
      label: run
    steps:
      - id: a
        kind: run
        command: echo {{ n_steps }}
        env: {N: "{{ n_steps }}", GPU: 0}
      - id: b
        kind: gate
        job: a
        patterns:
          - {name: "done {{ n_steps }}", regex: 'done step={{ n_steps }} ', within: "{{ deadline }}"}
      - id: c
        kind: check
        checks:
          - {kind: json_field, path: /x.json, field: step, equals: "{{ n_steps }}", name: "{{ n_steps }}"}
          - {kind: json_field, path: /x.json, field: tag, equals: "{{ label }}"}
    """


def test_a_field_that_is_one_reference_to_a_number_takes_the_number(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, NUMERIC))
    runbook = render_runbook(loaded, resolve_vars(loaded, {"n_steps": "80", "deadline": "30"}))
    pattern = runbook.step("b").patterns[0]
    assert (pattern.within, pattern.regex, pattern.name) == (30.0, "done step=80 ", "done 80")
    number, text = runbook.step("c").checks
    assert number.equals == 80 and isinstance(number.equals, int)  # JSON's 80, not the string "80"
    assert number.name == "80" and text.equals == "run"
    assert runbook.step("a").command == "echo 80"  # shell text stays text
    assert runbook.step("a").env == {"N": "80", "GPU": "0"}  # env is text; a YAML number too


def test_a_number_from_a_variable_is_held_to_the_fields_bounds(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, NUMERIC))
    with pytest.raises(RunbookError) as caught:
        render_runbook(loaded, resolve_vars(loaded, {"deadline": "-5"}))
    first = parse(caught.value.problems[0])
    assert (first["line"], first["path"]) == ("15", "steps.1.patterns.0.within")
    assert "must be greater than 0 (got -5)" in first["message"] and "after substituting variables" in first["message"]


def test_a_variable_without_a_numeric_default_in_a_numeric_field_is_refused_at_load(tmp_path: Path) -> None:
    found = problems(write(tmp_path, NUMERIC.replace("deadline: {default: 120, description: seconds}",
                                                            "deadline: {default: null}")))
    first = parse(found[0])
    assert (first["line"], first["path"]) == ("15", "steps.1.patterns.0.within")
    assert "expected a number, got '{{ deadline }}': a variable in a numeric field needs a numeric default" in first["message"]


# --- plan, shipped runbooks, schema ---------------------------------------------------------------


def test_plan_waves_of_a_diamond(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, """
        name: diamond
        steps:
          - {id: join, kind: run, command: echo, needs: [left, right]}
          - {id: left, kind: run, command: echo, needs: [root]}
          - {id: right, kind: run, command: echo, needs: [root], background: true}
          - {id: root, kind: run, command: echo}
          - {id: watch, kind: gate, job: right, patterns: [{regex: ok, within: 5}]}
        """))
    assert build_plan(loaded.runbook.steps).waves == [["root"], ["left", "right"], ["join", "watch"]]


def test_find_runbook_resolves_a_shipped_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = shipped_runbooks()
    if not shipped:
        pytest.skip("no runbook is shipped in runbooks/ yet")
    monkeypatch.chdir(tmp_path)  # nothing of that name here: the package directory must answer
    name = shipped[0]
    path = find_runbook(name.removesuffix(".yaml"))
    assert path.is_file() and path.name == name and path.parent.name == "runbooks"
    assert find_runbook(name) == path


def test_json_schema_has_the_step_kinds_and_descriptions() -> None:
    schema = Runbook.model_json_schema()
    steps = schema["properties"]["steps"]
    assert set(steps["items"]["discriminator"]["mapping"]) == {"run", "check", "gate", "put", "get", "group"}
    run = schema["$defs"]["RunStep"]
    assert run["additionalProperties"] is False
    assert "shell-quoted" in run["properties"]["command"]["description"]
    assert "at most 30" in schema["$defs"]["PollSpec"]["properties"]["cap_s"]["description"]
    assert schema["$defs"]["PollSpec"]["properties"]["cap_s"]["maximum"] == 30
    described = [name for name, d in schema["$defs"].items() if d.get("type") == "object" and not d.get("description")]
    assert described == []
