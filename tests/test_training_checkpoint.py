"""Checkpoints: atomic layout, exact state round trip, and what --resume takes, skips or refuses."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training.checkpoint import (  # noqa: E402
    COMPLETE,
    HEALTHY,
    CheckpointContents,
    CheckpointError,
    capture_rng,
    check_compatible,
    finalize,
    find_latest,
    gather_state,
    list_checkpoints,
    prepare_temp,
    prune,
    read_model_file,
    restore_rng,
    restore_state,
    set_aside,
    verify,
    withdraw_healthy,
    write_rank_state,
)

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]


class Tied(torch.nn.Module):
    """An embedding tied to its output layer, like an LM's lm_head."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, width)
        self.body = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.embed(ids))))


def trained(seed: int = 0, width: int = 6) -> tuple[Tied, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Tied(width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randint(0, 10, (4, 5))).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def write(out: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, stats: Path | None = None,
          healthy: bool = True) -> Path:
    """The trainer's write sequence for one process."""
    model_state, optim_state = gather_state(model, opt)
    tmp = prepare_temp(out, step)
    write_rank_state(tmp, 0, {"rank": 0, "data": {"epoch": 0, "cursor": step}})
    return finalize(out, step, 1, CheckpointContents(
        model_state=model_state, optimizer_state=optim_state, trainer_state={"step": step},
        config={"out_dir": str(out)}, stats_path=str(stats) if stats else None, healthy=healthy))


@pytest.fixture
def stats_file(tmp_path: Path) -> Path:
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps({"libero_synth": {"action": {"mean": [0.0]}}}))
    return path


def test_layout_names_markers_and_manifest(tmp_path: Path, stats_file: Path) -> None:
    model, opt = trained()
    final = write(tmp_path / "run", 200, model, opt, stats_file)
    assert final.name == "checkpoint-000200" and re.fullmatch(r"[A-Za-z0-9._-]+", final.name)
    names = sorted(p.name for p in final.iterdir())
    assert names == sorted([COMPLETE, HEALTHY, "config.json", "dataset_statistics.json", "manifest.json",
                            "model.safetensors", "optimizer.pt", "rank-00000.json", "trainer_state.json"])
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    manifest = verify(final)
    assert manifest["step"] == 200 and manifest["world_size"] == 1
    assert manifest["files"]["model.safetensors"] == (final / "model.safetensors").stat().st_size
    assert (final / "dataset_statistics.json").read_bytes() == stats_file.read_bytes()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint-000200"]  # no temp dir left
    assert not (write(tmp_path / "run", 300, model, opt, healthy=False) / HEALTHY).exists()


def test_tied_weights_are_stored_once_and_restored_exactly(tmp_path: Path) -> None:
    from safetensors import safe_open

    model, opt = trained()
    final = write(tmp_path, 3, model, opt)
    with safe_open(str(final / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["body.bias", "body.weight", "embed.weight"]
    state = read_model_file(final / "model.safetensors")
    assert torch.equal(state["head.weight"], model.head.weight)
    fresh, fresh_opt = trained(seed=1)
    restore_state(final, fresh, fresh_opt, distributed=False)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.head.weight is fresh.embed.weight  # still tied
    # The optimizer continues identically: the next update gives the same weights.
    batch = torch.randint(0, 10, (4, 5))
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(batch).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.body.weight, fresh.body.weight)


def test_rng_state_round_trips(tmp_path: Path) -> None:
    import random

    import numpy as np

    noise = torch.Generator().manual_seed(5)
    state = json.loads(json.dumps(capture_rng(noise, torch.device("cpu"))))  # through JSON, as on disk
    first = (torch.rand(3), torch.randn(2, generator=noise), np.random.rand(), random.random())
    restore_rng(state, noise, torch.device("cpu"))
    second = (torch.rand(3), torch.randn(2, generator=noise), np.random.rand(), random.random())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2:] == second[2:]


def test_incomplete_and_damaged_checkpoints_are_skipped_by_auto_and_refused_by_path(tmp_path: Path) -> None:
    model, opt = trained()
    good = write(tmp_path, 100, model, opt)
    incomplete = write(tmp_path, 200, model, opt)
    (incomplete / COMPLETE).unlink()  # as if copied or written by something that did not finish
    damaged = write(tmp_path, 300, model, opt)
    with open(damaged / "optimizer.pt", "r+b") as f:
        f.truncate(10)
    lines: list[str] = []
    assert find_latest(tmp_path, lines.append) == good
    assert lines == [f"[ckpt] skipping {damaged}: optimizer.pt is 10 bytes, manifest says "
                     f"{json.loads((damaged / 'manifest.json').read_text())['files']['optimizer.pt']} (damaged)",
                     f"[ckpt] skipping {incomplete}: incomplete (no COMPLETE marker: its writer was interrupted)"]
    with pytest.raises(CheckpointError, match="incomplete"):
        verify(incomplete)
    with pytest.raises(CheckpointError, match="damaged"):
        verify(damaged)
    assert find_latest(tmp_path / "nothing-here") is None


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from tests.test_training_checkpoint import trained, write
    model, opt = trained(width=512)  # ~1 MB of weights and twice that of optimizer state
    print("writing", flush=True)
    write(Path(sys.argv[1]), 200, model, opt, Path(sys.argv[2]))
    print("finished", flush=True)
""")


def test_a_checkpoint_killed_mid_write_is_never_taken(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model, opt = trained()
    previous = write(out, 100, model, opt)
    # The writer copies the dataset statistics after the weights and optimizer state: from a FIFO that
    # nobody writes to, so it blocks right there, mid-write, until it is killed.
    fifo = tmp_path / "stats.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(fifo), str(ROOT)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tmp = out / ".tmp-checkpoint-000200"
    deadline = time.monotonic() + 60
    while not (tmp / "optimizer.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp / "model.safetensors").is_file() and not (tmp / COMPLETE).exists()
    assert [step for step, _ in list_checkpoints(out)] == [100]
    assert find_latest(out) == previous
    # The next save at that step starts clean.
    assert verify(write(out, 200, model, opt))["step"] == 200 and not tmp.exists()


def test_prune_keeps_the_last_k_and_the_newest_healthy(tmp_path: Path) -> None:
    model, opt = trained()
    for step, healthy in ((10, True), (20, True), (30, False), (40, False), (50, False)):
        write(tmp_path, step, model, opt, healthy=healthy)
    removed = prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["checkpoint-000010", "checkpoint-000030"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [50, 40, 20]


def test_incompatible_checkpoint_is_refused_with_the_differing_tensors(tmp_path: Path) -> None:
    model, opt = trained()
    final = write(tmp_path, 5, model, opt)
    check_compatible(final, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    other = Tied(width=8)
    with pytest.raises(CheckpointError, match=r"does not fit this model \(4 tensors differ: body.bias: checkpoint \[6\], "
                                              r"this model \[8\]"):
        check_compatible(final, {k: tuple(v.shape) for k, v in other.state_dict().items()})


def test_set_aside_moves_checkpoints_out_of_the_glob(tmp_path: Path) -> None:
    model, opt = trained()
    newer = write(tmp_path, 6, model, opt)
    aside = set_aside(tmp_path, [newer])
    assert aside is not None and (aside / "checkpoint-000006" / COMPLETE).is_file()
    assert list(tmp_path.glob("checkpoint-*")) == [] and aside.parent.name == "superseded"


def test_withdraw_healthy_unmarks_only_newer_checkpoints_and_leaves_them_resumable(tmp_path: Path) -> None:
    # Saved after the last step the watchdog measured in bounds (40), before it reported the collapse.
    model, opt = trained()
    for step in (35, 40, 45, 50):
        write(tmp_path, step, model, opt)
    assert [p.name for p in withdraw_healthy(tmp_path, 40)] == ["checkpoint-000045", "checkpoint-000050"]
    assert {step: (p / HEALTHY).is_file() for step, p in list_checkpoints(tmp_path)} == \
        {50: False, 45: False, 40: True, 35: True}
    assert verify(tmp_path / "checkpoint-000050")["step"] == 50  # HEALTHY is not in the manifest: still complete
    assert withdraw_healthy(tmp_path, 40) == []
