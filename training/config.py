"""The trainer's configuration: one pydantic model, loaded from YAML or JSON, with ``--set`` overrides.

Usage (from :mod:`training.train`)::

    python -m training.train --config training/configs/tiny_cpu.yaml --set optim.lr=1e-4 --set max_steps=50

A ``--set`` value is parsed as YAML (``--set data.image_keys=[observation/image]``,
``--set model.weights=null``). Unknown fields are errors (``extra="forbid"``): a
typo never silently falls back to a default. Errors read ``FILE: field.path: message``.
No torch import here: the controller can validate a config without the ``[train]`` extra.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Names the trainer creates, and every component of out_dir: seed 000's `output_2025-10-02||12:35:19`
# broke `from_pretrained`; strftime("%Y-%m-%d_%H-%M-%S") style names pass.
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and field."""


class Strict(BaseModel):
    """Base: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """The training cache (python -m training.cache) and how batches are drawn from it."""

    cache_dir: str
    stats: str | None = Field(None, description="dataset_statistics.json (python -m training.stats); copied into checkpoints")
    future_actions: int = Field(7, ge=0, description="K: a chunk is the current action plus the next K")
    normalization: Literal["q99", "mean_std", "none"] = "q99"
    image_keys: list[str] | None = Field(None, description="cameras to use; null = every cached camera")
    batch_size: int = Field(8, ge=1, description="per process (GPU)")
    num_workers: int = Field(0, ge=0)
    require_matching_stats: bool = True
    skip_updates: int = Field(0, ge=0, description="on resume only: skip the batches of this many updates first (the data read "
                              "when a run went wrong is not replayed after a rollback; the catalog's remedies set it)")


class VisionConfig(Strict):
    """The vision encoder: a local HF directory, or a SigLIP vision config for random init."""

    pretrained: str | None = Field(None, description="local directory (never a Hub id: local_files_only)")
    config: dict[str, Any] = Field(default_factory=dict, description="SiglipVisionConfig fields for random init")


class LanguageConfig(Strict):
    """The language backbone: a local HF causal-LM directory, or a config for random init."""

    pretrained: str | None = None
    model_type: str = "qwen2"
    config: dict[str, Any] = Field(default_factory=dict, description="fields of the model_type's config for random init")
    tokenizer: str | None = Field(None, description="local tokenizer dir; default: `pretrained`, else a byte tokenizer")


class ModelConfig(Strict):
    """The policy: vision encoder + language backbone + action head."""

    vision: VisionConfig = VisionConfig()
    language: LanguageConfig = LanguageConfig()
    weights: str | None = Field(None, description="policy weights: model.safetensors or a directory holding one")
    max_text_tokens: int = Field(64, ge=1)
    mask_padding: bool = Field(True, description="False: pads are attended to, so SDPA can take its flash path")
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    attn_implementation: str = "sdpa"


class HybridWeightConfig(Strict):
    """w(t) from start to end over `updates` steps (seed 004's SFT weight)."""

    start: float = 1.0
    end: float = 0.5
    updates: int = Field(200, ge=1)
    kind: Literal["linear", "cosine", "exponential"] = "linear"

    @model_validator(mode="after")
    def _positive_for_exponential(self) -> HybridWeightConfig:
        if self.kind == "exponential" and (self.start <= 0 or self.end <= 0):
            raise ValueError("exponential needs start > 0 and end > 0")
        return self


class ObjectiveConfig(Strict):
    """What the policy is trained to predict."""

    kind: Literal["l1_chunk", "flow_matching", "next_token_ce"] = "l1_chunk"
    aux_ce: HybridWeightConfig | None = Field(None, description="add w(t) x next-token CE on the instruction")


class CraftConfig(Strict):
    """CRaFT (seed 001): keep features near a frozen anchor under a budget with a dual variable."""

    enabled: bool = False
    retention_budget: float = Field(0.1, gt=0)
    dual: bool = Field(True, description="False: fixed lambda")
    dual_lr: float = Field(0.01, ge=0)
    fixed_lambda: float = Field(0.1, ge=0)
    initial_lambda: float = Field(0.0, ge=0)
    projection: bool = Field(True, description="project the action gradient off conflicting retention gradients")
    anchor: Literal["concat", "aq_only", "raw_only"] = "concat"
    anchor_layer: int = Field(-1, description="hidden-state index of the language backbone (-1 = last)")
    anchor_tokens: Literal["vision_only", "vision_plus_prompt"] = "vision_plus_prompt"


class OptimConfig(Strict):
    """AdamW, accumulation and clipping."""

    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    fused: bool | None = Field(None, description="fused AdamW; default: on (CPU needs torch >= 2.4)")


class ScheduleConfig(Strict):
    """LR as a pure function of the step (training.schedules)."""

    kind: Literal["multistep", "cosine", "constant"] = "multistep"
    warmup_steps: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    num_steps_before_decay: int = Field(150_000, ge=0)
    decay_factor: float = Field(0.1, gt=0)
    min_lr_factor: float = Field(0.0, ge=0, le=1)


class CheckpointConfig(Strict):
    """When to save and how many to keep."""

    save_every: int = Field(5000, ge=1)
    keep_last: int = Field(2, ge=1)
    save_final: bool = True


class WandbConfig(Strict):
    """Experiment tracking; the run id is kept across resumes."""

    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "agentops"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = Field(default_factory=list)


class WatchConfig(Strict):
    """One watched metric: COLLAPSE when it is worse than its best by more than `threshold` (a fraction)."""

    metric: str
    direction: Literal["min", "max"] = Field(description="min: lower is better (loss); max: higher is better (success)")
    threshold: float = Field(gt=0)
    ema: float = Field(0.0, ge=0, lt=1, description="smoothing of the observed value")
    warmup_steps: int = Field(0, ge=0)

    @field_validator("metric")
    @classmethod
    def _word(cls, value: str) -> str:
        if not re.fullmatch(r"\w+", value):
            raise ValueError(f"metric name {value!r} must match \\w+ (the catalog's COLLAPSE signature)")
        return value


def _default_watches() -> list[WatchConfig]:
    return [WatchConfig(metric="loss", direction="min", threshold=3.0, ema=0.9, warmup_steps=20),
            WatchConfig(metric="grad_norm", direction="min", threshold=50.0, ema=0.9, warmup_steps=20)]


class WatchdogConfig(Strict):
    """Collapse watchdog (seed 000): loss spike, grad-norm explosion, eval success falling."""

    enabled: bool = True
    watch: list[WatchConfig] = Field(default_factory=_default_watches)
    on_collapse: Literal["stop", "continue"] = "stop"


class FaultConfig(Strict):
    """Test-only fault injection, off by default: makes a tiny CPU run collapse on cue (runbooks/resume_training.yaml).

    A tiny CPU policy has no sharp edge of stability (its L1 loss stays bounded even at 100x its LR), so
    seed 000's "this LR is too high; half of it is fine" cannot be shown with it honestly. This supplies the
    edge: updates whose scheduled LR exceeds `unstable_lr` are applied at that LR x `amplify`, which wrecks
    the weights within two steps. The trainer says so once in a `[fault]` line; `lr=` shows the LR applied.
    """

    unstable_lr: float | None = Field(None, gt=0, description="null: off. Scheduled LRs above this are amplified")
    amplify: float = Field(1000.0, gt=1, description="the factor applied to such an LR")


class RuntimeConfig(Strict):
    """Devices, parallelism, precision."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = False
    # blocks: each transformer block compiled on its own (one graph, reused by every block of a shape).
    # The whole model under torch.compile makes transformers (torch < 2.14) build an explicit causal
    # mask instead of SDPA's is_causal, which also forces key/value heads to be repeated for GQA: the
    # slower attention path (tests/bench/bench_attention.py). Blocks keep the eager mask skip.
    compile_scope: Literal["blocks", "model"] = Field("blocks", description="what runtime.compile compiles")
    cuda_alloc_conf: str | None = Field(None, description="PYTORCH_CUDA_ALLOC_CONF, set before CUDA initialises")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per process")
    find_unused_parameters: bool = False
    max_nonfinite_steps: int = Field(5, ge=1)
    timing_warmup_steps: int = Field(5, ge=0, description="steps left out of the throughput figures (compile, warm-up)")
    tf32: bool = True
    profile_steps: int = Field(0, ge=0, description="profile this many steps on rank 0 (training/profiling.py); 0: off")
    profile_start: int = Field(20, ge=0, description="first profiled step (after compile and warm-up)")


class TrainConfig(Strict):
    """Everything one training run needs."""

    out_dir: str
    max_steps: int = Field(ge=1)
    seed: int = 42
    log_every: int = Field(10, ge=1)
    data: DataConfig
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    craft: CraftConfig = CraftConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    wandb: WandbConfig = WandbConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    fault: FaultConfig = FaultConfig()

    @field_validator("out_dir")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        bad = [part for part in Path(value).parts if part != "/" and not SAFE_NAME.match(part)]
        if bad:
            raise ValueError(f"path component(s) {bad} outside [A-Za-z0-9._-] (seed 000: such names break "
                             f"from_pretrained); use strftime('%Y-%m-%d_%H-%M-%S') style names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.craft.enabled and self.runtime.parallel == "fsdp":
            raise ValueError("craft: needs whole gradients per tensor (conflict ratio, projection); use runtime.parallel=ddp")
        if self.craft.enabled and self.objective.kind == "next_token_ce" and self.craft.anchor != "raw_only":
            raise ValueError("craft.anchor: next_token_ce has no action queries; use raw_only")
        return self


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"{source}: {where}: {err['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not all(re.fullmatch(r"\w+", p) for p in key.split(".")):
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text}: value is not valid YAML: {exc}") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``--set`` applied (intermediate mappings created as needed)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {part} is not a mapping")
            node = child
        node[path[-1]] = value
    return out


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file's top-level mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the bare name of a config shipped in ``training/configs`` (``tiny_cpu``).

    Runbooks say ``--config tiny_cpu`` so that they need not know where the package is installed on the box.
    """
    given = Path(path)
    if given.exists() or "/" in str(path):
        return given
    for candidate in (PACKAGED_CONFIGS / given.name, PACKAGED_CONFIGS / f"{given.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{path}: no such file, and not a packaged config (shipped: {shipped})")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a config; ConfigError names the file and field."""
    path = resolve_config_path(path)
    data = apply_overrides(read_mapping(path), overrides or [])
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        source = f"{path} (with --set overrides)" if overrides else str(path)
        raise ConfigError(_format_errors(source, exc)) from None
