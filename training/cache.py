"""The training cache: an RLDS dataset converted once into memory-mapped numpy arrays.

Usage::

    python -m training.cache --data DIR --robot libero --out CACHE_DIR [--no-images] [--overwrite]

Log lines a runbook gate can match::

    [cache] data=DIR robot=libero out=CACHE_DIR
    [cache] robot=libero transitions=66984 trajectories=454 images=observation/image,observation/wrist_image
    [cache] images 33492/66984
    [cache] wrote CACHE_DIR bytes=B seconds=T
    [cache] up to date CACHE_DIR                               (same source content hash: nothing to do)
    [cache] error: <file or field>: <what is wrong>            (exit 2)

Layout of CACHE_DIR (``manifest.json`` is written last and the directory is
renamed into place, so a cache with a manifest is always complete)::

    actions.npy          float32 [N, action_dim]     raw (unnormalised) robot units
    proprio.npy          float32 [N, proprio_dim]
    episode_starts.npy   int64   [E + 1]             episode e = steps [starts[e], starts[e+1])
    episode_index.npy    int32   [N]                 step -> episode (O(1) chunk padding)
    instruction_ids.npy  int32   [N]                 index into instructions.json
    instructions.json    list[str]
    image.<key>.npy      uint8   [N, H, W, 3]        key with "/" -> ".", e.g. image.observation.image.npy
    manifest.json        shapes, dtypes, robot, source dataset + content hash, created

Images are stored decoded (uint8), not as JPEG bytes: a batch is then a
memory-mapped fancy index with no decoder in the data path (no TF, no PIL, no
worker CPU), at 49 KB per 128x128 frame (~6.6 GB for LIBERO's two cameras),
which the GPU boxes' disks and page cache hold easily. The loader asks the
kernel for all of a batch's frames at once (``madvise(WILLNEED)``), so even a
batch read from a cold page cache costs one disk round trip, not one per frame.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import mmap
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.fingerprint import content_hash, hash_method
from training.rlds import StepColumns, open_layout, read_columns
from training.rlds_layout import STEPS, DatasetLayout, DatasetLayoutError
from training.robots import RobotConfig, RobotConfigError, get_robot
from training.stats_file import write_json_atomic
from training.tfrecord import TFRecordError, read_examples

FORMAT = "agentops.training_cache/1"
MANIFEST = "manifest.json"


class CacheError(ValueError):
    """A cache directory is missing, incomplete, or does not match what it is used with."""


def image_file(key: str) -> str:
    """File name of one camera's array."""
    return f"image.{key.replace('/', '.')}.npy"


@dataclass
class CacheArrays:
    """An opened cache: the manifest and read-only memory maps of its arrays."""

    directory: Path
    manifest: dict[str, Any]
    actions: np.ndarray
    proprio: np.ndarray
    episode_starts: np.ndarray
    episode_index: np.ndarray
    instruction_ids: np.ndarray
    instructions: list[str]
    images: dict[str, np.ndarray]
    maps: dict[str, tuple[mmap.mmap, int]]  # camera -> (mapping, byte offset of row 0)

    @property
    def num_transitions(self) -> int:
        """Steps in the cache."""
        return int(self.actions.shape[0])

    def prefetch_images(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading these image rows now, all at once.

        Without this a cold batch faults its ~300 frames in one by one, each a
        separate disk round trip (~1.5 s for 144 x 2 frames here); with it the
        reads are in flight together and the copy that follows waits once.
        """
        for key, (mapping, offset) in self.maps.items():
            row_bytes = self.images[key][0].nbytes
            for row in rows.tolist():
                start = offset + row * row_bytes
                aligned = start - start % mmap.PAGESIZE
                mapping.madvise(mmap.MADV_WILLNEED, aligned, start + row_bytes - aligned)


def open_cache(directory: str | os.PathLike, image_keys: tuple[str, ...] | None = None) -> CacheArrays:
    """Memory-map a cache (milliseconds: nothing is read until indexed)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CacheError(f"{manifest_path}: missing (not a training cache, or its conversion did not finish)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    available = manifest.get("image_keys", [])
    wanted = tuple(available) if image_keys is None else image_keys
    missing = [k for k in wanted if k not in available]
    if missing:
        raise CacheError(f"{manifest_path}: no images for {missing}; cached: {available}")
    skipped = {f"image:{k}" for k in available if k not in wanted}
    loaded = {name: _load(directory, spec, name) for name, spec in manifest["arrays"].items() if name not in skipped}
    arrays = {name: arr for name, (arr, _, _) in loaded.items()}
    return CacheArrays(
        directory=directory, manifest=manifest,
        actions=arrays["actions"], proprio=arrays["proprio"], episode_starts=arrays["episode_starts"],
        episode_index=arrays["episode_index"], instruction_ids=arrays["instruction_ids"],
        instructions=json.loads((directory / "instructions.json").read_text()),
        images={k: arrays[f"image:{k}"] for k in wanted},
        maps={k: loaded[f"image:{k}"][1:] for k in wanted},
    )


def _load(directory: Path, spec: dict[str, Any], name: str) -> tuple[np.ndarray, mmap.mmap, int]:
    """Map a .npy file ourselves (not np.load) to keep the mmap object for madvise."""
    path = directory / spec["file"]
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: cannot map array {name}: {exc}") from None
    if list(shape) != spec["shape"] or str(dtype) != spec["dtype"] or fortran:
        order = " in Fortran order (C order expected)" if fortran else ""
        raise CacheError(f"{path}: {name} is {dtype}{list(shape)}{order}, manifest says {spec['dtype']}{spec['shape']}")
    arr = np.ndarray(shape, dtype=dtype, buffer=mapping, offset=offset)
    return arr, mapping, offset


def build_cache(data: str | os.PathLike | DatasetLayout, robot: RobotConfig, out: str | os.PathLike,
                split: str = "train", images: bool = True, log=print) -> Path:
    """Convert one split into a cache directory (temp dir + rename, manifest last)."""
    start = time.perf_counter()
    layout = open_layout(data, robot)
    if layout.file_format != "tfrecord":
        raise CacheError(f"{layout.directory}: cache conversion reads tfrecord files; this dataset is {layout.file_format}")
    out = Path(out)
    digest = content_hash(layout, split)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        columns = read_columns(layout, robot, split, extra_keys=(robot.instruction_key,))
        image_keys = tuple(robot.image_keys) if images else ()
        log(f"[cache] robot={robot.name} transitions={columns.num_transitions} "
            f"trajectories={columns.num_trajectories} images={','.join(image_keys) or 'none'}")
        arrays = _write_columns(tmp, columns, robot)
        for key, spec in _write_images(tmp, layout, split, image_keys, columns.num_transitions, log).items():
            arrays[f"image:{key}"] = spec
        manifest = {
            "format": FORMAT,
            "robot": robot.to_dict(),
            "source": {"dataset_dir": str(layout.directory), "dataset_name": layout.name, "split": split,
                       "content_hash": digest, "content_hash_method": hash_method(layout)},
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "num_transitions": columns.num_transitions,
            "num_trajectories": columns.num_trajectories,
            "image_keys": list(image_keys),
            "arrays": arrays,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir())
    log(f"[cache] wrote {out} bytes={size} seconds={time.perf_counter() - start:.1f}")
    return out


def _write_columns(tmp: Path, columns: StepColumns, robot: RobotConfig) -> dict[str, dict[str, Any]]:
    lengths = np.diff(columns.episode_starts)
    table: dict[str, int] = {}
    ids = np.empty(columns.num_transitions, dtype=np.int32)
    for e, values in enumerate(columns.extra[robot.instruction_key]):
        lo, hi = columns.episode_starts[e], columns.episode_starts[e + 1]
        texts = [v.decode() for v in values] if values else [""] * int(hi - lo)
        ids[lo:hi] = [table.setdefault(t, len(table)) for t in texts]
    (tmp / "instructions.json").write_text(json.dumps(list(table), indent=0))
    arrays = {
        "actions": columns.action.astype(np.float32),
        "proprio": columns.proprio.astype(np.float32),
        "episode_starts": columns.episode_starts.astype(np.int64),
        "episode_index": np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
        "instruction_ids": ids,
    }
    specs = {}
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr)
        specs[name] = {"file": f"{name}.npy", "shape": list(arr.shape), "dtype": str(arr.dtype)}
    return specs


def _write_images(tmp: Path, layout: DatasetLayout, split: str, keys: tuple[str, ...], total: int,
                  log) -> dict[str, dict[str, Any]]:
    """Decode every camera's JPEGs straight into memory-mapped .npy files, in step order."""
    if not keys:
        return {}
    import tensorflow as tf  # only the conversion needs a JPEG decoder

    shapes = {k: tuple(layout.step_features[k].shape) for k in keys}
    for key, shape in shapes.items():
        if len(shape) != 3 or None in shape:
            raise CacheError(f"{STEPS}/{key}: image shape {shape} is not fixed [H, W, C]")
    outs = {k: np.lib.format.open_memmap(tmp / image_file(k), mode="w+", dtype=np.uint8, shape=(total, *shapes[k]))
            for k in keys}
    flat = [f"{STEPS}/{k}" for k in keys]

    def jpegs():
        for path in layout.files(split):
            for example in read_examples(path, flat):
                yield tuple(example[f] for f in flat)

    ds = tf.data.Dataset.from_generator(jpegs, output_signature=tuple(tf.TensorSpec([None], tf.string) for _ in keys))
    # Decode in tf.data's C++ thread pool; the same op TFDS's Image feature uses, so pixels match.
    ds = ds.unbatch().map(lambda *b: tuple(tf.io.decode_jpeg(x, channels=shapes[k][2]) for x, k in zip(b, keys, strict=True)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(512).prefetch(2)
    row, next_log = 0, total // 4
    for batch in ds.as_numpy_iterator():
        n = len(batch[0])
        for key, frames in zip(keys, batch, strict=True):
            if frames.shape[1:] != shapes[key]:
                raise CacheError(f"{STEPS}/{key}: decoded {frames.shape[1:]}, features.json says {shapes[key]}")
            outs[key][row : row + n] = frames
        row += n
        if row >= next_log and row < total:
            log(f"[cache] images {row}/{total}")
            next_log += total // 4
    if row != total:
        raise CacheError(f"{layout.directory}: {row} images for {total} steps")
    specs = {}
    for key, arr in outs.items():
        arr.flush()
        specs[key] = {"file": image_file(key), "shape": list(arr.shape), "dtype": str(arr.dtype)}
    del outs
    return specs


def cache_is_current(out: Path, layout: DatasetLayout, robot: RobotConfig, split: str, images: bool) -> bool:
    """True when ``out`` is a complete cache of exactly this data, robot and split."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    source = manifest.get("source", {})
    return (manifest.get("format") == FORMAT and manifest.get("robot") == robot.to_dict()
            and source.get("split") == split and source.get("content_hash") == content_hash(layout, split)
            and bool(manifest.get("image_keys")) == (images and bool(robot.image_keys)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.cache", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="RLDS dataset dir (holding dataset_info.json, or its parent)")
    p.add_argument("--robot", required=True, help="robot name (e.g. libero) or a robot .json/.yaml file")
    p.add_argument("--out", required=True, help="cache directory to create")
    p.add_argument("--split", default="train")
    p.add_argument("--action-key", help="override the robot's action key")
    p.add_argument("--proprio-key", help="override the robot's proprio key")
    p.add_argument("--no-images", action="store_true", help="cache actions/proprio/instructions only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache built from other data")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    out = Path(args.out)
    try:
        robot = get_robot(args.robot).with_keys(args.action_key, args.proprio_key)
        print(f"[cache] data={args.data} robot={robot.name} out={out}", flush=True)
        layout = open_layout(args.data, robot)
        if out.exists():
            if cache_is_current(out, layout, robot, args.split, not args.no_images):
                print(f"[cache] up to date {out}", flush=True)
                return 0
            if not args.overwrite:
                raise CacheError(f"{out}: exists and is not a cache of this data/robot/split (pass --overwrite)")
        build_cache(layout, robot, out, args.split, images=not args.no_images,
                    log=lambda line: print(line, flush=True))
    except (RobotConfigError, DatasetLayoutError, TFRecordError, CacheError, OSError) as exc:
        print(f"[cache] error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
