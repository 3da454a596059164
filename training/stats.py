"""Dataset statistics for normalising actions and proprio, validated before they are written.

Usage::

    python -m training.stats --data DIR --robot libero --out dataset_statistics.json \\
        [--openpi-out norm_stats.json] [--proprio-key observation/state] [--json]

Log lines a runbook gate can match (stdout; stderr with ``--json``)::

    [stats] data=DIR robot=libero action_key=action proprio_key=observation/state
    [stats] robot=libero action_dim=7 proprio_dim=8 transitions=66984 trajectories=454
    [stats] content_hash=sha256:<hex> method=tfrecord-crc32c/1
    [stats] wrote FILE seconds=0.41
    [stats] error: <file or field>: <what is wrong>          (exit 2, nothing written)

Statistics are exact over all steps of the split: float32 data accumulated in
float64; ``std`` is the population std (numpy ``ddof=0``, as OpenVLA/openpi);
``q01``/``q99`` use ``np.quantile`` with numpy's default ``linear`` method.
The file layout is documented in :mod:`training.stats_file`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.fingerprint import content_hash, hash_method
from training.rlds import StepColumns, open_layout, read_columns
from training.rlds_layout import DatasetLayout, DatasetLayoutError
from training.robots import RobotConfig, RobotConfigError, get_robot
from training.stats_file import FORMAT, check_counts, check_values, to_openpi, write_json_atomic
from training.tfrecord import TFRecordError

QUANTILE_METHOD = "linear"


class StatsError(ValueError):
    """The statistics cannot be computed or are unfit to normalise with."""


def summarize(values: np.ndarray) -> dict[str, list[float]]:
    """mean, std, q01, q99, min, max per dimension of a [N, D] array."""
    if values.ndim != 2 or values.shape[0] == 0:
        raise StatsError(f"need a non-empty [N, D] array, got shape {values.shape}")
    x = values.astype(np.float64)
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0, method=QUANTILE_METHOD)
    return {
        "mean": x.mean(axis=0).tolist(),
        "std": x.std(axis=0).tolist(),
        "q01": q01.tolist(),
        "q99": q99.tolist(),
        "min": x.min(axis=0).tolist(),
        "max": x.max(axis=0).tolist(),
    }


def build_document(columns: StepColumns, robot: RobotConfig, layout: DatasetLayout, split: str,
                   digest: str, dataset_name: str | None = None) -> dict[str, Any]:
    """The primary-layout stats document (see training.stats_file)."""
    action = summarize(columns.action)
    action["mask"] = list(robot.action_norm_mask or [True] * robot.action_dim)
    entry = {
        "action": action,
        "proprio": summarize(columns.proprio),
        "num_transitions": columns.num_transitions,
        "num_samples": columns.num_transitions,
        "num_trajectories": columns.num_trajectories,
        "meta": {
            "format": FORMAT,
            "robot": robot.name,
            "action_key": robot.action_key,
            "action_dim": robot.action_dim,
            "proprio_key": robot.proprio_key,
            "proprio_dim": robot.proprio_dim,
            "split": split,
            "dataset_dir": str(layout.directory),
            "dataset_name": layout.name,
            "content_hash": digest,
            "content_hash_method": hash_method(layout),
            "quantile_method": QUANTILE_METHOD,
            "std_ddof": 0,
            "accumulation_dtype": "float64",
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tool": "training.stats",
        },
    }
    return {dataset_name or layout.name: entry}


def compute_stats(data: str | Path | DatasetLayout, robot: RobotConfig, split: str = "train",
                  dataset_name: str | None = None) -> dict[str, Any]:
    """Read, summarise and validate; raises StatsError (or a layout/robot error) instead of returning bad stats."""
    layout = open_layout(data, robot)
    columns = read_columns(layout, robot, split)
    if columns.num_transitions == 0:
        raise StatsError(f"{layout.directory}: split {split} has no steps")
    doc = build_document(columns, robot, layout, split, content_hash(layout, split), dataset_name)
    entry = next(iter(doc.values()))
    problems = check_values(entry, robot) + check_counts(entry)
    if problems:
        raise StatsError(f"{layout.directory}: statistics unfit for normalisation: " + "; ".join(problems))
    return doc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.stats", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="RLDS dataset dir (holding dataset_info.json, or its parent)")
    p.add_argument("--robot", required=True, help="robot name (e.g. libero) or a robot .json/.yaml file")
    p.add_argument("--out", required=True, help="stats file to write (OpenVLA dataset_statistics.json layout)")
    p.add_argument("--openpi-out", help="also write openpi's norm_stats.json layout here")
    p.add_argument("--split", default="train")
    p.add_argument("--action-key", help="override the robot's action key (step-relative, e.g. action)")
    p.add_argument("--proprio-key", help="override the robot's proprio key (e.g. observation/state)")
    p.add_argument("--dataset-name", help="top-level key in the file (default: the dataset's TFDS name)")
    p.add_argument("--json", action="store_true", help="print the document as JSON on stdout; logs go to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input, nothing written)."""
    args = _parser().parse_args(argv)
    log = sys.stderr if args.json else sys.stdout
    start = time.perf_counter()
    try:
        robot = get_robot(args.robot).with_keys(args.action_key, args.proprio_key)
        print(f"[stats] data={args.data} robot={robot.name} action_key={robot.action_key} "
              f"proprio_key={robot.proprio_key}", file=log, flush=True)
        doc = compute_stats(args.data, robot, args.split, args.dataset_name)
    except (RobotConfigError, DatasetLayoutError, StatsError, TFRecordError, OSError) as exc:
        print(f"[stats] error: {exc}", file=sys.stderr, flush=True)
        return 2
    entry = next(iter(doc.values()))
    meta = entry["meta"]
    print(f"[stats] robot={robot.name} action_dim={robot.action_dim} proprio_dim={robot.proprio_dim} "
          f"transitions={entry['num_transitions']} trajectories={entry['num_trajectories']}", file=log, flush=True)
    print(f"[stats] content_hash={meta['content_hash']} method={meta['content_hash_method']}", file=log, flush=True)
    try:
        write_json_atomic(args.out, doc)
        print(f"[stats] wrote {args.out} seconds={time.perf_counter() - start:.2f}", file=log, flush=True)
        if args.openpi_out:
            write_json_atomic(args.openpi_out, to_openpi(doc))
            print(f"[stats] wrote {args.openpi_out} layout=openpi", file=log, flush=True)
    except OSError as exc:
        print(f"[stats] error: cannot write: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
