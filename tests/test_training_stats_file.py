"""Robot configs and the stats-file validator: pure Python, runs on the controller-only install."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.robots import LIBERO, RobotConfig, RobotConfigError, get_robot
from training.stats_file import find_entry, to_openpi, validate_stats_file, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def block(dim: int, centre: float = 0.0) -> dict:
    """Plausible stats for `dim` dims: min < q01 < q99 < max, std > 0."""
    return {
        "mean": [centre] * dim, "std": [0.3] * dim, "q01": [centre - 0.6] * dim,
        "q99": [centre + 0.6] * dim, "min": [centre - 0.9] * dim, "max": [centre + 0.9] * dim,
    }


def stats_doc(action_dim: int = 7, proprio_dim: int = 8, **meta) -> dict:
    return {"libero_object_no_noops": {
        "action": block(action_dim), "proprio": block(proprio_dim),
        "num_transitions": 66984, "num_samples": 66984, "num_trajectories": 454,
        "meta": {"robot": "libero", **meta},
    }}


def write(tmp_path: Path, doc: dict, name: str = "dataset_statistics.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_libero_robot_is_7_action_8_proprio_from_state() -> None:
    robot = get_robot("libero")
    assert (robot.action_key, robot.action_dim, robot.proprio_key, robot.proprio_dim) == ("action", 7, "observation/state", 8)
    assert robot.image_keys == ("observation/image", "observation/wrist_image")


def test_joint_state_for_libero_is_rejected_naming_key_and_dim() -> None:
    with pytest.raises(RobotConfigError) as err:
        LIBERO.with_keys(proprio_key="observation/joint_state")
    assert "observation/joint_state" in str(err.value) and "7-dim" in str(err.value)


def test_unknown_robot_and_bad_robot_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(RobotConfigError, match="unknown robot 'franka'"):
        get_robot("franka")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: r\naction_key: action\naction_dim: 0\nproprio_key: s\nproprio_dim: 3\n")
    with pytest.raises(RobotConfigError, match=r"bad.yaml: robot r: action_dim must be a positive int"):
        get_robot(str(bad))
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**LIBERO.to_dict(), "action_dims": 7}))
    with pytest.raises(RobotConfigError, match=r"typo.json: unknown field\(s\) \['action_dims'\]"):
        get_robot(str(typo))


def test_robot_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "libero.json"
    path.write_text(json.dumps(LIBERO.to_dict()))
    assert get_robot(str(path)) == LIBERO
    custom = RobotConfig(name="arm9", action_key="action", action_dim=9, proprio_key="observation/state", proprio_dim=9)
    path.write_text(json.dumps(custom.to_dict()))
    assert get_robot(str(path)) == custom


def test_valid_stats_file_has_no_problems(tmp_path: Path) -> None:
    assert validate_stats_file(write(tmp_path, stats_doc()), "libero") == []
    assert validate_stats_file(write(tmp_path, stats_doc()), LIBERO) == []


def test_stats_of_another_robot_are_caught_naming_the_dimension(tmp_path: Path) -> None:
    path = write(tmp_path, stats_doc(action_dim=15))
    problems = validate_stats_file(path, "libero")
    assert problems and all(p.startswith(f"{path}: ") for p in problems)
    assert any("action.mean has 15 values but robot libero has action_dim=7" in p for p in problems)
    assert any("proprio.q99 has 7 values" in p for p in validate_stats_file(write(tmp_path, stats_doc(proprio_dim=7)), "libero"))


@pytest.mark.parametrize(
    ("role", "stat", "value", "expected"),
    [
        ("action", "mean", math.nan, "action.mean: non-finite values (NaN/inf) at dims [2]"),
        ("proprio", "q99", math.inf, "proprio.q99: non-finite values (NaN/inf) at dims [2]"),
        ("action", "std", 0.0, "action.std: zero"),
        ("proprio", "q99", -0.6, "proprio: degenerate q01..q99 range at dims [2]"),
        ("action", "max", -5.0, "action: min <= q01 <= q99 <= max violated at dims [2]"),
    ],
)
def test_bad_values_are_caught(tmp_path: Path, role: str, stat: str, value: float, expected: str) -> None:
    doc = stats_doc()
    doc["libero_object_no_noops"][role][stat][2] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))  # json writes NaN/Infinity, as numpy-based writers do
    assert any(expected in p for p in validate_stats_file(path, "libero")), validate_stats_file(path, "libero")


def test_layout_errors_missing_file_and_invalid_json(tmp_path: Path) -> None:
    assert validate_stats_file(tmp_path / "nope.json", "libero") == [f"{tmp_path / 'nope.json'}: stats file not found"]
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "a": [1,\n')
    assert validate_stats_file(broken, "libero")[0].startswith(f"{broken}:3: invalid JSON")
    two = write(tmp_path, {"a": stats_doc()["libero_object_no_noops"], "b": stats_doc()["libero_object_no_noops"]})
    assert "several dataset entries ['a', 'b']" in validate_stats_file(two, "libero")[0]
    other = write(tmp_path, {"mean": [0.0]})
    assert "neither an OpenVLA-style" in validate_stats_file(other, "libero")[0]
    wrong_robot = write(tmp_path, stats_doc(), "r.json")
    assert "unknown robot" in validate_stats_file(wrong_robot, "franka")[0]


def test_openpi_layout_is_validated_too(tmp_path: Path) -> None:
    openpi = to_openpi(stats_doc())
    assert set(openpi["norm_stats"]) == {"actions", "state"}
    assert set(openpi["norm_stats"]["actions"]) == {"mean", "std", "q01", "q99"}
    assert validate_stats_file(write(tmp_path, openpi, "norm_stats.json"), "libero") == []
    bad = to_openpi(stats_doc(action_dim=14))
    assert any("action.mean has 14 values" in p for p in validate_stats_file(write(tmp_path, bad, "n.json"), "libero"))
    assert find_entry(openpi)[0] == "openpi"


def test_meta_robot_mismatch_is_reported(tmp_path: Path) -> None:
    doc = stats_doc()
    doc["libero_object_no_noops"]["meta"]["robot"] = "bridge"
    assert any("meta.robot is 'bridge'" in p for p in validate_stats_file(write(tmp_path, doc), "libero"))


def test_atomic_write_leaves_no_temp_files_and_a_readable_mode(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "sub" / "stats.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_validator_command_line(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "training.stats_file", *args], cwd=ROOT, capture_output=True, text=True)

    good, bad = write(tmp_path, stats_doc(), "good.json"), write(tmp_path, stats_doc(action_dim=15), "bad.json")
    ok = cli(str(good), "--robot", "libero")
    assert ok.returncode == 0 and ok.stdout.strip() == f"[stats-check] ok {good} robot=libero"
    failed = cli(str(bad), "--robot", "libero")
    assert failed.returncode == 2 and f"[stats-check] problem {bad}: action.mean has 15 values" in failed.stdout
    as_json = json.loads(cli(str(bad), "--robot", "libero", "--json").stdout)
    assert as_json["problems"] and all(p.startswith(str(bad)) for p in as_json["problems"])


def test_validator_and_robots_import_neither_torch_nor_tensorflow() -> None:
    code = ("import sys, training.robots, training.stats_file, training.rlds_layout, training.fingerprint;"
            "print(sorted(m for m in ('torch', 'tensorflow', 'tensorflow_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
