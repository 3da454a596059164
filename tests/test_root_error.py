"""Root-error extraction on real logs (the corpus's dev split and the catalog's seed logs): labels, chains, wraps, rewrites."""
from __future__ import annotations

from pathlib import Path

import pytest

from agent_ops.known_issues.catalog import default_catalog, shipped_dir
from agent_ops.known_issues.root_error import RootError, normalise_labelled, read_tail, root_error
from tests.logcorpus import corpus


def dev_log(family: str, name: str) -> str:
    """A log of the dev split (the test split is never read here)."""
    [log] = [log for log in corpus() if log.family == family and log.path.name == name]
    assert log.split == "dev"
    return log.text()


def extract(text: str) -> tuple[RootError, list[str], list[str]]:
    labels, lines, widths = normalise_labelled(text)
    return root_error(lines, labels, widths), labels, lines


def test_rank_prefixes_go_and_the_message_keeps_its_continuation_lines():
    failure, _, lines = extract(dev_log("nccl-system-error", "12-distbackenderror-unhandled-cuda-error.log"))
    assert not any(line.startswith("[rank") for line in lines)
    assert failure.exception.type == "ncclUnhandledCudaError"
    assert failure.exception.message == "Call to CUDA function failed. Last error: Cuda failure 1 'invalid argument'"
    assert ("nccl", "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, "
            "unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5") in {t[1:] for t in failure.tool_lines}


def test_a_logger_prefix_on_every_traceback_line_is_taken_off():
    # `2023-04-29 06:01:12.977 [177/train/578 (pid 28936)] [uuid] Traceback ...`: the time stamp is a label,
    # the rest of the prefix is learnt from the Traceback line and taken off each frame.
    failure, labels, lines = extract(dev_log("disk-full", "01-torch-save-errno28-prefixed.log"))
    assert labels[1] == "2023-04-29 06:01:12.977"
    assert failure.exception.text == "OSError: [Errno 28] No space left on device"
    assert failure.traceback_at == 1 and failure.exception.first == len(lines) - 1


def test_rays_dedup_note_is_not_part_of_the_line():
    # `(pid=48305) wandb: ... [repeated 5x across cluster] (Ray deduplicates logs by default. ...)`
    _, _, lines = extract(dev_log("wandb-auth", "19-ray-tune-trials-network-error-waiting-for-init.log"))
    assert lines.count("wandb: Network error (ConnectionError), entering retry loop.") == 2
    assert lines[-1] == "wandb: | Waiting for wandb.init()..."


def test_a_line_set_in_bold_is_read_as_the_line_but_banners_of_asterisks_stay():
    # A log pasted into an issue: the user set bash's `Killed` in bold; the kernel's last word is still an error line.
    name = "84-fastmaskrcnn-tf-iter-line-regular-loss-total-loss-instances-batch-then-markdown-bold-killed.log"
    failure, _, lines = extract(dev_log("host-oom-killer", name))
    assert lines[-1] == "Killed" and [line for _, tool, line in failure.tool_lines if tool == "kernel"] == ["Killed"]
    _, _, lines = extract("*****************************************\n*** Check failure stack trace: ***\n**bold** and more\n")
    assert lines == ["*****************************************", "*** Check failure stack trace: ***", "**bold** and more"]


def test_vllm_and_glog_labels_are_labels():
    failure, labels, lines = extract(dev_log("nccl-system-error", "14-ray-vllm-ncclinternalerror-busid.log"))
    assert labels[0] == "ERROR 04-07 00:57:46 ray_utils.py:45]"
    assert failure.exception.text == "ncclInternalError: Internal check failed."
    _, labels, lines = extract(dev_log("nccl-timeout", "01-watchdog-allreduce-600000ms-prefixed.log"))
    # A capture's line number, a rank label and glog's bracket, stacked.
    assert labels[0] == "[80746] [E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607]"
    assert lines[0].startswith("[Rank 0] Watchdog caught collective operation timeout")


def test_a_direct_cause_chain_keeps_the_earlier_exception():
    failure, _, _ = extract(dev_log("tf-ml-dtypes", "13-old-numpy-tf-bfloat16-check-failed.log"))
    assert [e.text for e in failure.chain] == [
        "ImportError: numpy.core.multiarray failed to import",  # the direct cause, printed just above the marker
        "SystemError: <class '_frozen_importlib._ModuleLockManager'> returned a result with an error set",
    ]
    # Exceptions printed after the traceback are later than its own: the last one is final.
    assert failure.exception.text == "ImportError: numpy.core.umath failed to import"


def test_during_handling_chain_from_seed_000():
    sample = default_catalog().get("hf-repo-id-unsafe-path").samples.positive[1]
    failure, _, _ = extract(sample)
    assert [e.type for e in failure.chain] == ["huggingface_hub.utils._validators.HFValidationError"]
    assert failure.exception.text.startswith("OSError: Incorrect path_or_model_id: 'output_2025-10-02||12:35:19'.")
    assert failure.summary().splitlines()[0].startswith("huggingface_hub.utils._validators.HFValidationError: Repo id must use")


def test_soft_wraps_are_joined_with_a_space():
    failure, _, _ = extract(dev_log("hf-path-validation", "04-hfvalidation-wrapped-lines.log"))
    assert failure.exception.text == (
        "HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
        "'/path/to/vicuna/weights/'. Use `repo_type` argument if needed."
    )


def test_hard_wraps_at_the_terminal_width_are_joined_without_one():
    # Seed 000's error in an 80-column tmux pane: cut mid-word.
    line = ("[rank4]: huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
            "'namespace/repo_name': '/root/SFTvsRL/train_ckpt/virl_vl/output_2025-10-02\\|\\|12\\:35\\:19/checkpoint-epoch-4'.")
    segments = [line[i : i + 80] for i in range(0, len(line), 80)]
    failure, _, _ = extract("\n".join(["step 3 ok", *segments, ""]))
    assert failure.exception.text == line.removeprefix("[rank4]: ")
    assert (failure.exception.first, failure.exception.last) == (1, 3)


def test_padded_column_wraps_of_a_copied_terminal_are_closed_up():
    failure, labels, _ = extract(dev_log("host-oom-killer", "01-dmesg-oom-kill-wrapped-columns.log"))
    kernel = [line for _, tool, line in failure.tool_lines if tool == "kernel"]
    assert "Out of memory: Killed process 25315 (python3) total-vm:53312244kB, anon-rss:31451456kB" in kernel[1]
    assert "cpuset=/,mems_allowed=0" in kernel[0]
    assert labels[0] == "[2059991.491436]"  # dmesg's clock is a label


def test_carriage_returns_and_ansi_keep_what_the_terminal_showed():
    tqdm = (shipped_dir() / "_negative" / "ae_tqdm_ansi.log").read_bytes().decode()  # read_text() would turn \r into \n
    oom = dev_log("cuda-oom", "04-rank0-torch-outofmemoryerror.log")
    failure, _, lines = extract(tqdm + "\x1b[31m" + oom.rstrip("\n") + "\x1b[0m\n")
    assert lines[0] == "Training:   0%|          | 2/10000 [00:28<39:40:02, 14.29s/it]"
    assert failure.exception.type == "torch.OutOfMemoryError"
    assert failure.exception.message.startswith("CUDA out of memory. Tried to allocate 158.00 MiB.")
    assert failure.exception.first == len(lines) - 1


def test_tool_error_lines_name_their_tool():
    failure, _, _ = extract(dev_log("apt-lock", "07-dpkg-frontend-locked.log"))
    assert [tool for _, tool, _ in failure.tool_lines] == ["apt", "apt", "apt"]
    failure, _, _ = extract(dev_log("git-lfs", "04-filter-process-skip-failed.log"))
    assert failure.summary().splitlines()[-1].startswith("fatal: $Results/Maps/ref/mean/fixed/98/0/map_pga-45.tif: smudge filter lfs failed")
    assert extract("all good\nstep 2 loss 0.3\n")[0].found is False


@pytest.mark.parametrize(("family", "name", "tool", "starts"), [
    # Packer's builder, Chef's STDERR label, Terraform's provisioner, BuildKit's step and clock: the tool's line under them.
    ("apt-lock", "17-packer-azure-arm-lists-and-frontend.log", "apt", "E: Could not get lock /var/lib/apt/lists/lock"),
    ("apt-lock", "11-dpkg-interrupted-chef.log", "apt", "E: dpkg was interrupted"),
    ("disk-full", "25-terraform-remote-exec-apt-update-write-28-no-space.log", "apt", "W: Failed to fetch"),
    ("pip-resolution", "17-docker-build-pip-backtracking-resolution-too-deep.log", "pip", "error: resolution-too-deep"),
])
def test_a_wrapping_tools_prefix_goes_and_the_tools_own_line_is_an_error_line(family: str, name: str, tool: str, starts: str):
    failure, _, lines = extract(dev_log(family, name))
    assert (tool, True) in {(t, line.startswith(starts)) for _, t, line in failure.tool_lines}, failure.tool_lines
    assert not any(line.startswith(("azure-arm:", "STDERR:", "#57 ")) or "(remote-exec):" in line for line in lines)


def test_a_wrapper_prefix_needs_its_wrappers_shape():
    # `docker: Error response` is docker's own line, not Packer's docker builder (indented or arrowed).
    _, _, lines = extract("docker: Error response from daemon: driver failed\n    docker: Error response from daemon: x\n"
                          "web_1  | RuntimeError: boom\nweb | not a compose prefix\n")
    assert lines == ["docker: Error response from daemon: driver failed", "Error response from daemon: x",
                     "RuntimeError: boom", "web | not a compose prefix"]


@pytest.mark.parametrize(("family", "name", "line"), [
    ("module-not-found", "44-slurm-srun-slurmstepd-execve-no-such-file-or-directory-task-0-exit-code-2.log",
     "slurmstepd: error: execve(): ml: No such file or directory"),  # `prog: error:`
    ("cuda-oom", "44-darknet-yolov2-layer-table-cuda-error-oom-cuda-c-assertion.log",
     "darknet: ./src/cuda.c:36: check_error: Assertion `0' failed."),  # C's assert
    ("cuda-oom", "51-tsnecuda-knn-computation-faiss-stackdevicememory-assertion-aborted.log", "Aborted (core dumped)"),
    ("disk-full", "35-vagrant-cmake-ld-final-link-failed-no-space.log", "make: *** [eventhandler] Error 2"),  # under Vagrant's prefix
])
def test_error_lines_of_conventions_many_producers_share(family: str, name: str, line: str):
    failure, _, _ = extract(dev_log(family, name))
    assert line in {text for _, _, text in failure.tool_lines}, failure.tool_lines


@pytest.mark.parametrize("size_mb", [1, 64])
def test_read_tail_is_bounded_and_starts_at_a_line(tmp_path: Path, size_mb: int):
    path = tmp_path / "train.log"
    line = b"[AE] step=1/10000 loss=0.5123 lr=1.000e-04\n"
    with path.open("wb") as f:
        f.write(line * (size_mb * (1 << 20) // len(line)))
        f.write(b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n")
    text = read_tail(path, 4096)
    assert len(text) <= 4096 and text.startswith("[AE] step=1/")
    assert text.endswith("Tried to allocate 2.00 GiB.\n")
