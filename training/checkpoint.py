"""Checkpoints written atomically, found by ``--resume``, refused when incomplete or incompatible.

Layout (``<out_dir>/checkpoint-<step:06d>``, step = optimizer updates done = the next step to run)::

    model.safetensors         the policy's weights (fp32), tied tensors stored once (aliases in its metadata)
    optimizer.pt              the optimizer's full state dict (tensors only: torch.load(weights_only=True))
    trainer_state.json        step, lambda, schedule position, non-finite count, watchdog, wandb run id, ...
    rank-00000.json ...       per rank: RNG states (torch, CUDA, noise generator, numpy, python) and data cursor
    config.json               the TrainConfig of the run that wrote it
    dataset_statistics.json   the statistics the run normalised with (copied in)
    manifest.json             format, step, world size, every file above with its size
    COMPLETE                  written last, before the rename
    HEALTHY                   present when the watchdog judged the run healthy at save time; withdrawn
                              when a later collapse shows the weights were already bad (withdraw_healthy)

Writing: everything goes into ``.tmp-checkpoint-<step>``, each file is fsynced,
``COMPLETE`` is written, the directory is renamed to its final name and the
parent is fsynced. A writer killed at any point leaves either no
``checkpoint-*`` directory or a complete one; ``--resume`` also re-checks the
marker, the manifest and every file size, so a directory damaged later is
skipped (auto) or refused (explicit path) with the reason. Names use only
``[A-Za-z0-9._-]`` (seed 000). The catalog's rollback remedy picks the newest
``checkpoint-*`` holding ``HEALTHY``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "agentops.checkpoint/1"
PREFIX = "checkpoint-"
NAME = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "COMPLETE"
HEALTHY = "HEALTHY"
MANIFEST = "manifest.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
STATS = "dataset_statistics.json"


class CheckpointError(ValueError):
    """A checkpoint is incomplete, damaged, or does not fit this run."""


def checkpoint_name(step: int) -> str:
    """``checkpoint-000200``."""
    return f"{PREFIX}{step:06d}"


def rank_file(rank: int) -> str:
    """Per-rank state file name."""
    return f"rank-{rank:05d}.json"


# --- RNG state --------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng(noise: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every RNG this process draws from, as JSON."""
    np_state = np.random.get_state()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "noise": _b64(noise.get_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": json.loads(json.dumps(random.getstate())),
        "cuda": _b64(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None,
    }
    return state


def restore_rng(state: dict[str, Any], noise: torch.Generator, device: torch.device) -> None:
    """Put every RNG back where capture_rng found it."""
    torch.set_rng_state(_unb64(state["torch"]))
    noise.set_state(_unb64(state["noise"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(_unb64(state["cuda"]), device)


# --- model and optimizer state (collective under FSDP) ----------------------------------------------


def _full_options(broadcast: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if broadcast:
        return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(policy: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full model and optimizer state dicts on rank 0's CPU (every rank must call: collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _full_options()
    return get_model_state_dict(policy, options=options), get_optimizer_state_dict(policy, optimizer, options=options)


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied tensors (embeddings = lm_head) stored once: safetensors refuses shared memory."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owner: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in owner and tensor.numel() > 0:
            aliases[name] = owner[key]
            continue
        owner[key] = name
        kept[name] = tensor.detach().contiguous()
    return kept, aliases


def read_model_file(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model tensors, tied aliases restored."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for name, target in aliases.items():
        state[name] = state[target]
    return state


def model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor data read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    shapes.update({name: shapes[target] for name, target in aliases.items()})
    return shapes


def restore_state(path: Path, policy: nn.Module, optimizer: torch.optim.Optimizer, distributed: bool) -> None:
    """Load weights and optimizer state: rank 0 reads the files and, under a process group, broadcasts them."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    main = not distributed or dist.get_rank() == 0
    model_state = read_model_file(path / MODEL) if main else {}
    optim_state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True) if main else {}
    if not distributed:
        policy.load_state_dict(model_state)
        set_optimizer_state_dict(policy, optimizer, optim_state, options=_full_options(broadcast=False))
        return
    set_model_state_dict(policy, model_state, options=_full_options(broadcast=True))
    set_optimizer_state_dict(policy, optimizer, optim_state, options=_full_options(broadcast=True))


# --- writing -----------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, value: Any) -> None:
    _write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@dataclass
class CheckpointContents:
    """What rank 0 writes besides the per-rank files."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    trainer_state: dict[str, Any]
    config: dict[str, Any]
    stats_path: str | None
    healthy: bool


def temp_dir(out_dir: Path, step: int) -> Path:
    """Where a checkpoint is built before its rename (never matches ``checkpoint-*``)."""
    return out_dir / f".tmp-{checkpoint_name(step)}"


def prepare_temp(out_dir: Path, step: int) -> Path:
    """Rank 0: an empty temp dir for this step (a leftover from a killed writer is removed)."""
    tmp = temp_dir(out_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_state(tmp: Path, rank: int, state: dict[str, Any]) -> None:
    """Every rank: its RNG and data cursor."""
    _write_json(tmp / rank_file(rank), state)


def finalize(out_dir: Path, step: int, world_size: int, contents: CheckpointContents) -> Path:
    """Rank 0, after every rank wrote its file: the rest, the marker, the rename. Returns the final path."""
    from safetensors.torch import save_file

    tmp = temp_dir(out_dir, step)
    tensors, aliases = _dedupe(contents.model_state)
    save_file(tensors, str(tmp / MODEL), metadata={"format": FORMAT, "aliases": json.dumps(aliases)})
    _fsync_file(tmp / MODEL)
    torch.save(contents.optimizer_state, tmp / OPTIMIZER)
    _fsync_file(tmp / OPTIMIZER)
    _write_json(tmp / TRAINER_STATE, contents.trainer_state)
    _write_json(tmp / "config.json", contents.config)
    if contents.stats_path:
        # read + write (not shutil.copy): fsynced like the rest.
        _write_bytes(tmp / STATS, Path(contents.stats_path).read_bytes())
    files = sorted(p.name for p in tmp.iterdir())
    missing = [rank_file(r) for r in range(world_size) if rank_file(r) not in files]
    if missing:
        raise CheckpointError(f"{tmp}: rank files {missing} were not written")
    _write_json(tmp / MANIFEST, {
        "format": FORMAT, "step": step, "world_size": world_size,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {name: (tmp / name).stat().st_size for name in files},
    })
    _write_bytes(tmp / COMPLETE, f"step={step}\n".encode())
    if contents.healthy:
        _write_bytes(tmp / HEALTHY, b"watchdog: no collapse, no non-finite steps since the last checkpoint\n")
    _fsync_dir(tmp)
    final = out_dir / checkpoint_name(step)
    if final.exists():  # only after a rollback to an older step: keep the old one, aside
        set_aside(out_dir, [final])
    tmp.rename(final)
    _fsync_dir(out_dir)
    return final


def set_aside(out_dir: Path, paths: list[Path]) -> Path | None:
    """Move checkpoints out of ``checkpoint-*`` reach (into ``superseded/<time>/``), losing nothing."""
    if not paths:
        return None
    target = out_dir / "superseded" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    target.mkdir(parents=True)
    for path in paths:
        path.rename(target / path.name)
    _fsync_dir(out_dir)
    return target


def withdraw_healthy(out_dir: Path, after_step: int) -> list[Path]:
    """Remove HEALTHY from every checkpoint newer than ``after_step`` (saved between the damage and its detection).

    HEALTHY is not in the manifest, so the checkpoints stay complete and verifiable; only the rollback
    remedy, which looks for the marker, passes over them.
    """
    withdrawn = []
    for step, path in sorted(list_checkpoints(out_dir)):
        if step > after_step and (path / HEALTHY).is_file():
            (path / HEALTHY).unlink()
            _fsync_dir(path)  # the removal must survive a crash, or a restart could still pick the checkpoint
            withdrawn.append(path)
    return withdrawn


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-<step>`` directory, newest first."""
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if p.is_dir() and (m := NAME.match(p.name))]
    return sorted(found, reverse=True)


def prune(out_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, always keeping the newest HEALTHY one."""
    complete = [p for _, p in list_checkpoints(out_dir) if (p / COMPLETE).is_file()]
    healthy = next((p for p in complete if (p / HEALTHY).is_file()), None)
    doomed = [p for p in complete[keep_last:] if p != healthy]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --- finding and checking ----------------------------------------------------------------------------


def verify(path: Path) -> dict[str, Any]:
    """The manifest of a complete, undamaged checkpoint; CheckpointError with the reason otherwise."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    if not NAME.match(path.name):
        raise CheckpointError(f"{path}: not a checkpoint-<step> directory")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path}: incomplete (no {COMPLETE} marker: its writer was interrupted)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {MANIFEST} unreadable: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name, size in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} listed in the manifest is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{path}: {name} is {file.stat().st_size} bytes, manifest says {size} (damaged)")
    step = int(NAME.match(path.name).group(1))  # type: ignore[union-attr]
    if manifest.get("step") != step:
        raise CheckpointError(f"{path}: manifest step {manifest.get('step')} does not match the name")
    return manifest


def find_latest(out_dir: Path, log=print) -> Path | None:
    """The newest complete checkpoint; skipped ones are reported with the reason."""
    for _, path in list_checkpoints(out_dir):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            log(f"[ckpt] skipping {exc}")
    return None


def check_compatible(path: Path, own_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a checkpoint whose tensors do not match this model's names and shapes."""
    theirs = model_shapes(path / MODEL)
    problems = []
    for name in sorted(set(own_shapes) | set(theirs)):
        mine, other = own_shapes.get(name), theirs.get(name)
        if mine != other:
            problems.append(f"{name}: checkpoint {list(other) if other else 'absent'}, "
                            f"this model {list(mine) if mine else 'absent'}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{path}: does not fit this model ({len(problems)} tensors differ: {shown}); "
                              f"it was written by another model/robot config")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """trainer_state.json of a verified checkpoint."""
    return json.loads((path / TRAINER_STATE).read_text())


def read_rank_state(path: Path, rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's saved RNG/cursor state, or None when the world size changed."""
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("world_size") != world_size:
        return None
    return json.loads((path / rank_file(rank)).read_text())
