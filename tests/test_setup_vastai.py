"""runbooks/setup_vastai.yaml (seed 003) end to end against a real sshd on loopback.

The real runbook runs unchanged through SSH, tmux jobs and the journal; only the box's commands
and remote sources are pointed, through the runbook's variables, at local stand-ins:

- `git`    -> real git on a local bare repository (`git_url`) holding a stand-in openpi: branch
              pytorch_lora_blackwell (HEAD is `main`, so the checkout is real) with a submodule
              (third_party/libero, another local bare repo). A two-line wrapper only adds
              `-c protocol.file.allow=always`, which file:// submodules need since git 2.38.1.
- `apt_get`-> a script that records its arguments and installs nothing.
- `uv`     -> tests/standins/setup_vastai/bin/uv: `sync` fails with seed issue 1's
              "You are REQUIRED to use ffmpeg 7" unless pyproject.toml pins av>=13.1.0,<14.0.0 and
              with a git-lfs error unless GIT_LFS_SKIP_SMUDGE=1; otherwise it creates .venv as a real
              venv sharing this machine's site-packages (numpy, pyyaml) with stub torch / jax /
              transformers packages reporting the seed's versions (2.7.1+cu128, 0.5.3, 4.53.2)
              and a torchrun stand-in (.venv/bin/torchrun: accepts exactly --standalone --nnodes=1
              --nproc_per_node=N and runs the script once). `pip install` writes stub
              tensorflow / tensorflow_datasets packages reporting the requested versions.
- `rclone` -> a script mapping the remote `gg1:` to a local directory (`copy` = `cp -r`,
              `listremotes` prints gg1:). The datasets there are real RLDS written by
              training.synth in the seed's layout: libero_object_no_noops/1.0.0 with 32 tfrecord
              shards + 2 json (34 files), waypoint_filtered_rlds__libero/1.0.0 with 4 + 2 (6 files),
              and waypoint_indices.json -- fewer, shorter episodes than LIBERO, so the expected
              counts (rlds_transitions, ...) are passed as variables.
- `gsutil` -> a script mapping gs://BUCKET/PATH to a local directory holding a fake orbax
              checkpoint (params/ocdbt.process_0/, params/commit_success.txt).
- `torchrun` (third test only) -> a script replaying seed issue 8: the image's system torchrun,
              whose workers fail with `ModuleNotFoundError: No module named 'safetensors'`.
- The openpi repo's own programs are stand-ins too: scripts/train_waypoint.py prints seed
  section 13's start-up lines and falling loss lines (and dies with issue 7's OOM in VLM mode
  at batch 16); examples/convert_jax_model_to_pytorch.py writes a real safetensors header (812
  tensors with the two checked shapes, data left as a sparse hole) and the success line; its
  configs/waypoint_{ae,vlm}_libero.yaml name the data and model paths relative to the repo.
- Paths (`workspace`, `repo_dir`, `data_dir`, ...) point into the test's directory and `home` to
  a private home, so ~/.netrc, ~/.gitconfig and ~/.no_auto_tmux of the user running the tests
  stay untouched. Not substituted: the statistics (agentops' training.stats core, copied to
  the box by the runbook's put steps), tmux, ssh, the journal.

The AE test runs every step, check and gate; the VLM test runs the VLM gates and the remedy path
of seed issue 7 (OOM at batch 16 -> expandable_segments and batch 12); the third runs the remedy
path of seed issue 8 (system torchrun -> the venv's). Both remedies are asserted in the journal.
The WANDB_API_KEY secret reaches the jobs and ~/.netrc but never the journal.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import libtmux
import pytest

from agent_ops.front.output import to_json
from agent_ops.record.journal import Journal
from agent_ops.record.status import run_status
from agent_ops.run.context import start_run
from agent_ops.run.executor import Executor
from agent_ops.runbook.loader import load_runbook, resolve_vars
from agent_ops.secret_values import read_secrets
from agent_ops.transport.local import LocalTransport
from agent_ops.transport.target import TargetSpec
from checks.safetensors_header import read_header
from tests.runs import kill_tmux_server
from training.synth import SynthSpec

pytestmark = [
    pytest.mark.ssh, pytest.mark.slow, pytest.mark.train,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                       reason="training.synth needs tensorflow-datasets to write the RLDS data"),
]

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "runbooks" / "setup_vastai.yaml"
STANDINS = Path(__file__).resolve().parent / "standins" / "setup_vastai"
# 86 characters, like the new wandb keys that `wandb login` refuses (seed issue 4).
WANDB_KEY = "wandb_v1_" + "Tb3q9XkLm2Zp7Rw4Yv8Nc1Hd6Jf0Gs5A" * 2 + "Qe2Wr4Ty6Ui8Op0As"
RLDS = SynthSpec(episodes=32, steps=3, image_size=8, seed=3, name="libero_object_no_noops", shards=32)
WAYPOINTS = SynthSpec(episodes=8, steps=2, image_size=8, seed=4, name="waypoint_filtered_rlds", shards=4)
SITE_PACKAGES = f".venv/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _git(*args: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _one_commit_repo(path: Path, readme: str, message: str) -> Path:
    """A new repository at path on branch main with one commit holding a README."""
    path.mkdir()
    (path / "README.md").write_text(readme + "\n")
    _git("init", "-q", "-b", "main", cwd=path)
    _git("add", ".", cwd=path)
    _git("commit", "-q", "-m", message, cwd=path)
    return path


def _make_repos(root: Path) -> Path:
    """Bare repos: the openpi stand-in (main + pytorch_lora_blackwell) and a submodule; returns openpi's URL."""
    sub = _one_commit_repo(root / "src-libero", "LIBERO stand-in submodule", "libero")
    _git("clone", "-q", "--bare", str(sub), str(root / "libero.git"))

    work = _one_commit_repo(root / "src-openpi", "openpi stand-in", "main")
    _git("checkout", "-q", "-b", "pytorch_lora_blackwell", cwd=work)
    shutil.copytree(STANDINS / "openpi", work, dirs_exist_ok=True)
    _git("submodule", "add", "-q", str(root / "libero.git"), "third_party/libero", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "waypoint VLA", cwd=work)
    _git("checkout", "-q", "main", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(root / "openpi.git"))
    return root / "openpi.git"


def _synth(datasets: dict[Path, SynthSpec]) -> None:
    """Write the RLDS datasets in a child process, so TensorFlow (seconds to import, many threads) stays out of the controller's."""
    calls = "".join(f"ensure_dataset({str(out)!r}, SynthSpec(**{dataclasses.asdict(spec)!r}))\n" for out, spec in datasets.items())
    code = "from training.synth import SynthSpec, ensure_dataset\n" + calls
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, timeout=300)


def _make_checkpoint(gcs: Path) -> None:
    ckpt = gcs / "openpi-assets" / "checkpoints" / "pi05_base"
    (ckpt / "params" / "ocdbt.process_0" / "d").mkdir(parents=True)
    (ckpt / "params" / "ocdbt.process_0" / "d" / "0a1b2c").write_bytes(b"\0" * 64)
    (ckpt / "params" / "ocdbt.process_0" / "manifest.ocdbt").write_bytes(b"\0" * 16)
    (ckpt / "params" / "_METADATA").write_text("{}\n")
    (ckpt / "params" / "commit_success.txt").write_text("Checkpoint commit was successful to params\n")
    (ckpt / "assets").mkdir()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Everything the box downloads or runs from outside, built once: stand-in commands, data, checkpoint, repos."""
    root = tmp_path_factory.mktemp("remote")
    log = root / "commands.log"
    libero = root / "gdrive" / "dissert_ntu" / "libero"
    wp = libero / "libero_object_wp_001"
    _synth({libero / "libero_object_no_noops" / "libero_object_no_noops" / "1.0.0": RLDS,
            wp / "waypoint_filtered_rlds__libero" / "1.0.0": WAYPOINTS})
    (wp / "waypoint_indices.json").write_text(json.dumps({str(i): [0, 1] for i in range(WAYPOINTS.episodes)}))
    _make_checkpoint(root / "gcs")
    git_url = _make_repos(root)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    subst = {"@PYTHON@": sys.executable, "@ROOT@": str(root), "@LOG@": str(log), "@GIT@": shutil.which("git") or "git"}
    for src in (STANDINS / "bin").iterdir():
        text = src.read_text()
        for key, value in subst.items():
            text = text.replace(key, value)
        (bin_dir / src.name).write_text(text)
        (bin_dir / src.name).chmod(0o755)
    return {"root": root, "bin": bin_dir, "log": log, "git_url": git_url}


def _vars(remote: dict[str, Path], ws: Path, mode: str) -> dict[str, object]:
    b = remote["bin"]
    libero = ws / "data" / "libero"
    (ws / "home").mkdir(parents=True)  # a box has a home; the workspace itself is left to the runbook
    return {
        "mode": mode,
        "workspace": str(ws),
        "home": str(ws / "home"),
        "apt_get": str(b / "apt-get"), "uv": str(b / "uv"), "rclone": str(b / "rclone"),
        "gsutil": str(b / "gsutil"), "git": str(b / "git"),
        "git_url": str(remote["git_url"]),
        "repo_dir": str(ws / "openpi"),
        "site_packages": SITE_PACKAGES,
        "tools_dir": str(ws / "agentops"),
        "libero_dir": str(libero),
        "data_dir": str(libero / "libero_object_no_noops" / "libero_object_no_noops" / "1.0.0"),
        "wp_dir": str(libero / "libero_object_wp_001"),
        "wp_rlds_dir": str(libero / "libero_object_wp_001" / "waypoint_filtered_rlds__libero" / "1.0.0"),
        "stats_path": str(ws / "data" / "libero_object_no_noops" / "1.0.0" / "dataset_statistics.json"),
        "wp_stats_path": str(libero / "libero_object_wp_001" / "norm_stats" / "dataset_statistics.json"),
        "rlds_transitions": RLDS.episodes * RLDS.steps, "rlds_episodes": RLDS.episodes,
        "wp_transitions": WAYPOINTS.episodes * WAYPOINTS.steps, "wp_episodes": WAYPOINTS.episodes,
        "jax_ckpt_dir": str(ws / "models" / "pi05_base_jax" / "pi05_base"),
        "pytorch_dir": str(ws / "models" / "pi05_base_pytorch"),
    }


@pytest.fixture
def target(sshd, tmp_path: Path):
    """The loopback sshd as the box, with a private tmux server and work directory."""
    sock = f"ao-vast-{uuid.uuid4().hex[:8]}"
    spec = TargetSpec(url=f"ssh://{sshd.user}@{sshd.host}:{sshd.port}", identity=str(sshd.identity),
                      known_hosts=str(sshd.known_hosts), tmux_socket=sock, workdir=str(tmp_path / "agentops-box"))
    yield spec
    kill_tmux_server(libtmux.Server(socket_name=sock))


def _run_to_success(tmp_path: Path, target: TargetSpec, values: dict[str, object], monkeypatch: pytest.MonkeyPatch):
    """Run the runbook, assert it succeeded (else show every step that did not), return (status, steps by id)."""
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    loaded = load_runbook(RUNBOOK)
    journal = Journal(tmp_path / "home" / "journal.db")
    secrets = read_secrets(loaded.runbook.secrets)  # as the CLI does: from the controller's environment
    ctx = start_run(loaded, resolve_vars(loaded, values), secrets, target, journal)
    try:
        final = Executor(ctx).execute()
    finally:
        ctx.transport.close()
    status = run_status(journal, ctx.run_id)
    problems = {s.id: (s.state, s.message) for s in status.steps if s.state not in ("succeeded", "skipped", "running")}
    assert final == "succeeded", json.dumps(problems, indent=1)
    return status, {s.id: s for s in status.steps}


def _assert_secret_kept(tmp_path: Path, status, box_workdir: Path) -> None:
    assert WANDB_KEY not in to_json(status)
    for path in (tmp_path / "home").rglob("*"):  # journal.db, its WAL, the artifacts
        if path.is_file():
            assert WANDB_KEY.encode() not in path.read_bytes(), path
    # On the box only a job's env file and its output mask hold it, both mode 600; never a script or a log.
    for path in box_workdir.rglob("*"):
        if not path.is_file():
            continue
        if path.name in ("env", "mask.sed"):
            assert path.stat().st_mode & 0o777 == 0o600, path
        else:
            assert WANDB_KEY.encode() not in path.read_bytes(), path


def test_setup_vastai_ae_every_step_check_and_gate(remote, target: TargetSpec, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    status, steps = _run_to_success(tmp_path, target, _vars(remote, ws, "ae"), monkeypatch)

    # Skipped: the VLM gate (mode ae) and the gsutil install (the stand-in is on hand); the training
    # job is left running; everything else ran and succeeded on its first attempt.
    assert {s.id for s in status.steps if s.state == "skipped"} == {"gate_vlm", "gsutil_install"}
    assert steps["train"].state == "running" and "left running" in steps["train"].message  # keep_running
    for s in status.steps:
        if s.state == "succeeded":
            assert s.attempt == 1, (s.id, s.message)
    assert status.remedies == []

    # The parallel wave really overlapped: each of the four started before any of them ended.
    wave = [steps[i] for i in ("uv_sync", "rclone_rlds", "rclone_wp", "gsutil_ckpt")]
    assert max(s.started for s in wave) < min(s.ended for s in wave)

    # What the steps did on the box.
    commands = remote["log"].read_text()
    assert "apt-get install -y ffmpeg pkg-config build-essential" in commands
    assert "uv sync" in commands and "tensorflow==2.15.0 tensorflow-datasets==4.9.3" in commands
    assert "libero_object_no_noops/ " in commands and "--transfers=8" in commands and "--transfers=4" in commands
    assert "gsutil -m cp -r gs://openpi-assets/checkpoints/pi05_base" in commands
    repo = ws / "openpi"
    assert 'av>=13.1.0,<14.0.0' in (repo / "pyproject.toml").read_text()  # added: the stand-in had no pin
    assert (repo / "third_party" / "libero" / "README.md").is_file()  # submodules initialised
    assert (ws / "home" / ".no_auto_tmux").exists()
    assert "chuanliang.xie@gmail.com" in (ws / "home" / ".gitconfig").read_text()
    netrc = ws / "home" / ".netrc"
    assert netrc.stat().st_mode & 0o777 == 0o600 and f"password {WANDB_KEY}" in netrc.read_text()
    stats = json.loads((ws / "data" / "libero_object_no_noops" / "1.0.0" / "dataset_statistics.json").read_text())
    entry = stats["libero_object_no_noops"]
    assert len(entry["action"]["q99"]) == 7 and len(entry["proprio"]["q99"]) == 8
    assert entry["num_transitions"] == RLDS.episodes * RLDS.steps
    assert (ws / "agentops" / "training" / "stats.py").is_file()  # the core came through the put steps
    header = read_header(LocalTransport(), str(ws / "models" / "pi05_base_pytorch" / "model.safetensors"))
    assert len(header.tensors) == 812 and header.tensors["time_mlp_in.weight"].shape == [1024, 1024]
    assert "WaypointAEDataset: 454 episodes" in (repo / "logs" / "waypoint_ae_libero.log").read_text()

    # The gates: every line of seed 003 §13.1 in order, and the loss metric judged.
    gate = steps["gate_ae"]
    assert gate.state == "succeeded"
    assert [p["matched"] for p in gate.progress["patterns"]] == [True] * 6
    assert gate.progress["patterns"][5]["line"].startswith("[AE] step=0/10000 loss=0.912")
    assert "loss: 3 values, first 0.912" in gate.message
    assert steps["convert_done"].progress["patterns"][0]["matched"]
    _assert_secret_kept(tmp_path, status, Path(target.workdir))


def test_setup_vastai_vlm_gates_and_oom_remedy(remote, target: TargetSpec, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    status, steps = _run_to_success(tmp_path, target, _vars(remote, ws, "vlm"), monkeypatch)
    assert steps["gate_ae"].state == "skipped" and steps["gate_vlm"].state == "succeeded"

    # Seed issue 7: the stand-in trainer dies at batch 16 (the config's value); the catalog's
    # vlm-cuda-oom-batch16 entry sets expandable_segments and caps batch_size at 12; attempt 2 trains.
    train = steps["train"]
    assert train.attempt == 2 and train.attempts[0].rc == 1
    [remedy] = status.remedies
    assert remedy.step_id == "train" and remedy.issue_id == "vlm-cuda-oom-batch16"
    assert remedy.attempt == 1 and remedy.result == "succeeded"
    assert any("Tried to allocate 15.68 GiB" in line for line in remedy.matched_lines)
    assert "set env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in remedy.fix
    assert "scaled batch_size: 144 -> 12" in remedy.fix
    assert status.vars["batch_size"] == 12
    config = (ws / "openpi" / "configs" / "waypoint_vlm_libero.yaml").read_text()
    assert "\nbatch_size: 12\n" in config  # the launch lowered the config to the cap

    # The VLM gate followed the retried job: §13.2's lines in order, CE loss 11-12 and falling.
    gate = steps["gate_vlm"]
    assert [p["matched"] for p in gate.progress["patterns"]] == [True] * 6
    assert gate.progress["patterns"][0]["line"].startswith("WaypointVLMDataset: dir=")
    assert "loss: 3 values, first 11.52" in gate.message
    stats = json.loads((ws / "data" / "libero" / "libero_object_wp_001" / "norm_stats" / "dataset_statistics.json").read_text())
    assert stats["waypoint_filtered_rlds"]["num_transitions"] == WAYPOINTS.episodes * WAYPOINTS.steps
    _assert_secret_kept(tmp_path, status, Path(target.workdir))


def test_setup_vastai_system_torchrun_is_replaced_by_the_venvs(remote, target: TargetSpec, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Seed issue 8: launched with the image's torchrun, the workers miss the venv's packages; the catalog's
    # system-torchrun-no-venv entry sets the runbook's `torchrun` variable back to .venv/bin/torchrun.
    ws = tmp_path / "ws"
    values = {**_vars(remote, ws, "ae"), "torchrun": str(remote["bin"] / "torchrun-system")}
    status, steps = _run_to_success(tmp_path, target, values, monkeypatch)
    [remedy] = status.remedies
    assert (remedy.step_id, remedy.issue_id, remedy.result) == ("train", "system-torchrun-no-venv", "succeeded")
    assert any("No module named 'safetensors'" in line for line in remedy.matched_lines)
    assert remedy.fix == [f"set torchrun: {values['torchrun']!r} -> '.venv/bin/torchrun'"]
    assert status.vars["torchrun"] == ".venv/bin/torchrun"
    assert [a.rc for a in steps["train"].attempts][:1] == [1] and steps["train"].attempt == 2
    assert steps["gate_ae"].state == "succeeded"
    _assert_secret_kept(tmp_path, status, Path(target.workdir))
