"""The verification vocabulary: check kinds a runbook declares, judged through any Transport."""
from __future__ import annotations

from checks.evaluate import CheckFailed, CheckResult, evaluate, evaluate_all, list_files, parse_gpus, resolve_field
from checks.kinds import (
    ActionUnitsCheck,
    Check,
    CheckBase,
    CommandCheck,
    DiskFreeCheck,
    FileCountCheck,
    GpuMemoryCheck,
    JsonFieldCheck,
    PathExistsCheck,
    SafetensorsCheck,
    version_matches,
)
from checks.safetensors_header import HeaderError, SafetensorsHeader, TensorInfo, read_header

__all__ = [
    "ActionUnitsCheck",
    "Check",
    "CheckBase",
    "CheckFailed",
    "CheckResult",
    "CommandCheck",
    "DiskFreeCheck",
    "FileCountCheck",
    "GpuMemoryCheck",
    "HeaderError",
    "JsonFieldCheck",
    "PathExistsCheck",
    "SafetensorsCheck",
    "SafetensorsHeader",
    "TensorInfo",
    "evaluate",
    "evaluate_all",
    "list_files",
    "parse_gpus",
    "read_header",
    "resolve_field",
    "version_matches",
]
