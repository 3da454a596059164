"""The training cache and its torch loader: round trip, chunks, normalisation, first batch, exact resume, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
torch = pytest.importorskip("torch")

from training.cache import CacheError, build_cache, open_cache  # noqa: E402
from training.cache_dataset import CacheLoader, ChunkConfig, ChunkDataset, LoaderConfig  # noqa: E402
from training.robots import LIBERO  # noqa: E402
from training.stats import compute_stats  # noqa: E402
from training.synth import SynthSpec, ensure_dataset  # noqa: E402

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]
K = 4
# The same spec as tests/test_training_data.py: written once per session under the base temp dir.
SPEC = SynthSpec(episodes=12, total_steps=600, image_size=32, seed=7, shards=2)


@pytest.fixture(scope="session")
def libero_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_dataset(tmp_path_factory.getbasetemp() / SPEC.key(), SPEC)


@pytest.fixture(scope="session")
def cache_dir(libero_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cache(libero_dir, LIBERO, tmp_path_factory.mktemp("caches") / "libero", log=lambda line: None)


@pytest.fixture(scope="session")
def stats(libero_dir: Path) -> dict:
    return compute_stats(libero_dir, LIBERO)


@pytest.fixture(scope="session")
def dataset(cache_dir: Path, stats: dict) -> ChunkDataset:
    return ChunkDataset(cache_dir, stats, ChunkConfig(future_actions=K))


def test_cache_round_trips_the_rlds_source(libero_dir: Path, cache_dir: Path) -> None:
    cache = open_cache(cache_dir)
    ds = tfds.builder_from_directory(str(libero_dir)).as_dataset(split="train", shuffle_files=False)
    row = 0
    for e, ep in enumerate(ds):
        steps = ep["steps"].batch(10_000).get_single_element()
        n = int(steps["action"].shape[0])
        assert cache.episode_starts[e] == row and np.all(cache.episode_index[row : row + n] == e)
        np.testing.assert_array_equal(cache.actions[row : row + n], steps["action"].numpy())
        np.testing.assert_array_equal(cache.proprio[row : row + n], steps["observation"]["state"].numpy())
        np.testing.assert_array_equal(cache.images["observation/image"][row : row + n], steps["observation"]["image"].numpy())
        np.testing.assert_array_equal(cache.images["observation/wrist_image"][row : row + n],
                                      steps["observation"]["wrist_image"].numpy())
        texts = [cache.instructions[i] for i in cache.instruction_ids[row : row + n]]
        assert texts == [t.decode() for t in steps["language_instruction"].numpy()]
        row += n
    assert row == cache.num_transitions == 600 and cache.episode_starts[-1] == 600
    manifest = cache.manifest
    assert manifest["source"]["content_hash"].startswith("sha256:") and manifest["robot"]["name"] == "libero"
    assert manifest["arrays"]["image:observation/image"] == {
        "file": "image.observation.image.npy", "shape": [600, 32, 32, 3], "dtype": "uint8"}


def test_first_batch_time_is_reported(cache_dir: Path, stats: dict) -> None:
    start = time.perf_counter()
    loader = CacheLoader(ChunkDataset(cache_dir, stats, ChunkConfig(future_actions=K)), LoaderConfig(batch_size=64))
    batch = next(iter(loader))
    elapsed = time.perf_counter() - start
    print(f"\n[cache] first batch of 64 (full-dataset shuffle, 0 workers): {elapsed * 1000:.1f} ms")
    assert batch["observation/image"].shape == (64, 32, 32, 3) and batch["observation/image"].dtype == torch.uint8


def test_action_chunks_are_padded_with_the_last_action_and_masked(dataset: ChunkDataset, cache_dir: Path) -> None:
    cache = open_cache(cache_dir)
    end = int(cache.episode_starts[1])  # first step after episode 0
    indices = [end - 2, end - 1, end, 0]
    batch = dataset.__getitems__(indices)
    assert batch["actions"].shape == (4, K + 1, 7) and batch["action_mask"].shape == (4, K + 1)
    assert batch["action_mask"][0].tolist() == [True, True, False, False, False]
    assert batch["action_mask"][1].tolist() == [True, False, False, False, False]
    assert batch["action_mask"][2].all() and batch["action_mask"][3].all()
    last = dataset.action_norm.normalize(np.asarray(cache.actions[end - 1]))
    for j in range(1, K + 1):
        np.testing.assert_array_equal(batch["actions"][0, j].numpy(), last)
    expected = dataset.action_norm.normalize(np.asarray(cache.actions[end : end + K + 1]))
    np.testing.assert_array_equal(batch["actions"][2].numpy(), expected)
    assert batch["index"].tolist() == indices  # caller's order kept, though reads are sorted


@pytest.mark.parametrize("mode", ["q99", "mean_std"])
def test_normalisation_follows_the_stats(cache_dir: Path, stats: dict, mode: str) -> None:
    ds = ChunkDataset(cache_dir, stats, ChunkConfig(future_actions=0, normalization=mode))
    entry = stats["libero_synth"]
    raw = open_cache(cache_dir).actions[:50].astype(np.float64)
    got = ds.__getitems__(list(range(50)))["actions"][:, 0].numpy()
    if mode == "q99":
        lo, hi = np.array(entry["action"]["q01"]), np.array(entry["action"]["q99"])
        want = np.clip(2 * (raw - lo) / (hi - lo) - 1, -1, 1)
    else:
        want = (raw - np.array(entry["action"]["mean"])) / np.array(entry["action"]["std"])
    want[:, 6] = raw[:, 6]  # gripper is masked out of normalisation (OpenVLA's mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    proprio = ds.__getitems__([3])["proprio"].numpy()
    np.testing.assert_allclose(ds.proprio_norm.unnormalize(proprio)[0], open_cache(cache_dir).proprio[3], rtol=1e-5, atol=1e-6)


def test_stats_of_other_data_are_refused(cache_dir: Path, tmp_path: Path) -> None:
    other = ensure_dataset(tmp_path / "other", SynthSpec(episodes=3, steps=20, image_size=16, seed=99))
    with pytest.raises(CacheError, match="is not the cache's source"):
        ChunkDataset(cache_dir, compute_stats(other, LIBERO))
    with pytest.raises(CacheError, match="needs a stats file"):
        ChunkDataset(cache_dir, None)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch_with_exactly_the_remaining_order(dataset: ChunkDataset, num_workers: int) -> None:
    def indices(loader: CacheLoader, limit: int | None = None) -> list[list[int]]:
        out = []
        for batch in loader:
            out.append(batch["index"].tolist())
            if limit is not None and len(out) == limit:
                break
        return out

    config = LoaderConfig(batch_size=48, seed=11, epochs=2, num_workers=num_workers)
    full = indices(CacheLoader(dataset, config))
    first = CacheLoader(dataset, config)
    head = indices(first, limit=15)  # 12 full batches per epoch: stops 3 batches into epoch 1
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    assert state == {"epoch": 1, "cursor": 3 * 48}
    rest = indices(CacheLoader(dataset, config, state=state))
    assert head + rest == full and len(full) == 24
    epoch0 = [i for b in full[:12] for i in b]
    assert len(set(epoch0)) == 576 and set(epoch0) <= set(range(600))  # drop_last_batch: 600 // 48 * 48 distinct


def test_ddp_ranks_read_disjoint_shards_covering_the_epoch(dataset: ChunkDataset) -> None:
    seen = []
    for rank in range(3):
        loader = CacheLoader(dataset, LoaderConfig(batch_size=50, seed=2, rank=rank, world_size=3, epochs=1))
        seen.append([i for batch in loader for i in batch["index"].tolist()])
    assert [len(s) for s in seen] == [200, 200, 200]
    assert sorted(i for s in seen for i in s) == list(range(600))


def test_cache_cli_is_idempotent_and_refuses_foreign_caches(libero_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "training.cache", *args], cwd=ROOT, capture_output=True, text=True, env=env)

    same = cli("--data", str(libero_dir), "--robot", "libero", "--out", str(cache_dir))
    assert same.returncode == 0 and f"[cache] up to date {cache_dir}" in same.stdout
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text("{}")
    refused = cli("--data", str(libero_dir), "--robot", "libero", "--out", str(foreign))
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr
    light = cli("--data", str(libero_dir), "--robot", "libero", "--out", str(tmp_path / "light"), "--no-images")
    assert light.returncode == 0 and "[cache] wrote" in light.stdout
    assert open_cache(tmp_path / "light").images == {}
