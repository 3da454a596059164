"""The check kinds a runbook can declare: pydantic models that are also the JSON Schema editors see.

Every check is judged through a Transport (see `checks.evaluate`), so the same
YAML verifies this machine or a rented box. Sizes in GB are GiB (2**30 bytes),
the unit `df -h` prints and nvidia-smi's MiB divided by 1024.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

try:  # packaging is the reference for PEP 440; the controller must still work on a laptop without it.
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - exercised only where packaging is missing
    SpecifierSet = None  # type: ignore[assignment,misc]

# Seed 003's rule: nothing blocks for more than 30 s without re-checking.
MAX_COMMAND_TIMEOUT_S = 30.0

# Spellings people copy from torch/numpy, mapped to the dtype names a safetensors header uses.
SAFETENSORS_DTYPE_ALIASES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
    "double": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


# A version as programs print it: `2.15.0`, `v1.68.2`, `2.7.1+cu128`, `4.53.0.dev0`; never a lone integer.
VERSION_TOKEN = re.compile(r"(?<![\d.])\d+(?:\.\d+)+(?:\.?(?:a|b|rc|dev|post)\d*)*(?:\+[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?")
_CLAUSE = re.compile(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*(\S+?)\s*$")
_RELEASE = re.compile(r"^\d+(?:\.\d+)*")


def parse_specifier(spec: str) -> list[tuple[str, str]]:
    """Split a specifier like `>=2.15,<2.16` into (operator, version) clauses; ValueError if malformed."""
    if SpecifierSet is not None:
        try:
            SpecifierSet(spec)
        except ValueError as exc:  # InvalidSpecifier; a bare "2.15" is the usual slip
            raise ValueError(f"{exc}; write an operator, e.g. ==2.15.* or >=2.15,<2.16") from None
    clauses = []
    for part in spec.split(","):
        match = _CLAUSE.match(part)
        if not match or not _RELEASE.match(match.group(2)):
            raise ValueError(f"invalid version specifier {spec!r}: cannot read {part.strip()!r} (e.g. ==2.15.* or >=2.15,<2.16)")
        clauses.append((match.group(1), match.group(2)))
    return clauses


def version_matches(spec: str, version: str) -> bool:
    """Whether `version` satisfies `spec`; pre-releases count (we judge what is installed, not what to pick)."""
    if SpecifierSet is not None:
        try:
            parsed = Version(version)
        except InvalidVersion:
            parsed = Version(_release_text(version))
        return SpecifierSet(spec).contains(parsed, prereleases=True)
    return all(_clause_matches(op, want, version) for op, want in parse_specifier(spec))


def _release_text(version: str) -> str:
    match = _RELEASE.match(version.lstrip("vV"))
    return match.group(0) if match else "0"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _release_text(version).split("."))


def _clause_matches(op: str, want: str, version: str) -> bool:
    """The numeric fallback for one clause: release numbers only (pre/post/local parts are ignored)."""
    if op == "===":
        return version == want
    if op in ("==", "!=") and want.endswith(".*"):
        prefix = _release(want[:-2])
        return (_release(version)[: len(prefix)] == prefix) == (op == "==")
    have, need = _release(version), _release(want)
    width = max(len(have), len(need))
    have, need = have + (0,) * (width - len(have)), need + (0,) * (width - len(need))
    if op == "~=":
        stem = _release(want)[:-1]
        return have >= need and _release(version)[: len(stem)] == stem
    return {"==": have == need, "!=": have != need, "<=": have <= need, ">=": have >= need, "<": have < need, ">": have > need}[op]


def command_subject(run: str) -> str:
    """A command check's subject: the snippet's first line, cut to 60 characters."""
    first = run.strip().splitlines()[0] if run.strip() else ""
    return first if len(first) <= 60 else first[:57] + "..."


class CheckBase(BaseModel):
    """Fields every check kind has; unknown keys are errors (a typo must not pass silently).

    Numbers are accepted where text is expected, as their decimal text (see agent_ops.runbook.Strict).
    """

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str | None = Field(None, description="Human title shown in reports; defaults to the kind and what it checks.")

    @property
    def subject(self) -> str:
        """What the check looks at (a path, a command), for the default title."""
        return ""

    @property
    def title(self) -> str:
        """The name to show: `name`, or the kind and its subject."""
        return self.name or f"{self.kind} {self.subject}".strip()


class PathExistsCheck(CheckBase):
    """A path exists on the target, optionally of a type and a minimum size."""

    kind: Literal["path_exists"] = Field(description="Check that a path exists.")
    path: str = Field(min_length=1, description="Path on the target; `~/` means the target user's home.")
    type: Literal["file", "dir", "any"] = Field("any", description="What the path must be: a file, a directory, or either.")
    min_size: int | None = Field(None, ge=0, description="Smallest acceptable file size in bytes (files only).")

    @property
    def subject(self) -> str:
        return self.path

    @model_validator(mode="after")
    def _size_is_for_files(self) -> PathExistsCheck:
        if self.min_size is not None and self.type == "dir":
            raise ValueError("min_size applies to files, not to type: dir")
        return self


class FileCountCheck(CheckBase):
    """The number of regular files under a directory that match a glob (e.g. 32 tfrecord + 2 json = 34)."""

    kind: Literal["file_count"] = Field(description="Count files matching a glob.")
    dir: str = Field(min_length=1, description="Directory on the target; `~/` means the target user's home.")
    glob: str = Field("*", min_length=1, description="Pattern relative to `dir`, e.g. `*.tfrecord*`; `**` recurses. Only regular files count.")
    count: int | None = Field(None, ge=0, description="Exact number of matching files.")
    min: int | None = Field(None, ge=0, description="At least this many matching files.")
    max: int | None = Field(None, ge=0, description="At most this many matching files.")

    @property
    def subject(self) -> str:
        return f"{self.dir.rstrip('/')}/{self.glob}"

    @model_validator(mode="after")
    def _one_kind_of_bound(self) -> FileCountCheck:
        if self.count is not None and (self.min is not None or self.max is not None):
            raise ValueError("give either count or min/max, not both")
        if self.count is None and self.min is None and self.max is None:
            raise ValueError("give count, min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class JsonFieldCheck(CheckBase):
    """A field of a JSON file on the target: present, equal to a value, of a length, or in a range."""

    kind: Literal["json_field"] = Field(description="Check one field of a JSON file.")
    path: str = Field(min_length=1, description="JSON file on the target (at most 16 MiB); `~/` means the target user's home.")
    field: str = Field(
        min_length=1,
        pattern=r"^[^.]+(\.[^.]+)*$",
        description="Dotted path into the document; list items by index: `action.q99`, `a.b.0`.",
    )
    equals: Any = Field(None, description="The field must equal this value (1 and true differ; 7 and 7.0 do not).")
    length: int | None = Field(None, ge=0, description="The field (list, string or object) must have this length, e.g. 7 for a LIBERO action.")
    min: float | None = Field(None, description="Smallest allowed number; for a list, every element (nested lists too).")
    max: float | None = Field(None, description="Largest allowed number; for a list, every element (nested lists too).")
    exists: bool = Field(True, description="false: the field must be absent (no other condition may be given then).")

    @property
    def subject(self) -> str:
        return f"{self.path}:{self.field}"

    @property
    def has_equals(self) -> bool:
        """Whether `equals` was given (so `equals: null` is a real condition, unlike leaving it out)."""
        return "equals" in self.model_fields_set

    @model_validator(mode="after")
    def _absence_stands_alone(self) -> JsonFieldCheck:
        if not self.exists and (self.has_equals or self.length is not None or self.min is not None or self.max is not None):
            raise ValueError("exists: false cannot be combined with equals, length, min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class CommandCheck(CheckBase):
    """A short command on the target: its exit status, its output, and the version it prints."""

    kind: Literal["command"] = Field(description="Run a short command and judge its exit status and output.")
    # `x-template` names the language a runbook's templates escape inserted values for (agent_ops reads it).
    run: str = Field(min_length=1, description="Bash snippet run on the target (no ~/.bashrc); stdout and stderr are judged together.",
                     json_schema_extra={"x-template": "shell"})
    expect_rc: int = Field(0, description="Exit status the command must return.")
    regex: str | None = Field(None, description="Python regex that must match somewhere in stdout+stderr (multiline mode).",
                              json_schema_extra={"x-template": "regex"})
    version: str | None = Field(
        None,
        description="PEP 440 specifier such as `>=2.15,<2.16`, applied to the regex's `(?P<version>...)` group "
        "or else to the first version-looking token (like 2.15.0) in the output.",
    )
    timeout: float = Field(
        MAX_COMMAND_TIMEOUT_S, gt=0, le=MAX_COMMAND_TIMEOUT_S, description="Seconds before the command is killed (at most 30)."
    )

    @property
    def subject(self) -> str:
        return command_subject(self.run)

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    @field_validator("version")
    @classmethod
    def _specifier_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_specifier(value)
        return value


class SafetensorsCheck(CheckBase):
    """A safetensors checkpoint's header: tensor count, shapes and dtype, read without copying the file."""

    kind: Literal["safetensors"] = Field(description="Check a safetensors checkpoint's header.")
    path: str = Field(
        min_length=1, description="A .safetensors file, or a directory whose *.safetensors shards are taken together."
    )
    key_count: int | None = Field(None, ge=0, description="Exact number of tensors (the `__metadata__` entry is not one).")
    shapes: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(
        default_factory=dict, description="Tensor name -> exact shape, e.g. `action_in_proj.weight: [1024, 32]`."
    )
    dtype: str | None = Field(None, description="Every tensor must have this dtype (BF16, F32, ...; torch names like bfloat16 work too).")

    @property
    def subject(self) -> str:
        return self.path

    @field_validator("dtype")
    @classmethod
    def _header_dtype_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return SAFETENSORS_DTYPE_ALIASES.get(value.lower().removeprefix("torch."), value.upper())


class DiskFreeCheck(CheckBase):
    """Free space on the filesystem that holds a path (or would hold it: the nearest existing parent is measured)."""

    kind: Literal["disk_free"] = Field(description="Check free disk space.")
    path: str = Field("~", min_length=1, description="Path on the target whose filesystem is measured; `~/` means the target user's home.")
    min_gb: float = Field(gt=0, description="Least free space in GiB (as `df -h` shows it).")

    @property
    def subject(self) -> str:
        return self.path


class GpuMemoryCheck(CheckBase):
    """Enough NVIDIA GPUs with enough memory; skipped (not passed) where nvidia-smi is absent."""

    kind: Literal["gpu_memory"] = Field(description="Check NVIDIA GPU count and memory.")
    min_gb: float | None = Field(None, gt=0, description="Least memory per GPU in GiB (nvidia-smi's MiB / 1024); omit to only count GPUs.")
    memory: Literal["free", "total"] = Field("free", description="Judge the memory free now, or the card's total.")
    count: int = Field(1, ge=1, description="Least number of GPUs that must qualify.")

    @property
    def subject(self) -> str:
        need = f" with >= {self.min_gb:g} GiB {self.memory}" if self.min_gb is not None else ""
        return f">= {self.count} GPU(s){need}"


class DatasetStatsCheck(CheckBase):
    """A dataset statistics file fits a robot config (dims, finite values, spread) and, given the data, its content hash.

    Seed 003's hand check, made a check: stats for another robot (15-dim actions against LIBERO's 7)
    silently break training. Runs the training core's validator on the target.
    """

    kind: Literal["dataset_stats"] = Field(description="Validate a dataset statistics file against a robot config.")
    path: str = Field(min_length=1, description="The statistics JSON on the target (OpenVLA or openpi layout).")
    robot: str = Field("libero", min_length=1, description="Robot config name (e.g. libero: action 7, proprio 8 from observation/state).")
    data: str | None = Field(None, description="The RLDS dataset directory the stats must come from (its content hash is compared).")
    python: str = Field("python3", min_length=1, description="Interpreter on the target that has the agentops training core.")

    @property
    def subject(self) -> str:
        return self.path


class ActionUnitsCheck(CheckBase):
    """The std of chosen action dims in a statistics file lies in a band: actions in the wrong units fail.

    Seed 002's data fix: LIBERO position deltas must be in metres (std ~0.014); the same data in
    millimetres (std ~14) or normalised to [-1, 1] (std ~0.3) trains a policy that scores 0%.
    Reads the agentops/OpenVLA layout (`{dataset: {action: {std}}}`), openpi's
    (`{norm_stats: {actions: {std}}}`) and RDT's (`{dataset: {action_std}}`).
    """

    kind: Literal["action_units"] = Field(description="Check that action dims have the spread their physical unit implies.")
    path: str = Field(min_length=1, description="Statistics JSON on the target (at most 16 MiB); `~/` means the target user's home.")
    dims: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1,
        description="Action dims to judge: LIBERO's position x, y, z are 0, 1, 2 (RDT's unified vector: 30, 31, 32).")
    min: float = Field(gt=0, description="Smallest plausible std in `unit`, e.g. 0.005 for LIBERO positions in metres.")
    max: float = Field(gt=0, description="Largest plausible std in `unit`, e.g. 0.05 for LIBERO positions in metres.")
    unit: str = Field("m", min_length=1, description="The unit the band is in (m, rad, ...); names the likely mistake, e.g. mm.")
    dataset: str | None = Field(None, description="Top-level key to read when the file holds several datasets (e.g. libero_90).")

    @property
    def subject(self) -> str:
        return self.path

    @model_validator(mode="after")
    def _band_is_ordered(self) -> ActionUnitsCheck:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g})")
        return self


class SameAcrossNodesCheck(CheckBase):
    """A command whose output must be the same on every node of the fleet (torch / CUDA / NCCL versions)."""

    kind: Literal["same_across_nodes"] = Field(description="Run a command on each node; its output must match across the fleet.")
    run: str = Field(min_length=1, description="Bash snippet run on each node (no ~/.bashrc); it must exit 0, and its stdout "
                     "(stripped) is compared across the nodes the step runs on.", json_schema_extra={"x-template": "shell"})
    timeout: float = Field(
        MAX_COMMAND_TIMEOUT_S, gt=0, le=MAX_COMMAND_TIMEOUT_S, description="Seconds before the command is killed (at most 30)."
    )

    @property
    def subject(self) -> str:
        return command_subject(self.run)


class ClockSkewCheck(CheckBase):
    """The node's clock agrees with the controller's, and (across a fleet) the nodes' clocks with each other."""

    kind: Literal["clock_skew"] = Field(description="Compare the node's clock with the controller's.")
    max_skew_s: float = Field(2.0, gt=0, description="Largest offset from the controller's clock, and largest spread across "
                              "the fleet's nodes, in seconds (the round trip's half is allowed on top).")


Check = Annotated[
    Union[PathExistsCheck, FileCountCheck, JsonFieldCheck, CommandCheck, SafetensorsCheck, DiskFreeCheck, GpuMemoryCheck,
          DatasetStatsCheck, ActionUnitsCheck, SameAcrossNodesCheck, ClockSkewCheck],
    Field(discriminator="kind"),
]
