"""A torch Dataset and resumable loader over a training cache: normalised action chunks and images.

A batch is built in one vectorised step (``__getitems__``) from memory maps, so
the first batch costs one permutation plus one fancy index, whatever the
"shuffle size" (the whole dataset is the shuffle). Exact resume: the loader
yields batches in the sampler's order and reports the (epoch, cursor) reached
by what the caller has consumed, not what worker processes prefetched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.cache import CacheArrays, CacheError, open_cache
from training.normalize import Normalizer
from training.robots import RobotConfig
from training.sampler import Batch, SamplerState, ShardedEpochSampler
from training.stats_file import check_values, find_entry


@dataclass(frozen=True)
class ChunkConfig:
    """What a sample holds and how it is normalised."""

    future_actions: int = 7  # K: a chunk is the current action + the next K
    normalization: str = "q99"  # q99 (q01/q99 -> [-1, 1], clipped) | mean_std | none
    image_keys: tuple[str, ...] | None = None  # None = every cached camera
    require_matching_stats: bool = True  # stats must come from the cache's source data (content hash)


class ChunkDataset(Dataset):
    """Samples of (images, normalised proprio, normalised action chunk + mask, instruction) by step index."""

    def __init__(self, cache_dir: str | os.PathLike, stats: str | os.PathLike | dict[str, Any] | None,
                 config: ChunkConfig = ChunkConfig()) -> None:
        self.cache_dir = Path(cache_dir)
        self.config = config
        self._arrays: CacheArrays | None = None
        arrays = self._open()
        self.robot = RobotConfig.from_dict(arrays.manifest["robot"], source=str(self.cache_dir / "manifest.json"))
        self.instructions = arrays.instructions
        self.num_samples = arrays.num_transitions
        self.action_norm, self.proprio_norm = self._normalizers(stats, arrays)

    def _open(self) -> CacheArrays:
        # Opened lazily per process: a pickled np.memmap is copied into RAM in
        # every spawned DataLoader worker, while a re-opened one shares the page cache.
        if self._arrays is None:
            self._arrays = open_cache(self.cache_dir, self.config.image_keys)
        return self._arrays

    @property
    def arrays(self) -> CacheArrays:
        """The opened cache (manifest, memory maps, cameras) of this process."""
        return self._open()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def _normalizers(self, stats: Any, arrays: CacheArrays) -> tuple[Normalizer, Normalizer]:
        if self.config.normalization == "none" and stats is None:
            return (Normalizer.from_stats({"mean": [0.0] * self.robot.action_dim}, "none"),
                    Normalizer.from_stats({"mean": [0.0] * self.robot.proprio_dim}, "none"))
        if stats is None:
            raise CacheError(f"normalization {self.config.normalization!r} needs a stats file")
        where = "stats"
        if not isinstance(stats, dict):
            where = str(stats)
            stats = json.loads(Path(stats).read_text())
        _, entry = find_entry(stats)
        problems = check_values(entry, self.robot)
        source_hash = arrays.manifest["source"]["content_hash"]
        stats_hash = entry.get("meta", {}).get("content_hash")
        if self.config.require_matching_stats and stats_hash != source_hash:
            problems.append(f"meta.content_hash {stats_hash} is not the cache's source {source_hash} "
                            f"(stats of other data; recompute with python -m training.stats)")
        if problems:
            raise CacheError(f"{where}: " + "; ".join(problems))
        mode = self.config.normalization
        return (Normalizer.from_stats(entry["action"], mode, entry["action"].get("mask")),
                Normalizer.from_stats(entry["proprio"], mode))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int] | np.ndarray) -> dict[str, Any]:
        """A whole batch at once (torch's DataLoader calls this instead of per-item __getitem__)."""
        a = self._open()
        idx = np.asarray(indices, dtype=np.int64)
        # Sorted reads touch each page of the memory maps once and in order.
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        a.prefetch_images(sorted_idx)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        ends = a.episode_starts[a.episode_index[sorted_idx].astype(np.int64) + 1]
        steps = sorted_idx[:, None] + np.arange(self.config.future_actions + 1)
        mask = steps < ends[:, None]
        steps = np.minimum(steps, ends[:, None] - 1)  # pad past the episode end with its last action
        actions = self.action_norm.normalize(a.actions[steps.reshape(-1)].reshape(*steps.shape, -1))
        out: dict[str, Any] = {
            "index": torch.from_numpy(idx),
            "actions": torch.from_numpy(actions[inverse]),
            "action_mask": torch.from_numpy(mask[inverse]),
            "proprio": torch.from_numpy(self.proprio_norm.normalize(a.proprio[sorted_idx])[inverse]),
            "instruction_id": torch.from_numpy(a.instruction_ids[sorted_idx][inverse].astype(np.int64)),
        }
        out["instruction"] = [self.instructions[i] for i in out["instruction_id"].tolist()]
        for key, frames in a.images.items():
            # uint8 stays uint8 to the GPU: 4x less host memory traffic than float32.
            out[key] = torch.from_numpy(frames[sorted_idx][inverse])
        return out


def _identity(batch: Any) -> Any:
    return batch


@dataclass(frozen=True)
class LoaderConfig:
    """Batching, order and DDP placement of a CacheLoader."""

    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epochs: int | None = None  # None: run forever (step-driven training, seed 001)
    num_workers: int = 0
    drop_last_batch: bool = True  # every batch full, so every DDP rank takes the same number of steps
    pin_memory: bool = False
    grad_accum: int = 1  # micro-batches per update: an epoch holds whole updates (training.sampler)


class CacheLoader:
    """Batches of a ChunkDataset in a seeded, sharded order; ``state`` is exact for resuming."""

    def __init__(self, dataset: ChunkDataset, config: LoaderConfig,
                 state: SamplerState | dict[str, int] | None = None) -> None:
        self.dataset = dataset
        self.config = config
        self.sampler = ShardedEpochSampler(len(dataset), seed=config.seed, rank=config.rank,
                                           world_size=config.world_size)
        self.state = state if isinstance(state, SamplerState) else SamplerState.from_dict(state or {"epoch": 0, "cursor": 0})

    def _plan(self, start: SamplerState) -> Iterator[Batch]:
        c = self.config
        return self.sampler.batches(c.batch_size, start, c.epochs, c.drop_last_batch, c.grad_accum)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self.state
        loader = DataLoader(self.dataset, batch_sampler=(b.indices.tolist() for b in self._plan(start)),
                            collate_fn=_identity, num_workers=self.config.num_workers,
                            pin_memory=self.config.pin_memory)
        # The plan is deterministic, so a second copy tells which state each delivered batch ends at.
        for planned, batch in zip(self._plan(start), loader, strict=True):
            self.state = planned.state_after
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The (epoch, cursor) after the last batch handed to the caller."""
        return self.state.to_dict()
