"""Qualification: nvidia-smi's answers parsed, GPU names matched, and the burn-in script run for real (torch on CPU)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_ops.provider.base import Offer
from agent_ops.provider.qualify import (
    GpuInfo,
    QualifySpec,
    check_burn_in,
    expected_peak_tflops,
    gpu_name_matches,
    parse_curl_mbps,
    parse_df_free_gb,
    parse_gpu_csv,
    parse_smi_header,
    version_tuple,
)
from agent_ops.transport.local import LocalTransport

# Verbatim from an H200 box (driver 580.159.04).
H200_CSV = "NVIDIA H200, 143771, 580.159.04\n"
H200_BANNER = "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"


def test_nvidia_smi_csv_and_banner_are_parsed() -> None:
    [gpu] = parse_gpu_csv(H200_CSV + "\n")
    assert gpu == GpuInfo(name="NVIDIA H200", memory_mib=143771, driver="580.159.04")
    assert parse_smi_header(H200_BANNER) == ("580.159.04", 13.0)
    assert parse_smi_header("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.") == (None, None)


@pytest.mark.parametrize(("ordered", "reported", "same"), [
    ("H100 SXM", "NVIDIA H100 80GB HBM3", True),  # the provider names the form factor, nvidia-smi does not
    ("A100 SXM4", "NVIDIA A100-SXM4-80GB", True),
    ("RTX 4090", "NVIDIA GeForce RTX 4090", True),
    ("RTX PRO 6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", True),
    ("RTX 6000Ada", "NVIDIA RTX 6000 Ada Generation", True),
    ("RTX 4090", "NVIDIA GeForce RTX 3090", False),
    ("H200", "NVIDIA H100 80GB HBM3", False),
])
def test_the_model_ordered_is_recognised_in_nvidia_smis_name(ordered: str, reported: str, same: bool) -> None:
    assert gpu_name_matches(ordered, reported) is same


def test_expected_peak_comes_from_the_table_by_nvidia_smis_name() -> None:
    assert expected_peak_tflops("NVIDIA H100 NVL") != expected_peak_tflops("NVIDIA H100 80GB HBM3")
    assert expected_peak_tflops("NVIDIA H200") is not None
    assert expected_peak_tflops("NVIDIA Some Future GPU") is None


def test_df_curl_and_versions_are_parsed() -> None:
    df = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n/dev/vda 264212084 26117968 80272944 25% /\n"
    assert parse_df_free_gb(df) == 80272944 * 1024 / 1e9
    assert parse_df_free_gb("df: /nope: No such file or directory\n") is None
    assert parse_curl_mbps("2000000 0.5") == 2000000 * 8 / 0.5 / 1e6
    assert parse_curl_mbps("0 0.1") is None and parse_curl_mbps("") is None
    assert version_tuple("550.54.14") > version_tuple("550.54") > version_tuple("535.183.01")


@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalTransport]:
    """This machine as the box, with a private HOME (the burn-in script is uploaded to ~/.agentops)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    transport = LocalTransport()
    yield transport
    transport.close()


def test_burn_in_measures_for_real_and_fails_a_box_below_the_minimum(local_home: LocalTransport) -> None:
    pytest.importorskip("torch")
    cpu = QualifySpec(burn_in_s=0.2, burn_in_size=128, burn_in_device="cpu", min_tflops=1e-9)
    gpu = [GpuInfo(name="cpu", memory_mib=0, driver="-")]

    passed = check_burn_in(local_home, gpu, cpu)
    assert passed.ok, passed.detail
    measured = float(passed.detail.split()[0])
    assert measured > 0

    failed = check_burn_in(local_home, gpu, cpu.model_copy(update={"min_tflops": measured * 1000}))
    assert not failed.ok and "<" in failed.detail


def test_burn_in_without_a_cuda_device_fails_with_the_reason(local_home: LocalTransport) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    check = check_burn_in(local_home, [], QualifySpec(burn_in_s=0.1, burn_in_size=64))
    assert not check.ok and "no CUDA device" in check.detail


def test_burn_in_script_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from agent_ops.provider import burn_in

    assert burn_in.main(["--device", "cpu", "--seconds", "0.1", "--size", "64"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["min_tflops"] == min(g["tflops"] for g in answer["gpus"]) > 0


def test_offer_cost_counts_hours_and_downloads() -> None:
    from agent_ops.provider.base import OfferRequest

    offer = Offer(provider="vast", id="1", machine_id="2", gpu_name="RTX 4090", gpus=1, gpu_ram_gb=24, disk_gb=100,
                  dph=0.5, download_usd_per_gb=0.01)
    request = OfferRequest(hours=3, download_gb=50)
    assert offer.cost(request) == offer.dph * request.hours + offer.download_usd_per_gb * request.download_gb
