"""Judge checks through a CheckTarget: the same check verifies this machine or a rented box.

Everything wrong with the checked thing (missing file, bad JSON, truncated
checkpoint, wrong version) becomes a failed CheckResult whose message says what
was expected and what was found. Trouble with the connection itself
(TransportError) propagates: that is not a verdict on the thing checked.
"""
from __future__ import annotations

import difflib
import json
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from checks.action_units import LayoutError, action_spread, outside_band, unit_hint
from checks.kinds import (
    VERSION_TOKEN,
    ActionUnitsCheck,
    Check,
    CheckBase,
    ClockSkewCheck,
    CommandCheck,
    DatasetStatsCheck,
    DiskFreeCheck,
    FileCountCheck,
    GpuMemoryCheck,
    JsonFieldCheck,
    PathExistsCheck,
    SafetensorsCheck,
    SameAcrossNodesCheck,
    version_matches,
)
from checks.safetensors_header import HeaderError, TensorInfo, read_header
from checks.target import EXEC_TIMEOUT_RC, CheckTarget

# JSON checks read the whole file; stats and index files are KBs, a multi-GB "JSON" is a mistake to report.
JSON_MAX_BYTES = 16 << 20
# How many names a message lists before "+N more": enough to see the pattern, short enough for one line.
NAMES_SHOWN = 8
# Longest a listing may take: the same 30 s bound as every wait on the target.
LISTING_TIMEOUT_S = 30.0
SHARD_INDEX = "model.safetensors.index.json"
GIB = 1 << 30

Status = Literal["passed", "failed", "skipped"]


class CheckResult(BaseModel):
    """The verdict on one check: status, one human line (expected vs found), and structured details."""

    kind: str = Field(description="The check's kind, e.g. file_count.")
    name: str = Field(description="The check's name, or its kind and subject.")
    status: Status = Field(description="passed, failed, or skipped (the check could not apply here, e.g. no nvidia-smi).")
    message: str = Field(description="One line: what was expected and what was found.")
    details: dict[str, Any] = Field(default_factory=dict, description="Machine-readable facts behind the message.")

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class CheckFailed(Exception):
    """Raised inside an evaluator to end it with a failed result; carries the message and details."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def evaluate(check: Check, transport: CheckTarget) -> CheckResult:
    """Judge one check on the target behind `transport`; TransportError propagates, all else is a verdict."""
    try:
        return _EVALUATORS[type(check)](check, transport)
    except CheckFailed as exc:
        return _result(check, "failed", exc.message, exc.details)
    except HeaderError as exc:
        return _result(check, "failed", str(exc), {})


def evaluate_all(checks: list[Check], transport: CheckTarget) -> list[CheckResult]:
    """Judge every check in order; a failure does not stop the rest (all are reported)."""
    return [evaluate(check, transport) for check in checks]


def _result(check: CheckBase, status: Status, message: str, details: dict[str, Any]) -> CheckResult:
    return CheckResult(kind=check.kind, name=check.title, status=status, message=message, details=details)


def _passed(check: CheckBase, message: str, **details: Any) -> CheckResult:
    return _result(check, "passed", message, details)


# --- path_exists -------------------------------------------------------------------------------


def _path_exists(check: PathExistsCheck, transport: CheckTarget) -> CheckResult:
    st = transport.stat(check.path)
    if st is None:
        raise CheckFailed(f"{check.path}: expected to exist, not found", exists=False)
    found = "a directory" if st.is_dir else f"a file of {_size(st.size)}"
    details = {"exists": True, "is_dir": st.is_dir, "size": st.size}
    if check.type == "file" and st.is_dir or check.type == "dir" and not st.is_dir:
        raise CheckFailed(f"{check.path}: expected a {check.type}, found {found}", **details)
    if check.min_size is not None and (st.is_dir or st.size < check.min_size):
        raise CheckFailed(f"{check.path}: expected a file of at least {_size(check.min_size)}, found {found}", **details)
    return _passed(check, f"{check.path}: exists, {found}", **details)


# --- file_count --------------------------------------------------------------------------------

# Runs on the target: the pattern and directory arrive as argv, never as code.
_LIST_FILES = """\
import glob, json, os, sys
root, pattern, shown = sys.argv[1], sys.argv[2], int(sys.argv[3])
if not os.path.isdir(root):
    print(json.dumps({"error": "is not a directory" if os.path.exists(root) else "no such directory"}))
    sys.exit(0)
os.chdir(root)
names = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
print(json.dumps({"count": len(names), "names": names[:shown]}))
"""


def list_files(transport: CheckTarget, directory: str, pattern: str, shown: int = NAMES_SHOWN) -> tuple[int, list[str]]:
    """Count regular files under `directory` matching `pattern` on the target; return the count and the first names."""
    argv = ["python3", "-c", _LIST_FILES, _on_target(transport, directory), pattern, str(shown)]
    res = transport.exec(" ".join(shlex.quote(a) for a in argv), timeout=LISTING_TIMEOUT_S)
    if res.rc == 127:
        raise CheckFailed(f"{directory}: cannot list files: python3 not found on {transport.name}")
    if res.rc != 0:
        raise CheckFailed(f"{directory}: cannot list files (exit {res.rc}): {_last_line(res.stderr.decode('utf-8', 'replace'))}")
    try:
        listing = json.loads(res.stdout)
    except ValueError:
        raise CheckFailed(f"{directory}: cannot list files: unexpected output {_last_line(res.text())}") from None
    if "error" in listing:
        raise CheckFailed(f"{directory}: {listing['error']}")
    return listing["count"], listing["names"]


def _file_count(check: FileCountCheck, transport: CheckTarget) -> CheckResult:
    found, names = list_files(transport, check.dir, check.glob)
    expected = _bounds_text(check.count, check.min, check.max)
    details = {"count": found, "names": names}
    listing = f"found {found}" + (f": {_names_text(names, found)}" if found else "")
    if not _within(found, check):
        raise CheckFailed(f"{check.subject}: expected {expected} files, {listing}", **details)
    return _passed(check, f"{check.subject}: expected {expected} files, found {found}", **details)


def _within(found: int, check: FileCountCheck) -> bool:
    if check.count is not None:
        return found == check.count
    return (check.min is None or found >= check.min) and (check.max is None or found <= check.max)


def _bounds_text(count: int | None, low: int | None, high: int | None) -> str:
    if count is not None:
        return f"exactly {count}"
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _names_text(names: list[str], total: int) -> str:
    more = total - len(names)
    return ", ".join(names) + (f" (+{more} more)" if more > 0 else "")


# --- json_field --------------------------------------------------------------------------------


class FieldMissing(LookupError):
    """A dotted field does not resolve in a JSON document; the message says where the walk stopped."""


def resolve_field(document: Any, dotted: str) -> Any:
    """Follow `a.b.0` through objects (by key) and lists (by index, negative allowed)."""
    value = document
    walked: list[str] = []
    for part in dotted.split("."):
        where = ".".join(walked) or "the document root"
        if isinstance(value, dict):
            if part not in value:
                raise FieldMissing(f"no key {part!r} in {where} (keys: {_names_text(sorted(value)[:NAMES_SHOWN], len(value))})")
            value = value[part]
        elif isinstance(value, list):
            if not re.fullmatch(r"-?\d+", part):
                raise FieldMissing(f"{where} is a list of {len(value)}, {part!r} is not an index")
            if not -len(value) <= int(part) < len(value):
                raise FieldMissing(f"index {part} out of range: {where} is a list of {len(value)}")
            value = value[int(part)]
        else:
            raise FieldMissing(f"{where} is {_json_type(value)} {_short(value)}, it has no {part!r}")
        walked.append(part)
    return value


def _json_field(check: JsonFieldCheck, transport: CheckTarget) -> CheckResult:
    document = _load_json(transport, check.path)
    where = f"{check.path}: {check.field}"
    try:
        value = resolve_field(document, check.field)
    except FieldMissing as exc:
        if not check.exists:
            return _passed(check, f"{where}: expected absent, absent ({exc})", exists=False)
        raise CheckFailed(f"{where}: expected to exist, {exc}", exists=False) from None
    details = {"exists": True, "value": value}
    if not check.exists:
        raise CheckFailed(f"{where}: expected absent, found {_short(value)}", **details)
    problems = _value_problems(check, value)
    if problems:
        raise CheckFailed(f"{where}: " + "; ".join(problems), **details)
    return _passed(check, f"{where}: {_expectations(check)}, found {_short(value)}", **details)


def _load_json(transport: CheckTarget, path: str) -> Any:
    """Read and parse a JSON file on the target, refusing anything over JSON_MAX_BYTES before reading it."""
    data = _read_small(transport, path, JSON_MAX_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckFailed(f"{path}: not JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CheckFailed(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _read_small(transport: CheckTarget, path: str, limit: int) -> bytes:
    st = transport.stat(path)
    if st is None:
        raise CheckFailed(f"{path}: no such file")
    if st.is_dir:
        raise CheckFailed(f"{path}: is a directory, expected a file")
    if st.size > limit:
        raise CheckFailed(f"{path}: {_size(st.size)}, larger than the {_size(limit)} a check reads whole")
    try:
        data = transport.get(path)
    except OSError as exc:  # the file vanished or is unreadable: a fact about the file, not the connection
        raise CheckFailed(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew between stat and get
        raise CheckFailed(f"{path}: {_size(len(data))}, larger than the {_size(limit)} a check reads whole")
    return data


def _value_problems(check: JsonFieldCheck, value: Any) -> list[str]:
    problems = []
    if check.has_equals and not _json_equal(value, check.equals):
        problems.append(f"expected {_short(check.equals)}, found {_short(value)}")
    if check.length is not None:
        if not isinstance(value, (list, str, dict)):
            problems.append(f"expected length {check.length}, found {_json_type(value)} {_short(value)}")
        elif len(value) != check.length:
            problems.append(f"expected length {check.length}, found length {len(value)}")
    if check.min is not None or check.max is not None:
        problems.extend(_range_problems(check.min, check.max, value))
    return problems


def _range_problems(low: float | None, high: float | None, value: Any) -> list[str]:
    expected = f"{'every element' if isinstance(value, list) else 'a number'} in {_range_text(low, high)}"
    numbers: list[tuple[str, Any]] = list(_leaves(value, ""))
    wrong_type = [(at, v) for at, v in numbers if isinstance(v, bool) or not isinstance(v, (int, float))]
    if wrong_type:
        at, v = wrong_type[0]
        return [f"expected {expected}, found {_json_type(v)} {_short(v)}{' at ' + at if at else ''}"]
    if not numbers:
        return [f"expected {expected}, found an empty list"]
    # `not low <= v` rather than `v < low`: NaN must fail, not slip through both comparisons.
    outside = [(at, v) for at, v in numbers if (low is not None and not low <= v) or (high is not None and not v <= high)]
    if not outside:
        return []
    if not isinstance(value, list):
        return [f"expected {expected}, found {value!r}"]
    at, v = outside[0]
    low_found, high_found = min(v for _, v in numbers), max(v for _, v in numbers)
    first = f"first {at} = {v!r}; range [{low_found!r}, {high_found!r}]"
    return [f"expected {expected}, found {len(outside)} of {len(numbers)} outside ({first})"]


def _leaves(value: Any, at: str) -> Iterator[tuple[str, Any]]:
    """(position, value) for a scalar, or for every element of nested lists."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{at}[{i}]")
    else:
        yield at, value


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1 (Python says it is), 7 is 7.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return a == b


def _expectations(check: JsonFieldCheck) -> str:
    parts = []
    if check.has_equals:
        parts.append(f"expected {_short(check.equals)}")
    if check.length is not None:
        parts.append(f"expected length {check.length}")
    if check.min is not None or check.max is not None:
        parts.append(f"expected values in {_range_text(check.min, check.max)}")
    return ", ".join(parts) or "expected to exist"


def _range_text(low: float | None, high: float | None) -> str:
    return f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- command -----------------------------------------------------------------------------------


def _command(check: CommandCheck, transport: CheckTarget) -> CheckResult:
    started = time.monotonic()
    res = transport.exec(check.run, timeout=check.timeout)
    elapsed = time.monotonic() - started
    output = (res.stdout + res.stderr).decode("utf-8", "replace")
    details: dict[str, Any] = {"rc": res.rc, "output_tail": output[-2000:]}
    last = _last_line(output)
    if res.rc == EXEC_TIMEOUT_RC and elapsed >= check.timeout * 0.95 and check.expect_rc != EXEC_TIMEOUT_RC:
        raise CheckFailed(f"`{check.subject}`: timed out after {check.timeout:g} s; output ends: {last}", **details)
    if res.rc != check.expect_rc:
        raise CheckFailed(f"`{check.subject}`: expected exit status {check.expect_rc}, got {res.rc}; output ends: {last}", **details)
    match = re.search(check.regex, output, re.MULTILINE) if check.regex else None
    if check.regex and not match:
        raise CheckFailed(f"`{check.subject}`: expected output matching /{check.regex}/, found: {last}", **details)
    found = [f"exit {res.rc}"]
    if check.version:
        version = _found_version(match, output)
        details["version"] = version
        if version is None:
            raise CheckFailed(f"`{check.subject}`: expected a version {check.version}, found no version in the output: {last}", **details)
        if not version_matches(check.version, version):
            raise CheckFailed(f"`{check.subject}`: expected version {check.version}, found {version}", **details)
        found.append(f"version {version} satisfies {check.version}")
    if match:
        found.append(f"output matches /{check.regex}/")
    return _passed(check, f"`{check.subject}`: " + ", ".join(found), **details)


def _found_version(match: re.Match[str] | None, output: str) -> str | None:
    """The regex's `version` group if it has one, else the first version-looking token of the output."""
    if match is not None and "version" in match.re.groupindex and match.group("version"):
        return match.group("version").strip()
    token = VERSION_TOKEN.search(output)
    return token.group(0) if token else None


# --- safetensors -------------------------------------------------------------------------------


def _safetensors(check: SafetensorsCheck, transport: CheckTarget) -> CheckResult:
    st = transport.stat(check.path)
    if st is None:
        raise CheckFailed(f"{check.path}: no such file or directory")
    files = _shard_paths(transport, check.path) if st.is_dir else [check.path]
    tensors: dict[str, TensorInfo] = {}
    repeated: list[str] = []
    count = 0
    for path in files:
        header = read_header(transport, path)
        count += len(header.tensors)
        repeated.extend(name for name in header.tensors if name in tensors)
        tensors.update(header.tensors)
    details = {
        "files": len(files),
        "tensor_count": count,
        "dtypes": dict(Counter(t.dtype for t in tensors.values())),
        "shapes": {name: tensors[name].shape for name in check.shapes if name in tensors},
    }
    problems = _checkpoint_problems(check, tensors, count, repeated)
    if problems:
        raise CheckFailed(f"{check.path}: " + "; ".join(problems), **details)
    return _passed(check, f"{check.path}: {_checkpoint_summary(check, count, len(files))}", **details)


def _shard_paths(transport: CheckTarget, directory: str) -> list[str]:
    """Every *.safetensors file directly in `directory`; a shard the index names but the directory lacks fails."""
    total, names = list_files(transport, directory, "*.safetensors", shown=100_000)
    if not total:
        raise CheckFailed(f"{directory}: expected *.safetensors files in the directory, found none")
    base = directory.rstrip("/") or "/"
    index_path = f"{base}/{SHARD_INDEX}"
    if transport.stat(index_path) is not None:
        index = _load_json(transport, index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckFailed(f"{index_path}: expected an object with a weight_map of tensor name -> shard file")
        missing = sorted(set(weight_map.values()) - set(names))
        if missing:
            raise CheckFailed(f"{directory}: {SHARD_INDEX} names shards that are missing: {_names_text(missing[:NAMES_SHOWN], len(missing))}")
    return [f"{base}/{name}" for name in names]


def _checkpoint_problems(check: SafetensorsCheck, tensors: dict[str, TensorInfo], count: int, repeated: list[str]) -> list[str]:
    problems = []
    if repeated:
        problems.append(f"expected each tensor in one file, found {len(repeated)} repeated across files (e.g. {repeated[0]})")
    if check.key_count is not None and count != check.key_count:
        problems.append(f"expected {check.key_count} tensors, found {count}")
    for name, shape in check.shapes.items():
        if name not in tensors:
            near = difflib.get_close_matches(name, tensors, n=1)
            problems.append(f"expected tensor {name}, not found" + (f" (nearest: {near[0]})" if near else ""))
        elif tensors[name].shape != shape:
            problems.append(f"{name}: expected shape {shape}, found {tensors[name].shape}")
    if check.dtype is not None:
        other = Counter(t.dtype for t in tensors.values() if t.dtype != check.dtype)
        if other:
            example = next(n for n, t in tensors.items() if t.dtype != check.dtype)
            found = ", ".join(f"{n} {d}" for d, n in other.most_common())
            problems.append(f"expected every tensor {check.dtype}, found {found} (e.g. {example})")
    return problems


def _checkpoint_summary(check: SafetensorsCheck, count: int, files: int) -> str:
    parts = [f"{count} tensors" + (f" in {files} files" if files > 1 else "")]
    if check.key_count is not None:
        parts[0] += f" (expected {check.key_count})"
    if check.shapes:
        parts.append(f"{len(check.shapes)} shape(s) as expected")
    if check.dtype:
        parts.append(f"all {check.dtype}")
    return ", ".join(parts)


# --- disk_free ---------------------------------------------------------------------------------

# `df` of a path that does not exist yet fails; the space that matters is where it will be created.
_DF_SCRIPT = """\
p={path}
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
printf '%s\\n' "$p"
df -Pk -- "$p"
"""
_DF_LINE = re.compile(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s+(.+)$")


def _disk_free(check: DiskFreeCheck, transport: CheckTarget) -> CheckResult:
    res = transport.exec(_DF_SCRIPT.format(path=shlex.quote(_on_target(transport, check.path))), timeout=LISTING_TIMEOUT_S)
    lines = res.stdout.decode("utf-8", "replace").splitlines()
    match = _DF_LINE.search(lines[-1]) if res.rc == 0 and len(lines) >= 3 else None
    if match is None:
        raise CheckFailed(f"{check.path}: cannot measure free space (df exit {res.rc}): {_last_line(res.stderr.decode('utf-8', 'replace'))}")
    total_gb, free_gb = int(match.group(1)) * 1024 / GIB, int(match.group(3)) * 1024 / GIB
    measured = lines[0]
    details = {"free_gb": round(free_gb, 3), "total_gb": round(total_gb, 3), "mount": match.group(4), "measured_path": measured}
    at = f" on {match.group(4)}" + (f" (measured at {measured}, the nearest existing parent)" if measured != _on_target(transport, check.path) else "")
    found = f"found {free_gb:.1f} GiB free of {total_gb:.1f} GiB{at}"
    if free_gb < check.min_gb:
        raise CheckFailed(f"{check.path}: expected >= {check.min_gb:g} GiB free, {found}", **details)
    return _passed(check, f"{check.path}: expected >= {check.min_gb:g} GiB free, {found}", **details)


# --- gpu_memory --------------------------------------------------------------------------------

# 127 (the shell's "command not found") marks a box without nvidia-smi; nvidia-smi itself never returns it.
_NVIDIA_SMI = """\
command -v nvidia-smi >/dev/null 2>&1 || exit 127
nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits
"""
NO_NVIDIA_SMI_RC = 127


def parse_gpus(text: str) -> list[dict[str, Any]]:
    """Rows of `index, name, memory.total, memory.free` (MiB) as dicts; memory unreadable ([N/A]) becomes None."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        head, total, free = line.rsplit(",", 2)
        index, _, name = head.partition(",")
        gpus.append({"index": index.strip(), "name": name.strip(), "total_gb": _mib_to_gib(total), "free_gb": _mib_to_gib(free)})
    return gpus


def _mib_to_gib(text: str) -> float | None:
    text = text.strip()
    return round(int(text) / 1024, 2) if text.isdigit() else None


def _gpu_memory(check: GpuMemoryCheck, transport: CheckTarget) -> CheckResult:
    res = transport.exec(_NVIDIA_SMI, timeout=LISTING_TIMEOUT_S)
    if res.rc == NO_NVIDIA_SMI_RC:
        return _result(check, "skipped", f"expected {check.subject}: nvidia-smi not found on {transport.name}, nothing to check", {})
    output = (res.stdout + res.stderr).decode("utf-8", "replace")
    if res.rc != 0:
        raise CheckFailed(f"expected {check.subject}: nvidia-smi failed (exit {res.rc}): {_last_line(output)}")
    gpus = parse_gpus(res.stdout.decode("utf-8", "replace"))
    key = f"{check.memory}_gb"
    fit = [g for g in gpus if check.min_gb is None or (g[key] is not None and g[key] >= check.min_gb)]
    shown = ", ".join(f"GPU{g['index']} {g['name']} " + ("[N/A]" if g[key] is None else f"{g[key]:.1f} GiB {check.memory}") for g in gpus)
    details = {"gpus": gpus, "qualifying": len(fit)}
    message = f"expected {check.subject}, found {len(fit)} of {len(gpus)}" + (f": {shown}" if gpus else "")
    if len(fit) < check.count:
        raise CheckFailed(message, **details)
    return _passed(check, message, **details)


# --- shared ------------------------------------------------------------------------------------


def _on_target(transport: CheckTarget, path: str) -> str:
    """Expand `~` for paths that go into a shell command (put/get/stat expand it themselves)."""
    if path == "~" or path.startswith("~/"):
        return transport.home() + path[1:]
    return path


def _last_line(text: str, limit: int = 200) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 3] + "..."


def _size(n: int) -> str:
    """Bytes exactly, plus a readable unit once it helps: `12,582,912 bytes (12.0 MiB)`."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n} bytes"


# --- dataset_stats -----------------------------------------------------------------------------


def _dataset_stats(check: DatasetStatsCheck, transport: CheckTarget) -> CheckResult:
    # The validator lives in the training core on the box (numpy + json only; no torch or TF import).
    argv = [check.python, "-m", "training.stats_file", _on_target(transport, check.path), "--robot", check.robot, "--json"]
    if check.data:
        argv += ["--data", _on_target(transport, check.data)]
    res = transport.exec(" ".join(shlex.quote(a) for a in argv), timeout=120)
    try:
        report = json.loads(res.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        problems = list(report["problems"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise CheckFailed(f"{check.path}: cannot run the stats validator (exit {res.rc}): "
                          f"{_last_line(res.stderr.decode('utf-8', 'replace'))}") from None
    if problems:
        raise CheckFailed(f"{check.path}: not valid for robot {check.robot}: " + "; ".join(problems), problems=problems)
    against = f" and dataset {check.data}" if check.data else ""
    return _passed(check, f"{check.path}: valid for robot {check.robot}{against}", robot=check.robot)


# --- action_units ------------------------------------------------------------------------------


def _action_units(check: ActionUnitsCheck, transport: CheckTarget) -> CheckResult:
    low, high = _rendered_number(check, "min"), _rendered_number(check, "max")
    try:
        spread = action_spread(_load_json(transport, check.path), check.dataset)
        bad = outside_band(spread, check.dims, low, high)
    except LayoutError as exc:
        raise CheckFailed(f"{check.path}: {exc}") from None
    band = f"[{low:g}, {high:g}] {check.unit}"
    found = {d: spread.std[d] for d in check.dims}
    details = {"field": spread.where, "std": found, "band": [low, high], "unit": check.unit}
    if bad:
        dims = ", ".join(f"dim {d} = {v:.4g}" for d, v in bad)
        hint = unit_hint(spread, bad, low, high, check.unit)
        raise CheckFailed(f"{check.path}: {spread.where} outside {band}: {dims}; {hint}", **details)
    shown = ", ".join(f"dim {d} = {v:.4g}" for d, v in found.items())
    return _passed(check, f"{check.path}: {spread.where} within {band}: {shown}", **details)


def _rendered_number(check: CheckBase, field: str) -> float:
    """A field that may hold a `{{ var }}`: by evaluation time the runbook is rendered and it is a number."""
    value = getattr(check, field)
    if isinstance(value, str):
        raise CheckFailed(f"{field}: {value!r} was never substituted (a check judged outside a rendered runbook)")
    return value


# --- across a fleet: each node's part (the comparison itself is the controller's, over all nodes' details) -------

MAX_COMPARED_OUTPUT = 4096  # a version string, not a log: longer output is compared on its start


def _same_across_nodes(check: SameAcrossNodesCheck, transport: CheckTarget) -> CheckResult:
    res = transport.exec(check.run, timeout=check.timeout)
    output = res.stdout.decode("utf-8", "replace").strip()[:MAX_COMPARED_OUTPUT]
    if res.rc != 0:
        last = _last_line((res.stdout + res.stderr).decode("utf-8", "replace"))
        raise CheckFailed(f"`{check.subject}`: expected exit status 0, got {res.rc}; output ends: {last}", rc=res.rc, output=output)
    return _passed(check, f"`{check.subject}`: {_short(output, 80)} (compared across the fleet)", output=output)


def _clock_skew(check: ClockSkewCheck, transport: CheckTarget) -> CheckResult:
    before = time.time()
    res = transport.exec("date +%s.%N", timeout=10)
    after = time.time()
    try:
        remote = float(res.stdout.decode().strip())
    except ValueError:
        raise CheckFailed(f"cannot read the clock: `date +%s.%N` printed {res.stdout[:80]!r} (rc {res.rc})") from None
    # The remote clock was read somewhere inside the round trip: its middle is the best guess, its half the error bar.
    offset, slack = remote - (before + after) / 2, (after - before) / 2
    details = {"offset_s": round(offset, 4), "rtt_s": round(after - before, 4)}
    if abs(offset) > check.max_skew_s + slack:
        raise CheckFailed(f"clock is {offset:+.3f} s off the controller's (allowed {check.max_skew_s:g} s)", **details)
    return _passed(check, f"clock {offset:+.3f} s off the controller's (allowed {check.max_skew_s:g} s)", **details)


_EVALUATORS: dict[type, Callable[[Any, CheckTarget], CheckResult]] = {
    PathExistsCheck: _path_exists,
    FileCountCheck: _file_count,
    JsonFieldCheck: _json_field,
    CommandCheck: _command,
    SafetensorsCheck: _safetensors,
    DiskFreeCheck: _disk_free,
    GpuMemoryCheck: _gpu_memory,
    DatasetStatsCheck: _dataset_stats,
    ActionUnitsCheck: _action_units,
    SameAcrossNodesCheck: _same_across_nodes,
    ClockSkewCheck: _clock_skew,
}
