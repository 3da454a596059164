"""Seeded, resumable, DDP-sharded sampling over a cache of N steps (numpy only).

Each epoch is a full permutation of all N indices, drawn from
``default_rng([seed, epoch])``: a "shuffle buffer" the size of the dataset that
costs ~1 ms per 100k indices, so the first batch never waits for a buffer to
fill (seed 003 issue 9). Rank r of W takes every W-th index of the (padded or
truncated) permutation, like torch's DistributedSampler but with rank and world
size passed in, so shards are testable without a process group. Resume state is
(epoch, cursor): cursor counts this rank's samples already consumed in the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplerState:
    """Where a rank stands: epoch, and samples of that epoch's shard already consumed."""

    epoch: int = 0
    cursor: int = 0

    def to_dict(self) -> dict[str, int]:
        """Plain dict for a checkpoint."""
        return {"epoch": self.epoch, "cursor": self.cursor}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> SamplerState:
        """Inverse of to_dict."""
        return cls(epoch=int(data["epoch"]), cursor=int(data["cursor"]))


@dataclass(frozen=True)
class Batch:
    """One batch of step indices and the state after it has been consumed."""

    indices: np.ndarray
    state_after: SamplerState


@dataclass(frozen=True)
class ShardedEpochSampler:
    """Per-epoch seeded permutations, sharded over ranks."""

    num_samples: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    drop_last: bool = False  # True: truncate to a multiple of world_size (disjoint shards); False: pad by wrapping

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.drop_last and self.num_samples < self.world_size:
            raise ValueError(f"drop_last with {self.num_samples} samples leaves nothing for {self.world_size} ranks")

    @property
    def shard_size(self) -> int:
        """Samples per rank per epoch."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for an epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.shard_size * self.world_size
        if total > self.num_samples:  # pad, as DistributedSampler does, so every rank takes equal steps
            order = np.resize(order, total)
        return order[self.rank : total : self.world_size]

    def batches(self, batch_size: int, start: SamplerState = SamplerState(),
                epochs: int | None = None, drop_last_batch: bool = False) -> Iterator[Batch]:
        """Batches from ``start`` onwards, across epoch boundaries; ``epochs=None`` runs forever."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= start.cursor <= self.shard_size:
            raise ValueError(f"cursor {start.cursor} outside this rank's shard of {self.shard_size}")
        epoch, cursor = start.epoch, start.cursor
        while epochs is None or epoch < epochs:
            indices = self.epoch_indices(epoch)
            while cursor < len(indices):
                chunk = indices[cursor : cursor + batch_size]
                if len(chunk) < batch_size and drop_last_batch:
                    break
                cursor += len(chunk)
                end = cursor >= len(indices) or (drop_last_batch and len(indices) - cursor < batch_size)
                yield Batch(chunk, SamplerState(epoch + 1, 0) if end else SamplerState(epoch, cursor))
            epoch, cursor = epoch + 1, 0
