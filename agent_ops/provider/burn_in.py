"""GPU burn-in, run on the box by qualification: bf16 matmul TFLOP/s of every GPU, one JSON line out.

Standalone on purpose (uploaded and run with the box's python3; needs only torch): a box
whose GPUs are slow, throttled, or not what was ordered shows it here, before long work
is paid for. Each GPU multiplies two N x N bf16 matrices for --seconds after a warm-up; the
answer is `{"gpus": [{"index", "name", "tflops"}], "min_tflops"}` on the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def measure(torch, device: str, size: int, seconds: float) -> float:
    """Sustained TFLOP/s of size x size bf16 matmuls on `device` for about `seconds`."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):  # warm-up: kernel selection and clocks ramping up are not the box's speed
        a @ b
    _sync(torch, device)
    done, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            a @ b
        done += 10
        _sync(torch, device)  # time only finished work: CUDA launches return before the kernels end
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * size**3 * done / elapsed / 1e12


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per GPU")
    parser.add_argument("--size", type=int, default=8192, help="matrix size (8192 keeps a large GPU busy)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: only to try the script")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print(json.dumps({"error": "torch is not installed on the box"}))
        return 3
    if args.device == "cpu":
        devices = [("cpu", "cpu")]
    elif not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device visible to torch"}))
        return 3
    else:
        devices = [(f"cuda:{i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    gpus = [{"index": i, "name": name, "tflops": float(f"{measure(torch, dev, args.size, args.seconds):.4g}")}
            for i, (dev, name) in enumerate(devices)]
    print(json.dumps({"gpus": gpus, "min_tflops": min(g["tflops"] for g in gpus)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
