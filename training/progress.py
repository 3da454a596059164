"""The trainer's log lines, made for runbook gates; rank 0 prints them and appends them to train_progress.log.

Start-up, always in this order (the full reference with regexes is training/LOGS.md)::

    [dist] rank=<r>/<w> local_rank=<l> device=<dev> backend=<gloo|nccl|none> host=<h> pid=<p> nvls=<off|default>
                                                            (every rank, in rank order; stdout only)
    [data] dataset=<name> episodes=<n> transitions=<n> chunk=<K> batch=<b>
    [model] Loaded <n> weight tensors, skipped <m>          (or: [model] initialised from config (random weights))
    [model] Model: <X.X>M total, <Y.Y>M trainable
    [train] effective_batch=<b*w*a> (batch=<b> x world=<w> x accum=<a>)
    [train] resumed from <dir> at step=<n>                  (only when resuming)

Per step, every ``log_every`` steps, the first step and the last; steps are
0-based (``step=0/M`` is the first update, ``step=M-1/M`` the last)::

    [train] step=N/M loss=<f> lr=<e> grad_norm=<f> s/step=<f>[ aux_weight=<f>]   (aux_weight: objective.aux_ce runs)
    Step N/M | Loss: 0.1234 | Ret: 0.0821/0.1000 | λ: 0.000->0.000 | Conflict: 12.34% | GradNorm: 1.23 | LR: 5.00e-04
                                                            (seed 001's console line; CRaFT runs only)

Checkpoints, the end, and the ways a run stops early::

    [ckpt] saved <dir> step=<n>                             (<n> updates done; resume continues at step=<n>)
    [train] done step=<n> final_loss=<f>
    [train] throughput samples/s=<f> s/step=<f> data_wait=<p>% peak_mem=<g>GiB mfu=<p>%
    [train] non-finite loss or grad_norm at step=N (loss=nan grad_norm=<f>): update skipped (<k>/<max>)
    [train] stopping: non-finite loss in <k> steps (runtime.max_nonfinite_steps=<max>); ...   (exit 4)
    [watchdog] COLLAPSE metric=<name> value=<v> best=<b> drop=<fraction> step=<n>             (exit 3 with on_collapse=stop)
    [ckpt] HEALTHY withdrawn from checkpoint-<step>, ...: saved after step=<n>, ...          (right after a COLLAPSE line)
    [fault] step=<n>: lr=<e> is above fault.unstable_lr=<e>; ...                              (test-only fault injection)
    [train] error: <file or field>: <what is wrong>                                           (exit 2, nothing ran)

``metrics.jsonl`` beside ``train_progress.log`` holds every logged step's values
at full precision (one JSON object per line), for tests and plots.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def rank_line(rank: int, world: int, local_rank: int, device: str, backend: str | None, host: str, pid: int,
              multicast_off: bool) -> str:
    """One rank has joined the job (printed by every rank, not only rank 0)."""
    return (f"[dist] rank={rank}/{world} local_rank={local_rank} device={device} backend={backend or 'none'} "
            f"host={host} pid={pid} nvls={'off' if multicast_off else 'default'}")


def data_line(dataset: str, episodes: int, transitions: int, chunk: int, batch: int) -> str:
    """The dataset summary."""
    return f"[data] dataset={dataset} episodes={episodes} transitions={transitions} chunk={chunk} batch={batch}"


def weights_line(loaded: int, skipped: int, pretrained: bool) -> str:
    """Where the weights came from."""
    if not pretrained:
        return "[model] initialised from config (random weights)"
    return f"[model] Loaded {loaded} weight tensors, skipped {skipped}"


def params_line(total: int, trainable: int) -> str:
    """Parameter counts, in millions with one decimal (seed 003's `Model: 3617.8M total, ...`)."""
    return f"[model] Model: {total / 1e6:.1f}M total, {trainable / 1e6:.1f}M trainable"


def batch_line(batch: int, world: int, accum: int) -> str:
    """Effective batch = batch x GPUs x accumulation (seed 001)."""
    return f"[train] effective_batch={batch * world * accum} (batch={batch} x world={world} x accum={accum})"


def _f(value: float, spec: str) -> str:
    # nan/inf as lower-case words: the catalog's loss-nan signature matches `loss=nan`.
    return format(value, spec) if math.isfinite(value) else str(value).lower()


def step_line(step: int, max_steps: int, loss: float, lr: float, grad_norm: float, seconds: float,
              aux_weight: float | None = None) -> str:
    """The per-step line gates extract metrics from; the hybrid weight w(t) last, when a schedule is configured."""
    # New fields go at the end: gates and tests match the line from its start.
    hybrid = "" if aux_weight is None else f" aux_weight={aux_weight:.4f}"
    return (f"[train] step={step}/{max_steps} loss={_f(loss, '.4f')} lr={lr:.3e} "
            f"grad_norm={_f(grad_norm, '.3f')} s/step={seconds:.3f}{hybrid}")


def skip_line(step: int, loss: float, grad_norm: float, count: int, limit: int) -> str:
    """An update skipped by the non-finite guard (matches the catalog's `non-finite loss` signature)."""
    return (f"[train] non-finite loss or grad_norm at step={step} (loss={_f(loss, '.4f')} "
            f"grad_norm={_f(grad_norm, '.3f')}): update skipped ({count}/{limit})")


def stop_nonfinite_line(count: int, limit: int) -> str:
    """The run gives up after too many skipped updates (exit 4)."""
    return (f"[train] stopping: non-finite loss in {count} steps (runtime.max_nonfinite_steps={limit}); "
            f"lower optim.lr, set optim.max_grad_norm=1.0, check the data for NaNs")


def withdrawn_line(names: list[str], last_good: int, metric: str) -> str:
    """Checkpoints saved between the damage and the watchdog's report lose HEALTHY (the rollback skips them)."""
    return (f"[ckpt] HEALTHY withdrawn from {', '.join(names)}: saved after step={last_good}, "
            f"the last step metric={metric} was within its threshold")


def fault_line(step: int, lr: float, limit: float, amplify: float) -> str:
    """The test-only fault injection (config `fault`) starts amplifying the LR."""
    return (f"[fault] step={step}: lr={lr:.3e} is above fault.unstable_lr={limit:.3e}; updates above it are "
            f"applied at lr x{amplify:g} (test-only fault injection)")


def craft_line(step: int, max_steps: int, loss: float, retention: float, budget: float, lam_before: float,
               lam_after: float, conflict: float, grad_norm: float, lr: float) -> str:
    """Seed 001's console line, byte for byte in layout."""
    return (f"Step {step}/{max_steps} | Loss: {_f(loss, '.4f')} | Ret: {_f(retention, '.4f')}/{budget:.4f} | "
            f"λ: {lam_before:.3f}->{lam_after:.3f} | Conflict: {conflict * 100:.2f}% | "
            f"GradNorm: {_f(grad_norm, '.2f')} | LR: {lr:.2e}")


class Progress:
    """Prints gate lines on rank 0 and appends them to train_progress.log; writes metrics.jsonl."""

    def __init__(self, out_dir: Path | None, is_main: bool) -> None:
        self.is_main = is_main
        self._log = self._metrics = None
        if is_main and out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            # Line-buffered appends: a killed run keeps every line it printed.
            self._log = open(out_dir / "train_progress.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- held for the run
            self._metrics = open(out_dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- closed by close()

    def __call__(self, line: str) -> None:
        """Emit one line (rank 0 only)."""
        if not self.is_main:
            return
        print(line, flush=True)
        if self._log is not None:
            self._log.write(line + "\n")

    def metrics(self, record: dict[str, Any]) -> None:
        """One JSON line of full-precision values."""
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")

    def error(self, message: str) -> None:
        """An error line on stderr (every rank: the failing one may not be rank 0)."""
        print(f"[train] error: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the files."""
        for f in (self._log, self._metrics):
            if f is not None:
                f.close()
        self._log = self._metrics = None
