"""The dataset_stats check kind: the training core's validator, run through a transport on the target."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from checks.evaluate import evaluate
from checks.kinds import DatasetStatsCheck

pytest.importorskip("tensorflow")


def _synth(out: Path, action_dim: int) -> Path:
    subprocess.run([sys.executable, "-m", "training.synth", "--out", str(out), "--episodes", "4", "--steps", "12",
                    "--image-size", "16", "--action-dim", str(action_dim)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stats-check")
    good, other = _synth(root / "libero", 7), _synth(root / "other", 15)
    stats = root / "dataset_statistics.json"
    subprocess.run([sys.executable, "-m", "training.stats", "--data", str(good), "--robot", "libero", "--out", str(stats)],
                   check=True, capture_output=True)
    return {"good": good, "other": other, "stats": stats}


def _check(**fields) -> DatasetStatsCheck:
    return DatasetStatsCheck(kind="dataset_stats", python=sys.executable, **fields)


def test_stats_valid_for_robot_and_dataset(transport, datasets) -> None:
    result = evaluate(_check(path=str(datasets["stats"]), data=str(datasets["good"])), transport)
    assert result.status == "passed", result.message


def test_stats_against_another_robots_dataset_fail_naming_the_dimension(transport, datasets) -> None:
    result = evaluate(_check(path=str(datasets["stats"]), data=str(datasets["other"])), transport)
    assert result.status == "failed"
    assert "15-dim" in result.message and "action_dim=7" in result.message


def test_missing_stats_file_fails_clearly(transport, tmp_path) -> None:
    result = evaluate(_check(path=str(tmp_path / "absent.json")), transport)
    assert result.status == "failed" and "not found" in result.message
