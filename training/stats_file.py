"""The dataset-statistics file: its layouts, value checks, atomic writing, and the validator.

Pure Python + numpy (no torch, no TensorFlow): the controller's ``dataset_stats``
check calls :func:`validate_stats_file`, or, through a transport on the box::

    python -m training.stats_file FILE --robot libero [--data DIR] [--json]
    [stats-check] ok FILE robot=libero                      (exit 0)
    [stats-check] problem FILE: <field>: <what is wrong>    (one line each; exit 2)

Primary layout (OpenVLA ``dataset_statistics.json``; OpenVLA reads
``stats[dataset]["action"]["q01"]`` and ignores the extra keys; it needs a
single top-level key when no ``unnorm_key`` is given, so metadata lives inside
the dataset's entry, never beside it)::

    {"<dataset_name>": {
        "action":  {"mean": [...], "std": [...], "q01": [...], "q99": [...],
                    "min": [...], "max": [...], "mask": [...]},
        "proprio": {"mean": ..., "std": ..., "q01": ..., "q99": ..., "min": ..., "max": ...},
        "num_transitions": N, "num_samples": N, "num_trajectories": E,
        "meta": {"format": "agentops.dataset_statistics/1", "robot": ..., "content_hash": ..., ...}}}

Secondary layout (openpi ``norm_stats.json``; pydantic ignores the ``meta`` key)::

    {"norm_stats": {"actions": {"mean", "std", "q01", "q99"}, "state": {...}}, "meta": {...}}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from training.robots import RobotConfig, RobotConfigError, get_robot

FORMAT = "agentops.dataset_statistics/1"
STAT_NAMES = ("mean", "std", "q01", "q99", "min", "max")
OPENPI_NAMES = {"action": "actions", "proprio": "state"}
# Below this a std or q01..q99 range would blow normalised values up to ~1e8.
MIN_SPREAD = 1e-8


def find_entry(doc: Any) -> tuple[str, dict[str, Any]]:
    """(layout, entry) where entry has "action"/"proprio" stats, counts and meta; ValueError if neither layout."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object at the top level")
    if isinstance(doc.get("norm_stats"), dict):
        stats = doc["norm_stats"]
        entry = {role: stats[name] for role, name in OPENPI_NAMES.items() if name in stats}
        entry["meta"] = doc.get("meta", {})
        return "openpi", entry
    candidates = [k for k, v in doc.items() if isinstance(v, dict) and "action" in v]
    if len(candidates) == 1:
        return "openvla", doc[candidates[0]]
    if len(candidates) > 1:
        raise ValueError(f"several dataset entries {candidates}; expected one (OpenVLA needs an unnorm_key otherwise)")
    raise ValueError("neither an OpenVLA-style {dataset: {action: ...}} nor an openpi {norm_stats: ...} layout")


def check_values(entry: dict[str, Any], robot: RobotConfig) -> list[str]:
    """Problems with dims and values of a stats entry for this robot; empty when fine."""
    problems: list[str] = []
    for role, dim in (("action", robot.action_dim), ("proprio", robot.proprio_dim)):
        stats = entry.get(role)
        if not isinstance(stats, dict):
            problems.append(f"{role}: missing")
            continue
        for name in STAT_NAMES[:4]:
            if name not in stats:
                problems.append(f"{role}.{name}: missing")
        problems += _check_role(role, stats, dim, robot)
    return problems


def _check_role(role: str, stats: dict[str, Any], dim: int, robot: RobotConfig) -> list[str]:
    problems: list[str] = []
    arrays: dict[str, list[float]] = {}
    for name in STAT_NAMES:
        values = stats.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            problems.append(f"{role}.{name}: expected a list of numbers")
            continue
        if len(values) != dim:
            hint = " (stats for another robot: seed 003 known issue 2)" if role == "action" else ""
            problems.append(f"{role}.{name} has {len(values)} values but robot {robot.name} has {role}_dim={dim}{hint}")
            continue
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            problems.append(f"{role}.{name}: non-finite values (NaN/inf) at dims {bad}")
            continue
        arrays[name] = [float(v) for v in values]
    if "std" in arrays:
        flat = [i for i, v in enumerate(arrays["std"]) if v < MIN_SPREAD]
        if flat:
            problems.append(f"{role}.std: zero (< {MIN_SPREAD:g}) at dims {flat}: a constant feature cannot be normalised")
    if "q01" in arrays and "q99" in arrays:
        flat = [i for i, (lo, hi) in enumerate(zip(arrays["q01"], arrays["q99"], strict=True)) if hi - lo < MIN_SPREAD]
        if flat:
            problems.append(f"{role}: degenerate q01..q99 range at dims {flat} (q99 - q01 < {MIN_SPREAD:g})")
    if "min" in arrays and "max" in arrays and "q01" in arrays and "q99" in arrays:
        order = [i for i in range(dim) if not (arrays["min"][i] <= arrays["q01"][i] <= arrays["q99"][i] <= arrays["max"][i])]
        if order:
            problems.append(f"{role}: min <= q01 <= q99 <= max violated at dims {order}")
    return problems


def check_counts(entry: dict[str, Any]) -> list[str]:
    """Problems with num_transitions / num_trajectories (absent in openpi files, so only checked if present)."""
    problems = []
    for name in ("num_transitions", "num_trajectories"):
        value = entry.get(name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            problems.append(f"{name}: expected a positive integer, got {value!r}")
    return problems


def validate_stats_file(stats_path: str | os.PathLike, robot: str | RobotConfig,
                        dataset_dir: str | os.PathLike | None = None) -> list[str]:
    """Problems that make a stats file unfit for this robot (and dataset, if given); empty means valid.

    Every message starts with the file name. With ``dataset_dir`` the dataset's
    feature dims are checked against the robot, and the file's recorded content
    hash, robot, keys and counts against the dataset.
    """
    path = Path(stats_path)
    where = str(path)
    try:
        robot_cfg = robot if isinstance(robot, RobotConfig) else get_robot(robot)
    except RobotConfigError as exc:
        return [f"{where}: {exc}"]
    if not path.is_file():
        return [f"{where}: stats file not found"]
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{where}:{exc.lineno}: invalid JSON: {exc.msg}"]
    try:
        _, entry = find_entry(doc)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    problems = check_values(entry, robot_cfg) + check_counts(entry)
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    if meta.get("robot") not in (None, robot_cfg.name):
        problems.append(f"meta.robot is {meta['robot']!r}, expected {robot_cfg.name!r}")
    if dataset_dir is not None:
        problems += _against_dataset(entry, meta, robot_cfg, dataset_dir)
    return [f"{where}: {p}" for p in problems]


def _against_dataset(entry: dict[str, Any], meta: dict[str, Any], robot: RobotConfig,
                     dataset_dir: str | os.PathLike) -> list[str]:
    # Imported here: only this path reads the dataset's files.
    from training.fingerprint import content_hash, hash_method
    from training.rlds_layout import DatasetLayoutError, check_robot, read_layout

    try:
        layout = read_layout(dataset_dir)
        check_robot(layout, robot)
    except (DatasetLayoutError, RobotConfigError) as exc:
        return [f"dataset {dataset_dir}: {exc}"]
    problems = []
    split = meta.get("split", "train")
    recorded = meta.get("content_hash")
    if recorded is None:
        problems.append("meta.content_hash missing: cannot tell which dataset these stats were computed from")
    elif meta.get("content_hash_method", hash_method(layout)) != hash_method(layout):
        problems.append(f"meta.content_hash_method {meta.get('content_hash_method')!r} is not {hash_method(layout)!r}")
    else:
        try:
            actual = content_hash(layout, split)
        except (ValueError, OSError) as exc:
            return problems + [f"dataset {dataset_dir}: {exc}"]
        if actual != recorded:
            problems.append(f"meta.content_hash {recorded} does not match dataset {layout.directory} ({actual}): "
                            f"stats computed from other data; recompute them")
    for field, expected in (("action_key", robot.action_key), ("proprio_key", robot.proprio_key)):
        if meta.get(field) not in (None, expected):
            problems.append(f"meta.{field} is {meta[field]!r}, robot {robot.name} uses {expected!r}")
    trajectories = entry.get("num_trajectories")
    if trajectories is not None and split in layout.shard_lengths and trajectories != layout.num_episodes(split):
        problems.append(f"num_trajectories is {trajectories} but dataset {layout.directory} has "
                        f"{layout.num_episodes(split)} episodes in split {split}")
    return problems


def to_openpi(doc: dict[str, Any]) -> dict[str, Any]:
    """The openpi ``norm_stats.json`` form of a primary-layout document."""
    _, entry = find_entry(doc)
    norm = {OPENPI_NAMES[role]: {k: entry[role][k] for k in STAT_NAMES[:4]} for role in OPENPI_NAMES}
    return {"norm_stats": norm, "meta": entry.get("meta", {})}


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to a temp file beside ``path`` and rename it over: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 (not mkstemp's 0o600) so the file gets the usual umask-derived mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line validator; exit 0 when valid, 2 when there are problems."""
    p = argparse.ArgumentParser(prog="python -m training.stats_file", description=validate_stats_file.__doc__.splitlines()[0])
    p.add_argument("stats", help="stats file (OpenVLA dataset_statistics.json or openpi norm_stats.json layout)")
    p.add_argument("--robot", required=True, help="robot name (e.g. libero) or a robot .json/.yaml file")
    p.add_argument("--data", help="RLDS dataset dir the stats must have been computed from")
    p.add_argument("--json", action="store_true", help='print {"problems": [...]} on stdout instead of log lines')
    args = p.parse_args(argv)
    problems = validate_stats_file(args.stats, args.robot, args.data)
    if args.json:
        print(json.dumps({"stats": args.stats, "robot": args.robot, "problems": problems}))
    elif problems:
        for problem in problems:
            print(f"[stats-check] problem {problem}")
    else:
        print(f"[stats-check] ok {args.stats} robot={args.robot}")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
