"""What an RLDS dataset directory holds, read from its TFDS metadata without TensorFlow.

``dataset_info.json`` gives the name, file format, splits and shard lengths;
``features.json`` gives each step feature's dtype and shape. Both are JSON
forms of TFDS protos, so the checks and the stats validator can answer
"is this LIBERO data with 7-dim actions?" in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.robots import RobotConfig, RobotConfigError

DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
STEPS = "steps"


class DatasetLayoutError(ValueError):
    """The dataset directory or its TFDS metadata is missing or malformed."""


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf feature: its TFDS class, dtype, shape (None = unknown dim) and encoding."""

    kind: str  # tensor | image | text | other
    dtype: str
    shape: tuple[int | None, ...]
    encoding: str = "none"


@dataclass(frozen=True)
class DatasetLayout:
    """A TFDS builder directory: name, files per split, and the step features."""

    directory: Path
    name: str
    version: str
    file_format: str
    splits: dict[str, tuple[Path, ...]]
    shard_lengths: dict[str, tuple[int, ...]]
    step_features: dict[str, FeatureSpec]  # keys relative to a step, e.g. "observation/state"

    def files(self, split: str = "train") -> tuple[Path, ...]:
        """The data files of one split, in shard order."""
        if split not in self.splits:
            raise DatasetLayoutError(f"{self.directory}: no split {split!r}; splits: {sorted(self.splits)}")
        return self.splits[split]

    def num_episodes(self, split: str = "train") -> int:
        """Episodes of a split according to dataset_info.json."""
        return sum(self.shard_lengths[split])


def find_builder_dir(path: str | Path) -> Path:
    """The directory holding dataset_info.json: ``path`` itself or its single version subdir."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: dataset directory not found")
    if (path / "dataset_info.json").is_file():
        return path
    candidates = sorted(p.parent for p in path.glob("*/dataset_info.json"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetLayoutError(f"{path}: no dataset_info.json here or one level below (not a TFDS dataset directory)")
    raise DatasetLayoutError(f"{path}: several datasets below ({', '.join(c.name for c in candidates)}); pass one")


def read_layout(path: str | Path) -> DatasetLayout:
    """Read a dataset directory's TFDS metadata; errors name the file and field."""
    directory = find_builder_dir(path)
    info_path = directory / "dataset_info.json"
    info = _load_json(info_path)
    features_path = directory / "features.json"
    features = _load_json(features_path)
    name = _field(info, "name", info_path)
    file_format = info.get("fileFormat", "tfrecord")
    splits: dict[str, tuple[Path, ...]] = {}
    lengths: dict[str, tuple[int, ...]] = {}
    for i, split in enumerate(_field(info, "splits", info_path)):
        split_name = _field(split, "name", info_path, f"splits[{i}].")
        shard_lengths = tuple(int(n) for n in split.get("shardLengths", []))
        template = split.get("filepathTemplate") or DEFAULT_TEMPLATE
        files = tuple(
            directory / _shard_name(template, name, split_name, file_format, k, len(shard_lengths))
            for k in range(len(shard_lengths))
        )
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DatasetLayoutError(f"{info_path}: splits[{i}] ({split_name}) lists files that are missing: {missing[:3]}"
                                     + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        splits[split_name] = files
        lengths[split_name] = shard_lengths
    step_features = _step_features(features, features_path)
    return DatasetLayout(directory=directory, name=name, version=str(info.get("version", "")),
                         file_format=file_format, splits=splits, shard_lengths=lengths,
                         step_features=step_features)


def check_robot(layout: DatasetLayout, robot: RobotConfig) -> None:
    """Raise RobotConfigError, naming key and dimension, if the data does not fit the robot."""
    for role, key, dim in (("action", robot.action_key, robot.action_dim),
                           ("proprio", robot.proprio_key, robot.proprio_dim)):
        if key in robot.forbidden_keys:
            raise RobotConfigError(f"robot {robot.name}: {role} key {key!r} must not be used: {robot.forbidden_keys[key]}")
        spec = layout.step_features.get(key)
        if spec is None:
            raise RobotConfigError(
                f"{layout.directory / 'features.json'}: no step feature {STEPS}/{key} for robot {robot.name}'s {role}; "
                f"float features: {sorted(k for k, s in layout.step_features.items() if s.dtype.startswith('float'))}"
            )
        if spec.kind != "tensor" or spec.dtype != "float32" or len(spec.shape) != 1:
            raise RobotConfigError(
                f"{STEPS}/{key}: expected a 1-d float32 tensor for {role}, found {spec.kind} {spec.dtype} {spec.shape}"
            )
        if spec.encoding != "none":
            raise RobotConfigError(f"{STEPS}/{key}: tensor encoding {spec.encoding!r} is not supported (need 'none')")
        if spec.shape[0] != dim:
            raise RobotConfigError(
                f"{STEPS}/{key} is {spec.shape[0]}-dim but robot {robot.name} expects {role}_dim={dim}"
                + _dim_hint(robot, role, key)
            )
    for key in robot.image_keys:
        spec = layout.step_features.get(key)
        if spec is None or spec.kind != "image":
            raise RobotConfigError(f"{STEPS}/{key}: robot {robot.name} lists it as an image key, but the dataset has "
                                   f"{'no such feature' if spec is None else spec.kind}")


def _dim_hint(robot: RobotConfig, role: str, key: str) -> str:
    if key.endswith("joint_state"):
        return f" (joint_state holds joints without the gripper; use {robot.proprio_key!r} — seed 003 known issue 3)"
    if role == "action":
        return " (data or stats for another robot — seed 003 known issue 2)"
    return ""


def _shard_name(template: str, name: str, split: str, file_format: str, shard: int, num_shards: int) -> str:
    return (template.replace("{DATASET}", name).replace("{SPLIT}", split).replace("{FILEFORMAT}", file_format)
            .replace("{SHARD_INDEX}", f"{shard:05d}").replace("{NUM_SHARDS}", f"{num_shards:05d}")
            .replace("{SHARD_X_OF_Y}", f"{shard:05d}-of-{num_shards:05d}"))


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing (not a TFDS dataset directory)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{path}: expected a JSON object")
    return data


def _field(data: dict[str, Any], key: str, path: Path, prefix: str = "") -> Any:
    if key not in data:
        raise DatasetLayoutError(f"{path}: missing field {prefix}{key}")
    return data[key]


def _step_features(features: dict[str, Any], path: Path) -> dict[str, FeatureSpec]:
    top = features.get("featuresDict", {}).get("features")
    if not isinstance(top, dict):
        raise DatasetLayoutError(f"{path}: missing field featuresDict.features (unsupported features.json format)")
    steps = top.get(STEPS)
    if not isinstance(steps, dict) or "sequence" not in steps:
        raise DatasetLayoutError(f"{path}: missing field featuresDict.features.{STEPS}.sequence (not an RLDS dataset)")
    out: dict[str, FeatureSpec] = {}
    _flatten(steps["sequence"].get("feature", {}), "", out)
    return out


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, FeatureSpec]) -> None:
    if "featuresDict" in node:
        for name, child in node["featuresDict"].get("features", {}).items():
            _flatten(child, f"{prefix}{name}/", out)
        return
    key = prefix.rstrip("/")
    if "tensor" in node:
        t = node["tensor"]
        out[key] = FeatureSpec("tensor", t.get("dtype", ""), _dims(t), t.get("encoding", "none"))
    elif "image" in node:
        t = node["image"]
        out[key] = FeatureSpec("image", t.get("dtype", "uint8"), _dims(t), t.get("encodingFormat", "png"))
    elif "text" in node:
        out[key] = FeatureSpec("text", "string", ())
    else:
        out[key] = FeatureSpec("other", "", ())


def _dims(tensor: dict[str, Any]) -> tuple[int | None, ...]:
    dims = tensor.get("shape", {}).get("dimensions", [])
    return tuple(None if int(d) < 0 else int(d) for d in dims)
