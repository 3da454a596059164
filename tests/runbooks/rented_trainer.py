"""A stand-in trainer for rented-run tests: logs steps, saves a checkpoint every few steps and on SIGUSR1 (then exits).

It behaves as training.train does for the controller: `step=N/M loss=X` lines, checkpoint-NNNNNN directories written
whole (a temporary name, then a rename), and a save-and-exit on SIGUSR1 (the budget's checkpoint request).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

asked = False


def on_signal(signum: int, frame: object) -> None:
    global asked
    asked = True


def save(out: Path, step: int) -> Path:
    final = out / f"checkpoint-{step:06d}"
    tmp = out / f".tmp-{step:06d}"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "state.json").write_text(json.dumps({"step": step, "weights": [step * 0.5] * 64}))
    os.replace(tmp, final)
    return final


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    signal.signal(signal.SIGUSR1, on_signal)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as log:
        def say(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        for step in range(args.steps):
            if asked:
                say(f"[ckpt] saved {save(args.out, step).name} on request at step {step}; exiting")
                return 0
            say(f"step={step}/{args.steps} loss={1.0 / (1 + step):.4f}")
            if step and step % args.every == 0:
                save(args.out, step)
            time.sleep(args.step_s)
        say(f"[ckpt] saved {save(args.out, args.steps).name}; done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
