"""The resumable, DDP-sharded epoch sampler (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from training.sampler import SamplerState, ShardedEpochSampler


def flat(batches) -> list[int]:
    return [int(i) for b in batches for i in b.indices]


def test_epochs_are_seeded_full_permutations() -> None:
    sampler = ShardedEpochSampler(1000, seed=3)
    e0, e1 = sampler.epoch_indices(0), sampler.epoch_indices(1)
    assert sorted(e0.tolist()) == list(range(1000)) and sorted(e1.tolist()) == list(range(1000))
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, ShardedEpochSampler(1000, seed=3).epoch_indices(0))
    assert not np.array_equal(e0, ShardedEpochSampler(1000, seed=4).epoch_indices(0))


@pytest.mark.parametrize("stop_after", [1, 7, 12, 13, 25])
def test_resume_mid_epoch_yields_exactly_the_remaining_order(stop_after: int) -> None:
    sampler = ShardedEpochSampler(100, seed=1)
    full = list(sampler.batches(8, epochs=2))
    state = full[stop_after - 1].state_after
    resumed = list(ShardedEpochSampler(100, seed=1).batches(8, SamplerState.from_dict(state.to_dict()), epochs=2))
    assert flat(resumed) == flat(full[stop_after:])
    assert [b.state_after for b in resumed] == [b.state_after for b in full[stop_after:]]


def test_state_after_the_last_batch_of_an_epoch_points_at_the_next_epoch() -> None:
    batches = list(ShardedEpochSampler(20, seed=0).batches(8, epochs=1))
    assert [len(b.indices) for b in batches] == [8, 8, 4]
    assert batches[-1].state_after == SamplerState(1, 0)
    dropped = list(ShardedEpochSampler(20, seed=0).batches(8, epochs=1, drop_last_batch=True))
    assert [len(b.indices) for b in dropped] == [8, 8] and dropped[-1].state_after == SamplerState(1, 0)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(world_size: int) -> None:
    n = 120  # divisible by 2, 3, 4
    shards = [ShardedEpochSampler(n, seed=5, rank=r, world_size=world_size).epoch_indices(2) for r in range(world_size)]
    union = np.concatenate(shards)
    assert len(union) == n and len(set(union.tolist())) == n


def test_ddp_uneven_sizes_pad_to_cover_or_truncate_to_stay_disjoint() -> None:
    padded = [ShardedEpochSampler(10, rank=r, world_size=3).epoch_indices(0) for r in range(3)]
    assert [len(s) for s in padded] == [4, 4, 4]
    assert set(np.concatenate(padded).tolist()) == set(range(10))
    truncated = [ShardedEpochSampler(10, rank=r, world_size=3, drop_last=True).epoch_indices(0) for r in range(3)]
    union = np.concatenate(truncated).tolist()
    assert [len(s) for s in truncated] == [3, 3, 3] and len(set(union)) == 9


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedEpochSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="cursor 11 outside"):
        next(ShardedEpochSampler(10).batches(4, SamplerState(0, 11)))
