"""The trainer's config: YAML/JSON, --set overrides, errors that name the file and field (no torch needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

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
