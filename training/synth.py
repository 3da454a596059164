"""Write a synthetic RLDS dataset in the LIBERO layout (no downloads needed).

Usage::

    python -m training.synth --out DIR [--episodes 20] [--steps 50] [--image-size 64] [--seed 0]
    python -m training.synth --out DIR --action-dim 15      # a dataset for another robot, for the checks
    python -m training.synth --out DIR --action-units m     # physical units (seed 002); mm = the unit slip

Log lines a runbook gate can match::

    [synth] writing DIR episodes=N steps=M action_dim=A state_dim=S image_size=H
    [synth] wrote DIR episodes=N steps=M bytes=B seconds=T

DIR becomes the TFDS builder directory (``dataset_info.json``, ``features.json``,
``<name>-train.tfrecord-*``), readable with ``tfds.builder_from_directory(DIR)``.
Exit code 2 on bad arguments or when DIR exists and is not empty (unless
``--overwrite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

LIBERO_OBJECTS = (
    "alphabet soup", "cream cheese", "salad dressing", "bbq sauce", "ketchup",
    "tomato sauce", "butter", "milk", "chocolate pudding", "orange juice",
)
# LIBERO's controller clips arm actions to this range; the gripper is -1 (open) / +1 (close).
ARM_ACTION_LIMIT = 0.9375
FRANKA_HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785], dtype=np.float64)
FRANKA_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
FRANKA_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
JOINT_DIM = 7
# LIBERO's OSC_POSE controller turns a normalised arm action of 1.0 into 0.05 m (position) and 0.5 rad
# (rotation): seed 002's fixed data is in these physical units, with the gripper in [0, 1].
OSC_POSITION_M = 0.05
OSC_ROTATION_RAD = 0.5
# Metres per unit of the written position: "mm" is the slip seed 002's units check exists to catch (std ~14, not 0.014).
ACTION_UNITS = {"normalized": None, "m": 1.0, "mm": 1e-3}


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """What to write: sizes, dimensions, seed."""

    episodes: int = 20
    steps: int = 50  # per episode; ignored when total_steps is set
    total_steps: int | None = None  # spread over the episodes with varied lengths (LIBERO-like)
    action_dim: int = 7
    state_dim: int = 8
    image_size: int = 64
    seed: int = 0
    name: str = "libero_synth"
    shards: int = 1
    jpeg_quality: int = 95
    action_units: str = "normalized"  # see ACTION_UNITS; physical units need LIBERO's 7-dim actions

    def __post_init__(self) -> None:
        problems = []
        if self.episodes < 1:
            problems.append(f"episodes must be >= 1, got {self.episodes}")
        if self.total_steps is None and self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.total_steps is not None and self.total_steps < self.episodes:
            problems.append(f"total_steps ({self.total_steps}) must be >= episodes ({self.episodes})")
        if self.action_dim < 1 or self.state_dim < 1:
            problems.append(f"action_dim and state_dim must be >= 1, got {self.action_dim}, {self.state_dim}")
        if not 8 <= self.image_size <= 1024:
            problems.append(f"image_size must be in [8, 1024], got {self.image_size}")
        if not 1 <= self.shards <= self.episodes:
            problems.append(f"shards must be in [1, episodes], got {self.shards}")
        if self.action_units not in ACTION_UNITS:
            problems.append(f"action_units must be one of {', '.join(ACTION_UNITS)}, got {self.action_units!r}")
        elif self.action_units != "normalized" and self.action_dim != 7:
            problems.append(f"action_units {self.action_units} needs LIBERO's 7-dim actions, got action_dim={self.action_dim}")
        if problems:
            raise ValueError("; ".join(problems))

    def key(self) -> str:
        """A directory-name-safe string of every parameter, for caching written datasets."""
        fields = dataclasses.asdict(self)
        return "-".join(f"{k}{'' if v is None else v}" for k, v in fields.items())

    def episode_lengths(self) -> np.ndarray:
        """Per-episode step counts (fixed, or varied around the mean summing to total_steps)."""
        if self.total_steps is None:
            return np.full(self.episodes, self.steps, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 1])
        weights = rng.uniform(0.6, 1.4, size=self.episodes)
        lengths = np.maximum(1, np.floor(weights / weights.sum() * self.total_steps)).astype(np.int64)
        # Hand the rounding remainder out one step at a time so the sum is exact.
        diff = self.total_steps - int(lengths.sum())
        order = np.argsort(-weights) if diff > 0 else np.argsort(weights)
        for i in range(abs(diff)):
            j = order[i % self.episodes]
            lengths[j] += 1 if diff > 0 else -1
        return lengths


@dataclasses.dataclass
class Episode:
    """One episode's raw arrays before JPEG encoding."""

    actions: np.ndarray  # [T, action_dim] float32
    states: np.ndarray  # [T, state_dim] float32
    images: np.ndarray  # [T, H, W, 3] uint8
    wrist_images: np.ndarray  # [T, H, W, 3] uint8
    instruction: str
    file_path: str


def make_episode(spec: SynthSpec, index: int, length: int) -> Episode:
    """Generate one episode with LIBERO-like value ranges, seeded by (seed, index)."""
    rng = np.random.default_rng([spec.seed, 2, index])
    t = np.arange(length, dtype=np.float64)[:, None]
    arm_dims = max(spec.action_dim - 1, 0)
    freq = rng.uniform(0.02, 0.15, size=arm_dims)
    phase = rng.uniform(0, 2 * np.pi, size=arm_dims)
    amp = rng.uniform(0.2, 0.7, size=arm_dims)
    arm = amp * np.sin(freq * t + phase) + rng.normal(0, 0.05, size=(length, arm_dims))
    arm = np.clip(arm, -ARM_ACTION_LIMIT, ARM_ACTION_LIMIT)
    grasp_at = int(rng.uniform(0.3, 0.6) * length)
    gripper = np.where(np.arange(length) >= grasp_at, 1.0, -1.0)[:, None]
    actions = np.concatenate([arm, gripper], axis=1)[:, : spec.action_dim]
    actions = to_units(actions, spec.action_units).astype(np.float32)

    # Joint positions integrate small arm deltas from the Franka home pose.
    arm6 = np.zeros((length, 6)) if arm_dims < 6 else arm[:, :6]
    deltas = arm6[:, np.arange(JOINT_DIM) % 6] * 0.02
    joints = np.clip(FRANKA_HOME + np.cumsum(deltas, axis=0), FRANKA_LOWER, FRANKA_UPPER)
    finger = np.where(gripper[:, 0] > 0, 0.008, 0.039) + rng.normal(0, 0.0005, size=length)
    state = np.concatenate([joints, finger[:, None]], axis=1)
    if spec.state_dim > state.shape[1]:
        state = np.concatenate([state, rng.normal(0, 0.1, size=(length, spec.state_dim - state.shape[1]))], axis=1)
    states = state[:, : spec.state_dim].astype(np.float32)

    images = _render(rng, length, spec.image_size, moving=True)
    wrist = _render(rng, length, spec.image_size, moving=False)
    obj = LIBERO_OBJECTS[int(rng.integers(len(LIBERO_OBJECTS)))]
    return Episode(
        actions=actions, states=states, images=images, wrist_images=wrist,
        instruction=f"pick up the {obj} and place it in the basket",
        file_path=f"synthetic/{spec.name}/episode_{index:05d}.hdf5",
    )


def to_units(actions: np.ndarray, units: str) -> np.ndarray:
    """Normalised LIBERO actions [T, 7] in the given units: position x,y,z, rotation, gripper 0/1."""
    metres_per_unit = ACTION_UNITS[units]
    if metres_per_unit is None:
        return actions
    out = np.array(actions, dtype=np.float64)
    out[:, :3] *= OSC_POSITION_M / metres_per_unit
    out[:, 3:6] *= OSC_ROTATION_RAD
    out[:, 6] = (out[:, 6] + 1) / 2
    return out


def _render(rng: np.random.Generator, length: int, size: int, moving: bool) -> np.ndarray:
    """Textured frames with a moving block: compresses and decodes like a camera image, cheap to make."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colour_a, colour_b = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    background = colour_a * (1 - yy[..., None]) + colour_b * xx[..., None]
    background += rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    frames = np.repeat(np.clip(background, 0, 255).astype(np.uint8)[None], length, axis=0)
    block = max(2, size // 6)
    start = rng.integers(0, size - block, size=2)
    velocity = rng.uniform(-0.4, 0.4, size=2) if moving else rng.uniform(-0.1, 0.1, size=2)
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    pos = np.clip(start + velocity * np.arange(length)[:, None], 0, size - block).astype(np.int64)
    for i, (y, x) in enumerate(pos):
        frames[i, y : y + block, x : x + block] = colour
    return frames


def features_spec(spec: SynthSpec):
    """The TFDS feature connectors of the LIBERO RLDS layout (seed 003)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    image = lambda: f.Image(shape=(spec.image_size, spec.image_size, 3), dtype=np.uint8, encoding_format="jpeg")
    return f.FeaturesDict({
        "steps": f.Dataset({
            "action": f.Tensor(shape=(spec.action_dim,), dtype=np.float32),
            "observation": f.FeaturesDict({
                "image": image(),
                "wrist_image": image(),
                "state": f.Tensor(shape=(spec.state_dim,), dtype=np.float32),
                "joint_state": f.Tensor(shape=(JOINT_DIM,), dtype=np.float32),
            }),
            "language_instruction": f.Text(),
            "is_first": f.Scalar(dtype=np.bool_),
            "is_last": f.Scalar(dtype=np.bool_),
            "is_terminal": f.Scalar(dtype=np.bool_),
            "reward": f.Scalar(dtype=np.float32),
            "discount": f.Scalar(dtype=np.float32),
        }),
        "episode_metadata": f.FeaturesDict({"file_path": f.Text()}),
    })


def _encoded_frames(spec: SynthSpec, lengths: np.ndarray,
                    episode_hook: Callable[[Episode], Episode] | None) -> Iterator[tuple[Episode, list[bytes], list[bytes]]]:
    """Episodes with their JPEG bytes; encoding runs in tf.data's C++ threads, not a Python loop."""
    import tensorflow as tf

    size = spec.image_size
    episodes: list[Episode] = []

    def frames():
        for index, length in enumerate(lengths):
            episode = make_episode(spec, index, int(length))
            if episode_hook is not None:
                episode = episode_hook(episode)
            episodes.append(episode)
            yield np.concatenate([episode.images, episode.wrist_images])

    ds = tf.data.Dataset.from_generator(frames, output_signature=tf.TensorSpec([None, size, size, 3], tf.uint8))
    ds = ds.unbatch().map(lambda im: tf.io.encode_jpeg(im, quality=spec.jpeg_quality), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(1024).prefetch(2)
    pending: list[bytes] = []
    done = 0
    for batch in ds.as_numpy_iterator():
        pending.extend(batch.tolist())
        while done < len(lengths) and len(pending) >= 2 * lengths[done]:
            n = int(lengths[done])
            yield episodes[done], pending[:n], pending[n : 2 * n]
            episodes[done] = None  # type: ignore[call-overload]  # free the raw frames
            del pending[: 2 * n]
            done += 1


def _episode_example(episode: Episode, images: list[bytes], wrist: list[bytes]) -> dict:
    length = len(images)
    steps = {
        "action": episode.actions,
        "observation": {
            "image": images,
            "wrist_image": wrist,
            "state": episode.states,
            "joint_state": _joint_state(episode.states),
        },
        "language_instruction": [episode.instruction] * length,
        "is_first": np.arange(length) == 0,
        "is_last": np.arange(length) == length - 1,
        "is_terminal": np.arange(length) == length - 1,
        "reward": (np.arange(length) == length - 1).astype(np.float32),
        "discount": np.ones(length, dtype=np.float32),
    }
    return {"steps": steps, "episode_metadata": {"file_path": episode.file_path}}


def _joint_state(states: np.ndarray) -> np.ndarray:
    joints = np.zeros((states.shape[0], JOINT_DIM), dtype=np.float32)
    joints[:, : min(JOINT_DIM, states.shape[1])] = states[:, :JOINT_DIM]
    return joints


def write_dataset(out: str | os.PathLike, spec: SynthSpec, overwrite: bool = False,
                  episode_hook: Callable[[Episode], Episode] | None = None) -> Path:
    """Write the dataset into ``out`` (built in a sibling temp dir, then renamed into place).

    ``episode_hook`` may alter each generated episode before it is written: the
    tests and check fixtures use it to plant NaNs or constant features.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    features = features_spec(spec)
    lengths = spec.episode_lengths()
    shard_of = np.minimum(np.arange(spec.episodes) * spec.shards // spec.episodes, spec.shards - 1)
    shard_lengths = np.bincount(shard_of, minlength=spec.shards).tolist()
    paths = [tmp / f"{spec.name}-train.tfrecord-{i:05d}-of-{spec.shards:05d}" for i in range(spec.shards)]
    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    try:
        for index, (episode, images, wrist) in enumerate(_encoded_frames(spec, lengths, episode_hook)):
            writers[shard_of[index]].write(features.serialize_example(_episode_example(episode, images, wrist)))
    finally:
        for w in writers:
            w.close()
    template = tfds.core.ShardedFileTemplate(data_dir=tmp, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                                             dataset_name=spec.name, split="train", filetype_suffix="tfrecord")
    split = tfds.core.SplitInfo(name="train", shard_lengths=shard_lengths,
                                num_bytes=sum(p.stat().st_size for p in paths), filename_template=template)
    tfds.folder_dataset.write_metadata(
        data_dir=tmp, features=features, split_infos=[split], filename_template=template, check_data=False,
        description=f"Synthetic LIBERO-layout RLDS data written by training.synth ({spec})",
    )
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def ensure_dataset(out: str | os.PathLike, spec: SynthSpec) -> Path:
    """Write the dataset unless ``out`` already holds one (datasets are renamed into place complete)."""
    out = Path(out)
    if (out / "dataset_info.json").is_file():
        return out
    return write_dataset(out, spec, overwrite=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="dataset directory to write (the TFDS builder dir)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps", type=int, default=50, help="steps per episode")
    p.add_argument("--total-steps", type=int, default=None, help="total steps spread over episodes of varied length")
    p.add_argument("--action-dim", type=int, default=7, help="7 for libero; 15 writes another robot's data")
    p.add_argument("--state-dim", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="libero_synth", help="dataset name (file prefix)")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--action-units", choices=list(ACTION_UNITS), default="normalized",
                   help="normalized: LIBERO's [-1, 1] controller actions; m: position in metres, rotation in radians, "
                        "gripper 0/1 (seed 002); mm: the same with position in millimetres (wrong units)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        spec = SynthSpec(episodes=args.episodes, steps=args.steps, total_steps=args.total_steps,
                         action_dim=args.action_dim, state_dim=args.state_dim, image_size=args.image_size,
                         seed=args.seed, name=args.name, shards=args.shards, action_units=args.action_units)
    except ValueError as exc:
        print(f"[synth] error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"[synth] error: {out}: exists and is not empty (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    total = int(spec.episode_lengths().sum())
    print(f"[synth] writing {out} episodes={spec.episodes} steps={total} action_dim={spec.action_dim} "
          f"state_dim={spec.state_dim} image_size={spec.image_size} action_units={spec.action_units}", flush=True)
    start = time.perf_counter()
    write_dataset(out, spec, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"[synth] wrote {out} episodes={spec.episodes} steps={total} bytes={size} "
          f"seconds={time.perf_counter() - start:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
