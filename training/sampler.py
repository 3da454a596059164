"""Seeded, resumable, DDP-sharded sampling over a cache of N steps (numpy only).

Each epoch is a full permutation of all N indices, drawn from
``default_rng([seed, epoch])``: a "shuffle buffer" the size of the dataset that
costs ~1 ms per 100k indices, so the first batch never waits for a buffer to
fill (seed 003 issue 9). The (padded or truncated) permutation is cut into
blocks of B (the per-rank batch) and rank r of W takes every W-th block from
block r on, like torch's DistributedSampler with B consecutive indices where it
takes one, but with rank and world size passed in, so shards are testable
without a process group. Resume state is (epoch, cursor): cursor counts this
rank's samples already consumed in the epoch.

Why blocks: micro-batch j of rank r is block ``j*W + r``, so the global batch of
an update is a run of whole blocks whatever the split. With ``drop_last_batch``
an epoch keeps whole updates only (``grad_accum`` micro-batches on every rank):
update k is then blocks ``[k*W*accum, (k+1)*W*accum)``, so 1 process with
accum 2 and 2 processes with accum 1 (same B) draw the same micro-batches at every
step, epoch boundaries included. Same micro-batches, not only the same samples:
a loss averaged per micro-batch (the masked L1 over valid chunk positions) is
then the same number on any split, and so are its gradients.
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

    def epoch_indices(self, epoch: int, block: int = 1) -> np.ndarray:
        """This rank's indices for an epoch, in order: every W-th block of ``block`` (block 1: every W-th index)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        world = self.world_size
        total = self.shard_size * world
        if total > self.num_samples:  # pad, as DistributedSampler does, so every rank takes equal steps
            order = np.resize(order, total)
        rounds = total // (world * block) * (world * block)  # whole rounds of one block per rank
        head = order[:rounds].reshape(-1, world, block)[:, self.rank].reshape(-1)
        tail = order[rounds:total].reshape(world, -1)[self.rank]  # a shorter block each (a short last batch)
        return np.concatenate([head, tail])

    def epoch_length(self, batch_size: int, grad_accum: int = 1) -> int:
        """Samples this rank takes per epoch when only whole updates are kept (never a padded one)."""
        updates = self.num_samples // (self.world_size * batch_size * grad_accum)
        if updates == 0:
            raise ValueError(f"{self.num_samples} samples hold no whole update of batch {batch_size} x world "
                             f"{self.world_size} x accum {grad_accum}")
        return updates * batch_size * grad_accum

    def batches(self, batch_size: int, start: SamplerState = SamplerState(),
                epochs: int | None = None, drop_last_batch: bool = False, grad_accum: int = 1) -> Iterator[Batch]:
        """Batches from ``start`` onwards, across epoch boundaries; ``epochs=None`` runs forever.

        ``drop_last_batch``: every batch is full and an epoch ends after its last whole update of
        ``grad_accum`` micro-batches (see the module docstring); otherwise the last batch may be short.
        """
        if batch_size < 1 or grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {batch_size} and {grad_accum}")
        if not 0 <= start.cursor <= self.shard_size:
            raise ValueError(f"cursor {start.cursor} outside this rank's shard of {self.shard_size}")
        limit = self.epoch_length(batch_size, grad_accum) if drop_last_batch else self.shard_size
        epoch, cursor = start.epoch, start.cursor
        while epochs is None or epoch < epochs:
            indices = self.epoch_indices(epoch, batch_size)[:limit]
            while cursor < limit:
                chunk = indices[cursor : cursor + batch_size]
                cursor += len(chunk)
                yield Batch(chunk, SamplerState(epoch + 1, 0) if cursor >= limit else SamplerState(epoch, cursor))
            epoch, cursor = epoch + 1, 0
