"""Qualify a fresh box before paying for long work: GPUs as ordered, driver and CUDA, disk, download speed, burn-in.

Every check runs through a Transport (a bounded exec each), so it works the same on a rented box
and on a stand-in. Parsing is separate from I/O: `parse_*` take text and return values.
A failed report names the machine as bad (lifecycle remembers it in the reputation file).
"""
from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from agent_ops.provider.base import Offer
from agent_ops.transport.base import Transport, expand_home

BURN_IN_SCRIPT = Path(__file__).with_name("burn_in.py")
GPU_TABLE = Path(__file__).with_name("data") / "gpus.yaml"
REMOTE_BURN_IN = "~/.agentops/burn_in.py"
# torch's import and the first CUDA context take tens of seconds on a cold box; the timed part is on top.
BURN_IN_STARTUP_S = 180.0
_NAME_NOISE = ("NVIDIA", "GEFORCE", "TESLA")
# Form factors the provider names but nvidia-smi may not ("H100 SXM" is "NVIDIA H100 80GB HBM3").
_FORM_FACTORS = {"SXM", "SXM2", "SXM4", "SXM5", "PCIE", "NVL"}


class QualifySpec(BaseModel):
    """What a box must show before it joins a fleet (beyond the GPUs that were ordered)."""

    model_config = {"extra": "forbid", "frozen": True}

    min_cuda: float | None = Field(None, description="CUDA version the driver supports, at least")
    min_driver: str | None = Field(None, description="NVIDIA driver version, at least (e.g. 550.54)")
    gpu_ram_tolerance: float = Field(0.05, ge=0, lt=1, description="GPU memory may fall short of the offer by this fraction")
    min_disk_free_gb: float | None = Field(None, gt=0, description="free disk under disk_path, GB")
    disk_path: str = "~"
    download_url: str | None = Field(None, description="a large file to time the box's download speed with (not measured when unset)")
    min_download_mbps: float | None = Field(None, gt=0, description="download speed from download_url, Mbit/s")
    download_timeout_s: float = Field(20.0, gt=0)
    burn_in_s: float = Field(5.0, ge=0, description="timed seconds of matmul per GPU; 0 skips the burn-in")
    burn_in_size: int = Field(8192, ge=64)
    burn_in_device: Literal["cuda", "cpu"] = Field("cuda", description="cpu only to try the burn-in without a GPU")
    min_tflops: float | None = Field(None, gt=0, description="slowest GPU's bf16 TFLOP/s, at least (default: a fraction of the model's peak)")
    tflops_fraction: float = Field(0.5, gt=0, le=1, description="share of the datasheet peak a GPU must reach in the burn-in")
    check_timeout_s: float = Field(60.0, gt=0, description="bound on each small check (nvidia-smi, df)")


class Check(BaseModel):
    """One check's verdict and what it saw."""

    name: str
    ok: bool
    detail: str


class QualifyReport(BaseModel):
    """All checks of one box; `ok` only if every one passed."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> str:
        """The failed checks, one phrase each (for the journal and the reputation file)."""
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


class GpuInfo(BaseModel):
    """One GPU as nvidia-smi reports it."""

    name: str
    memory_mib: float
    driver: str


def qualify(transport: Transport, offer: Offer, spec: QualifySpec) -> QualifyReport:
    """Run every check on the box; a check that cannot run fails (a box we cannot inspect is not qualified)."""
    gpus_check, gpus = check_gpus(transport, offer, spec)
    checks = [gpus_check, check_versions(transport, spec)]
    if spec.min_disk_free_gb is not None:
        checks.append(check_disk(transport, spec))
    if spec.download_url:
        checks.append(check_download(transport, spec))
    if spec.burn_in_s > 0 and gpus_check.ok:
        checks.append(check_burn_in(transport, gpus, spec))
    return QualifyReport(checks=checks)


def check_gpus(transport: Transport, offer: Offer, spec: QualifySpec) -> tuple[Check, list[GpuInfo]]:
    """Count, model and memory of the GPUs, as ordered."""
    res = transport.exec("nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits",
                         timeout=spec.check_timeout_s)
    if not res.ok:
        return Check(name="gpus", ok=False, detail=f"nvidia-smi failed (rc {res.rc}): {_brief(res.stderr or res.stdout)}"), []
    gpus = parse_gpu_csv(res.text())
    problems = []
    if len(gpus) != offer.gpus:
        problems.append(f"{len(gpus)} GPUs, ordered {offer.gpus}")
    wrong = sorted({g.name for g in gpus if not gpu_name_matches(offer.gpu_name, g.name)})
    if wrong:
        problems.append(f"model {', '.join(wrong)}, ordered {offer.gpu_name}")
    least = min((g.memory_mib for g in gpus), default=0.0)
    # vast.ai's gpu_ram (Offer.gpu_ram_gb x 1000) is nvidia-smi's memory.total in MiB, as the host reported it.
    if gpus and offer.gpu_ram_gb and least < offer.gpu_ram_gb * 1000 * (1 - spec.gpu_ram_tolerance):
        problems.append(f"{least:.0f} MiB per GPU, offered {offer.gpu_ram_gb:g} GB")
    seen = f"{len(gpus)} x {gpus[0].name} ({least:.0f} MiB)" if gpus else "no GPUs"
    return Check(name="gpus", ok=not problems, detail="; ".join(problems) or seen), gpus


def check_versions(transport: Transport, spec: QualifySpec) -> Check:
    """Driver version and the highest CUDA version it supports (nvidia-smi's header)."""
    res = transport.exec("nvidia-smi", timeout=spec.check_timeout_s)
    driver, cuda = parse_smi_header(res.text()) if res.ok else (None, None)
    if driver is None or cuda is None:
        return Check(name="driver", ok=False, detail=f"no driver/CUDA version in nvidia-smi's output (rc {res.rc})")
    problems = []
    if spec.min_cuda is not None and cuda < spec.min_cuda:
        problems.append(f"CUDA {cuda:g} < {spec.min_cuda:g}")
    if spec.min_driver is not None and version_tuple(driver) < version_tuple(spec.min_driver):
        problems.append(f"driver {driver} < {spec.min_driver}")
    return Check(name="driver", ok=not problems, detail="; ".join(problems) or f"driver {driver}, CUDA {cuda:g}")


def check_disk(transport: Transport, spec: QualifySpec) -> Check:
    """Free disk where the work will write."""
    path = expand_home(spec.disk_path, transport.home())
    res = transport.exec(f"df -Pk -- {shlex.quote(path)}", timeout=spec.check_timeout_s)
    free = parse_df_free_gb(res.text()) if res.ok else None
    if free is None:
        return Check(name="disk", ok=False, detail=f"df {path} failed (rc {res.rc}): {_brief(res.stderr)}")
    need = spec.min_disk_free_gb or 0.0
    return Check(name="disk", ok=free >= need, detail=f"{free:.1f} GB free under {path}" + ("" if free >= need else f", need {need:g}"))


def check_download(transport: Transport, spec: QualifySpec) -> Check:
    """Download speed from spec.download_url to the box (curl, bounded in time)."""
    assert spec.download_url
    t = spec.download_timeout_s
    cmd = (f"curl -sS -o /dev/null -m {t:g} -w '%{{size_download}} %{{time_total}}' -- {shlex.quote(spec.download_url)}")
    res = transport.exec(cmd, timeout=t + 10)
    mbps = parse_curl_mbps(res.text())
    if mbps is None:
        return Check(name="download", ok=False, detail=f"curl failed (rc {res.rc}): {_brief(res.stderr)}")
    need = spec.min_download_mbps
    ok = need is None or mbps >= need
    return Check(name="download", ok=ok, detail=f"{mbps:.0f} Mbit/s" + ("" if ok else f" < {need:g}"))


def check_burn_in(transport: Transport, gpus: list[GpuInfo], spec: QualifySpec) -> Check:
    """bf16 matmul on every GPU; the slowest must reach the minimum (given, or a fraction of the model's peak)."""
    transport.put(REMOTE_BURN_IN, BURN_IN_SCRIPT.read_bytes())
    script = expand_home(REMOTE_BURN_IN, transport.home())
    cmd = f"python3 {shlex.quote(script)} --seconds {spec.burn_in_s:g} --size {spec.burn_in_size} --device {spec.burn_in_device}"
    res = transport.exec(cmd, timeout=BURN_IN_STARTUP_S + spec.burn_in_s * max(1, len(gpus)))
    answer = _last_json(res.text())
    if not answer or "min_tflops" not in answer:
        why = (answer or {}).get("error") or _brief(res.stderr or res.stdout)
        return Check(name="burn_in", ok=False, detail=f"burn-in failed (rc {res.rc}): {why}")
    measured = float(answer["min_tflops"])
    need = spec.min_tflops
    if need is None and gpus:
        peak = expected_peak_tflops(gpus[0].name)
        need = None if peak is None else peak * spec.tflops_fraction
    if need is None:
        return Check(name="burn_in", ok=True, detail=f"{measured:g} TFLOP/s (no expected figure for {gpus[0].name if gpus else '?'})")
    ok = measured >= need
    return Check(name="burn_in", ok=ok, detail=f"{measured:g} TFLOP/s" + (f" (>= {need:.0f})" if ok else f" < {need:.0f}"))


# --- parsing: text in, values out ----------------------------------------------------------


def parse_gpu_csv(text: str) -> list[GpuInfo]:
    """`name, memory.total, driver_version` rows (csv, noheader, nounits) as GpuInfo."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            try:
                gpus.append(GpuInfo(name=parts[0], memory_mib=float(parts[1]), driver=parts[2]))
            except ValueError:
                continue
    return gpus


def parse_smi_header(text: str) -> tuple[str | None, float | None]:
    """(driver version, CUDA version) from nvidia-smi's banner."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (driver.group(1) if driver else None), (float(cuda.group(1)) if cuda else None)


def parse_df_free_gb(text: str) -> float | None:
    """Available GB from `df -Pk` (second line, fourth column, in KiB)."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        return None
    fields = lines[-1].split()
    try:
        return int(fields[3]) * 1024 / 1e9
    except (IndexError, ValueError):
        return None


def parse_curl_mbps(text: str) -> float | None:
    """Mbit/s from curl's `%{size_download} %{time_total}`; None if nothing came."""
    try:
        size, seconds = (float(x) for x in text.split())
    except ValueError:
        return None
    if size <= 0 or seconds <= 0:
        return None
    return size * 8 / seconds / 1e6


def normalize_gpu_name(name: str) -> str:
    """Upper case, without spaces/'-'/'_' and vendor words: "NVIDIA GeForce RTX 4090" -> "RTX4090"."""
    words = re.split(r"[\s_\-]+", name.upper())
    return "".join(w for w in words if w not in _NAME_NOISE)


def gpu_name_matches(ordered: str, reported: str) -> bool:
    """Whether nvidia-smi's name is the model ordered (form factors the provider adds are not required)."""
    words = [w for w in re.split(r"[\s_\-]+", ordered.upper()) if w and w not in _NAME_NOISE and w not in _FORM_FACTORS]
    return bool(words) and "".join(words) in normalize_gpu_name(reported)


def version_tuple(version: str) -> tuple[int, ...]:
    """"550.54.14" -> (550, 54, 14), for comparing driver versions."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


@lru_cache(maxsize=1)
def _gpu_table() -> list[dict]:
    return yaml.safe_load(GPU_TABLE.read_text())


def expected_peak_tflops(reported_name: str) -> float | None:
    """Datasheet dense bf16 TFLOP/s of the model nvidia-smi names, or None if the table lacks it."""
    name = normalize_gpu_name(reported_name)
    for entry in _gpu_table():
        if any(m in name for m in entry["match"]):
            return float(entry["peak_tflops"])
    return None


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _brief(data: bytes | str, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return " ".join(text.split())[-limit:]
