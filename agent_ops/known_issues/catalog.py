"""The known-issue catalog as data: one YAML file per failure, validated by these models.

An entry says how a failure shows in a step's log (`signatures`), why it happens
(`cause`), what the executor does about it (`fix` actions, then a retry within
`retry`) and what a person must do when that is not enough (`escalate`). Each entry
embeds log samples, so the file documents itself and the test suite proves the
matcher finds it (and nothing in the healthy samples of `data/_negative/`).

Entries come on two levels (see `Level`): a family is an error class matched broadly, with a
safe generic action or an escalation; a cause is one specific way a family happens, carries
the automatic fix, and is only tried where its family matched. The user's entries
(`$AGENTOPS_HOME/known_issues/`, written by `propose`) load beside the shipped ones; the
caller names that directory, so this module reads no environment.

Deliberately not an entry: seed 003's "AE at ~14 s/step". It is the normal speed
(batch 144, 3.6B parameters, 10,000 steps in 40-45 h); an entry could only "fix"
what is not broken, so a healthy AE log at that speed is a negative sample instead.

Fix actions name runbook variables; the catalog uses these names, and a runbook
declares the ones its commands template: `repo_dir`, `python`, `torchrun`,
`data_dir`, `stats_path`, `batch_size`, `grad_accum_steps`, `learning_rate`,
`max_grad_norm`, `num_workers`, `shuffle_buffer_size`, `craft_dual_lr`,
`find_unused_parameters`, `use_reentrant`, `wandb_mode`, `ckpt_path`, `ckpt_dir`,
`resume_from`, `save_every`, `skip_updates`. `{{ var }}` in `run` commands is rendered (shell-quoted)
by the executor with the run's values.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent_ops.errors import AgentOpsError
from agent_ops.yaml_models import LineMap, Report, YamlProblems, read_yaml

ISSUE_ID = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SEED_REF = r"^seed\d{3}(?:#[A-Za-z0-9_.-]+)?$"
# The longest tail the matcher reads by default; a sequence window cannot usefully exceed it.
MAX_WINDOW = 400
# Seed 003, rule 1: nothing waits longer than 30 s without re-checking.
MAX_WAIT_S = 30.0

StepTag = Literal["setup", "install", "download", "stats", "convert", "train", "eval"]
# family: an error class, matched broadly, with a safe generic action or an escalation;
# cause: one specific way a family happens, with the automatic fix; it fires only where its family matched;
# hint: an observation that explains a gate that never passed (wandb offline), never a failure by itself.
Level = Literal["family", "cause", "hint"]
Scalar = Union[bool, int, float, str]


class CatalogError(AgentOpsError):
    """The catalog failed to load; `problems` holds one `FILE:LINE: field: message` line per error."""

    code = "invalid_catalog"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    """Base of every catalog object: unknown keys are errors, so a typo cannot pass silently."""

    model_config = ConfigDict(extra="forbid")


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a pattern, turning re.error into a ValueError that quotes the pattern."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


class Signature(Strict):
    """How a failure shows: one regex, or ordered regexes that appear within a window of lines."""

    regex: str | list[str] = Field(
        description="Python regex searched in each normalised log line (`^`/`$` are the line's ends), or an "
        "ordered list of them (e.g. an error class line, then its message; traceback lines in between do not matter)."
    )
    window: int = Field(40, ge=1, le=MAX_WINDOW, description="For a list: most lines from the first part's line to the last part's.")
    weight: float = Field(1.0, gt=0, le=10, description="Evidence this signature adds to its entry's score; specific signatures outweigh generic ones.")
    count: int = Field(1, ge=1, le=50, description="Single regex only: the last `count` matching lines must all pass (persistent, not one spike).")
    ratio_above: float | None = Field(
        None, gt=0, description="Single regex with named groups `value` and `limit`: a line passes only when value > ratio_above x limit."
    )
    spike_above: float | None = Field(
        None, gt=1, description="Single regex with a named group `value` (a loss): holds when the last `count` values are each above "
        "spike_above x the mean of the `baseline` values logged before them (a spike that lasts, not one noisy step)."
    )
    baseline: int = Field(10, ge=2, le=MAX_WINDOW, description="With spike_above: how many earlier values make the recent mean.")
    not_followed_by: str | None = Field(None, description="Holds only when no later line matches this regex (a job that stalled after a line).")
    unless: str | None = Field(
        None, description="A line the regex matches does not count when this regex matches it too (a retry notice, a benign variant)."
    )
    on_failure: bool = Field(
        False, description="Counts only on the log's failure as root_error extracts it (the final exception chain and the tools' "
        "error lines): every line a match spans must lie there. For generic concept signatures (a component of the family near a "
        "failure of its kind) whose words also appear in warnings and healthy output."
    )

    _parts: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _after: re.Pattern[str] | None = PrivateAttr(None)
    _unless: re.Pattern[str] | None = PrivateAttr(None)

    @field_validator("regex")
    @classmethod
    def _regexes_compile(cls, value: str | list[str]) -> str | list[str]:
        parts = [value] if isinstance(value, str) else value
        if not parts:
            raise ValueError("an ordered list of regexes needs at least one part")
        for i, part in enumerate(parts):
            try:
                compile_regex(part)
            except ValueError as exc:
                raise ValueError(f"part {i}: {exc}" if len(parts) > 1 else str(exc)) from None
        return value

    @field_validator("not_followed_by", "unless")
    @classmethod
    def _after_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)
        return value

    @model_validator(mode="after")
    def _single_regex_options(self) -> Signature:
        if isinstance(self.regex, list) and (self.count > 1 or self.ratio_above is not None or self.spike_above is not None):
            raise ValueError("count, ratio_above and spike_above apply to a single regex, not an ordered list")
        if self.ratio_above is not None and self.spike_above is not None:
            raise ValueError("ratio_above and spike_above are two ways of judging a value: pick one")
        groups = set(re.compile(self.regex).groupindex) if isinstance(self.regex, str) else set()
        if self.ratio_above is not None and not {"value", "limit"} <= groups:
            raise ValueError("ratio_above needs named groups (?P<value>...) and (?P<limit>...)")
        if self.spike_above is not None and "value" not in groups:
            raise ValueError("spike_above needs a named group (?P<value>...)")
        return self

    def model_post_init(self, context: Any, /) -> None:
        # MULTILINE: the matcher pre-screens a whole log tail at once, where `^` must still mean a line start.
        self._parts = [re.compile(p, re.MULTILINE) for p in self.patterns]
        self._after = re.compile(self.not_followed_by, re.MULTILINE) if self.not_followed_by else None
        self._unless = re.compile(self.unless) if self.unless else None

    @property
    def patterns(self) -> list[str]:
        """The regex parts, in order (one for a single regex)."""
        return [self.regex] if isinstance(self.regex, str) else list(self.regex)

    @property
    def compiled(self) -> list[re.Pattern[str]]:
        """The compiled parts, compiled once at load."""
        return self._parts

    @property
    def after(self) -> re.Pattern[str] | None:
        """The compiled `not_followed_by` pattern, if any."""
        return self._after

    @property
    def exclude(self) -> re.Pattern[str] | None:
        """The compiled `unless` pattern, if any."""
        return self._unless


class ScaleSpec(Strict):
    """Multiply a numeric variable, clamp it to bounds, and keep it an int or a float."""

    var: str = Field(pattern=VAR_NAME, description="Runbook variable to change.")
    factor: float = Field(gt=0, description="Multiplier, e.g. 0.75 for batch 16 -> 12, 0.5 to halve a learning rate.")
    min: float | None = Field(None, description="Lower bound of the new value.")
    max: float | None = Field(None, description="Upper bound of the new value.")
    round: Literal["int", "float"] = Field("float", description="Type of the new value; `int` rounds to the nearest integer.")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ScaleSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def apply(self, value: float) -> int | float:
        """The scaled, clamped, typed value; equal to `value` when a bound already holds it there."""
        new = value * self.factor
        if self.min is not None:
            new = max(new, self.min)
        if self.max is not None:
            new = min(new, self.max)
        # `round` here is the builtin: a method body does not see the class's field names.
        return int(round(new)) if self.round == "int" else float(new)

    def describe(self) -> str:
        bounds = [f"min {self.min:g}" if self.min is not None else "", f"max {self.max:g}" if self.max is not None else ""]
        extra = ", ".join(b for b in bounds + [self.round] if b)
        return f"{self.var} x{self.factor:g} ({extra})"



class FixBase(Strict):
    """One fix action; `action` names which (the union's tag)."""


class SetEnv(FixBase):
    """Set an environment variable for the step's next attempts."""

    action: Literal["set_env"]
    name: str = Field(pattern=VAR_NAME, description="Environment variable name.")
    value: str = Field(description="Value, e.g. `expandable_segments:True`.")

    def summary(self) -> str:
        return f"set_env {self.name}={self.value}"


class SetVar(FixBase):
    """Set a runbook variable to a fixed value for the retry."""

    action: Literal["set_var"]
    var: str = Field(pattern=VAR_NAME, description="Runbook variable.")
    value: Scalar = Field(description="New value.")

    def summary(self) -> str:
        return f"set_var {self.var}={self.value}"


class ScaleVar(ScaleSpec):
    """Scale a numeric runbook variable within bounds (batch 16 -> 12, learning rate x0.5)."""

    action: Literal["scale_var"]

    def summary(self) -> str:
        return f"scale_var {self.describe()}"


# Commands that delete files: a fix running one must say what it deletes (`deletes`). A net for the catalog's own
# authors, not a sandbox: the field is what `plan` shows and what a local target refuses.
DELETING_COMMAND = re.compile(r"\brm\s|\bpurge\b|\bcache\s+clean\b|\bprune\b|\bshred\b|-delete\b|\btruncate\s|\bmkfs")


class RunCommands(FixBase):
    """Run commands on the box (as a job, like a step), in order; the first failure ends the fix."""

    action: Literal["run"]
    commands: list[str] = Field(min_length=1, description="Bash commands; `{{ var }}` references are rendered shell-quoted.")
    cwd: str | None = Field(None, description="Working directory on the box (may reference `{{ var }}`).")
    timeout_s: float = Field(600, gt=0, le=3600, description="Deadline for all commands together.")
    deletes: str | None = Field(
        None, min_length=1,
        description="What the commands delete, in words (e.g. `package caches (uv, pip)`): `plan` lists it, and on a "
        "local target (the user's own machine) the fix is refused unless the run allows deleting fixes.")

    @model_validator(mode="after")
    def _deleting_commands_say_so(self) -> RunCommands:
        deleting = next((c for c in self.commands if DELETING_COMMAND.search(c)), None)
        if deleting is not None and self.deletes is None:
            raise ValueError(f"command {deleting.splitlines()[0]!r} deletes files: say what in `deletes`")
        return self

    def summary(self) -> str:
        where = f" in {self.cwd}" if self.cwd else ""
        first = self.commands[0].splitlines()[0]
        more = f" (+{len(self.commands) - 1} more)" if len(self.commands) > 1 else ""
        return f"run{where}: {first}{more}"


class RenamePath(FixBase):
    """Rename a path whose name breaks a library (seed 000's `output_2025-10-02||12:35:19`) and retarget its var."""

    action: Literal["rename_path"]
    var: str = Field(pattern=VAR_NAME, description="Runbook variable holding the path; it is set to the new path.")
    pattern: str = Field(description="Regex of unsafe characters in a path component, e.g. `\\|+|:`.")
    replacement: str = Field("_", description="What replaces a match not listed in `map`.")
    map: dict[str, str] = Field(default_factory=dict, description="Replacement per matched text, e.g. `{':': '-'}` so 12:35:19 becomes 12-35-19.")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        compile_regex(value)
        if re.search(value, "/"):
            raise ValueError("the pattern must not match '/', which separates path components")
        return value

    def safe_path(self, path: str) -> str:
        """The path with every unsafe run replaced; components without one are unchanged."""
        return re.sub(self.pattern, lambda m: self.map.get(m.group(0), self.replacement), path)

    def summary(self) -> str:
        return f"rename_path {self.var}: /{self.pattern}/ -> {self.replacement!r}" + (f" {self.map}" if self.map else "")


class RollbackCheckpoint(FixBase):
    """Restart from the newest checkpoint that passed its checks, with changed variables (seed 000's collapse)."""

    action: Literal["rollback_checkpoint"]
    dir_var: str = Field(pattern=VAR_NAME, description="Runbook variable naming the directory that holds the checkpoints.")
    glob: str = Field("*", description="Checkpoint directories inside it, e.g. `checkpoint-*`; newest first by step number, then mtime.")
    healthy_marker: str = Field("HEALTHY", description="File inside a checkpoint that says it passed its checks; checkpoints without it are skipped.")
    resume_var: str = Field("resume_from", pattern=VAR_NAME, description="Runbook variable set to the chosen checkpoint's path.")
    set_vars: dict[str, Scalar] = Field(default_factory=dict, description="Variables set for the restart, e.g. `save_every: 2`.")
    scale_vars: list[ScaleSpec] = Field(default_factory=list, description="Variables scaled for the restart, e.g. learning_rate x0.5.")
    skip_var: str | None = Field(
        None, pattern=VAR_NAME, description="Variable set to the updates from the chosen checkpoint to the last step the failing "
        "log shows, so the trainer skips the batches read when it went wrong (our trainer: `--set data.skip_updates=...`). "
        "Left alone, and said so, when the runbook lacks it."
    )

    def summary(self) -> str:
        changes = [f"{k}={v}" for k, v in self.set_vars.items()] + [s.describe() for s in self.scale_vars]
        changes += [f"{self.skip_var}=updates since the checkpoint"] if self.skip_var else []
        tail = f"; {', '.join(changes)}" if changes else ""
        return f"rollback_checkpoint newest {self.glob} with {self.healthy_marker} in {self.dir_var} -> {self.resume_var}{tail}"


class RecreateSession(FixBase):
    """Kill the step's tmux session and start a fresh one before the retry (seed 003 issue 5)."""

    action: Literal["recreate_session"]

    def summary(self) -> str:
        return "recreate_session"


class WaitRetry(FixBase):
    """Wait, then retry: for transient failures (network, a lock held by another process)."""

    action: Literal["wait_retry"]
    delay_s: float = Field(gt=0, le=MAX_WAIT_S, description="Pause before each retry; at most 30 s (seed 003, rule 1).")
    max: int = Field(3, ge=1, le=20, description="Most retries this wait is used for; afterwards the entry escalates.")

    def summary(self) -> str:
        return f"wait_retry {self.delay_s:g}s (at most {self.max}x)"


class Escalate(FixBase):
    """Stop and hand the diagnosis to a person with what they should do."""

    action: Literal["escalate"]
    message: str = Field(min_length=1, description="What a person should do.")

    def summary(self) -> str:
        return f"escalate: {self.message.splitlines()[0]}"


FixAction = Annotated[
    Union[SetEnv, SetVar, ScaleVar, RunCommands, RenamePath, RollbackCheckpoint, RecreateSession, WaitRetry, Escalate],
    Field(discriminator="action"),
]


class RetryPolicy(Strict):
    """How often the step is retried after its fix is applied."""

    max_attempts: int = Field(1, ge=0, le=10, description="Retries after applying the fix; 0 = apply nothing automatically, escalate.")
    backoff_s: float = Field(0, ge=0, le=MAX_WAIT_S, description="Pause before each retry (at most 30 s).")


class Samples(Strict):
    """Log excerpts that document the entry and test the matcher."""

    positive: list[str] = Field(min_length=2, description="Excerpts in which this entry must be the best match (varied real shapes).")
    negative: list[str] = Field(
        default_factory=list, description="Near misses that must fire neither this entry nor any cause (a family may name the error class)."
    )


class KnownIssue(Strict):
    """One known failure: how to recognise it, why it happens, how to fix it."""

    id: str = Field(pattern=ISSUE_ID, description="Slug; the file is named `<id>.yaml`.")
    title: str = Field(min_length=1, description="One line for lists and status output.")
    level: Level = Field("family", description="`family` (an error class), `cause` (a specific cause inside a family) or `hint`.")
    family: str | None = Field(None, pattern=ISSUE_ID, description="For a cause: the id of its family; the cause fires only where the family matched.")
    signatures: list[Signature] = Field(min_length=1, description="Evidence; the entry matches when any signature holds, scored by their summed weights.")
    applies_to: list[StepTag] = Field(default_factory=list, description="Step tags this entry is considered for; empty = every step.")
    cause: str = Field(min_length=1, description="Why it happens.")
    fix: list[FixAction] = Field(default_factory=list, description="Actions the executor applies, in order, before retrying.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry bounds after the fix.")
    escalate: str | None = Field(None, description="What a person should do when the fix is not automatic or did not work.")
    samples: Samples = Field(description="Positive and negative log excerpts.")
    seeds: list[Annotated[str, Field(pattern=SEED_REF)]] = Field(default_factory=list, description="Source references such as `seed003#7`.")

    @model_validator(mode="after")
    def _fix_or_escalate(self) -> KnownIssue:
        if not self.fix and not self.escalate:
            raise ValueError("an entry needs fix actions or escalate text")
        if self.level == "cause" and self.family is None:
            raise ValueError("a cause needs `family`: the id of the family it refines")
        if self.level != "cause" and self.family is not None:
            raise ValueError(f"only a cause has a family (this entry's level is {self.level!r})")
        return self

    @property
    def family_id(self) -> str:
        """The family this entry belongs to: its own id for a family or hint."""
        return self.family or self.id

    def applies(self, tags: Iterable[str] | None) -> bool:
        """Whether the entry is considered for a step with these tags (no tags: every entry is)."""
        wanted = set(tags or ())
        return not wanted or not self.applies_to or bool(wanted & set(self.applies_to))

    def fix_summary(self) -> list[str]:
        """One line per fix action."""
        return [action.summary() for action in self.fix]

    def deletions(self) -> list[str]:
        """What the fix deletes, per action that says (`deletes`); empty for a fix that deletes nothing."""
        return [action.deletes for action in self.fix if isinstance(action, RunCommands) and action.deletes]


@dataclass(frozen=True)
class Catalog:
    """The loaded entries, in file order, with the file each came from."""

    issues: tuple[KnownIssue, ...]
    sources: dict[str, Path] = field(default_factory=dict)

    def __iter__(self) -> Iterator[KnownIssue]:
        return iter(self.issues)

    def __len__(self) -> int:
        return len(self.issues)

    @property
    def ids(self) -> list[str]:
        return [issue.id for issue in self.issues]

    def get(self, issue_id: str) -> KnownIssue:
        """The entry with this id; KeyError naming the known ids otherwise."""
        for issue in self.issues:
            if issue.id == issue_id:
                return issue
        raise KeyError(f"no known issue {issue_id!r} (known: {', '.join(self.ids)})")

    def applicable(self, tags: Iterable[str] | None = None) -> list[KnownIssue]:
        """Entries considered for a step with these tags."""
        tags = list(tags or ())
        return [issue for issue in self.issues if issue.applies(tags)]

    def causes(self, family_id: str) -> list[KnownIssue]:
        """The causes filed under a family, in file order."""
        return [issue for issue in self.issues if issue.family == family_id]


def shipped_dir() -> Path:
    """The catalog's YAML entries, shipped beside this loader (`agent_ops/known_issues/data`)."""
    return Path(__file__).with_name("data")


def catalog_schema() -> dict[str, Any]:
    """JSON Schema of one catalog file, generated from the models."""
    return KnownIssue.model_json_schema()


def load_catalog(paths: Iterable[str | Path] | None = None) -> Catalog:
    """Load every `*.yaml` of the given files/directories (default: the shipped catalog). Raises CatalogError."""
    files = _catalog_files([shipped_dir()] if paths is None else [Path(p) for p in paths])
    problems: list[str] = []
    issues: list[KnownIssue] = []
    sources: dict[str, Path] = {}
    family_lines: dict[str, int] = {}
    for path in files:
        issue, lines, file_problems = _load_file(path)
        problems += file_problems
        if issue is None:
            continue
        if issue.id in sources:
            problems.append(f"{path}:{lines.line_of(('id',)) or 1}: id: duplicate id {issue.id!r} (also in {sources[issue.id]})")
            continue
        sources[issue.id] = path
        family_lines[issue.id] = lines.line_of(("family",)) or 1
        issues.append(issue)
    problems += _family_problems(issues, sources, family_lines)
    if problems:
        raise CatalogError(problems)
    return Catalog(tuple(issues), sources)


def _family_problems(issues: list[KnownIssue], sources: dict[str, Path], lines: dict[str, int]) -> list[str]:
    """A cause must name a family of the same catalog and apply to no step its family ignores."""
    by_id = {issue.id: issue for issue in issues}
    problems = []
    for cause in (i for i in issues if i.level == "cause"):
        where = f"{sources[cause.id]}:{lines[cause.id]}: family:"
        family = by_id.get(cause.family or "")
        if family is None or family.level != "family":
            known = ", ".join(i.id for i in issues if i.level == "family")
            problems.append(f"{where} {cause.family!r} is not a family of this catalog (families: {known})")
        elif family.applies_to and not set(cause.applies_to or ["every step"]) <= set(family.applies_to):
            problems.append(f"{where} applies_to must stay inside its family's ({', '.join(family.applies_to)})")
    return problems


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The shipped catalog, loaded once per process."""
    return load_catalog()


USER_CATALOG = "known_issues"  # the user's entries live in `$AGENTOPS_HOME/known_issues/`, beside the journal


def user_catalog_dir(home: Path) -> Path:
    """Where the user's (proposed and admitted) entries live under an agentops home directory."""
    return home / USER_CATALOG


def active_catalog(user_dir: Path | None) -> Catalog:
    """The shipped catalog plus the user's entries in `user_dir` (`$AGENTOPS_HOME/known_issues/`), reloaded when they change."""
    if user_dir is None or not user_dir.is_dir() or not any(user_dir.glob("*.yaml")):
        return default_catalog()
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(user_dir.glob("*.yaml")))
    return _with_user(user_dir, stamp)


@lru_cache(maxsize=8)
def _with_user(user_dir: Path, stamp: tuple[tuple[str, int], ...]) -> Catalog:
    # `stamp` is only the cache key: a file added, removed or rewritten since gives a fresh load.
    return load_catalog([shipped_dir(), user_dir])


def _catalog_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.glob("*.yaml") if not p.name.startswith("_"))
        else:
            files.append(path)
    return files


def _load_file(path: Path) -> tuple[KnownIssue | None, LineMap, list[str]]:
    try:
        data, lines, _ = read_yaml(path, str(path))
    except FileNotFoundError:
        return None, LineMap(), [f"{path}: no such file"]
    except YamlProblems as exc:
        return None, LineMap(), exc.problems
    if not isinstance(data, dict):
        return None, lines, [f"{path}:1: (top): a known issue must be a mapping with id, title, signatures, ..."]
    try:
        issue = KnownIssue.model_validate(data)
    except ValidationError as exc:
        entry = f" (entry {data['id']!r})" if isinstance(data.get("id"), str) else ""
        report = Report(str(path), lines, KnownIssue)
        report.add_errors(data, exc.errors(), entry)
        return None, lines, report.problems()
    if path.suffix == ".yaml" and path.stem != issue.id:
        return None, lines, [f"{path}:{lines.line_of(('id',)) or 1}: id: {issue.id!r} must match the file name ({path.stem}.yaml)"]
    return issue, lines, []
