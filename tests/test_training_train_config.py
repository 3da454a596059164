"""The trainer's config: YAML/JSON, --set overrides, errors that name the file and field (no torch needed)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel

from training.config import ConfigError, TrainConfig, apply_overrides, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "ref_0p5b_h100.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(ROOT / "training" / "configs" / name)
    assert cfg.wandb.mode in ("offline", "disabled") and cfg.max_steps > 0


def test_overrides_parse_yaml_values_and_create_sections(tmp_path: Path) -> None:
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("data.image_keys=[observation/image]") == (["data", "image_keys"], ["observation/image"])
    assert parse_override("model.weights=null") == (["model", "weights"], None)
    out = apply_overrides({"data": {"cache_dir": "/c"}}, ["craft.enabled=true", "data.batch_size=12"])
    assert out == {"data": {"cache_dir": "/c", "batch_size": 12}, "craft": {"enabled": True}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"out_dir": "/tmp/run", "max_steps": 5, "data": {"cache_dir": "/c"}}))
    cfg = load_config(path, ["runtime.cuda_alloc_conf=expandable_segments:True", "checkpoint.keep_last=1"])
    assert cfg.runtime.cuda_alloc_conf == "expandable_segments:True" and cfg.checkpoint.keep_last == 1
    assert isinstance(cfg, TrainConfig) and cfg.wandb.mode == "offline"  # the default


@pytest.mark.parametrize(("text", "message"), [
    ("out_dir: /x\nmax_steps: 5\ndata: {cache_dir: /c}\noptim: {lr: 0.1, momentum: 0.9}\n",
     "optim.momentum: Extra inputs are not permitted"),
    ("out_dir: /x\nmax_steps: 0\ndata: {cache_dir: /c}\n", "max_steps: Input should be greater than or equal to 1"),
    ("out_dir: /x\nmax_steps: 5\ndata: {cache_dir: /c}\ncraft: {enabled: true}\nruntime: {parallel: fsdp}\n",
     "craft: needs whole gradients per tensor"),
    (("out_dir: /x\nmax_steps: 5\ndata: {cache_dir: /c}\nwatchdog: {watch: [{metric: 'success rate', direction: max, "
      "threshold: 0.5}]}\n"), "must match \\w+"),
    ("- just a list\n", "expected a mapping at the top level"),
    ("out_dir: [unclosed\n", "not valid YAML"),
])
def test_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}") and message in str(info.value)


def test_bad_overrides_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_a_bare_name_finds_the_packaged_config_and_an_unknown_one_lists_them() -> None:
    # Runbooks say `--config tiny_cpu`: the box's install location is not theirs to know.
    cfg = load_config("tiny_cpu", ["max_steps=7"])
    assert cfg.max_steps == 7
    assert cfg.model_dump() == load_config(ROOT / "training" / "configs" / "tiny_cpu.yaml", ["max_steps=7"]).model_dump()
    with pytest.raises(ConfigError, match=r"tiny_gpu: no such file, and not a packaged config \(shipped: .*tiny_cpu"):
        load_config("tiny_gpu")


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field of a config model as a dotted path, walked here independently of training.config_help."""
    paths = []
    for name, field in model.model_fields.items():
        inner = [a for a in (field.annotation, *get_args(field.annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            paths.append(prefix + name)
            continue
        sep = "[]." if get_origin(field.annotation) is list else "."
        paths += _leaf_paths(inner[0], prefix + name + sep)
    return paths


def test_help_lists_every_config_key_with_its_type_default_and_description() -> None:
    # The real entry point: no torch needed to ask the trainer what it accepts.
    proc = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert re.fullmatch(r"  craft\.enabled +bool +false", rows["craft.enabled"])
    assert re.fullmatch(r"  optim\.lr +float \(> 0\) +0\.0002", rows["optim.lr"])
    assert re.fullmatch(r"  objective\.aux_ce +mapping \| null +null +add w\(t\) x next-token CE on the instruction",
                        rows["objective.aux_ce"])
    assert re.fullmatch(r"  objective\.aux_ce\.updates +int \(>= 1\) +200", rows["objective.aux_ce.updates"])
    assert re.fullmatch(r"  data\.cache_dir +str +required", rows["data.cache_dir"])
    assert re.fullmatch(r"  data\.normalization +q99\|mean_std\|none +q99", rows["data.normalization"])
    assert re.fullmatch(r"  runtime\.threads +int \| null \(>= 1\) +null +torch intra-op threads per process",
                        rows["runtime.threads"])
    assert re.fullmatch(r"  watchdog\.watch\[\]\.direction +min\|max +required +min: lower is better .*",
                        rows["watchdog.watch[].direction"])
    # Generated from the model, so it cannot drift: every leaf field is listed, and every listed key is a field.
    leaves = _leaf_paths(TrainConfig)
    assert {"optim.betas", "model.vision.config", "fault.amplify", "watchdog.watch[].ema"} <= set(leaves)
    assert [path for path in leaves if path not in rows] == []
    listed = [k for k in rows if re.fullmatch(r"[\w.\[\]]+", k) and ("." in k or k in TrainConfig.model_fields)]
    assert set(listed) - set(leaves) == {"objective.aux_ce", "watchdog.watch"}  # settable whole: null / a list


def test_a_key_of_an_optional_section_can_be_set_alone() -> None:
    # The help lists objective.aux_ce.start: setting it alone turns the hybrid schedule on with the other defaults.
    cfg = load_config("tiny_cpu", ["objective.aux_ce.start=0.8"])
    assert cfg.objective.aux_ce is not None and (cfg.objective.aux_ce.start, cfg.objective.aux_ce.end) == (0.8, 0.5)
