"""Diagnosis of a failing step's log: time and memory on a 1 MiB and a 1 GiB log (one command, not a test).

    python tests/bench/bench_diagnose.py                 # 1 MiB and 1 GiB logs, ours and the whole-log baseline
    python tests/bench/bench_diagnose.py --no-baseline   # ours only (the baseline needs ~10 GB of RAM at 1 GiB)

The log is a torchrun training log (tqdm rewrites, ANSI colour, `[rank0]:` labels, warnings) that
ends in a CUDA OOM traceback and torchrun's ChildFailedError, written once per size into
$TMPDIR/agentops-bench/. Each case runs in a fresh Python process (so its peak RSS is its own),
after one warm-up call, and reports the median of 5 timed calls and the peak RSS above the
process's RSS with the catalog loaded:

- ours: what a failed step costs the executor and `agentops diagnose`: `read_tail` (seek to the
  last 64 KiB, read it) then `diagnose(text, tags=["train"])`;
- baseline: the whole log read and decoded (what `agentops diagnose` did before), then the same
  `diagnose`, which looks at the same last 400 lines.

It exits 1 unless ours on the 1 GiB log stays within 2x of ours on the 1 MiB log in time and memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"1MiB": 1 << 20, "1GiB": 1 << 30}
RUNS = 5
BLOCK_LINES = 400

FAILURE = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/workspace/openpi/scripts/train_waypoint.py", line 455, in train_vlm
[rank0]:     loss.backward()
[rank0]:   File "/workspace/openpi/.venv/lib/python3.11/site-packages/torch/_tensor.py", line 626, in backward
[rank0]:     torch.autograd.backward(
[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.92 GiB. GPU 0 has a total capacity of 94.97 GiB of which 1.20 GiB is free.
W0221 13:10:41.221000 7712 torch/distributed/elastic/multiprocessing/api.py:897] Sending process 7714 closing signal SIGTERM
E0221 13:10:41.400000 7712 torch/distributed/elastic/multiprocessing/api.py:869] failed (exitcode: 1) local_rank: 0 (pid: 7713) of binary: .venv/bin/python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
"""


def _block() -> bytes:
    """One block of healthy training output: step lines, a tqdm line with carriage returns, a warning."""
    lines = []
    for i in range(BLOCK_LINES):
        if i % 50 == 0:
            bar = "\r".join(f"Training:  {k}%|{'#' * (k // 10):10s}| {k}/100 [00:0{k % 10}<00:10, 9.8it/s]" for k in range(0, 100, 20))
            lines.append(bar)
        elif i % 97 == 0:
            lines.append("/workspace/.venv/lib/python3.11/site-packages/torch/utils/checkpoint.py:91: UserWarning: pass use_reentrant explicitly")
        else:
            lines.append(f"\x1b[32m[rank0]: [VLM] step={i}/30000 loss=1.{i % 1000:03d} lr=5.000e-05 grad_norm=0.{i % 97:02d} s/step=1.43\x1b[0m")
    return ("\n".join(lines) + "\n").encode()


def write_log(size: int, where: Path) -> Path:
    path = where / f"train-{size}.log"
    tail = FAILURE.encode()
    if path.exists() and path.stat().st_size == size:
        return path
    block = _block()
    with path.open("wb") as f:
        written = 0
        while written + len(block) + len(tail) <= size:
            f.write(block)
            written += len(block)
        f.write(block[: size - written - len(tail)].rsplit(b"\n", 1)[0] + b"\n")
        f.write(tail)
    return path


def one(mode: str, path: str) -> dict:
    """Run in a child process: time and peak memory of one way of diagnosing the log."""
    sys.path.insert(0, str(ROOT))
    from agent_ops.bounds import DIAGNOSE_TAIL_BYTES
    from agent_ops.known_issues.catalog import default_catalog
    from agent_ops.known_issues.diagnose import diagnose
    from agent_ops.known_issues.root_error import read_tail

    catalog = default_catalog()
    diagnose("warm-up\n", catalog=catalog)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def call():
        text = read_tail(path, DIAGNOSE_TAIL_BYTES) if mode == "ours" else Path(path).read_bytes().decode("utf-8", "replace")
        return diagnose(text, tags=["train"], catalog=catalog)

    result = call()
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times), "peak_rss_mib": (peak - rss_before) / 1024,
            "best": result.best.issue_id if result.best else None, "family": result.family, "root_error": result.root_error}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-baseline", action="store_true", help="skip reading the whole log")
    args = parser.parse_args()
    where = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "agentops-bench"
    where.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, size in SIZES.items():
        path = write_log(size, where)
        for mode in ("ours",) if args.no_baseline else ("ours", "baseline"):
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(path)], capture_output=True, text=True, check=True)
            rows[name, mode] = json.loads(out.stdout)
            r = rows[name, mode]
            print(f"{name:5s} {mode:8s} {r['seconds'] * 1000:9.1f} ms  peak +{r['peak_rss_mib']:8.1f} MiB  -> {r['best']} ({r['family']})")
    print(f"root error: {rows['1GiB', 'ours']['root_error']}")
    small, big = rows["1MiB", "ours"], rows["1GiB", "ours"]
    bounded = big["seconds"] <= 2 * small["seconds"] + 0.01 and big["peak_rss_mib"] <= 2 * small["peak_rss_mib"] + 8
    right = big["best"] == small["best"] == "vlm-cuda-oom-batch16"
    print("bounded: 1 GiB costs what 1 MiB costs" if bounded else "NOT bounded", "| diagnosis right" if right else "| diagnosis WRONG")
    return 0 if bounded and right else 1


if __name__ == "__main__":
    raise SystemExit(main())
