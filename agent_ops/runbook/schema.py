"""The runbook schema: pydantic models that are the single source of truth for the YAML format.

`agentops schema` prints the JSON Schema generated from these classes, so editors
validate runbooks with exactly the rules the executor applies.
"""
from __future__ import annotations

import functools
import re
import typing
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from agent_ops.bounds import MAX_POLL_S
from agent_ops.runbook.results import RESULT_PARTS, SERIES_PARTS
from agent_ops.runbook.template import FILTERS, FUNCTIONS, LANGUAGES, NAMESPACES, NUMBERS, Language
from checks.kinds import Check

# Step ids become file and tmux window names on the box: keep them filesystem- and tmux-safe.
# A matrix cell's id adds its values in brackets (`train[suite=object,seed=42]`); only expansion writes those.
WRITTEN_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
STEP_ID = rf"^{WRITTEN_ID}(\[[A-Za-z0-9_.=,-]+\])?$"
VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Keys of a matrix that are settings, not axes.
MATRIX_SETTINGS = ("include", "exclude", "max_parallel", "fail_fast")
MAX_CELLS = 256  # one matrix's cells at most: each becomes steps, tmux windows and journal rows
MatrixValue = Union[str, int, float, bool]
# The rule every agent of seed 003 obeys: nothing waits more than 30 s without re-checking.

# Names every runbook may use without declaring them; their values are set when a run starts.
BUILTIN_VARS: dict[str, str] = {
    "run_id": "the run's id (sortable; safe in file and tmux names)",
    "run_dir": "the run's directory on the target, WORKDIR/runs/RUN_ID (WORKDIR: `--workdir`, default ~/.agentops on the "
               "target); each job's script, log and exit code live in its jobs/ directory",
    "artifacts_dir": "the run's directory on the controller, $AGENTOPS_HOME/runs/RUN_ID: `get` steps copy files here",
    "runbook_dir": "the runbook file's directory on the controller (a `put` step's relative src starts here)",
    "node": "the node this step's job runs on: node.name, node.rank (0 = the head), node.address (where the other nodes "
            "reach it: the inventory's `address:`, else the URL's host); each node's job is rendered with its own",
    "fleet": "the run's nodes: fleet.size, fleet.names and fleet.addresses (lists, head first), fleet.head.name, "
             "fleet.head.address (also fleet.head_address): what a multi-node launch needs (torchrun --nnodes, "
             "--rdzv_endpoint)",
}
# Which nodes of the fleet a step runs on: a word, or node names.
NodeSelector = Union[Literal["all", "head", "workers", "any"], Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]],
                                                                  Field(min_length=1)]]
# Template marks: the language inserted values are escaped for (see template.py); `agentops schema` shows them.
SHELL: dict[str, Any] = {"x-template": "shell"}
REGEX: dict[str, Any] = {"x-template": "regex"}


class Strict(BaseModel):
    """Base for every schema object: unknown keys are errors (a typo must not pass silently).

    Numbers are accepted where text is expected (`CUDA_VISIBLE_DEVICES: 0`, or a numeric
    variable that is a field's whole value), as their decimal text.
    """

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class VarSpec(Strict):
    """A runbook variable: a default (null means the caller must supply it) and optional choices."""

    default: Any = Field(None, description="Default value; null makes the variable required.")
    description: str | None = Field(None, description="What the variable means, shown by `agentops plan`.")
    choices: list[Any] | None = Field(None, description="Allowed values; anything else is rejected before a run starts.")


class PollSpec(Strict):
    """How the single poller waits: starts fast, backs off, never past the cap."""

    first_s: float = Field(0.25, gt=0, le=0.25, description="First re-check after this many seconds (at most 0.25).")
    cap_s: float = Field(10.0, gt=0, le=MAX_POLL_S, description="Longest wait between two checks; at most 30 s by rule.")
    factor: float = Field(1.6, ge=1.0, le=4.0, description="Backoff factor between checks while nothing changes.")


class MatrixSpec(BaseModel):
    """Axes (any other key: a list of values, or a template naming a comma-separated variable) and settings."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Union[list[MatrixValue], str]] = Field(init=False)  # the axes, in order

    include: list[dict[str, MatrixValue]] = Field(
        default_factory=list, description="Extra cells, each giving a value for every axis (or, with no axes, the cells).")
    exclude: list[dict[str, MatrixValue]] = Field(
        default_factory=list, description="Cells to leave out: each entry removes the cells that match all its values.")
    max_parallel: int | None = Field(None, ge=1, le=32, description="At most this many cells in progress at once.")
    fail_fast: bool = Field(True, description="When a cell fails, cells not yet started are not run; false: all cells run.")

    @model_validator(mode="before")
    @classmethod
    def _axes_are_not_typos(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in MATRIX_SETTINGS:
                    continue
                close = get_close_matches(str(key), MATRIX_SETTINGS, n=1, cutoff=0.75)
                if close:
                    raise ValueError(f"unknown field {key!r} (did you mean {close[0]!r}?); an axis needs a name not this close "
                                     f"to a setting ({', '.join(MATRIX_SETTINGS)})")
                if not isinstance(key, str) or not re.match(VAR_NAME, key):
                    raise ValueError(f"matrix axis name {key!r} must match {VAR_NAME} (it is used as {{{{ matrix.NAME }}}})")
        return data

    def axes(self) -> dict[str, list[MatrixValue] | str]:
        """The axes as written, in order."""
        return dict(self.model_extra or {})


class StepBase(Strict):
    """Fields every step kind has."""

    id: str = Field(pattern=STEP_ID, description="Unique step id; also the tmux window and job directory name.")
    name: str | None = Field(None, description="Human title; defaults to the id.")
    needs: list[str] = Field(default_factory=list, description="Ids of steps that must succeed (or be skipped) first; a background job only has to be running.")
    after: list[str] = Field(
        default_factory=list,
        description="Ids of steps that must have finished successfully first: for a background job, exited with 0 "
        "(e.g. a resume that must not share a checkpoint dir with the run still shutting down).",
    )
    retries: int = Field(0, ge=0, le=10, description="Extra attempts after a failure (remedies apply between attempts).")
    skip_if: Check | None = Field(None, description="A check; when it passes the step is skipped (idempotent steps).")
    tags: list[str] = Field(default_factory=list, description="Labels such as install, download, stats, train; known issues apply by tag.")
    timeout: float | None = Field(None, gt=0, description="Wall-clock deadline of one attempt, in seconds.")
    on: NodeSelector | None = Field(
        None, description="The nodes of the fleet this step runs on: `all` (the default; a gate's default is its job's "
        "nodes), `head` (rank 0), `workers` (every node but the head), a list of node names (checked against the fleet "
        "when the run starts), or `any`: one node, the next free one when the step is ready (matrix cells spread over the "
        "fleet, at most max_per_node at once on a node; a retry goes back to the queue and another node may take it). On "
        "several nodes the step is one job (or check, copy, gate) per node, each with its own attempts, retries, remedies "
        "and skip_if; it succeeds when every node's part does (see on_node_failure).")
    matrix: MatrixSpec | None = Field(
        None, description="Run this step once per cell of a product of lists; each cell's values are {{ matrix.NAME }} "
        "in its templates and part of its id (`train[suite=object,seed=42]`). `needs: [ID]` waits for every cell.")
    if_: Literal["success", "always"] = Field(
        "success", alias="if",
        description="always: run once the steps it needs have ended, whatever their outcome (reports, copying results off "
        "the box, teardown); success (default): only when they succeeded.")
    continue_on_error: bool = Field(
        False, description="A failure of this step is recorded but does not fail the run; steps that need it go on.")

    @property
    def title(self) -> str:
        return self.name or self.id


class RunStep(StepBase):
    """A shell command run as a job in its own tmux window on the target."""

    kind: Literal["run"]
    command: str = Field(min_length=1, description="Bash script (multi-line allowed), run with `bash -eo pipefail`. Values inserted "
                         "with {{ }} are shell-quoted (`| raw` inserts one as it is).", json_schema_extra=SHELL)
    cwd: str | None = Field(None, description="Working directory on the target (default: the target user's home).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for this job (reaches it through a mode-600 file).")
    background: bool = Field(False, description="Start and go on: steps that need this one start once it is running.")
    keep_running: bool = Field(False, description="With background: the run may finish while this job still runs (e.g. training).")
    fail_on: list[str] = Field(default_factory=list, description="Regexes that fail the step as soon as one appears in its log.",
                               json_schema_extra=REGEX)
    stall_after: float | None = Field(None, gt=0, description="Fail when the log has not grown for this many seconds.")
    report: bool = Field(False, description="Print this job's output (its newest lines, secrets masked) when the run ends: a summary step.")
    outputs: list[str] = Field(
        default_factory=list,
        description="Names of values this step hands to later steps as {{ steps.ID.outputs.NAME }}: written as `NAME=value` "
        "lines to the file $AGENTOPS_OUTPUT, or as keys of the JSON object in `outputs_file`. Read when the job exits 0; "
        "a declared name the job did not write fails the step.",
    )
    outputs_file: str | None = Field(
        None, description="A JSON file on the target whose top-level object holds outputs (relative: to cwd, else the home directory)."
    )

    @field_validator("fail_on")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        return [_compiled(p) for p in value]

    @field_validator("outputs")
    @classmethod
    def _output_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(VAR_NAME, name):
                raise ValueError(f"output name {name!r} must match {VAR_NAME}")
        if len(set(value)) < len(value):
            raise ValueError(f"output names repeat: {sorted({n for n in value if value.count(n) > 1})}")
        return value

    @model_validator(mode="after")
    def _keep_running_needs_background(self) -> RunStep:
        if self.keep_running and not self.background:
            raise ValueError("keep_running only makes sense with background: true")
        return self


class GatePattern(Strict):
    """One line that must appear in the log, after the previous pattern's line, before its deadline."""

    regex: str = Field(description="Python regex searched in each new log line; values inserted with {{ }} match literally "
                       "(`| raw` inserts a pattern). Named groups `(?P<NAME>...)` become the gate's outputs.", json_schema_extra=REGEX)
    within: float = Field(gt=0, description="Deadline in seconds, counted from the gate's start.")
    name: str | None = Field(None, description="Short label for status output.")

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        return _compiled(value)


class RangeSpec(Strict):
    """An inclusive numeric interval; either end may be open."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class StepBand(RangeSpec):
    """The value logged at a step (or the one logged nearest to it, within `near` steps) must lie in [min, max]."""

    step: int = Field(ge=0, description="The step (as the regex's `step` group captures it).")
    near: int = Field(0, ge=0, description="Accept the value logged nearest to `step` within this many steps.")


class MetricSpec(Strict):
    """A number extracted from log lines, with assertions on its series."""

    name: str = Field(pattern=VAR_NAME, description="Metric name used in status output.")
    regex: str = Field(description="Regex with a named group `value` (and optionally `step`); values inserted with {{ }} match literally.",
                       json_schema_extra=REGEX)
    count: int = Field(1, ge=1, description="How many values must be seen before the assertions are judged.")
    within: float = Field(gt=0, description="Deadline in seconds (from the gate's start) to collect `count` values.")
    first: RangeSpec | None = Field(None, description="The first value must lie in this range (e.g. first loss 0.7-1.0).")
    last: RangeSpec | None = Field(None, description="The last collected value must lie in this range.")
    falling: bool = Field(False, description="The mean of the last third of values must be below the mean of the first third.")
    monotonic: Literal["non_increasing", "non_decreasing", "decreasing", "increasing"] | None = Field(
        None, description="Every value compared with the one before it (e.g. non_increasing: never goes up by more than tolerance).")
    tolerance: float = Field(0.0, ge=0, description="Slack for monotonic: how far a value may move against the direction.")
    at_steps: list[StepBand] = Field(
        default_factory=list, description="Values at given steps (needs a `step` group in regex) must lie in bands.")
    rate_max_s: float | None = Field(None, gt=0, description="Upper bound on seconds between consecutive values (s/step).")

    @field_validator("regex")
    @classmethod
    def _has_value_group(cls, value: str) -> str:
        if "value" not in re.compile(_compiled(value)).groupindex:
            raise ValueError("metric regex needs a named group (?P<value>...)")
        return value

    @model_validator(mode="after")
    def _falling_needs_values(self) -> MetricSpec:
        if self.falling and self.count < 3:
            raise ValueError("falling needs count >= 3 to compare the first and last thirds")
        if self.monotonic and self.count < 2:
            raise ValueError("monotonic needs count >= 2 to compare consecutive values")
        if self.at_steps and "step" not in re.compile(self.regex).groupindex:
            raise ValueError("at_steps needs a named group (?P<step>...) in regex to know which step a value belongs to")
        return self


class GateStep(StepBase):
    """Ordered log patterns (each with a deadline) and metric checks on a job's log or a file."""

    kind: Literal["gate"]
    job: str | None = Field(None, description="Id of a run step whose log to watch (usually a background job).")
    file: str | None = Field(None, description="A log file on the target; only bytes written after the gate starts count.")
    patterns: list[GatePattern] = Field(default_factory=list, description="Lines that must appear, in this order.")
    metrics: list[MetricSpec] = Field(default_factory=list, description="Numbers extracted from the log and judged.")
    fail_on: list[str] = Field(default_factory=list, description="Regexes that end the gate as failed at once.", json_schema_extra=REGEX)
    stall_after: float | None = Field(None, gt=0, description="Fail when the log has not grown for this many seconds.")
    pass_on: Literal["every", "any"] = Field(
        "every", description="On several nodes: `every` node's log must show the patterns and metrics (the default), or "
        "`any` one of them: e.g. rank 0's start-up lines and loss, on whichever node torchrun's rendezvous made rank 0. "
        "The first node that passes ends the wait on the others; a fail_on match (or a lost job) on any node fails the gate.")

    @field_validator("fail_on")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        return [_compiled(p) for p in value]

    @model_validator(mode="after")
    def _one_source(self) -> GateStep:
        if (self.job is None) == (self.file is None):
            raise ValueError("a gate watches exactly one of `job` or `file`")
        if not self.patterns and not self.metrics:
            raise ValueError("a gate needs at least one pattern or metric")
        return self

    @property
    def deadline_s(self) -> float:
        return max([p.within for p in self.patterns] + [m.within for m in self.metrics])


class CheckStep(StepBase):
    """Checks evaluated through the transport; the step fails if any check fails."""

    kind: Literal["check"]
    checks: list[Check] = Field(min_length=1, description="Checks, evaluated in order; all are reported.")


class PutStep(StepBase):
    """Copy a file from the controller's machine to the target."""

    kind: Literal["put"]
    src: str = Field(description="Local path (relative to the runbook's directory).")
    dest: str = Field(description="Path on the target.")
    mode: int = Field(0o644, ge=0, le=0o7777, description="File mode on the target.")


class GetStep(StepBase):
    """Copy a file from the target into the run's artifacts directory (or a given local path)."""

    kind: Literal["get"]
    src: str = Field(description="Path on the target.")
    dest: str | None = Field(None, description="Local path; default: the run's artifacts directory.")


Step = Annotated[Union[RunStep, CheckStep, GateStep, PutStep, GetStep], Field(discriminator="kind")]


class GroupStep(Strict):
    """Steps that form one unit (a job and its gate): with a matrix, the whole unit is repeated per cell.

    Inside a cell, a step's `needs`, `after` and `job` that name a step of the group mean that step of the
    same cell; outside, `needs: [GROUP]` waits for every step of every cell, `needs: [STEP]` for every cell of it.
    """

    kind: Literal["group"]
    id: str = Field(pattern=f"^{WRITTEN_ID}$", description="The group's id: `needs: [ID]` waits for all its steps.")
    name: str | None = Field(None, description="Human title; defaults to the id.")
    needs: list[str] = Field(default_factory=list, description="Added to the needs of every step in the group.")
    after: list[str] = Field(default_factory=list, description="Added to the after of every step in the group.")
    tags: list[str] = Field(default_factory=list, description="Added to the tags of every step in the group.")
    matrix: MatrixSpec | None = Field(None, description="Repeat the group per cell (see a step's matrix).")
    steps: list[Step] = Field(min_length=1, description="The group's steps (no nested groups).")


StepOrGroup = Annotated[Union[RunStep, CheckStep, GateStep, PutStep, GetStep, GroupStep], Field(discriminator="kind")]


@dataclass(frozen=True)
class CellRef:
    """Where an expanded step came from: its group (a matrix step is a group of one), cell and the group's limits."""

    group: str
    cell: str  # "suite=object,seed=42"; "" for a group without a matrix
    values: dict[str, Any]
    max_parallel: int | None = None
    fail_fast: bool = True


TeardownPolicy = Literal["keep", "stop", "destroy"]


class ArtifactSpec(Strict):
    """A file or directory on the box that must be copied off (and checked) before the box is destroyed."""

    path: str = Field(min_length=1, description="Path on the box: a file, or a directory (every file under it).")
    on: NodeSelector = Field("head", description="The nodes that hold it: head (the default), all, workers, or names.")
    required: bool = Field(False, description="A path that does not exist blocks a destroy too (by default only a copy "
                           "that failed or does not match blocks it: a missing file has nothing to lose).")


class CheckpointSpec(Strict):
    """How the training is asked to save its state before its boxes are given back (budget reached, teardown)."""

    job: str = Field(min_length=1, description="The run step whose job is asked (its process group gets the signal).")
    signal: Literal["USR1", "USR2", "TERM", "INT", "HUP"] | None = Field(
        "USR1", description="Signal sent to the job's process group (training.train saves a checkpoint and exits on SIGUSR1).")
    command: str | None = Field(None, description="Or a command run on each node of the job instead.", json_schema_extra=SHELL)
    wait_s: float = Field(300.0, gt=0, le=3600, description="How long the job may take to save and exit.")


class TeardownSpec(Strict):
    """What happens to rented boxes when the run ends: keep them, stop them (disk kept, and billed), destroy them."""

    success: TeardownPolicy = Field("destroy", description="After success (and once no job runs, see provision.idle_s), "
                                    "or when the budget is reached.")
    failure: TeardownPolicy = Field("destroy", description="After a failure, a cancel or an interrupted controller "
                                    "(Ctrl-C, SIGTERM, SIGHUP).")


class ProvisionSpec(Strict):
    """Boxes this runbook rents when run with `--provision` (flags override every field)."""

    provider: str = Field("vast", description="Where to rent (credentials from the environment: VAST_API_KEY).")
    fleet: dict[str, Any] = Field(default_factory=dict, description="The fleet request (`agentops rent --request`'s "
                                  "fields: nodes, offer, image, identity, qualify, ...), checked when the run rents.")
    teardown: TeardownSpec = Field(default_factory=TeardownSpec)
    budget_usd: float | None = Field(None, gt=0, description="When the boxes have cost this much: checkpoint, copy the "
                                     "artifacts off, give the boxes back, end the run (budget reached).")
    idle_s: float = Field(600.0, gt=0, description="After the steps ended, boxes on which no job of the run has run "
                          "for this long are given back (a training left running keeps them until it ends).")
    checkpoint: CheckpointSpec | None = Field(None, description="How the training is asked to save before its boxes go.")


class Runbook(Strict):
    """A named, validated list of steps with variables, secrets and environment.

    Every field but `vars` and `description` may hold Jinja2 templates (`x-templates` lists the names,
    filters and functions they may use); fields marked `x-template` escape inserted values for bash or regex.
    """

    model_config = ConfigDict(json_schema_extra={"x-templates": {
        "builtins": BUILTIN_VARS, "namespaces": NAMESPACES, "steps.ID": RESULT_PARTS, "metric series": SERIES_PARTS,
        "filters": {**FILTERS, "(Jinja2's)": "default, length, join, int, float, round, lower, upper, replace, ..."},
        "functions": [*sorted(FUNCTIONS), "range"], "comments": "{## ... ##}", "escaping": LANGUAGES, "numbers": NUMBERS,
    }})

    name: str = Field(min_length=1, description="Runbook name.")
    description: str | None = Field(None, description="What the runbook does.")
    vars: dict[str, VarSpec | str | int | float | bool | None] = Field(
        default_factory=dict, description="Variables: a plain default or a {default, description, choices} mapping; null = required. "
        "A list default is written as {default: [...]}; its `--var` value is comma-separated (`--var tasks=0,1`)."
    )
    secrets: list[str] = Field(default_factory=list, description="Names read from the controller's environment; jobs see them as env vars.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment for every job.")
    poll: PollSpec = Field(default_factory=PollSpec, description="Polling bounds.")
    max_parallel: int = Field(4, ge=1, le=32, description="Most steps running at once (gates hold no slot: they start with their job).")
    max_per_node: int | None = Field(None, ge=1, le=32, description="Most `on: any` steps (matrix cells) running on one "
                                     "node at once; unset: only max_parallel bounds them.")
    throttle: dict[str, Annotated[int, Field(ge=1, le=32)]] = Field(
        default_factory=dict, description="Per tag, the most steps with that tag running at once (e.g. {train: 2}); "
        "counted apart from max_parallel, a job left running included.")
    on_node_failure: Literal["stop_all", "continue"] = Field(
        "stop_all", description="What one node's failure (after its retries and remedies) does to the others: `stop_all` "
        "(the default, for training: that step's jobs on every other node are stopped at once, the step fails, and the run "
        "with it) or `continue` (the others finish; the failed node is taken out of the fleet and later steps run on the "
        "nodes left; a step succeeds when every node still in the fleet succeeded).")
    steps: list[StepOrGroup] = Field(min_length=1, description="The steps (and groups); `needs` makes them a DAG.")
    artifacts: list[ArtifactSpec] = Field(default_factory=list, description="Files copied off the boxes (size and "
                                          "sha256 checked) before they are destroyed; a box is not destroyed while one "
                                          "is not safe (unless forced).")
    provision: ProvisionSpec | None = Field(None, description="Boxes to rent for the run (`agentops run --provision`).")
    _cells: dict[str, CellRef] = PrivateAttr(default_factory=dict)  # expanded step id -> its group and cell

    @field_validator("vars")
    @classmethod
    def _var_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(VAR_NAME, name):
                raise ValueError(f"variable name {name!r} must match {VAR_NAME}")
            if name in RESERVED_NAMES:
                raise ValueError(f"variable name {name!r} is reserved: templates read it as {_reserved_as(name)}")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(VAR_NAME, name):
                raise ValueError(f"secret name {name!r} must be an environment variable name")
        return value

    def var_specs(self) -> dict[str, VarSpec]:
        """Every variable as a VarSpec (plain values become defaults)."""
        return {k: v if isinstance(v, VarSpec) else VarSpec(default=v) for k, v in self.vars.items()}

    def job_env(self, step: RunStep, secrets: dict[str, str], overrides: dict[str, str] | None = None) -> dict[str, str]:
        """A run step's job environment: the runbook's env, the step's, remedies' overrides, then the secrets."""
        return {**self.env, **step.env, **(overrides or {}), **secrets}

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def cell_of(self, step_id: str) -> CellRef | None:
        """The group and matrix cell an expanded step belongs to (None for a plain step)."""
        return self._cells.get(step_id)


RESERVED_NAMES = (*BUILTIN_VARS, *NAMESPACES, *FUNCTIONS)


def _reserved_as(name: str) -> str:
    if name in BUILTIN_VARS:
        return f"a builtin ({BUILTIN_VARS[name]})"
    return f"a function ({name}(...))" if name in FUNCTIONS else NAMESPACES[name]


@functools.cache
def template_languages() -> dict[str, Language]:
    """Field name -> the language its templates escape values for, from the `x-template` marks on the models."""
    found: dict[str, Language] = {}
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Runbook]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and "x-template" in extra and found.setdefault(name, extra["x-template"]) != extra["x-template"]:
                raise TypeError(f"field {name!r} is marked both {found[name]} and {extra['x-template']}: templates go by field name")
            todo += _models_in(info.annotation)
    return found


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_in(arg)]


def _compiled(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
    return pattern
