"""The runbook language at load time (issue 12): matrix and group expansion, what `needs` on a matrix means,
every problem in one pass (schema problems no longer hide graph problems), put sources, gates that could
never watch a live job, throttle tags, and the new metric assertions' validation.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent_ops.errors import RunbookError
from agent_ops.runbook.loader import load_runbook, render_runbook, resolve_vars
from agent_ops.runbook.plan import build_plan
from agent_ops.runbook.schema import Runbook
from tests.test_runbook_validation import parse, problems, write

BUILTINS = {"run_id": "r1", "run_dir": "/tmp/r1", "runbook_dir": "/tmp", "artifacts_dir": "/tmp/a"}

MATRIX = """
    name: m
    vars:
      tasks: "0,1,2"
      workers: 2
      n_steps: 30
    steps:
      - id: prep
        kind: run
        command: echo prep
      - id: cell
        kind: group
        needs: [prep]
        matrix:
          suite: [object, spatial]
          seed: [42, 123]
          exclude: [{suite: object, seed: 123}]
          include: [{suite: goal, seed: 7}]
          max_parallel: 2
          fail_fast: false
        steps:
          - id: train
            kind: run
            background: true
            command: train --suite {{ matrix.suite }} --seed {{ matrix.seed }} --steps {{ n_steps }}
          - id: gate
            kind: gate
            job: train
            patterns: [{regex: 'seed={{ matrix.seed }} ', within: "{{ matrix.seed }}"}]
      - id: ev
        kind: run
        matrix: {task: "{{ tasks }}", max_parallel: "{{ workers }}"}
        command: eval {{ matrix.task }}
      - id: one_cell
        kind: run
        needs: ["train[suite=goal,seed=7]"]
        command: echo
      - id: report
        kind: run
        needs: [cell, ev]
        if: always
        command: echo done
    """


def rendered(tmp_path: Path, text: str = MATRIX, **overrides: str) -> Runbook:
    loaded = load_runbook(write(tmp_path, text))
    return render_runbook(loaded, {**resolve_vars(loaded, overrides), **BUILTINS})


def test_a_matrix_group_expands_into_cells_with_their_values_ids_and_needs(tmp_path: Path) -> None:
    runbook = rendered(tmp_path)
    cells = ["suite=object,seed=42", "suite=spatial,seed=42", "suite=spatial,seed=123", "suite=goal,seed=7"]
    assert [s.id for s in runbook.steps] == (
        ["prep"] + [f"{s}[{c}]" for c in cells for s in ("train", "gate")] + [f"ev[task={t}]" for t in "012"] + ["one_cell", "report"])
    train = runbook.step("train[suite=spatial,seed=123]")
    assert train.command == "train --suite spatial --seed 123 --steps 30" and train.needs == ["prep"]  # the group's needs
    gate = runbook.step("gate[suite=goal,seed=7]")
    assert gate.job == "train[suite=goal,seed=7]"  # a sibling's name means the same cell's step
    assert (gate.patterns[0].regex, gate.patterns[0].within) == ("seed=7 ", 7.0)  # a cell's number in a numeric field
    # needs: [GROUP] = every step of every cell; needs: [MATRIX STEP] = all its cells; an expanded id = that cell.
    assert runbook.step("report").needs == [f"{s}[{c}]" for c in cells for s in ("train", "gate")] + [f"ev[task={t}]" for t in "012"]
    assert runbook.step("one_cell").needs == ["train[suite=goal,seed=7]"]
    assert runbook.step("report").if_ == "always"
    cell = runbook.cell_of("gate[suite=goal,seed=7]")
    assert (cell.group, cell.cell, cell.values, cell.max_parallel, cell.fail_fast) == ("cell", "suite=goal,seed=7", {"suite": "goal", "seed": 7},
                                                                                       2, False)
    assert runbook.cell_of("prep") is None


def test_an_axis_and_a_limit_can_come_from_variables(tmp_path: Path) -> None:
    runbook = rendered(tmp_path, tasks="libero_10,libero_goal", workers="3")
    assert [s.id for s in runbook.steps if s.id.startswith("ev[")] == ["ev[task=libero_10]", "ev[task=libero_goal]"]
    assert runbook.step("ev[task=libero_goal]").command == "eval libero_goal"
    assert runbook.cell_of("ev[task=libero_10]").max_parallel == 3


def test_the_plan_puts_each_gate_beside_its_own_cell(tmp_path: Path) -> None:
    waves = build_plan(load_runbook(write(tmp_path, MATRIX)).runbook.steps).waves
    assert waves[1][0] == "ev[task=0]" or "train[suite=object,seed=42]" in waves[1]
    assert "gate[suite=object,seed=42]" in waves[2] and waves[-1] == ["report"]


def test_a_value_from_a_variable_that_empties_the_matrix_is_reported_where_written(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, MATRIX))
    with pytest.raises(RunbookError) as caught:
        render_runbook(loaded, {**resolve_vars(loaded, {"tasks": " , "}), **BUILTINS})
    found = [parse(p) for p in caught.value.problems]
    assert [(p["line"], p["path"]) for p in found][:1] == [("31", "steps.2.matrix.task")]
    assert "matrix axis 'task' has no values (after substituting variables)" in found[0]["message"]


# --- every problem in one pass (issue 12, defect 3) ---------------------------------------------------


def test_schema_problems_do_not_hide_graph_problems(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name: x
        steps:
          - id: a
            kind: run
            comand: echo
          - id: a
            kind: run
            command: echo
            needs: [nope]
          - id: watch
            kind: gate
            job: trian
            patterns: [{regex: x, within: -1}]
          - id: c1
            kind: run
            command: echo
            needs: [c2]
          - id: c2
            kind: run
            command: echo
            retries: 99
            needs: [c1]
        """)
    found = [parse(p) for p in problems(path)]
    assert [(int(p["line"]), p["path"]) for p in found] == [
        (5, "steps.0.comand"), (6, "steps.1.id"), (9, "steps.1.needs.0"), (12, "steps.2.job"), (13, "steps.2.patterns.0.within"),
        (17, "steps.3.needs.0"), (21, "steps.4.retries"),
    ]
    messages = [p["message"] for p in found]
    assert "duplicate step id 'a'" in messages[1] and "unknown step 'nope'" in messages[2]
    assert "watches unknown step 'trian'" in messages[3] and "dependency cycle" in messages[5] and "c1 -> c2 -> c1" in messages[5]


def test_a_put_whose_source_is_missing_fails_validation(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    path = write(tmp_path, """
        name: x
        vars:
          name: missing.txt
        steps:
          - {id: ok, kind: put, src: here.txt, dest: /tmp/here.txt}
          - {id: gone, kind: put, src: "{{ name }}", dest: /tmp/x}
          - {id: dir, kind: put, src: ., dest: /tmp/x}
          - {id: later, kind: put, src: "{{ artifacts_dir }}/fetched.txt", dest: /tmp/x}
        """)
    found = [parse(p) for p in problems(path)]
    assert [(int(p["line"]), p["path"]) for p in found] == [(6, "steps.1.src"), (7, "steps.2.src")]
    assert found[0]["message"] == f"put source 'missing.txt' does not exist ({tmp_path / 'missing.txt'})"
    assert "is a directory" in found[1]["message"]
    # A variable's real value is checked again before the run starts (and a file the run itself makes is not).
    path.write_text(path.read_text().replace("name: missing.txt", "name: here.txt").replace("  - {id: dir, kind: put, src: ., dest: /tmp/x}\n", ""))
    loaded = load_runbook(path)
    with pytest.raises(RunbookError) as caught:
        render_runbook(loaded, {**resolve_vars(loaded, {"name": "nowhere.txt"}), **BUILTINS})
    [only] = [parse(p) for p in caught.value.problems]
    assert (only["line"], only["path"]) == ("6", "steps.1.src")
    assert only["message"] == f"put source 'nowhere.txt' does not exist ({tmp_path / 'nowhere.txt'}) (after substituting variables)"


def test_a_put_source_is_rendered_by_the_template_engine_for_each_cell(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    path = write(tmp_path, """
        name: x
        vars: {ext: TXT}
        steps:
          - {id: p, kind: put, matrix: {f: [a, b]}, src: "{{ matrix.f }}.{{ ext | lower }}", dest: /tmp/x}
          - {id: mk, kind: run, outputs: [f], command: echo}
          - {id: made, kind: put, needs: [mk], src: "{{ steps.mk.outputs.f }}", dest: /tmp/y}
        """)
    # a.txt is there, b.txt is not; a source read from a result is known only when its step runs.
    [only] = [parse(p) for p in problems(path)]
    assert (int(only["line"]), only["path"]) == (4, "steps.0.src")
    assert only["message"] == f"put source 'b.txt' does not exist ({tmp_path / 'b.txt'})"


def test_the_readme_matrix_examples_load_and_mean_what_they_say(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Matrices, groups"):readme.index("### Where a run's files live")]
    matrix, group, results, always, throttle = re.findall(r"```yaml\n(.*?)```", section, re.S)
    steps = [s.id for s in rendered(tmp_path, "name: a\nsteps:\n" + matrix).steps]
    assert steps == ["train[suite=object,seed=42]", "train[suite=spatial,seed=42]", "train[suite=spatial,seed=123]", "train[suite=goal,seed=7]"]
    runbook = rendered(tmp_path, "name: b\nsteps:\n  - {id: data, kind: run, command: echo}\n" + group)
    assert runbook.step("gate[suite=spatial,seed=123]").job == "train[suite=spatial,seed=123]"
    loaded = load_runbook(write(tmp_path, "name: c\nsteps:\n" + results))
    assert loaded.reads == {"eval[seed=42]": ["train[seed=42]"], "eval[seed=123]": ["train[seed=123]"], "best": ["train[seed=42]"]}
    runbook = rendered(tmp_path, "name: d\n" + throttle + "steps:\n  - {id: cell, kind: run, tags: [train, download], command: echo}\n" + always)
    assert (runbook.throttle, runbook.step("results").if_, runbook.step("lint").continue_on_error) == ({"train": 2, "download": 3}, "always", True)


# --- matrix mistakes -----------------------------------------------------------------------------------

CASES = {
    "unknown-axis": ("""
        name: x
        steps:
          - id: t
            kind: run
            matrix: {seed: [1, 2]}
            command: echo {{ matrix.sede }}
        """, 6, "steps.0.command", ("unknown matrix axis 'sede'", "did you mean 'seed'", "axes here: seed")),
    "matrix-outside-a-matrix": ("""
        name: x
        steps:
          - {id: t, kind: run, command: "echo {{ matrix.seed }}"}
        """, 3, "steps.0.command", ("{{ matrix.seed }} is used outside a matrix step",)),
    "setting-typo": ("""
        name: x
        steps:
          - id: t
            kind: run
            command: echo
            matrix:
              seed: [1, 2]
              exlude: [{seed: 1}]
        """, 8, "steps.0.matrix.exlude", ("unknown field 'exlude'", "did you mean 'exclude'")),
    "exclude-matches-nothing": ("""
        name: x
        steps:
          - id: t
            kind: run
            command: echo
            matrix:
              seed: [1, 2]
              exclude: [{seed: 3}]
        """, 8, "steps.0.matrix.exclude.0", ("exclude {seed: 3} matches no cell",)),
    "include-lacks-an-axis": ("""
        name: x
        steps:
          - id: t
            kind: run
            command: echo
            matrix:
              seed: [1, 2]
              suite: [a]
              include: [{seed: 3}]
        """, 9, "steps.0.matrix.include.0", ("lacks suite", "every axis (seed, suite)")),
    "value-unfit-for-an-id": ("""
        name: x
        steps:
          - id: t
            kind: run
            command: echo
            matrix:
              suite: [libero/object]
        """, 7, "steps.0.matrix.suite", ("'libero/object'", "cannot be part of a step id")),
    "gate-outside-the-group": ("""
        name: x
        steps:
          - {id: t, kind: run, background: true, command: echo, matrix: {seed: [1, 2]}}
          - {id: g, kind: gate, job: t, patterns: [{regex: x, within: 5}]}
        """, 4, "steps.1.job", ("watches 't', which has 2 cells", "kind: group")),
    "brackets-in-a-written-id": ("""
        name: x
        steps:
          - {id: "t[a=1]", kind: run, command: echo}
        """, 3, "steps.0.id", ("brackets are reserved",)),
    "group-needs-itself": ("""
        name: x
        steps:
          - id: g
            kind: group
            steps:
              - {id: a, kind: run, command: echo, needs: [g]}
        """, 6, "steps.0.steps.0.needs.0", ("step 'a' is in group 'g'", "its own group")),
    "duplicate-inside-a-group": ("""
        name: x
        steps:
          - {id: a, kind: run, command: echo}
          - id: g
            kind: group
            steps:
              - {id: a, kind: run, command: echo}
        """, 7, "steps.1.steps.0.id", ("duplicate step id 'a'", "steps.0")),
    "nested-group": ("""
        name: x
        steps:
          - id: g
            kind: group
            steps:
              - {id: h, kind: group, steps: []}
        """, 6, "steps.0.steps.0.kind", ("unknown step kind 'group'",)),
    "if-sometimes": ("""
        name: x
        steps:
          - {id: a, kind: run, command: echo, if: sometimes}
        """, 3, "steps.0.if", ("'sometimes' is not one of", "'always'")),
    "throttle-of-an-unused-tag": ("""
        name: x
        throttle: {trian: 2}
        steps:
          - {id: a, kind: run, command: echo, tags: [train]}
        """, 2, "throttle.trian", ("no step has the tag 'trian'", "did you mean 'train'")),
    "gate-after-its-job": ("""
        name: x
        steps:
          - {id: t, kind: run, background: true, command: echo}
          - {id: g, kind: gate, job: t, after: [t], patterns: [{regex: x, within: 5}]}
        """, 4, "steps.1.after.0", ("gate 'g' could never watch 't' running", "g -> t")),
    "gate-behind-a-step-that-waits-for-the-job": ("""
        name: x
        steps:
          - {id: t, kind: run, background: true, command: echo}
          - {id: copy, kind: run, after: [t], command: echo}
          - id: g
            kind: gate
            job: t
            needs: [copy]
            patterns: [{regex: x, within: 5}]
        """, 8, "steps.2.needs.0", ("gate 'g' could never watch 't' running: through g -> copy -> t",)),
    "at-steps-without-a-step-group": ("""
        name: x
        steps:
          - {id: t, kind: run, background: true, command: echo}
          - id: g
            kind: gate
            job: t
            metrics:
              - {name: loss, regex: 'loss=(?P<value>[\\d.]+)', within: 60, count: 3, at_steps: [{step: 10, max: 1}]}
        """, 8, "steps.1.metrics.0.at_steps", ("needs a named group (?P<step>...)",)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matrix_and_language_mistakes_get_a_precise_problem(tmp_path: Path, case: tuple) -> None:
    text, line, where, words = case
    path = write(tmp_path, text)
    first = parse(problems(path)[0])
    assert (int(first["line"]), first["path"]) == (line, where), first
    for word in words:
        assert word in first["message"], first["message"]


def test_a_gate_on_a_foreground_job_is_valid_it_starts_with_the_job(tmp_path: Path) -> None:
    loaded = load_runbook(write(tmp_path, """
        name: x
        steps:
          - {id: t, kind: run, command: echo}
          - {id: g, kind: gate, job: t, needs: [t], patterns: [{regex: x, within: 5}]}
        """))
    assert [s.id for s in loaded.runbook.steps] == ["t", "g"]


def test_the_schema_describes_the_new_constructs() -> None:
    schema = Runbook.model_json_schema()
    defs = schema["$defs"]
    assert "throttle" in schema["properties"] and "matrix" in defs["RunStep"]["properties"]
    assert set(defs["RunStep"]["properties"]["if"]["enum"]) == {"success", "always"}
    assert "continue_on_error" in defs["GateStep"]["properties"]
    assert {"include", "exclude", "max_parallel", "fail_fast"} <= set(defs["MatrixSpec"]["properties"])
    assert {"monotonic", "tolerance", "at_steps"} <= set(defs["MetricSpec"]["properties"])
    assert defs["GroupStep"]["description"].startswith("Steps that form one unit")
