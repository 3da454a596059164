"""Reading RLDS episodes: a fast numpy path over the TFRecord files, and the TFDS path.

``read_columns`` is what the statistics and the cache use: it memory-maps the
TFRecord shards and parses only the requested step features (no TensorFlow,
no image decoding). ``read_columns_tfds`` goes through
``tfds.builder_from_directory`` with ``PartialDecoding`` for file formats the
fast path does not read (e.g. array_record) and as a cross-check in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.rlds_layout import STEPS, DatasetLayout, DatasetLayoutError, check_robot, read_layout
from training.robots import RobotConfig
from training.tfrecord import read_examples


@dataclass
class StepColumns:
    """Per-step arrays of one split, concatenated over episodes in file order."""

    action: np.ndarray  # [N, action_dim] float32
    proprio: np.ndarray  # [N, proprio_dim] float32
    episode_starts: np.ndarray  # [E + 1] int64 offsets: episode e is steps [starts[e], starts[e+1])
    extra: dict[str, list] = field(default_factory=dict)  # per-episode values of extra keys, raw

    @property
    def num_transitions(self) -> int:
        """Steps over all episodes."""
        return int(self.action.shape[0])

    @property
    def num_trajectories(self) -> int:
        """Episodes."""
        return int(self.episode_starts.shape[0] - 1)


def open_layout(data: str | Path | DatasetLayout, robot: RobotConfig) -> DatasetLayout:
    """Read a dataset's metadata and check it fits the robot before any data is read."""
    layout = data if isinstance(data, DatasetLayout) else read_layout(data)
    check_robot(layout, robot)
    return layout


def read_columns(data: str | Path | DatasetLayout, robot: RobotConfig, split: str = "train",
                 extra_keys: tuple[str, ...] = ()) -> StepColumns:
    """Action and proprio of every step (plus raw extra step keys per episode), without TensorFlow."""
    layout = open_layout(data, robot)
    if layout.file_format != "tfrecord":
        return read_columns_tfds(layout, robot, split)
    action_key, proprio_key = f"{STEPS}/{robot.action_key}", f"{STEPS}/{robot.proprio_key}"
    keys = [action_key, proprio_key, *(f"{STEPS}/{k}" for k in extra_keys)]
    actions: list[np.ndarray] = []
    proprios: list[np.ndarray] = []
    extra: dict[str, list] = {k: [] for k in extra_keys}
    for path in layout.files(split):
        for index, example in enumerate(read_examples(path, keys)):
            where = f"{path.name} record {index}"
            action = _steps_array(example, action_key, robot.action_dim, where)
            proprio = _steps_array(example, proprio_key, robot.proprio_dim, where)
            if len(action) != len(proprio):
                raise DatasetLayoutError(f"{where}: {len(action)} action steps but {len(proprio)} proprio steps")
            actions.append(action)
            proprios.append(proprio)
            for k in extra_keys:
                extra[k].append(example.get(f"{STEPS}/{k}"))
    return _columns(actions, proprios, robot, extra)


def read_columns_tfds(data: str | Path | DatasetLayout, robot: RobotConfig, split: str = "train") -> StepColumns:
    """Same as read_columns, through tfds.builder_from_directory (decodes only action and proprio)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    layout = open_layout(data, robot)
    builder = tfds.builder_from_directory(str(layout.directory))
    # PartialDecoding cannot see inside RLDS's Dataset feature (it matches Sequence
    # exactly), so skip the expensive part instead: JPEG decoding.
    skip = _nested({k: tfds.decode.SkipDecoding() for k, s in layout.step_features.items() if s.kind == "image"})
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={STEPS: skip} if skip else None)
    # Batch each episode's steps into one element: iterating steps one by one from
    # Python is what makes the seed's loop slow.
    ds = ds.map(lambda ep: ep[STEPS].batch(1 << 30).get_single_element(),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    actions, proprios = [], []
    for steps in ds.as_numpy_iterator():
        actions.append(_get(steps, robot.action_key))
        proprios.append(_get(steps, robot.proprio_key))
    return _columns(actions, proprios, robot, {})


def _steps_array(example: dict[str, object], key: str, dim: int, where: str) -> np.ndarray:
    values = example.get(key)
    if not isinstance(values, np.ndarray) or values.dtype != np.float32:
        raise DatasetLayoutError(f"{where}: feature {key} missing or not a float list")
    if values.size % dim:
        raise DatasetLayoutError(f"{where}: {key} has {values.size} floats, not a multiple of dim {dim}")
    return values.reshape(-1, dim)


def _columns(actions: list[np.ndarray], proprios: list[np.ndarray], robot: RobotConfig,
             extra: dict[str, list]) -> StepColumns:
    lengths = np.array([len(a) for a in actions], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return StepColumns(
        action=np.concatenate(actions) if actions else np.zeros((0, robot.action_dim), np.float32),
        proprio=np.concatenate(proprios) if proprios else np.zeros((0, robot.proprio_dim), np.float32),
        episode_starts=starts,
        extra=extra,
    )


def _nested(flat: dict[str, object]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _get(nested: dict, key: str) -> np.ndarray:
    for part in key.split("/"):
        nested = nested[part]
    return np.asarray(nested, dtype=np.float32)
