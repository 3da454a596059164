"""Benchmark: dataset statistics the seed's way (per-step ``.numpy()``) vs ``python -m training.stats``.

Run from the repository root::

    python tests/bench/bench_stats.py            # LIBERO-sized: 454 episodes, 66,984 steps, 128x128 JPEG
    python tests/bench/bench_stats.py --small    # 45 episodes, 6,698 steps, for quick iteration
    python tests/bench/bench_stats.py --cache    # also: build the training cache, time its first batch

The dataset is written once by ``training.synth`` into a directory keyed by its
parameters (``--cache-root``, default ``$TMPDIR/agentops-bench``) and reused by
later runs. Each contender runs in its own fresh Python process and is timed
end to end (interpreter start, imports, reading, statistics; ours also hashes
the dataset and writes the file). By default both read a dataset the page
cache already holds (it was just written or read, as after a download);
``--cold`` evicts the dataset's files from the page cache before each run
(``posix_fadvise(DONTNEED)`` on our own files: no root, nothing else touched).
The cache's first batch is always timed cold: its files are evicted first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FULL = {"episodes": 454, "total_steps": 66984, "image_size": 128}
SMALL = {"episodes": 45, "total_steps": 6698, "image_size": 128}
WRITER_VERSION = "synth-v1"  # bump when training.synth output changes, to invalidate cached datasets

# The seed's loop, verbatim in spirit: every step is materialised with .numpy(),
# which also decodes both JPEG images the statistics never look at.
BASELINE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import tensorflow_datasets as tfds
t1 = time.perf_counter()
ds = tfds.builder_from_directory(sys.argv[1]).as_dataset(split="train")
actions, states, episodes = [], [], 0
for ep in ds:
    episodes += 1
    for step in ep["steps"]:
        actions.append(step["action"].numpy())
        states.append(step["observation"]["state"].numpy())
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "read_s": t2 - t1, "episodes": episodes, "steps": len(actions), "stats": {}}
for role, rows in (("action", actions), ("proprio", states)):
    x = np.stack(rows).astype(np.float64)
    out["stats"][role] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                          "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist(),
                          "min": x.min(0).tolist(), "max": x.max(0).tolist()}
out["total_in_process_s"] = time.perf_counter() - t0
json.dump(out, open(sys.argv[2], "w"))
"""


# The TFDS fallback of training.rlds (used for non-tfrecord formats): whole episodes
# per element, JPEGs skipped. Timed for reference only.
TFDS_PATH = r"""
import sys
from training.rlds import read_columns_tfds
from training.robots import LIBERO
read_columns_tfds(sys.argv[1], LIBERO)
"""


# First batch from the training cache in a fresh process: open, full-dataset
# permutation, one vectorised read. Imports (torch ~1.5 s) are timed apart.
FIRST_BATCH = r"""
import os, sys, time
from pathlib import Path
t0 = time.perf_counter()
from training.cache_dataset import CacheLoader, ChunkConfig, ChunkDataset, LoaderConfig
t1 = time.perf_counter()
for workers in (0, 2):
    for f in Path(sys.argv[1]).glob("*.npy"):  # cold: nothing of the cache in the page cache
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    start = time.perf_counter()
    loader = CacheLoader(ChunkDataset(sys.argv[1], sys.argv[2], ChunkConfig(future_actions=7)),
                         LoaderConfig(batch_size=int(sys.argv[3]), seed=workers, num_workers=workers))
    batch = next(iter(loader))
    print(f"[bench] cache first batch (cold page cache): {time.perf_counter() - start:.3f} s (batch {sys.argv[3]}, "
          f"num_workers={workers}; imports {t1 - t0:.2f} s apart)")
"""


def bench_cache(data: Path, batch_size: int) -> None:
    """Build (or reuse) the training cache beside the dataset and time its first batch."""
    cache = data.parent / f"{data.name}-cache"
    stats = data.parent / f"{data.name}-stats.json"
    run([sys.executable, "-m", "training.stats", "--data", str(data), "--robot", "libero", "--out", str(stats)])
    reused = (cache / "manifest.json").is_file()
    build_s = run([sys.executable, "-m", "training.cache", "--data", str(data), "--robot", "libero", "--out", str(cache)])
    print(f"[bench] cache {'checked up to date' if reused else 'built'} in {build_s:.1f} s: {cache}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", FIRST_BATCH, str(cache), str(stats), str(batch_size)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    print(proc.stdout.strip() or proc.stderr, flush=True)


def evict(directory: Path) -> None:
    """Drop a directory's files from the page cache (only these files; no root needed)."""
    for f in directory.iterdir():
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def ensure_dataset(params: dict[str, int], root: Path) -> Path:
    """Write the synthetic dataset unless a complete one with these parameters exists."""
    key = f"libero-e{params['episodes']}-t{params['total_steps']}-i{params['image_size']}-{WRITER_VERSION}"
    out = root / key
    if (out / "dataset_info.json").is_file():
        print(f"[bench] reusing dataset {out}", flush=True)
        return out
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shards = 16 if params["episodes"] >= 160 else 2  # LIBERO ships 32 shards of ~14 episodes
    run([sys.executable, "-m", "training.synth", "--out", str(out), "--name", "libero_bench",
         "--episodes", str(params["episodes"]), "--total-steps", str(params["total_steps"]),
         "--image-size", str(params["image_size"]), "--shards", str(shards), "--overwrite"])
    print(f"[bench] wrote dataset {out} in {time.perf_counter() - start:.1f} s", flush=True)
    return out


def run(cmd: list[str]) -> float:
    """Run a command from the repo root with TF's C++ logging quiet; return wall seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"[bench] failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def max_rel_diff(ours: dict, base: dict) -> float:
    """Largest |ours - base| / max(|base|, 1e-12) over every statistic and dimension."""
    worst = 0.0
    for role in ("action", "proprio"):
        for name, ref in base[role].items():
            a, b = np.asarray(ours[role][name], float), np.asarray(ref, float)
            worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))))
    return worst


def main() -> int:
    """Write (or reuse) the dataset, time both contenders, print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="45 episodes / 6,698 steps instead of LIBERO's 454 / 66,984")
    p.add_argument("--cache-root", type=Path, default=Path(tempfile.gettempdir()) / "agentops-bench")
    p.add_argument("--repeat", type=int, default=3, help="runs of ours (the best is reported; baseline runs once)")
    p.add_argument("--cold", action="store_true", help="evict the dataset from the page cache before each run")
    p.add_argument("--cache", action="store_true", help="also build the training cache (~6.6 GB at full size) "
                                                          "and time its first batch")
    p.add_argument("--batch-size", type=int, default=144, help="batch size for the first-batch timing (seed 003 AE: 144)")
    args = p.parse_args()
    params = SMALL if args.small else FULL
    data = ensure_dataset(params, args.cache_root)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        def ours_once() -> float:
            if args.cold:
                evict(data)
            return run([sys.executable, "-m", "training.stats", "--data", str(data), "--robot", "libero",
                        "--out", str(tmp / "stats.json")])

        ours_s = min(ours_once() for _ in range(args.repeat))
        print(f"[bench] ours: {ours_s:.2f} s (python -m training.stats, best of {args.repeat})", flush=True)
        if args.cold:
            evict(data)
        base_s = run([sys.executable, "-c", BASELINE, str(data), str(tmp / "baseline.json")])
        base = json.loads((tmp / "baseline.json").read_text())
        print(f"[bench] baseline: {base_s:.2f} s (import {base['import_s']:.2f} s, loop {base['read_s']:.2f} s)", flush=True)
        ours = next(iter(json.loads((tmp / "stats.json").read_text()).values()))
    if args.cold:
        evict(data)
    tfds_s = run([sys.executable, "-c", TFDS_PATH, str(data)])
    print(f"[bench] reference: training.rlds.read_columns_tfds (TFDS, JPEGs skipped, episode-batched): {tfds_s:.2f} s",
          flush=True)
    if (ours["num_transitions"], ours["num_trajectories"]) != (base["steps"], base["episodes"]):
        sys.exit(f"[bench] count mismatch: ours {ours['num_transitions']}/{ours['num_trajectories']}, "
                 f"baseline {base['steps']}/{base['episodes']}")
    diff = max_rel_diff(ours, base["stats"])
    ratio = base_s / ours_s
    print(f"[bench] page cache: {'cold (evicted before each run)' if args.cold else 'warm'}")
    print(f"[bench] steps={base['steps']} episodes={base['episodes']} image_size={params['image_size']} "
          f"bytes={sum(f.stat().st_size for f in data.iterdir())}")
    print(f"[bench] baseline_s={base_s:.2f} ours_s={ours_s:.2f} ratio={ratio:.1f}x max_rel_diff={diff:.2e}")
    if args.cache:
        bench_cache(data, args.batch_size)
    ok = ratio >= 10 and diff <= 1e-6
    print(f"[bench] {'PASS' if ok else 'FAIL'} (goal: ratio >= 10x, aim 20x; max_rel_diff <= 1e-6)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
