"""An optional torch.profiler window over a few training steps: where a step's GPU time goes.

Set ``runtime.profile_steps: N`` (and ``runtime.profile_start``, default 20, after compile and
warm-up) and rank 0 profiles steps ``start .. start+N-1``, writes ``<out_dir>/profile.txt`` (the
kernels sorted by their own device time) and prints one line for gates and benchmarks::

    [profile] steps=20..24 wall=1.234s gpu_busy=87.1% matmul=62.3% attention=9.8% other=27.9% (of kernel time)

``gpu_busy`` is kernel time over the window's wall time: well under 100% means the GPU waits on the
host (launch overhead, syncs, data). The shares split kernel time by kernel name. Off by default:
profiling slows the profiled steps, so they are not representative of throughput.
"""
from __future__ import annotations

import time
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
        sort_by = "self_cuda_time_total" if rows else "self_cpu_time_total"
        (self.out_dir / "profile.txt").write_text(events.table(sort_by=sort_by, row_limit=60))
        if rows:
            split = (f"gpu_busy={100 * shares['kernel_s'] / wall:.1f}% matmul={100 * shares['matmul']:.1f}% "
                     f"attention={100 * shares['attention']:.1f}% other={100 * shares['other']:.1f}% (of kernel time)")
        else:
            split = "gpu_busy=n/a (no GPU kernels: CPU run)"
        self.log(f"[profile] steps={self.start}..{step} wall={wall:.3f}s {split}; table: {self.out_dir / 'profile.txt'}")
