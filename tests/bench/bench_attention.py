"""Benchmark: attention kernels at the reference policy's shapes, forward + backward, on one GPU.

Run from the repository root on a CUDA machine::

    python tests/bench/bench_attention.py              # the reference config's shapes at batch 64
    python tests/bench/bench_attention.py --batch 96

Why: in the trainer's profile (``bench_train_gpu.py --profile``) attention is the
second-largest kernel share after the matmuls. This measures, for the two shapes
the reference policy runs (Qwen2-0.5B-shaped backbone: causal, 14 query / 2
key-value heads, the policy's sequence length; SigLIP-B/16: bidirectional, 12
heads, 196 patches x 2 cameras as the batch), each way PyTorch can run it:

* ``sdpa[<backend>] repeat_kv``: key/value heads repeated to the query heads, then
  ``scaled_dot_product_attention`` restricted to one backend (what transformers
  does when it does not pass ``enable_gqa``);
* ``sdpa[<backend>] enable_gqa``: the 2 key/value heads passed as they are;
* ``flex_attention`` (compiled), with a causal block mask where causal.

Baseline, in the same run: SDPA with PyTorch's default backend choice and
``repeat_kv`` (the trainer's current path). Reported: ms per forward+backward
(median of ``--iters`` after warm-up), achieved TFLOP/s counted as the trainer's
FLOP model does (4 x B x H x T^2 x D forward, 2.5x that backward, full T x T
even when causal), and speed against the baseline. A backend that cannot run a
shape is reported with its error, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]

# The reference config's attention shapes (training/configs/ref_0p5b_h100.yaml):
# backbone T = 2 cameras x 196 patches + text tokens + proprio + 8 action queries.
SHAPES = {
    "backbone": {"heads": 14, "kv_heads": 2, "head_dim": 64, "seq": 465, "causal": True, "batch_factor": 1},
    "vision": {"heads": 12, "kv_heads": 12, "head_dim": 64, "seq": 196, "causal": False, "batch_factor": 2},
}


def _time(fn: Callable[[], None], iters: int, warmup: int) -> float:
    """Median milliseconds of fn over iters CUDA-event-timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _inputs(batch: int, shape: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, kv, t, d = batch * shape["batch_factor"], shape["heads"], shape["kv_heads"], shape["seq"], shape["head_dim"]
    make = lambda heads: torch.randn(b, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = make(h), make(kv), make(kv)
    return q, k, v, torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)


def _sdpa(backend: Any, gqa: bool, causal: bool, n_rep: int) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import sdpa_kernel

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not gqa and n_rep > 1:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        kwargs = {"enable_gqa": True} if gqa and n_rep > 1 else {}
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **kwargs)
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **kwargs)
    return run


def _flex(causal: bool, seq: int, n_rep: int) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention)
    mask = None
    if causal:
        mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, seq, seq, device="cuda")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return compiled(q, k, v, block_mask=mask, enable_gqa=n_rep > 1)
    return run


def measure(batch: int, name: str, shape: dict[str, Any], iters: int, warmup: int) -> list[dict[str, Any]]:
    """Every variant on one shape; the first row is the baseline."""
    from torch.nn.attention import SDPBackend

    n_rep = shape["heads"] // shape["kv_heads"]
    variants: list[tuple[str, Callable[..., torch.Tensor]]] = [
        ("sdpa[default] repeat_kv (baseline)", _sdpa(None, False, shape["causal"], n_rep))]
    if n_rep > 1:
        variants.append(("sdpa[default] enable_gqa", _sdpa(None, True, shape["causal"], n_rep)))
    for label, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                           ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        variants.append((f"sdpa[{label}] repeat_kv", _sdpa(backend, False, shape["causal"], n_rep)))
        if n_rep > 1:
            variants.append((f"sdpa[{label}] enable_gqa", _sdpa(backend, True, shape["causal"], n_rep)))
    variants.append(("flex_attention (compiled)", _flex(shape["causal"], shape["seq"], n_rep)))
    b = batch * shape["batch_factor"]
    flops = 4 * b * shape["heads"] * shape["seq"] ** 2 * shape["head_dim"] * 3.5  # fwd + 2.5x bwd
    rows = []
    q, k, v, grad = _inputs(batch, shape)
    for label, fn in variants:
        def step(fn=fn) -> None:  # bound now: the closure must not see the next variant
            out = fn(q, k, v)
            out.backward(grad)
            q.grad = k.grad = v.grad = None
        try:
            ms = _time(step, iters, warmup)
            rows.append({"shape": name, "variant": label, "ms": ms, "tflops": flops / ms / 1e9})
        except Exception as exc:
            rows.append({"shape": name, "variant": label, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
    base = rows[0].get("ms")
    for row in rows:
        if base and "ms" in row:
            row["speedup"] = base / row["ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure and print a table (and JSON to $OUT/bench_attention.json when $OUT is set)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="samples per step (the trainer's per-GPU batch)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} batch {args.batch}")
    rows = []
    for name, shape in SHAPES.items():
        rows += measure(args.batch, name, shape, args.iters, args.warmup)
    print(f"{'shape':9} {'variant':36} {'ms fwd+bwd':>10} {'TFLOP/s':>8} {'vs base':>8}")
    for row in rows:
        if "error" in row:
            print(f"{row['shape']:9} {row['variant']:36} {row['error']}")
        else:
            print(f"{row['shape']:9} {row['variant']:36} {row['ms']:10.3f} {row['tflops']:8.1f} {row['speedup']:7.2f}x")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_attention.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
