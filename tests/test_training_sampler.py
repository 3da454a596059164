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


def updates(n: int, world: int, batch: int, accum: int, count: int) -> list[list[tuple[int, ...]]]:
    """Each of the first `count` updates as its micro-batches (all ranks), each a sorted tuple, sorted."""
    plans = [ShardedEpochSampler(n, seed=9, rank=r, world_size=world).batches(batch, drop_last_batch=True,
                                                                               grad_accum=accum)
             for r in range(world)]
    return [sorted(tuple(sorted(int(i) for i in next(plan).indices)) for plan in plans for _ in range(accum))
            for _ in range(count)]


def samples(update: list[tuple[int, ...]]) -> list[int]:
    return sorted(i for micro in update for i in micro)


@pytest.mark.parametrize("n", [600, 63, 100])  # 600 / 16 = 37.5: an epoch ends mid-way through a global batch
def test_the_same_global_batch_draws_the_same_micro_batches_per_update_however_it_is_split(n: int) -> None:
    # Global batch 16 at every update, across epoch boundaries too (padding never makes an extra batch on some
    # splits but not others). With the same per-rank batch the micro-batches themselves are the same:
    # 1 process x 8 x accum 2 = 2 processes x 8; 1 x 4 x accum 4 = 2 x 4 x accum 2 = 4 x 4.
    count = 3 * (n // 16) + 2
    by_eight, by_four = updates(n, 1, 8, 2, count), updates(n, 1, 4, 4, count)
    assert updates(n, 2, 8, 1, count) == by_eight
    assert updates(n, 2, 4, 2, count) == updates(n, 4, 4, 1, count) == by_four
    whole = [samples(u) for u in updates(n, 1, 16, 1, count)]
    assert [samples(u) for u in by_eight] == [samples(u) for u in by_four] == whole
    assert all(len(set(u)) == 16 for u in whole)


def test_blocks_of_one_are_the_classic_every_wth_index_shard() -> None:
    order = np.random.default_rng([5, 0]).permutation(10)
    assert ShardedEpochSampler(10, seed=5, rank=1, world_size=2).epoch_indices(0).tolist() == order[1::2].tolist()
    blocks = ShardedEpochSampler(10, seed=5, rank=1, world_size=2).epoch_indices(0, block=2)
    assert blocks.tolist() == [*order[2:4], *order[6:8], order[9]]  # blocks 1 and 3, then its half of the tail


def test_an_epoch_holds_whole_updates_and_resume_inside_one_is_exact() -> None:
    # 63 samples, 2 ranks x batch 4 x accum 2: 3 whole updates (48 samples) an epoch, 6 micro-batches a rank.
    def plan(start: SamplerState = SamplerState()) -> list:
        return list(ShardedEpochSampler(63, seed=1, rank=1, world_size=2).batches(4, start, epochs=2,
                                                                                  drop_last_batch=True, grad_accum=2))
    full = plan()
    assert len(full) == 12 and full[5].state_after == SamplerState(1, 0) and full[4].state_after == SamplerState(0, 20)
    for stop_after in (1, 5, 6, 9):
        resumed = plan(full[stop_after - 1].state_after)
        assert flat(resumed) == flat(full[stop_after:])
    # A cursor past the epoch's whole updates (saved under the old padded rule) starts the next epoch.
    assert flat(plan(SamplerState(0, 28))) == flat(full[6:])
    with pytest.raises(ValueError, match="no whole update"):
        next(ShardedEpochSampler(15, world_size=2).batches(4, drop_last_batch=True, grad_accum=2))
