"""An optional torch.profiler window over a few training steps: where a step's GPU time goes.

Set ``runtime.profile_steps: N`` (and ``runtime.profile_start``, default 20, after compile and
warm-up) and rank 0 profiles steps ``start .. start+N-1``, writes ``<out_dir>/profile.txt`` (the
kernels sorted by their own device time) and prints one line for gates and benchmarks::

    [profile] steps=20..24 wall=1.234s gpu_busy=87.1% matmul=62.3% attention=9.8% other=27.9% (of kernel time) ...
        ... comm=12.0% exposed_comm=3.1% (of wall); table: <out_dir>/profile.txt

``gpu_busy`` is kernel time over the window's wall time: well under 100% means the GPU waits on the
host (launch overhead, syncs, data). The shares split kernel time by kernel name. Off by default:
profiling slows the profiled steps, so they are not representative of throughput.

Communication, as shares of the window's wall time, end the line (``comm=12.0% exposed_comm=3.1%
(of wall)``): ``comm`` is the time any collective kernel (NCCL) runs, ``exposed_comm`` the part of
it during which no compute kernel runs on the GPU, i.e. what overlap failed to hide. On CPU
(gloo) the same is read from host threads: gloo's collectives against the other threads'
top-level ops. ``<out_dir>/profile.json`` holds every figure of the line.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Kernel-name fragments (cuBLAS/CUTLASS/nvjet GEMMs; SDPA's flash and memory-efficient kernels).
MATMUL = ("gemm", "matmul", "cutlass", "xmma", "nvjet", "cublas")
ATTENTION = ("flash", "fmha", "attention", "efficient_attention")


def kernel_shares(rows: list[tuple[str, float]]) -> dict[str, float]:
    """Shares of kernel time by kind, from (kernel name, self device time) rows."""
    total = sum(t for _, t in rows) or 1.0
    matmul = sum(t for n, t in rows if any(k in n.lower() for k in MATMUL))
    attention = sum(t for n, t in rows if any(k in n.lower() for k in ATTENTION) and not any(k in n.lower() for k in MATMUL))
    return {"kernel_s": total / 1e6, "matmul": matmul / total, "attention": attention / total,
            "other": max(0.0, 1 - (matmul + attention) / total)}


COLLECTIVE = ("nccl", "gloo:")  # NCCL kernels (ncclDevKernel_*, ncclKernel_*); gloo's work on its own threads
NOT_COMPUTE = ("memcpy", "memset")  # copies are device activity, but they hide no communication

Interval = tuple[float, float]


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of intervals as sorted, disjoint intervals."""
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def exposed_time(comm: Iterable[Interval], compute: Iterable[Interval]) -> tuple[float, float]:
    """(time some communication runs, the part of it when no compute runs): unions, so overlaps count once."""
    comm, busy = merged(comm), merged(compute)
    total = sum(end - start for start, end in comm)
    covered, j = 0.0, 0
    for start, end in comm:
        while j < len(busy) and busy[j][1] <= start:
            j += 1
        k = j
        while k < len(busy) and busy[k][0] < end:
            covered += min(end, busy[k][1]) - max(start, busy[k][0])
            k += 1
    return total, total - covered


def comm_intervals(events: Iterable[Any]) -> tuple[list[Interval], list[Interval]]:
    """(communication, compute) intervals in microseconds from torch.profiler events.

    GPU kernels when there are any: collectives by name, every other kernel but copies is compute.
    Else host events: gloo's collectives, against the top-level ops of the threads that run none.
    """
    events = list(events)
    kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    comm: list[Any] = []
    compute: list[Any] = []
    if kernels:
        for e in kernels:
            name = e.name.lower()
            if any(k in name for k in COLLECTIVE):
                comm.append(e)
            elif not name.startswith(NOT_COMPUTE):
                compute.append(e)
    else:
        comm = [e for e in events if e.name.lower().startswith(COLLECTIVE)]
        comm_threads = {e.thread for e in comm}
        compute = [e for e in events if e.cpu_parent is None and e.thread not in comm_threads
                   and not e.name.startswith(("c10d::", "ProfilerStep"))]
    return ([(e.time_range.start, e.time_range.end) for e in comm],
            [(e.time_range.start, e.time_range.end) for e in compute])


class StepProfiler:
    """Call ``before(step)`` at the top of each step and ``after(step)`` once it is done (rank 0 only)."""

    def __init__(self, steps: int, start: int, out_dir: Path, enabled: bool, log: Any) -> None:
        self.steps, self.start, self.out_dir, self.log = steps, start, out_dir, log
        self.enabled = enabled and steps > 0
        self._prof = None
        self._t0 = 0.0

    def before(self, step: int) -> None:
        if self.enabled and self._prof is None and step == self.start:
            import torch

            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self._prof = torch.profiler.profile(activities=activities)
            self._prof.__enter__()
            self._t0 = time.perf_counter()

    def after(self, step: int) -> None:
        if self._prof is None or step != self.start + self.steps - 1:
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._t0
        prof, self._prof, self.enabled = self._prof, None, False
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        # Only the kernels themselves: an aten op's entry also carries its kernels' device time, and a
        # Triton launch appears once as a CPU op and once as a kernel; counting those would count twice.
        rows = [(e.key, float(e.self_device_time_total)) for e in events
                if str(getattr(e, "device_type", "")).endswith("CUDA") and e.self_device_time_total > 0]
        shares = kernel_shares(rows)
        comm_us, exposed_us = exposed_time(*comm_intervals(prof.events()))
        sort_by = "self_cuda_time_total" if rows else "self_cpu_time_total"
        (self.out_dir / "profile.txt").write_text(events.table(sort_by=sort_by, row_limit=60))
        if rows:
            split = (f"gpu_busy={100 * shares['kernel_s'] / wall:.1f}% matmul={100 * shares['matmul']:.1f}% "
                     f"attention={100 * shares['attention']:.1f}% other={100 * shares['other']:.1f}% (of kernel time)")
        else:
            split = "gpu_busy=n/a (no GPU kernels: CPU run)"
        comm, exposed = comm_us / 1e6 / wall, exposed_us / 1e6 / wall
        figures = {"steps": [self.start, step], "wall_s": wall, "gpu": bool(rows), "comm": comm,
                   "exposed_comm": exposed, **({"gpu_busy": shares["kernel_s"] / wall, **shares} if rows else {})}
        (self.out_dir / "profile.json").write_text(json.dumps(figures, indent=2) + "\n")
        self.log(f"[profile] steps={self.start}..{step} wall={wall:.3f}s {split} comm={100 * comm:.1f}% "
                 f"exposed_comm={100 * exposed:.1f}% (of wall); table: {self.out_dir / 'profile.txt'}")
