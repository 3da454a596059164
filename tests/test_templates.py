"""Jinja2 templates in runbooks: expressions, escaping per field language, step results, and FILE:LINE errors.

Rendering and validation go through the real loader; gates are judged by the real LogWatch on the lines a
job would print, so "the gate matches the value literally" is what a run would see.
"""
from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from agent_ops.errors import RunbookError
from agent_ops.run.logwatch import LogWatch
from agent_ops.runbook.loader import load_runbook, render_runbook, render_step, resolve_vars
from agent_ops.runbook.results import parse_output_lines, steps_view
from agent_ops.runbook.schema import BUILTIN_VARS, Runbook
from agent_ops.runbook.template import FILTERS

PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<path>\S+): (?P<message>.+)$")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "book.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[dict[str, str]]:
    with pytest.raises(RunbookError) as caught:
        load_runbook(write(tmp_path, text))
    found = [PROBLEM.match(p) for p in caught.value.problems]
    assert all(found), caught.value.problems
    return [m.groupdict() for m in found]


def rendered(tmp_path: Path, text: str, **overrides: str) -> Runbook:
    loaded = load_runbook(write(tmp_path, text))
    return render_runbook(loaded, resolve_vars(loaded, overrides))


def bash(command: str) -> str:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True, timeout=10).stdout


# --- expressions ------------------------------------------------------------------------------------

EXPRESSIONS = """
    name: x
    vars:
      tasks: {default: [0, 1, 2, 3, 4]}
      trials: 5
      train_steps: 95
      resume: false
      tag: ""
    steps:
      - id: eval
        kind: run
        background: true
        command: |
          run --tasks {{ tasks | join(',') }} {% if resume %}--resume {% endif %}--tag {{ tag | default('none', true) }}
          {% for t in tasks %}echo task {{ t }}
          {% endfor %}
      - id: lines
        kind: gate
        job: eval
        metrics:
          - {name: success, regex: 'success=(?P<value>[01])', count: "{{ tasks | length * trials }}",
             within: "{{ ceil(train_steps / 10) + 1 }}"}
    """


def test_numeric_fields_take_the_value_of_an_expression(tmp_path: Path) -> None:
    metric = rendered(tmp_path, EXPRESSIONS).step("lines").metrics[0]
    assert (metric.count, metric.within) == (25, 11)
    # The derived number follows the variables: two tasks of five trials are 10 lines, not a stale 25.
    metric = rendered(tmp_path, EXPRESSIONS, tasks="0,1", train_steps="300").step("lines").metrics[0]
    assert (metric.count, metric.within) == (10, 31)


def test_conditionals_defaults_and_loops_in_a_command(tmp_path: Path) -> None:
    command = rendered(tmp_path, EXPRESSIONS, tasks="3,7", resume="true").step("eval").command
    assert command.splitlines()[0] == "run --tasks 3,7 --resume --tag none"
    assert bash(command.replace("run ", "echo ", 1)).splitlines() == ["--tasks 3,7 --resume --tag none", "task 3", "task 7"]
    plain = rendered(tmp_path, EXPRESSIONS, tag="nightly run").step("eval").command
    assert plain.splitlines()[0] == "run --tasks 0,1,2,3,4 --tag 'nightly run'"


def test_bash_length_syntax_is_not_a_template_comment(tmp_path: Path) -> None:
    command = rendered(tmp_path, """
        name: x
        vars: {word: abc}
        steps:
          - id: a
            kind: run
            command: |
              W={{ word }}; echo "${#W} {## a comment ##}"
        """).step("a").command
    assert command == 'W=abc; echo "${#W} "\n'
    assert bash(command) == "3 \n"


# --- escaping in regex fields (issue 11, item 9) -----------------------------------------------------

HOSTILE = [
    ".*", "a+b", "(x)", "[rank0]", "a|b", "^start", "end$", r"\d+", "{1,2}", "x?", "1.0", "$HOME", r"C:\path", r"a\nb",
    "(?P<value>1)", "[", "(", ")", "*", "+", "?", "\\", "a{", "}{", "#not-a-comment", "a b", "tab\there", "ü-ß",
    "'quoted'", '"double"', "%s %d",
]
GATE = """
    name: x
    vars: {name: plain, pattern: 'step=\\d+'}
    steps:
      - {id: job, kind: run, command: echo, background: true}
      - id: saved
        kind: gate
        job: job
        patterns:
          - {regex: '^saved {{ name }}$', within: 5}
          - {regex: 'next {{ pattern | raw }} done', within: 5}
        fail_on: ['fatal: {{ name }}']
    """


def gate_verdict(gate, *lines: str):
    watch = LogWatch(patterns=gate.patterns, fail_on=gate.fail_on)
    watch.feed("".join(f"{line}\n" for line in lines).encode(), 1.0)
    return watch.verdict(1.0, ended=True)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_value_in_a_gate_pattern_matches_only_itself(tmp_path: Path, value: str) -> None:
    gate = rendered(tmp_path, GATE, name=value).step("saved")
    assert gate_verdict(gate, f"saved {value}", "next step=12 done").passed
    # Not widened: a line with another value is no match (`.*` would take anything).
    other = gate_verdict(gate, "saved something-else", "next step=12 done")
    assert not other.passed and other.reason.startswith("the log ended before pattern ") and "^saved " in other.reason
    # fail_on is a regex field too: the value fails the gate only where it literally appears.
    assert gate_verdict(gate, f"fatal: {value}").kind == "fail_on"
    assert gate_verdict(gate, "fatal: something-else", f"saved {value}", "next step=1 done").passed


def test_raw_inserts_a_pattern_and_re_escapes_in_other_fields(tmp_path: Path) -> None:
    gate = rendered(tmp_path, GATE, pattern=r"step=\d+").step("saved")
    assert gate.patterns[1].regex == r"next step=\d+ done"  # `| raw`: a pattern, as written
    runbook = rendered(tmp_path, """
        name: x
        vars: {value: "a.b (c)"}
        steps:
          - {id: a, kind: run, command: "printf '%s' {{ value | re }}", env: {RX: "{{ value | re }}", Q: "{{ value | q }}"}}
          - {id: b, kind: gate, file: /tmp/x, patterns: [{regex: "{{ value | re }}", within: 1}]}
        """)
    step = runbook.step("a")
    assert bash(step.command) == re.escape("a.b (c)")  # escaped, then quoted as one shell word
    assert step.env == {"RX": re.escape("a.b (c)"), "Q": "'a.b (c)'"}
    assert runbook.step("b").patterns[0].regex == re.escape("a.b (c)")  # escaped once, not twice


# --- load-time problems, at their lines --------------------------------------------------------------


def test_template_syntax_error_names_its_line_inside_a_block(tmp_path: Path) -> None:
    [first] = problems(tmp_path, """
        name: x
        steps:
          - id: a
            kind: run
            command: |
              echo one
              echo {{ 1 + }}
              echo three
        """)
    assert (first["line"], first["path"]) == ("7", "steps.0.command")
    assert first["message"].startswith("template syntax: ")


def test_unknown_names_in_expressions_and_reserved_names(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        name: x
        vars:
          train_steps: 10
          steps: 3
        steps:
          - id: a
            kind: run
            command: echo {{ ceil(trian_steps / 10) }} {{ run_id }} {{ max(1, 2) }}
        """)
    assert [(p["line"], p["path"]) for p in found] == [("4", "vars.steps"), ("8", "steps.0.command")]
    assert "variable name 'steps' is reserved" in found[0]["message"] and "results of earlier steps" in found[0]["message"]
    assert "unknown variable 'trian_steps' (did you mean 'train_steps'?)" in found[1]["message"]


def test_include_and_matrix_outside_a_matrix_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        name: x
        steps:
          - {id: a, kind: run, command: "{% include 'other' %}"}
          - {id: b, kind: run, command: "echo {{ matrix.seed }}"}
        """)
    assert [p["line"] for p in found] == ["3", "4"]
    assert "is not available" in found[0]["message"] and "matrix.NAME can be read only" in found[1]["message"]


def test_a_render_error_names_the_line_it_happened_on(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, """
        name: x
        vars: {parts: 4}
        steps:
          - id: a
            kind: run
            command: |
              echo start
              echo {{ 100 // parts }}
        """))
    with pytest.raises(RunbookError) as caught:
        render_runbook(loaded, resolve_vars(loaded, {"parts": "0"}))
    [problem] = caught.value.problems
    match = PROBLEM.match(problem)
    assert match and (match["line"], match["path"]) == ("8", "steps.0.command")
    assert "cannot render: ZeroDivisionError" in match["message"]


# --- step results: references checked at load, rendered when the step runs ----------------------------

RESULTS = """
    name: x
    vars: {work: /tmp/w}
    steps:
      - {id: count, kind: run, command: echo, outputs: [n_tasks, label]}
      - {id: train, kind: run, command: echo, background: true}
      - id: started
        kind: gate
        job: train
        patterns: [{regex: 'Model: (?P<params>[\\d.]+)M', within: 5}]
        metrics: [{name: loss, regex: 'loss=(?P<value>[\\d.]+)', count: 2, within: 5}]
      - {id: files, kind: check, checks: [{kind: file_count, dir: /tmp, glob: "*", min: 0}]}
      - id: report
        kind: run
        needs: [count, started, files]
        command: |
          echo {{ work }}/{{ steps.count.outputs.label }} {{ steps.count.outputs.n_tasks * 2 }}
          echo {{ steps.started.metrics.loss.last }} of {{ steps.started.metrics.loss.count }}, {{ steps.started.outputs.params }}M
          echo {{ steps.files.checks[0].details.count }} files, {{ steps.started.state }}
        timeout: "{{ steps.count.outputs.n_tasks * 60 }}"
    """


def test_a_step_reading_results_is_rendered_with_them(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, RESULTS))
    assert loaded.reads == {"report": ["count", "started", "files"]}
    at_start = render_runbook(loaded, resolve_vars(loaded, {}))
    assert "{{ steps.count.outputs.label }}" in at_start.step("report").command  # left for when it runs
    results = steps_view({
        "count": ("succeeded", {"outputs": parse_output_lines("n_tasks=5\nlabel=run a\n")}),
        "started": ("succeeded", {"outputs": {"params": 12.5}, "metrics": {"loss": [0.9, 0.42]}}),
        "files": ("succeeded", {"checks": [{"kind": "file_count", "status": "passed", "details": {"count": 7}}]}),
    })
    step = render_step(loaded, "report", {**resolve_vars(loaded, {}), "steps": results})
    assert step.command.splitlines() == ["echo /tmp/w/'run a' 10", "echo 0.42 of 2, 12.5M", "echo 7 files, succeeded"]
    assert step.timeout == 300  # a numeric field from a result: the number itself


def test_a_missing_result_says_what_there_is(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, RESULTS))
    results = steps_view({"count": ("succeeded", {"outputs": {"label": "x"}}),
                          "started": ("failed", {"metrics": {"loss": []}}), "files": ("succeeded", {})})
    with pytest.raises(RunbookError) as caught:
        render_step(loaded, "report", {**resolve_vars(loaded, {}), "steps": results})
    found = [PROBLEM.match(p).groupdict() for p in caught.value.problems]
    assert [(p["line"], p["path"]) for p in found] == [("16", "steps.4.command"), ("19", "steps.4.timeout")]
    assert "steps.count.outputs has no 'n_tasks' (it has: label)" in found[0]["message"]
    assert "steps.count.outputs has no 'n_tasks'" in found[1]["message"]


@pytest.mark.parametrize(("reference", "words"), [
    ("steps.cuont.outputs.label", "unknown step 'cuont' in steps.cuont (did you mean 'count'?)"),
    ("steps.count.outputs.lable", "'count' has no output 'lable' (did you mean 'label'?)"),
    ("steps.started.outputs.param", "'started' has no output 'param' (did you mean 'params'?"),
    ("steps.started.metrics.los.last", "gate 'started' has no metric 'los' (did you mean 'loss'?)"),
    ("steps.started.metrics.loss.final", "no 'final' (a series has: first, last, values, count, min, max, mean)"),
    ("steps.count.metrics.loss.last", "'count' is a run step; only gates have metrics"),
    ("steps.files.checks[3].status", "'files' has 1 checks (counted from 0)"),
    ("steps.count.output.label", "steps.count has no 'output' (it has: outputs, metrics, checks, state)"),
    ("steps.late.outputs.x", "step 'report' reads results of 'late' but does not wait for it"),
    ("steps.train.outputs.x", "'train' is a background job: its results exist once it exits; list it under `after`"),
    ("steps.report.state", "step 'report' cannot read its own results"),
])
def test_a_reference_to_results_is_checked_at_load(tmp_path: Path, reference: str, words: str) -> None:
    text = RESULTS.replace("{{ steps.files.checks[0].details.count }}", "{{ %s }}" % reference)
    text = text.replace("needs: [count, started, files]", "needs: [count, started, files, train]")
    text += "  - {id: late, kind: run, command: echo, outputs: [x]}\n"
    [problem] = problems(tmp_path, text)
    assert (problem["line"], problem["path"]) == ("18", "steps.4.command")
    assert words in problem["message"]


def test_results_cannot_be_read_outside_a_step(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, """
        name: x
        env: {N: "{{ steps.a.outputs.n }}"}
        steps:
          - {id: a, kind: run, command: echo, outputs: [n]}
        """)
    assert (problem["line"], problem["path"]) == ("2", "env.N")
    assert "can be read only in a step's own fields" in problem["message"]


MATRIX_RESULTS = """
    name: x
    steps:
      - id: cell
        kind: group
        matrix: {n: [1, 2]}
        steps:
          - {id: make, kind: run, outputs: [word], command: echo}
          - {id: use, kind: run, needs: [make], command: "echo {{ matrix.n }} {{ steps.make.outputs.word }}"}
      - {id: pick, kind: run, needs: [cell], command: "echo {{ steps['make[n=2]'].outputs.word }}"}
      - id: wait
        kind: run
        needs: [pick]
        matrix: {k: [1, 2]}
        timeout: "{{ steps['make[n=1]'].outputs.word | length + matrix.k * 10 }}"
        command: echo {{ matrix.k }}
    """


def test_a_matrix_cell_reads_results_of_its_own_cell_or_of_a_cell_named_by_id(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, MATRIX_RESULTS))
    # Inside a group's cell the written name is that cell's step (as in needs); elsewhere a cell is named by its id.
    assert loaded.reads == {"use[n=1]": ["make[n=1]"], "use[n=2]": ["make[n=2]"], "pick": ["make[n=2]"],
                            "wait[k=1]": ["make[n=1]"], "wait[k=2]": ["make[n=1]"]}
    results = steps_view({f"make[n={n}]": ("succeeded", {"outputs": {"word": f"w{n}"}}) for n in (1, 2)})
    values = {**resolve_vars(loaded, {}), "steps": results}
    assert render_step(loaded, "use[n=2]", values).command == "echo 2 w2"
    assert render_step(loaded, "pick", values).command == "echo w2"
    wait = render_step(loaded, "wait[k=2]", values)
    assert (wait.timeout, wait.command) == (22, "echo 2")  # a result and the cell's value in one numeric field
    with pytest.raises(RunbookError) as caught:  # a cell's error is reported at the step as written
        render_step(loaded, "use[n=1]", {**values, "steps": steps_view({"make[n=1]": ("succeeded", {"outputs": {}})})})
    [problem] = [PROBLEM.match(p).groupdict() for p in caught.value.problems]
    assert (problem["line"], problem["path"]) == ("8", "steps.0.steps.1.command")
    assert "steps.make[n=1].outputs has no 'word'" in problem["message"]


@pytest.mark.parametrize(("before", "after", "line", "path", "words"), [
    ("steps['make[n=2]'].outputs.word", "steps.make.outputs.word", "9", "steps.1.command",
     "steps.make: 'make' stands for 2 steps (a matrix or a group); read one of them by its id, e.g. steps['make[n=1]']"),
    ("steps['make[n=2]'].outputs.word", "steps['make[n=3]'].outputs.word", "9", "steps.1.command", "unknown step 'make[n=3]'"),
    ("needs: [make], ", "", "8", "steps.0.steps.1.command", "step 'use[n=1]' reads results of 'make[n=1]' but does not wait for it"),
    ("echo {{ matrix.k }}", "echo {{ matrix.n }}", "15", "steps.2.command", "unknown matrix axis 'n' (axes here: k)"),
])
def test_a_matrix_cells_references_are_checked_at_load(tmp_path: Path, before: str, after: str, line: str, path: str,
                                                      words: str) -> None:
    assert before in MATRIX_RESULTS
    [problem] = problems(tmp_path, MATRIX_RESULTS.replace(before, after))
    assert (problem["line"], problem["path"]) == (line, path)
    assert words in problem["message"]


def test_an_axis_cannot_come_from_results(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, """
        name: x
        steps:
          - {id: a, kind: run, command: echo, outputs: [n]}
          - {id: b, kind: run, needs: [a], matrix: {k: "{{ steps.a.outputs.n }}"}, command: "echo {{ matrix.k }}"}
        """)
    assert (problem["line"], problem["path"]) == ("4", "steps.1.matrix.k")
    assert "can be read only in a step's own fields (not in a matrix" in problem["message"]


def test_output_lines_protocol() -> None:
    assert parse_output_lines("a=1\n\nb=x=y\nc=0.5\nd=007\na=2\n") == {"a": 2, "b": "x=y", "c": 0.5, "d": "007"}
    with pytest.raises(ValueError, match="line 2: expected NAME=value"):
        parse_output_lines("a=1\nnot a pair\n")


# --- the schema describes the language ----------------------------------------------------------------


def test_schema_describes_builtins_filters_results_and_escaping() -> None:
    schema = Runbook.model_json_schema()
    templates = schema["x-templates"]
    assert set(templates["builtins"]) == set(BUILTIN_VARS) == {"run_id", "run_dir", "artifacts_dir", "runbook_dir", "node", "fleet"}
    assert all(templates["builtins"].values())
    assert set(FILTERS) <= set(templates["filters"]) and {"outputs", "metrics", "checks", "state"} == set(templates["steps.ID"])
    assert schema["$defs"]["RunStep"]["properties"]["command"]["x-template"] == "shell"
    assert schema["$defs"]["GatePattern"]["properties"]["regex"]["x-template"] == "regex"
    assert schema["$defs"]["CommandCheck"]["properties"]["regex"]["x-template"] == "regex"
    assert "AGENTOPS_OUTPUT" in schema["$defs"]["RunStep"]["properties"]["outputs"]["description"]
    assert set(templates["escaping"]) == {"shell", "regex", "text"} and "number" in templates["numbers"]


def test_the_readme_examples_load_and_mean_what_they_say(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Templates"):readme.index("### Matrices, groups")]
    expressions, results = re.findall(r"```yaml\n(.*?)```", section, re.S)
    loaded = load_runbook(write(tmp_path, "name: a\n" + expressions))
    builtins = dict.fromkeys(BUILTIN_VARS, "x")
    for overrides, count in (({}, 50), ({"tasks": "0,1"}, 20)):
        metric = render_runbook(loaded, {**resolve_vars(loaded, overrides), **builtins}).step("lines").metrics[0]
        assert (metric.count, metric.within) == (count, 90)
    loaded = load_runbook(write(tmp_path, "name: b\nvars: {work: /w}\nsteps:\n  - {id: train, kind: run, command: echo, background: true}\n"
                                + results))
    assert loaded.reads == {"report": ["count", "started"]}
