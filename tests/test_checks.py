"""Check kinds judged through a real transport on real files: RLDS-like directories, stats JSON, safetensors."""
from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from agent_ops.errors import TransportError
from agent_ops.transport.base import ExecResult, FileStat, Transport
from agent_ops.transport.local import LocalTransport
from checks import Check, CheckResult, evaluate, evaluate_all, kinds, parse_gpus, read_header, version_matches

CHECK = TypeAdapter(Check)


@pytest.fixture
def transport() -> Transport:
    # Delete this fixture to run every test below over the shared `transport` fixture (local and ssh).
    return LocalTransport()


def check(**fields) -> Check:
    return CHECK.validate_python(fields)


def judge(transport: Transport, **fields) -> CheckResult:
    return evaluate(check(**fields), transport)


# --- safetensors files, written the way the format spec says -------------------------------------

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8, "U8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], metadata: dict | None = None) -> int:
    """Header (u64 length + JSON, space-padded to 8 bytes) then zeroed data; returns the file size."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path.stat().st_size


def pi05_tensors() -> dict[str, tuple[str, list[int]]]:
    """Seed 003's converted checkpoint in miniature: 812 tensors, the two whose shapes the runbook checks."""
    tensors = {"action_in_proj.weight": ("F16", [1024, 32]), "time_mlp_in.weight": ("F16", [1024, 1024])}
    tensors.update({f"paligemma.layers.{i}.weight": ("F16", [4]) for i in range(810)})
    return tensors


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """model.safetensors written by the safetensors library when installed, else by hand."""
    path = tmp_path / "model.safetensors"
    try:
        import numpy as np
        from safetensors.numpy import save_file
    except ImportError:
        write_safetensors(path, pi05_tensors(), {"format": "pt"})
        return path
    arrays = {name: np.zeros(shape, dtype=np.float16) for name, (_, shape) in pi05_tensors().items()}
    save_file(arrays, str(path), metadata={"format": "pt"})
    return path


class ReadCounter:
    """Passes every call to a real transport and counts the bytes read, to show a check never copies a file."""

    def __init__(self, inner: Transport) -> None:
        self.inner, self.name, self.bytes_read, self.gets = inner, inner.name, 0, 0

    def exec(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        return self.inner.exec(script, stdin=stdin, timeout=timeout)

    def put(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.inner.put(path, data, mode=mode)

    def get(self, path: str) -> bytes:
        self.gets += 1
        return self.inner.get(path)

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        data = self.inner.read_from(path, offset, limit)
        self.bytes_read += len(data)
        return data

    def stat(self, path: str) -> FileStat | None:
        return self.inner.stat(path)

    def home(self) -> str:
        return self.inner.home()

    def close(self) -> None:
        self.inner.close()


class LostConnection:
    """A transport whose connection is gone: every operation raises TransportError."""

    name = "ssh://gone"

    def __getattr__(self, attr: str):
        def fail(*args, **kwargs):
            raise TransportError("connection lost")

        return fail


# --- schema ----------------------------------------------------------------------------------------


def test_every_field_of_every_kind_has_a_description() -> None:
    schema = CHECK.json_schema()
    assert schema["discriminator"]["propertyName"] == "kind"
    missing = [f"{model}.{field}" for model, d in schema["$defs"].items() for field, p in d["properties"].items() if "description" not in p]
    assert missing == []


@pytest.mark.parametrize(
    "fields, complaint",
    [
        ({"kind": "path_exists", "path": "/x", "size": 3}, "Extra inputs are not permitted"),
        ({"kind": "file_count", "dir": "/d", "count": 34, "min": 1}, "either count or min/max"),
        ({"kind": "file_count", "dir": "/d"}, "give count, min or max"),
        ({"kind": "json_field", "path": "/s.json", "field": "a", "exists": False, "length": 7}, "exists: false cannot"),
        ({"kind": "json_field", "path": "/s.json", "field": "a..b"}, "String should match pattern"),
        ({"kind": "command", "run": "sleep 31", "timeout": 31}, "less than or equal to 30"),
        ({"kind": "command", "run": "true", "version": ">=>2"}, "version"),
        ({"kind": "command", "run": "true", "regex": "("}, "invalid regex"),
        ({"kind": "path_exists", "path": "/x", "type": "dir", "min_size": 1}, "min_size applies to files"),
        ({"kind": "dataset_statz", "path": "/x"}, "does not match any of the expected tags"),
    ],
)
def test_bad_checks_are_rejected_with_a_reason(fields: dict, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        check(**fields)


def test_dtype_accepts_torch_spelling() -> None:
    assert check(kind="safetensors", path="/m", dtype="torch.bfloat16").dtype == "BF16"
    assert check(kind="safetensors", path="/m", dtype="f32").dtype == "F32"


# --- path_exists -----------------------------------------------------------------------------------


def test_path_exists_file_dir_and_size(transport: Transport, tmp_path: Path) -> None:
    (tmp_path / "waypoint_indices.json").write_text("{}")
    ok = judge(transport, kind="path_exists", path=str(tmp_path / "waypoint_indices.json"), type="file", min_size=2)
    assert ok.status == "passed" and "a file of 2 bytes" in ok.message
    assert judge(transport, kind="path_exists", path=str(tmp_path), type="dir").passed

    missing = judge(transport, kind="path_exists", path=str(tmp_path / "nope"))
    assert missing.status == "failed" and missing.message == f"{tmp_path / 'nope'}: expected to exist, not found"
    assert missing.name == f"path_exists {tmp_path / 'nope'}"

    wrong = judge(transport, kind="path_exists", path=str(tmp_path), type="file")
    assert wrong.message.endswith("expected a file, found a directory")
    small = judge(transport, kind="path_exists", path=str(tmp_path / "waypoint_indices.json"), min_size=4096)
    assert "expected a file of at least 4,096 bytes (4.0 KiB), found a file of 2 bytes" in small.message


def test_tilde_paths_resolve_against_the_target_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    home = LocalTransport()
    (tmp_path / ".no_auto_tmux").write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text("{}")
    assert judge(home, kind="path_exists", path="~/.no_auto_tmux").passed
    assert judge(home, kind="file_count", dir="~/data", glob="*.json", count=1).passed
    assert judge(home, kind="disk_free", path="~/data", min_gb=0.0001).passed


# --- file_count ------------------------------------------------------------------------------------


def rlds_dir(root: Path, tfrecords: int) -> Path:
    """An RLDS version directory as seed 003 downloads it: N tfrecord shards + dataset_info.json + features.json."""
    root.mkdir(parents=True)
    for i in range(tfrecords):
        (root / f"libero_object_no_noops-train.tfrecord-{i:05d}-of-{tfrecords:05d}").write_bytes(b"x")
    (root / "dataset_info.json").write_text("{}")
    (root / "features.json").write_text("{}")
    return root


def test_file_count_seed_003_download(transport: Transport, tmp_path: Path) -> None:
    data = rlds_dir(tmp_path / "libero_object_no_noops" / "1.0.0", 32)
    waypoints = rlds_dir(tmp_path / "waypoint_filtered_rlds__libero" / "1.0.0", 4)
    results = evaluate_all(
        [
            check(kind="file_count", dir=str(data), count=34),
            check(kind="file_count", dir=str(data), glob="*.tfrecord*", count=32),
            check(kind="file_count", dir=str(data), glob="*.json", min=2, max=2),
            check(kind="file_count", dir=str(waypoints), count=6),
            check(kind="file_count", dir=str(tmp_path), glob="**/*.json", count=4),
        ],
        transport,
    )
    assert [r.status for r in results] == ["passed"] * 5
    assert results[0].message == f"{data}/*: expected exactly 34 files, found 34"


def test_file_count_failure_lists_what_it_found(transport: Transport, tmp_path: Path) -> None:
    data = rlds_dir(tmp_path / "1.0.0", 31)
    result = judge(transport, kind="file_count", dir=str(data), count=34, name="RLDS download complete")
    assert result.status == "failed" and result.name == "RLDS download complete"
    assert result.message.startswith(f"{data}/*: expected exactly 34 files, found 33: dataset_info.json, features.json, ")
    assert result.message.endswith("(+25 more)")
    assert result.details["count"] == 33 and len(result.details["names"]) == 8
    assert "at least 40" in judge(transport, kind="file_count", dir=str(data), min=40).message


def test_file_count_on_a_missing_directory(transport: Transport, tmp_path: Path) -> None:
    result = judge(transport, kind="file_count", dir=str(tmp_path / "absent"), count=34)
    assert result.status == "failed" and result.message == f"{tmp_path / 'absent'}: no such directory"


def test_glob_reaches_the_target_as_data_not_code(transport: Transport, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    pattern = f"*'; touch {canary}; echo '\"$(touch {canary})\"*"
    result = judge(transport, kind="file_count", dir=str(tmp_path), glob=pattern, count=0)
    assert result.passed and not canary.exists()


# --- json_field ------------------------------------------------------------------------------------


def stats(action_dim: int = 7, proprio_dim: int = 8) -> dict:
    def block(dim: int) -> dict:
        return {key: [round(0.1 * (i + 1), 4) for i in range(dim)] for key in ("mean", "std", "q01", "q99", "min", "max")}

    return {"libero_object_no_noops": {"action": block(action_dim), "proprio": block(proprio_dim), "num_transitions": 66984, "num_trajectories": 454}}


@pytest.fixture
def stats_file(tmp_path: Path) -> Path:
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(stats()))
    return path


def test_json_field_dimensions_of_libero_stats(transport: Transport, stats_file: Path) -> None:
    path = str(stats_file)
    action = judge(transport, kind="json_field", path=path, field="libero_object_no_noops.action.q99", length=7)
    assert action.passed and action.message.startswith(f"{path}: libero_object_no_noops.action.q99: expected length 7, found [0.1,")
    assert judge(transport, kind="json_field", path=path, field="libero_object_no_noops.proprio.q99", length=8).passed
    assert judge(transport, kind="json_field", path=path, field="libero_object_no_noops.num_trajectories", equals=454).passed
    assert judge(transport, kind="json_field", path=path, field="libero_object_no_noops.action.q99.6", min=0.5, max=0.8).passed
    assert judge(transport, kind="json_field", path=path, field="libero_object_no_noops.action.q99.-1", equals=0.7).passed
    assert judge(transport, kind="json_field", path=path, field="libero_object_no_noops.proprio.joint_state", exists=False).passed


def test_stats_of_another_robot_fail_with_file_field_expected_and_found(transport: Transport, tmp_path: Path) -> None:
    path = tmp_path / "stats_15dim.json"
    path.write_text(json.dumps(stats(action_dim=15)))
    result = judge(transport, kind="json_field", path=str(path), field="libero_object_no_noops.action.q99", length=7)
    assert result.status == "failed"
    assert result.message == f"{path}: libero_object_no_noops.action.q99: expected length 7, found length 15"


def test_json_field_range_equality_and_absence_failures(transport: Transport, stats_file: Path) -> None:
    path = str(stats_file)
    q99 = "libero_object_no_noops.action.q99"
    ranged = judge(transport, kind="json_field", path=path, field=q99, min=0.0, max=0.5)
    assert "expected every element in [0, 0.5], found 2 of 7 outside (first [5] = 0.6" in ranged.message
    assert "range [0.1, 0.7" in ranged.message
    scalar = judge(transport, kind="json_field", path=path, field="libero_object_no_noops.num_transitions", max=8863)
    assert scalar.message.endswith("expected a number in [-inf, 8863], found 66984")
    equal = judge(transport, kind="json_field", path=path, field="libero_object_no_noops.num_trajectories", equals=455)
    assert equal.message.endswith("expected 455, found 454")
    present = judge(transport, kind="json_field", path=path, field=q99, exists=False)
    assert present.status == "failed" and "expected absent, found [0.1," in present.message


def test_json_true_is_not_one_and_nan_is_out_of_range(transport: Transport, tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text('{"done": true, "count": 1, "loss": NaN}')
    assert judge(transport, kind="json_field", path=str(path), field="done", equals=1).status == "failed"
    assert judge(transport, kind="json_field", path=str(path), field="count", equals=1.0).passed
    assert judge(transport, kind="json_field", path=str(path), field="loss", min=0).status == "failed"
    assert judge(transport, kind="json_field", path=str(path), field="done", min=0).message.endswith("found a boolean true")


@pytest.mark.parametrize(
    "field, reason",
    [
        ("libero_object_no_noops.action.q99.7", "index 7 out of range: libero_object_no_noops.action.q99 is a list of 7"),
        ("libero_object_no_noops.action.q99.x", "libero_object_no_noops.action.q99 is a list of 7, 'x' is not an index"),
        ("libero_object_no_noops.actions.q99", "no key 'actions' in libero_object_no_noops (keys: action, num_trajectories,"),
        ("libero_object_no_noops.num_trajectories.0", "libero_object_no_noops.num_trajectories is a number 454, it has no '0'"),
    ],
)
def test_json_field_lookup_errors_say_where_the_walk_stopped(transport: Transport, stats_file: Path, field: str, reason: str) -> None:
    result = judge(transport, kind="json_field", path=str(stats_file), field=field, length=7)
    assert result.status == "failed"
    assert result.message.startswith(f"{stats_file}: {field}: expected to exist, {reason}")


def test_json_file_problems_are_failures_not_tracebacks(transport: Transport, tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text("step=0 loss=0.9\n")
    (tmp_path / "blob.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "huge.json").write_bytes(b" " * ((16 << 20) + 1))
    cases = {
        "log.txt": "not valid JSON: Expecting value at line 1 column 1",
        "blob.json": "not JSON: not UTF-8 text (invalid start byte at byte 0)",
        "huge.json": "16,777,217 bytes (16.0 MiB), larger than the 16,777,216 bytes (16.0 MiB) a check reads whole",
        "absent.json": "no such file",
        ".": "is a directory, expected a file",
    }
    for name, reason in cases.items():
        result = judge(transport, kind="json_field", path=str(tmp_path / name), field="a")
        assert result.status == "failed" and result.message == f"{tmp_path / name}: {reason}"


# --- command ---------------------------------------------------------------------------------------


def test_command_exit_status_regex_and_version(transport: Transport) -> None:
    tf = "echo 'TF: 2.15.0 TFDS: 4.9.3'"
    ok = judge(transport, kind="command", run=tf, version=">=2.15,<2.16")
    assert ok.passed and ok.message == f"`{tf}`: exit 0, version 2.15.0 satisfies >=2.15,<2.16"
    tfds = judge(transport, kind="command", run=tf, regex=r"TFDS: (?P<version>\S+)", version="==4.9.3")
    assert tfds.passed and tfds.details["version"] == "4.9.3"
    broken = judge(transport, kind="command", run="echo 'TF: 2.16.1'", version=">=2.15,<2.16")
    assert broken.message == "`echo 'TF: 2.16.1'`: expected version >=2.15,<2.16, found 2.16.1"
    cuda = judge(transport, kind="command", run="echo 2.7.1+cu128", version="~=2.7.0")
    assert cuda.passed and cuda.details["version"] == "2.7.1+cu128"


def test_command_failures_quote_the_output(transport: Transport) -> None:
    rc = judge(transport, kind="command", run="echo 'No module named safetensors' >&2; exit 1")
    assert rc.status == "failed" and rc.message.endswith("expected exit status 0, got 1; output ends: No module named safetensors")
    assert judge(transport, kind="command", run="exit 3", expect_rc=3).passed
    text = judge(transport, kind="command", run="echo ready", regex=r"Model conversion completed successfully!")
    assert text.message.endswith("expected output matching /Model conversion completed successfully!/, found: ready")
    none = judge(transport, kind="command", run="echo no digits here", version=">=1")
    assert none.message.endswith("expected a version >=1, found no version in the output: no digits here")


def test_command_timeout_is_reported_as_such(transport: Transport) -> None:
    result = judge(transport, kind="command", run="echo started; sleep 10", timeout=0.5)
    assert result.status == "failed" and result.message == "`echo started; sleep 10`: timed out after 0.5 s; output ends: started"


def test_version_compare_without_packaging(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [(">=2.15,<2.16", "2.15.0"), (">=2.15,<2.16", "2.16.0"), ("==2.15.*", "2.15.3"), ("~=2.15.0", "2.16.0"), ("!=1.0", "1.0.0"), ("<=4.53", "4.53.1")]
    with_packaging = [version_matches(spec, v) for spec, v in cases]
    monkeypatch.setattr(kinds, "SpecifierSet", None)  # the laptop without `packaging`
    assert [version_matches(spec, v) for spec, v in cases] == with_packaging == [True, False, True, False, False, False]
    with pytest.raises(ValueError, match="cannot read"):
        kinds.parse_specifier(">=2.15,,<3")


# --- safetensors -----------------------------------------------------------------------------------

SEED_003 = {"key_count": 812, "shapes": {"action_in_proj.weight": [1024, 32], "time_mlp_in.weight": [1024, 1024]}}


def test_safetensors_seed_003_reads_only_the_header(transport: Transport, checkpoint: Path) -> None:
    counting = ReadCounter(transport)
    result = evaluate(check(kind="safetensors", path=str(checkpoint), dtype="float16", **SEED_003), counting)
    assert result.passed, result.message
    assert result.message == f"{checkpoint}: 812 tensors (expected 812), 2 shape(s) as expected, all F16"
    header_bytes = read_header(transport, str(checkpoint)).header_bytes
    assert counting.gets == 0 and counting.bytes_read == 8 + header_bytes < checkpoint.stat().st_size // 20


def test_safetensors_mismatches_are_listed(transport: Transport, checkpoint: Path) -> None:
    result = judge(
        transport,
        kind="safetensors",
        path=str(checkpoint),
        key_count=811,
        shapes={"action_in_proj.weight": [1024, 64], "time_mlp_in.weights": [1024, 1024]},
        dtype="BF16",
    )
    assert result.status == "failed"
    assert result.message == (
        f"{checkpoint}: expected 811 tensors, found 812; action_in_proj.weight: expected shape [1024, 64], found [1024, 32]; "
        "expected tensor time_mlp_in.weights, not found (nearest: time_mlp_in.weight); "
        "expected every tensor BF16, found 812 F16 (e.g. action_in_proj.weight)"
    )
    assert result.details["dtypes"] == {"F16": 812}


def test_hand_written_file_agrees_with_the_library(tmp_path: Path) -> None:
    safe_open = pytest.importorskip("safetensors").safe_open
    path = tmp_path / "hand.safetensors"
    write_safetensors(path, {"a": ("F32", [2, 3]), "b": ("I64", [5])}, {"format": "pt"})
    with safe_open(str(path), framework="numpy") as fh:
        assert sorted(fh.keys()) == ["a", "b"] and fh.metadata() == {"format": "pt"}
    header = read_header(LocalTransport(), str(path))
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {"a": ("F32", [2, 3]), "b": ("I64", [5])}


def test_truncated_checkpoints_fail(transport: Transport, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    size = write_safetensors(path, {"w": ("F32", [256])})
    whole = path.read_bytes()
    path.write_bytes(whole[: size - 100])
    assert judge(transport, kind="safetensors", path=str(path)).message == (
        f"{path}: file is {size - 100} bytes but its header describes {size} bytes (truncated)"
    )
    path.write_bytes(whole[:20])
    assert "header length field says" in judge(transport, kind="safetensors", path=str(path)).message
    assert judge(transport, kind="safetensors", path=str(path)).message.endswith("but only 12 follow (truncated)")
    path.write_bytes(whole[:5])
    assert judge(transport, kind="safetensors", path=str(path)).message == f"{path}: file is 5 bytes, too short for the 8-byte header length"


def test_header_length_bomb_and_bad_header(transport: Transport, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.safetensors"
    bomb.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    result = judge(transport, kind="safetensors", path=str(bomb), key_count=1)
    assert result.status == "failed"
    assert result.message == f"{bomb}: header length field says {1 << 40} bytes (limit 100000000): not a safetensors file, or corrupt"
    text = tmp_path / "notes.safetensors"
    text.write_bytes(struct.pack("<Q", 6) + b"hello!")
    assert judge(transport, kind="safetensors", path=str(text)).message.startswith(f"{text}: header is not valid JSON (")
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(struct.pack("<Q", 24) + json.dumps({"w": {"dtype": "F32"}}).encode().ljust(24))
    assert judge(transport, kind="safetensors", path=str(odd)).message == f"{odd}: tensor 'w' has an invalid shape None"


def test_sharded_checkpoint_directory(transport: Transport, tmp_path: Path) -> None:
    ckpt = tmp_path / "output_2025-10-02_12-35-19"
    ckpt.mkdir()
    shards = {f"model-0000{i}-of-00003.safetensors": {f"layer.{i}.{j}": ("BF16", [8, 8]) for j in range(4)} for i in (1, 2, 3)}
    for name, tensors in shards.items():
        write_safetensors(ckpt / name, tensors)
    weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    result = judge(transport, kind="safetensors", path=str(ckpt), key_count=12, shapes={"layer.3.0": [8, 8]}, dtype="bf16")
    assert result.passed and result.message == f"{ckpt}: 12 tensors in 3 files (expected 12), 1 shape(s) as expected, all BF16"

    (ckpt / "model-00003-of-00003.safetensors").unlink()
    missing = judge(transport, kind="safetensors", path=str(ckpt), key_count=12)
    assert missing.message == f"{ckpt}: model.safetensors.index.json names shards that are missing: model-00003-of-00003.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert judge(transport, kind="safetensors", path=str(empty)).message.endswith("expected *.safetensors files in the directory, found none")


# --- disk_free and gpu_memory ---------------------------------------------------------------------


def test_disk_free(transport: Transport, tmp_path: Path) -> None:
    ok = judge(transport, kind="disk_free", path=str(tmp_path), min_gb=0.001)
    assert ok.passed and ok.message.startswith(f"{tmp_path}: expected >= 0.001 GiB free, found ") and ok.details["free_gb"] > 0
    short = judge(transport, kind="disk_free", path=str(tmp_path / "models" / "pi05_base_jax"), min_gb=1e9)
    assert short.status == "failed" and f"(measured at {tmp_path}, the nearest existing parent)" in short.message
    assert short.message.startswith(f"{tmp_path / 'models' / 'pi05_base_jax'}: expected >= 1e+09 GiB free, found ")


HAS_NVIDIA_SMI = any(os.access(os.path.join(d, "nvidia-smi"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


@pytest.mark.skipif(HAS_NVIDIA_SMI, reason="this machine has nvidia-smi")
def test_gpu_memory_is_skipped_without_nvidia_smi(transport: Transport) -> None:
    result = judge(transport, kind="gpu_memory", min_gb=90, count=2)
    assert result.status == "skipped"
    assert result.message == f"expected >= 2 GPU(s) with >= 90 GiB free: nvidia-smi not found on {transport.name}, nothing to check"


def fake_nvidia_smi(bin_dir: Path, body: str) -> None:
    """An nvidia-smi on PATH that prints what a 2x RTX PRO 6000 box prints (seed 003's machine)."""
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_gpu_memory_counts_qualifying_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Local only: the fake nvidia-smi reaches the check through this process's PATH.
    fake_nvidia_smi(tmp_path / "bin", "echo '0, NVIDIA RTX PRO 6000 Blackwell, 97887, 97000'\necho '1, NVIDIA RTX PRO 6000 Blackwell, 97887, 4000'")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    local = LocalTransport()
    free = judge(local, kind="gpu_memory", min_gb=90, count=2)
    assert free.status == "failed" and free.message == (
        "expected >= 2 GPU(s) with >= 90 GiB free, found 1 of 2: "
        "GPU0 NVIDIA RTX PRO 6000 Blackwell 94.7 GiB free, GPU1 NVIDIA RTX PRO 6000 Blackwell 3.9 GiB free"
    )
    assert judge(local, kind="gpu_memory", min_gb=90, memory="total", count=2).passed
    assert judge(local, kind="gpu_memory", count=2).passed


def test_gpu_memory_fails_when_the_driver_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    fake_nvidia_smi(tmp_path / "bin", f"echo \"{message}\"\nexit 9")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = judge(LocalTransport(), kind="gpu_memory", count=1)
    assert result.status == "failed" and result.message == f"expected >= 1 GPU(s): nvidia-smi failed (exit 9): {message}"


def test_parse_gpus_tolerates_unavailable_memory() -> None:
    assert parse_gpus("0, NVIDIA H100 80GB HBM3, 81559, [N/A]\n") == [
        {"index": "0", "name": "NVIDIA H100 80GB HBM3", "total_gb": 79.65, "free_gb": None}
    ]


# --- the transport's own failures ------------------------------------------------------------------


def test_transport_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="connection lost"):
        evaluate(check(kind="path_exists", path=str(tmp_path)), LostConnection())  # type: ignore[arg-type]
    with pytest.raises(TransportError):
        evaluate(check(kind="command", run="true"), LostConnection())  # type: ignore[arg-type]
