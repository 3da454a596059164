"""The action_units check (seed 002's data fix): position std in metres passes; mm or normalised data fails, named.

Statistics files are written in the three layouts the check reads; the synthetic data's units
come from training.synth (numpy only here, no TensorFlow).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from agent_ops.transport.local import LocalTransport
from checks import Check, CheckResult, evaluate
from training.synth import SynthSpec, make_episode

CHECK = TypeAdapter(Check)
BAND = {"min": 0.005, "max": 0.05}


def judge(path: Path, **fields) -> CheckResult:
    return evaluate(CHECK.validate_python({"kind": "action_units", "path": str(path), **BAND, **fields}), LocalTransport())


def synth_actions(units: str) -> np.ndarray:
    spec = SynthSpec(episodes=8, steps=20, seed=5, action_units=units)
    return np.concatenate([make_episode(spec, i, 20).actions for i in range(spec.episodes)]).astype(np.float64)


def openvla_stats(actions: np.ndarray, name: str = "libero_90_no_noops") -> dict:
    """The agentops/OpenVLA layout that training.stats writes (only the fields the check reads)."""
    return {name: {"action": {"mean": actions.mean(0).tolist(), "std": actions.std(0).tolist(),
                              "min": actions.min(0).tolist(), "max": actions.max(0).tolist()},
                   "num_transitions": len(actions)}}


def write(tmp_path: Path, doc: dict, name: str = "dataset_statistics.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


# --- training.synth's units ----------------------------------------------------------------------


def test_synth_writes_positions_in_metres_millimetres_or_normalised() -> None:
    metres, millimetres, normalised = synth_actions("m"), synth_actions("mm"), synth_actions("normalized")
    std = metres[:, :3].std(0)
    assert np.all((std > 0.014 / 2) & (std < 0.014 * 2)), std  # seed 002: ~0.014 m
    np.testing.assert_allclose(millimetres[:, :3], 1000 * metres[:, :3], rtol=1e-6)
    np.testing.assert_allclose(metres[:, 3:6], 0.5 * normalised[:, 3:6], rtol=1e-6)  # radians
    assert set(np.unique(metres[:, 6])) == {0.0, 1.0} and set(np.unique(normalised[:, 6])) == {-1.0, 1.0}


def test_synth_refuses_physical_units_for_another_robots_actions() -> None:
    with pytest.raises(ValueError, match="action_units m needs LIBERO's 7-dim actions, got action_dim=15"):
        SynthSpec(action_dim=15, action_units="m")
    with pytest.raises(ValueError, match="action_units must be one of normalized, m, mm"):
        SynthSpec(action_units="cm")


# --- the check -----------------------------------------------------------------------------------------


def test_metres_pass_with_the_values_in_the_message(tmp_path: Path) -> None:
    result = judge(write(tmp_path, openvla_stats(synth_actions("m"))))
    assert result.passed, result.message
    assert result.message.startswith(f"{tmp_path / 'dataset_statistics.json'}: libero_90_no_noops.action.std within [0.005, 0.05] m: dim 0 = 0.01")
    assert set(result.details["std"]) == {0, 1, 2}


def test_millimetres_fail_naming_dim_value_and_unit(tmp_path: Path) -> None:
    path = write(tmp_path, openvla_stats(synth_actions("mm")))
    result = judge(path)
    assert result.status == "failed"
    std = synth_actions("mm").std(0)
    assert result.message == (
        f"{path}: libero_90_no_noops.action.std outside [0.005, 0.05] m: dim 0 = {std[0]:.4g}, dim 1 = {std[1]:.4g}, "
        f"dim 2 = {std[2]:.4g}; about {_factor(std[:3]):.0f}x too large: the actions look like millimetres, not metres"
    )


def _factor(std: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(std / np.sqrt(0.005 * 0.05)))))


def test_normalised_actions_fail_as_normalised(tmp_path: Path) -> None:
    result = judge(write(tmp_path, openvla_stats(synth_actions("normalized"))))
    assert result.status == "failed"
    assert "bounded by [-1, 1]: the actions look normalised, not in metres" in result.message


def test_only_the_dims_outside_the_band_are_named(tmp_path: Path) -> None:
    actions = synth_actions("m")
    actions[:, 1] *= 100  # y in centimetres
    result = judge(write(tmp_path, openvla_stats(actions)))
    assert "outside [0.005, 0.05] m: dim 1 = 1." in result.message and "dim 0" not in result.message
    assert result.message.endswith("the actions look like centimetres, not metres")


def test_openpi_and_rdt_layouts(tmp_path: Path) -> None:
    std = synth_actions("m").std(0).tolist()
    openpi = write(tmp_path, {"norm_stats": {"actions": {"mean": [0.0] * 7, "std": std, "q01": [-0.04] * 7, "q99": [0.04] * 7}}},
                   "norm_stats.json")
    assert judge(openpi).message.split(": ", 1)[1].startswith("norm_stats.actions.std within")
    # RDT's configs/dataset_stat.json: many datasets, a 128-dim unified vector, position x at index 30 (seed 002).
    unified = [1.0] * 128
    unified[30:33] = [0.014, 0.013, 0.015]
    rdt = write(tmp_path, {"libero_90": {"action_mean": [0.0] * 128, "action_std": unified},
                           "bridge": {"action_mean": [0.0] * 128, "action_std": [1.0] * 128}}, "dataset_stat.json")
    assert judge(rdt, dataset="libero_90", dims=[30, 31, 32]).passed
    several = judge(rdt, dims=[30, 31, 32])
    assert several.status == "failed" and several.message.endswith("several datasets (bridge, libero_90); name one with `dataset`")


@pytest.mark.parametrize(
    "doc, fields, reason",
    [
        ({"libero": {"action": {"std": [0.01] * 2}}}, {}, "libero.action.std has 2 values, no dim 2 (dims asked: [0, 1, 2])"),
        ({"libero": {"proprio": {}}}, {}, "no action statistics: expected"),
        ({"libero": {"action": {"std": "0.01"}}}, {}, "libero.action.std: expected a list of numbers, found str"),
        ({"a": {"action": {"std": [0.01] * 3}}}, {"dataset": "b"}, "no dataset 'b' (top-level keys: a)"),
        ({"libero": {"action": {"std": [float("nan")] * 3}}}, {}, "degenerate (zero or non-finite std)"),
    ],
)
def test_unreadable_statistics_fail_saying_why(tmp_path: Path, doc: dict, fields: dict, reason: str) -> None:
    result = judge(write(tmp_path, doc), **fields)
    assert result.status == "failed" and reason in result.message


def test_the_band_is_an_ordered_pair_of_positive_numbers() -> None:
    # Variables reach it as numbers (a whole-value reference renders to the number: test_runbook_validation).
    with pytest.raises(ValidationError, match="must be below max"):
        CHECK.validate_python({"kind": "action_units", "path": "/s.json", "min": 0.05, "max": 0.005})
    with pytest.raises(ValidationError):
        CHECK.validate_python({"kind": "action_units", "path": "/s.json", "min": "small", "max": 0.05})
    with pytest.raises(ValidationError):
        CHECK.validate_python({"kind": "action_units", "path": "/s.json", "min": 0, "max": 0.05})
    check = CHECK.validate_python({"kind": "action_units", "path": "/s.json", "min": 0.005, "max": 0.05})
    assert (check.min, check.max) == (0.005, 0.05)
