"""RLDS reading, dataset statistics and the synthetic writer, on real TFDS datasets written here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("tensorflow")

from training.fingerprint import content_hash  # noqa: E402
from training.rlds import read_columns, read_columns_tfds  # noqa: E402
from training.rlds_layout import check_robot, read_layout  # noqa: E402
from training.robots import LIBERO, RobotConfig, RobotConfigError  # noqa: E402
from training.stats import StatsError, compute_stats  # noqa: E402
from training.stats_file import validate_stats_file  # noqa: E402
from training.synth import ARM_ACTION_LIMIT, SynthSpec, ensure_dataset, write_dataset  # noqa: E402

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]
# The same spec as tests/test_training_cache.py: written once per session under the base temp dir.
SPEC = SynthSpec(episodes=12, total_steps=600, image_size=32, seed=7, shards=2)


@pytest.fixture(scope="session")
def libero_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_dataset(tmp_path_factory.getbasetemp() / SPEC.key(), SPEC)


@pytest.fixture(scope="session")
def other_robot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SynthSpec(episodes=2, steps=10, image_size=16, action_dim=15, seed=1)
    return ensure_dataset(tmp_path_factory.getbasetemp() / "synth-15dim", spec)


@pytest.fixture(scope="session")
def tfds_steps(libero_dir: Path) -> dict[str, np.ndarray]:
    """The seed's way: every step through tfds, one by one (small data, so cheap here)."""
    ds = tfds.builder_from_directory(str(libero_dir)).as_dataset(split="train", shuffle_files=False)
    out: dict[str, list] = {"action": [], "state": [], "joint_state": [], "lengths": [], "instruction": []}
    for ep in ds:
        n = 0
        for step in ep["steps"]:
            out["action"].append(step["action"].numpy())
            out["state"].append(step["observation"]["state"].numpy())
            out["joint_state"].append(step["observation"]["joint_state"].numpy())
            out["instruction"].append(step["language_instruction"].numpy().decode())
            n += 1
        out["lengths"].append(n)
    return {k: np.asarray(v) for k, v in out.items()}


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env)


def test_synth_writes_libero_layout_readable_by_tfds(libero_dir: Path, tfds_steps: dict) -> None:
    builder = tfds.builder_from_directory(str(libero_dir))
    steps = builder.info.features["steps"]
    assert steps["action"].shape == (7,) and steps["observation"]["state"].shape == (8,)
    assert steps["observation"]["joint_state"].shape == (7,)
    assert steps["observation"]["image"].shape == (32, 32, 3) and steps["observation"]["wrist_image"].shape == (32, 32, 3)
    assert builder.info.splits["train"].num_examples == 12 and len(tfds_steps["action"]) == 600
    action, state = tfds_steps["action"], tfds_steps["state"]
    assert np.all(np.abs(action[:, :6]) <= ARM_ACTION_LIMIT) and set(np.unique(action[:, 6])) == {-1.0, 1.0}
    assert np.all((state[:, 7] > 0) & (state[:, 7] < 0.05))  # gripper opening in metres
    assert np.array_equal(tfds_steps["joint_state"], state[:, :7])
    assert all(i.startswith("pick up the ") for i in tfds_steps["instruction"])


def test_fast_reader_equals_tfds_and_the_tfds_fallback(libero_dir: Path, tfds_steps: dict) -> None:
    fast = read_columns(libero_dir, LIBERO)
    assert np.array_equal(fast.action, tfds_steps["action"]) and np.array_equal(fast.proprio, tfds_steps["state"])
    assert np.array_equal(np.diff(fast.episode_starts), tfds_steps["lengths"])
    slow = read_columns_tfds(libero_dir, LIBERO)
    assert np.array_equal(slow.action, fast.action) and np.array_equal(slow.proprio, fast.proprio)


def test_stats_equal_a_straightforward_numpy_computation(libero_dir: Path, tfds_steps: dict, tmp_path: Path) -> None:
    out = tmp_path / "dataset_statistics.json"
    proc = run_module("training.stats", "--data", str(libero_dir), "--robot", "libero", "--out", str(out),
                      "--openpi-out", str(tmp_path / "norm_stats.json"))
    assert proc.returncode == 0, proc.stderr
    assert "[stats] robot=libero action_dim=7 proprio_dim=8 transitions=600 trajectories=12" in proc.stdout
    assert f"[stats] wrote {out}" in proc.stdout
    entry = json.loads(out.read_text())["libero_synth"]
    for role, x in (("action", tfds_steps["action"]), ("proprio", tfds_steps["state"])):
        x = x.astype(np.float64)
        expected = {"mean": x.mean(0), "std": x.std(0), "q01": np.quantile(x, 0.01, axis=0),
                    "q99": np.quantile(x, 0.99, axis=0), "min": x.min(0), "max": x.max(0)}
        for name, value in expected.items():
            np.testing.assert_allclose(entry[role][name], value, rtol=1e-12, atol=0, err_msg=f"{role}.{name}")
    assert (entry["num_transitions"], entry["num_samples"], entry["num_trajectories"]) == (600, 600, 12)
    meta = entry["meta"]
    assert (meta["robot"], meta["action_key"], meta["proprio_key"], meta["quantile_method"]) == (
        "libero", "action", "observation/state", "linear")
    assert meta["content_hash"] == content_hash(read_layout(libero_dir))
    assert entry["action"]["mask"] == [True] * 6 + [False]
    assert validate_stats_file(out, "libero", libero_dir) == []
    assert validate_stats_file(tmp_path / "norm_stats.json", "libero", libero_dir) == []


def test_stats_json_flag_and_help(libero_dir: Path, tmp_path: Path) -> None:
    proc = run_module("training.stats", "--data", str(libero_dir), "--robot", "libero",
                      "--out", str(tmp_path / "s.json"), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["libero_synth"]["num_trajectories"] == 12
    assert "[stats] wrote" in proc.stderr
    assert run_module("training.stats", "--help").returncode == 0
    assert run_module("training.stats", "--data", str(libero_dir)).returncode == 2


def test_dataset_of_another_robot_is_rejected_naming_the_dim(other_robot_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    proc = run_module("training.stats", "--data", str(other_robot_dir), "--robot", "libero", "--out", str(out))
    assert proc.returncode == 2
    assert "steps/action is 15-dim but robot libero expects action_dim=7" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_joint_state_is_rejected_naming_the_key(libero_dir: Path, tmp_path: Path) -> None:
    proc = run_module("training.stats", "--data", str(libero_dir), "--robot", "libero", "--out", str(tmp_path / "s.json"),
                      "--proprio-key", "observation/joint_state")
    assert proc.returncode == 2 and "observation/joint_state" in proc.stderr and "7-dim" in proc.stderr
    # A robot config without libero's guard still fails on the data: 7 dims found, 8 expected.
    unguarded = RobotConfig(name="libero_custom", action_key="action", action_dim=7,
                            proprio_key="observation/joint_state", proprio_dim=8)
    expected = r"steps/observation/joint_state is 7-dim but robot libero_custom expects proprio_dim=8"
    with pytest.raises(RobotConfigError, match=expected):
        check_robot(read_layout(libero_dir), unguarded)
    assert not (tmp_path / "s.json").exists()


def test_nan_and_constant_features_fail_and_write_nothing(tmp_path: Path) -> None:
    def plant_nan(ep):
        ep.actions[3, 2] = np.nan
        return ep

    def freeze_state(ep):
        ep.states[:, 4] = 0.25
        return ep

    for name, hook, message in (("nan", plant_nan, "action.mean: non-finite values (NaN/inf) at dims [2]"),
                                ("const", freeze_state, "proprio.std: zero")):
        data = write_dataset(tmp_path / name, SynthSpec(episodes=2, steps=8, image_size=16), episode_hook=hook)
        out = tmp_path / f"{name}.json"
        proc = run_module("training.stats", "--data", str(data), "--robot", "libero", "--out", str(out))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert not out.exists()
        with pytest.raises(StatsError, match="unfit for normalisation"):
            compute_stats(data, LIBERO)


def test_validator_catches_stats_of_other_data(libero_dir: Path, tmp_path: Path) -> None:
    other = ensure_dataset(tmp_path / "other", SynthSpec(episodes=12, total_steps=600, image_size=32, seed=8))
    out = tmp_path / "stats_other.json"
    assert run_module("training.stats", "--data", str(other), "--robot", "libero", "--out", str(out)).returncode == 0
    problems = validate_stats_file(out, "libero", libero_dir)
    assert len(problems) == 1 and "meta.content_hash" in problems[0] and "does not match dataset" in problems[0]
    assert content_hash(read_layout(other)) != content_hash(read_layout(libero_dir))


def test_validator_checks_dataset_dims_against_the_robot(other_robot_dir: Path, tmp_path: Path) -> None:
    block = {k: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7] for k in ("mean", "std", "q01", "q99", "min", "max")}
    block["std"] = [0.3] * 8
    block["q01"], block["q99"] = [-1.0] * 8, [1.0] * 8
    block["min"], block["max"] = [-2.0] * 8, [2.0] * 8
    doc = {"libero": {"action": {k: v[:7] for k, v in block.items()}, "proprio": block}}
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(doc))
    problems = validate_stats_file(path, "libero", other_robot_dir)
    assert problems == [f"{path}: dataset {other_robot_dir}: "
                        f"steps/action is 15-dim but robot libero expects action_dim=7 "
                        f"(data or stats for another robot — seed 003 known issue 2)"]


def test_parent_directory_with_one_version_is_accepted(libero_dir: Path, tmp_path: Path) -> None:
    parent = tmp_path / "libero_object_no_noops"
    parent.mkdir()
    (parent / "1.0.0").symlink_to(libero_dir)
    assert read_layout(parent).directory == parent / "1.0.0"
    missing = run_module("training.stats", "--data", "/nonexistent", "--robot", "libero", "--out", str(tmp_path / "x"))
    assert missing.stderr.startswith("[stats] error: /nonexistent: dataset directory not found")


def test_synth_cli_refuses_to_overwrite_and_bad_sizes(libero_dir: Path, tmp_path: Path) -> None:
    assert run_module("training.synth", "--out", str(libero_dir)).returncode == 2
    proc = run_module("training.synth", "--out", str(tmp_path / "x"), "--episodes", "0")
    assert proc.returncode == 2 and "episodes must be >= 1" in proc.stderr


def test_corrupt_shard_fails_with_file_and_offset(libero_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in libero_dir.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) - 100] if ".tfrecord-00001" in f.name else data)
    proc = run_module("training.stats", "--data", str(broken), "--robot", "libero", "--out", str(tmp_path / "s.json"))
    assert proc.returncode == 2 and "tfrecord-00001-of-00002: record at byte" in proc.stderr
    assert "runs past the end of the file" in proc.stderr and not (tmp_path / "s.json").exists()
