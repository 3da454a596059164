"""The policy: a vision encoder + a language backbone + an action head, built from transformers configs.

Token layout of one sample (fixed length, so every batch has the same shape)::

    [camera 1 patches][camera 2 patches] [instruction tokens (padded)] [proprio] [K+1 action tokens]

The backbone runs causally over that sequence; the action tokens come last, so
they see the whole observation. Heads: ``l1_chunk`` (K+1 learned queries ->
actions, masked L1), ``flow_matching`` (noised chunk + time embedding -> velocity,
openpi's action expert on a shared backbone), ``next_token_ce`` (the
instruction's tokens predicted from the image tokens, the VLM mode).

Weights: random init from configs (tests, benchmarks), components from local HF
directories (``from_pretrained(dir, local_files_only=True)`` after checking the
path IS a directory, so a missing or relative-to-elsewhere path is a clear error,
never seed 000's ``HFValidationError``), then optionally a whole policy's
``model.safetensors`` loaded by name with shapes checked.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.instructions import ByteTokenizer, HFTokenizer, Tokenizer, TokenTable, token_table
from training.objectives import flow_matching_loss, l1_chunk_loss, next_token_ce, select_anchor_features

# SigLIP's preprocessing: pixels to [-1, 1] (mean 0.5, std 0.5).
PIXEL_SCALE = 2.0 / 255.0


class ModelPathError(ValueError):
    """A pretrained path is not a local model directory."""


@dataclass(frozen=True)
class PolicySpec:
    """What the data and the objective fix about the policy."""

    action_dim: int
    proprio_dim: int
    chunk: int  # K + 1
    cameras: tuple[str, ...]
    objective: str  # l1_chunk | flow_matching | next_token_ce
    aux_ce: bool = False
    text_tokens: int = 1


@dataclass
class LoadReport:
    """Weight tensors taken from pretrained sources, and the ones left out."""

    loaded: int = 0
    skipped: int = 0
    sources: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add(self, source: str, loaded: int, skipped: int, missing: list[str] | None = None) -> None:
        """Count one source."""
        self.sources.append(source)
        self.loaded += loaded
        self.skipped += skipped
        self.missing += missing or []


@dataclass(frozen=True)
class Layout:
    """Where each kind of token sits in the sequence."""

    vision: slice
    prompt: slice
    proprio: int
    queries: slice


@dataclass
class PolicyOutput:
    """Loss terms (graph-connected) and values to log (detached)."""

    loss: torch.Tensor  # the objective's loss
    aux_ce: torch.Tensor | None
    logs: dict[str, torch.Tensor]
    features: torch.Tensor | None  # CRaFT features, when asked for


def local_model_dir(path: str, what: str) -> Path:
    """The path as an absolute directory holding a config.json, or ModelPathError saying why not."""
    resolved = Path(os.path.expanduser(path)).resolve()
    if not resolved.exists():
        raise ModelPathError(
            f"{what}: {path!r} does not exist (resolved to {resolved}, cwd {Path.cwd()}); pretrained weights "
            f"are read from a local directory only (local_files_only: no Hub lookup, no HFValidationError) - "
            f"download or convert them first and pass that directory")
    if not resolved.is_dir():
        raise ModelPathError(f"{what}: {resolved} is a file; pass the directory that holds config.json and the weights")
    if not (resolved / "config.json").is_file():
        raise ModelPathError(f"{what}: {resolved} has no config.json (not a transformers model directory)")
    return resolved


def _count_info(model: nn.Module, info: dict[str, Any]) -> tuple[int, int, list[str]]:
    missing = sorted(info.get("missing_keys") or [])
    skipped = len(info.get("unexpected_keys") or []) + len(info.get("mismatched_keys") or [])
    return len(model.state_dict()) - len(missing), skipped, missing


def build_vision(cfg: ModelConfig, report: LoadReport) -> nn.Module:
    """A SigLIP-style vision encoder returning last_hidden_state [B, P, D]."""
    from transformers import AutoConfig, AutoModel, SiglipVisionConfig, SiglipVisionModel

    if cfg.vision.pretrained is None:
        # No attention-pooling head: its parameters would get no gradient (DDP's unused-parameter error).
        config = SiglipVisionConfig(**{"vision_use_head": False, **cfg.vision.config})
        return SiglipVisionModel(config)
    directory = local_model_dir(cfg.vision.pretrained, "model.vision.pretrained")
    model_type = AutoConfig.from_pretrained(directory, local_files_only=True).model_type
    loader = SiglipVisionModel if model_type in ("siglip", "siglip_vision_model") else AutoModel
    extra = {"vision_use_head": False} if loader is SiglipVisionModel else {}
    model, info = loader.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                         attn_implementation=cfg.attn_implementation, **extra)
    report.add(str(directory), *_count_info(model, info))
    return model


def build_language(cfg: ModelConfig, vocab_size: int, report: LoadReport) -> nn.Module:
    """A causal LM (``.model`` the backbone, ``.lm_head`` the logits)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.language.pretrained is None:
        config = AutoConfig.for_model(cfg.language.model_type, **{"vocab_size": vocab_size, **cfg.language.config})
        if config.vocab_size < vocab_size:
            raise ModelPathError(f"model.language.config.vocab_size={config.vocab_size} < the tokenizer's {vocab_size}")
        return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)
    directory = local_model_dir(cfg.language.pretrained, "model.language.pretrained")
    model, info = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                                       attn_implementation=cfg.attn_implementation)
    report.add(str(directory), *_count_info(model, info))
    return model


def load_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The language backbone's tokenizer from a local directory, else bytes."""
    source = cfg.language.tokenizer or cfg.language.pretrained
    if source is None:
        return ByteTokenizer()
    return HFTokenizer.load(str(local_model_dir(source, "model.language.tokenizer")))


def _enable_checkpointing(model: nn.Module) -> None:
    # use_reentrant=False: the reentrant variant silently saves nothing when inputs
    # do not require grad (seed 003 known issue 10: OOM at batch 4 anyway).
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of times t [B] in [0, 1] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    angles = t.float()[:, None] * 1000.0 * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - emb.shape[-1]))


class Policy(nn.Module):
    """Observation + instruction -> action chunk (or instruction tokens)."""

    def __init__(self, vision: nn.Module, language: nn.Module, spec: PolicySpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.spec = spec
        self.mask_padding = cfg.mask_padding
        self.vision = vision
        self.language = language
        vcfg, lcfg = vision.config, language.config
        self.image_size = int(vcfg.image_size)
        d = int(lcfg.hidden_size)
        self.projector = nn.Linear(int(vcfg.hidden_size), d)
        self.proprio_proj = nn.Linear(spec.proprio_dim, d)
        if spec.objective == "l1_chunk":
            self.action_queries = nn.Parameter(torch.randn(spec.chunk, d) * 0.02)
        if spec.objective == "flow_matching":
            self.action_in = nn.Linear(spec.action_dim, d)
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if spec.objective != "next_token_ce":
            self.action_out = nn.Linear(d, spec.action_dim)
        patches = (self.image_size // int(vcfg.patch_size)) ** 2 * len(spec.cameras)
        text = spec.text_tokens
        queries = spec.chunk if spec.objective != "next_token_ce" else 0
        self.layout = Layout(vision=slice(0, patches), prompt=slice(patches, patches + text),
                             proprio=patches + text, queries=slice(patches + text + 1, patches + text + 1 + queries))
        if cfg.freeze_vision:
            self.vision.requires_grad_(False)
        tied = language.lm_head.weight is language.get_input_embeddings().weight
        if spec.objective != "next_token_ce" and not spec.aux_ce and not tied:
            # Unscored logits: a trainable lm_head would get no gradient (DDP's unused-parameter error).
            language.lm_head.requires_grad_(False)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(self.language)
            if getattr(self.vision, "supports_gradient_checkpointing", False):
                _enable_checkpointing(self.vision)

    @property
    def seq_len(self) -> int:
        """Tokens per sample."""
        return self.layout.queries.stop if self.spec.objective != "next_token_ce" else self.layout.proprio + 1

    def _image_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        frames = torch.cat([batch[key] for key in self.spec.cameras], dim=0)  # [C*B, H, W, 3] uint8
        # uint8 travels host->device; the float conversion happens here, on the device.
        pixels = frames.permute(0, 3, 1, 2).float() * PIXEL_SCALE - 1.0
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        dtype = next(self.vision.parameters()).dtype
        hidden = self.vision(pixel_values=pixels.to(dtype)).last_hidden_state  # [C*B, P, Dv]
        batch_size = frames.shape[0] // len(self.spec.cameras)
        hidden = hidden.reshape(len(self.spec.cameras), batch_size, *hidden.shape[1:]).transpose(0, 1)
        return self.projector(hidden.reshape(batch_size, -1, hidden.shape[-1]))

    def _action_tokens(self, batch: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor | None:
        if self.spec.objective == "l1_chunk":
            return self.action_queries.unsqueeze(0).expand(batch_size, -1, -1)
        if self.spec.objective == "flow_matching":
            time = self.time_mlp(sinusoidal(batch["flow_time"], self.action_in.out_features))
            return self.action_in(batch["flow_x_t"]) + time.unsqueeze(1)
        return None

    def encode(self, batch: dict[str, torch.Tensor], hidden_layer: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the backbone: (last hidden state [B, T, D], hidden state of ``hidden_layer`` or None)."""
        images = self._image_tokens(batch)
        batch_size = images.shape[0]
        text = self.language.get_input_embeddings()(batch["text_ids"])
        parts = [images, text.to(images.dtype), self.proprio_proj(batch["proprio"]).unsqueeze(1)]
        actions = self._action_tokens(batch, batch_size)
        if actions is not None:
            parts.append(actions.to(images.dtype))
        embeds = torch.cat(parts, dim=1)
        mask = None
        if self.mask_padding:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            mask[:, self.layout.prompt] = batch["text_mask"].long()
        out = self.language.model(inputs_embeds=embeds, attention_mask=mask,
                                  output_hidden_states=hidden_layer is not None, use_cache=False)
        return out.last_hidden_state, (out.hidden_states[hidden_layer] if hidden_layer is not None else None)

    def features(self, hidden: torch.Tensor, anchor: str, tokens: str) -> torch.Tensor:
        """CRaFT's features from one layer's hidden states."""
        return select_anchor_features(hidden, self.layout.vision, self.layout.prompt, self.layout.queries, anchor, tokens)

    def _ce(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Logits only where they are scored: a 152k vocabulary over every position is GBs of activations.
        p = self.layout.prompt
        logits = self.language.lm_head(hidden[:, p.start - 1 : p.stop - 1])
        labels = batch["text_ids"].masked_fill(~batch["text_mask"], -100)
        return next_token_ce(logits, labels)

    def forward(self, batch: dict[str, torch.Tensor], hidden_layer: int | None = None) -> PolicyOutput:
        """Losses of one batch (and the hidden state CRaFT reads)."""
        hidden, layer = self.encode(batch, hidden_layer)
        logs: dict[str, torch.Tensor] = {}
        aux = self._ce(hidden, batch) if self.spec.aux_ce else None
        if self.spec.objective == "next_token_ce":
            loss = self._ce(hidden, batch)
            logs["ce_loss"] = loss.detach()
        else:
            pred = self.action_out(hidden[:, self.layout.queries])
            if self.spec.objective == "l1_chunk":
                parts = l1_chunk_loss(pred, batch["actions"], batch["action_mask"])
                loss = parts.total
                logs.update(curr_l1=parts.current.detach(), next_l1=parts.future.detach())
            else:
                loss = flow_matching_loss(pred, batch["flow_target"], batch["action_mask"])
                logs["flow_mse"] = loss.detach()
        if aux is not None:
            logs["aux_ce"] = aux.detach()
        return PolicyOutput(loss=loss, aux_ce=aux, logs=logs, features=layer)


def load_policy_weights(policy: nn.Module, path: str, report: LoadReport) -> None:
    """Load a policy's safetensors by name; tensors of other names or shapes are skipped and counted."""
    from safetensors import safe_open

    source = Path(os.path.expanduser(path)).resolve()
    file = source / "model.safetensors" if source.is_dir() else source
    if not file.is_file():
        raise ModelPathError(f"model.weights: {path!r}: no model.safetensors there (resolved to {file})")
    own = policy.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    skipped = 0
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            if key in own and tuple(f.get_slice(key).get_shape()) == tuple(own[key].shape):
                loaded[key] = f.get_tensor(key)
            else:
                skipped += 1
    result = policy.load_state_dict(loaded, strict=False)
    report.add(str(file), len(loaded), skipped, sorted(result.missing_keys))


def build_policy(cfg: ModelConfig, spec: PolicySpec, instructions: list[str]) -> tuple[Policy, TokenTable, LoadReport]:
    """Construct the policy (random init follows the current torch seed), then load any pretrained weights."""
    report = LoadReport()
    tokenizer = load_tokenizer(cfg)
    table = token_table(instructions, tokenizer, cfg.max_text_tokens)
    spec = dataclasses.replace(spec, text_tokens=table.length)
    vision = build_vision(cfg, report)
    language = build_language(cfg, tokenizer.vocab_size, report)
    policy = Policy(vision, language, spec, cfg)
    if cfg.weights:
        load_policy_weights(policy, cfg.weights, report)
    return policy, table, report


def transformer_blocks(policy: nn.Module) -> list[nn.Module]:
    """The repeated blocks (elements of ModuleLists holding Linear layers): FSDP's and compile's units."""
    units: list[nn.Module] = []
    for module in policy.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and all(
                any(isinstance(m, nn.Linear) for m in block.modules()) for block in module):
            units.extend(module)
    return units


def compile_blocks(policy: nn.Module) -> int:
    """Compile each transformer block in place; the number compiled.

    ``nn.Module.compile`` keeps parameter names (no ``_orig_mod.`` prefix), so
    checkpoints stay loadable without compile. Blocks of one class share one
    graph (dynamo inlines nn.Modules, so it does not specialise on the instance).
    The glue around them (embeddings, masks, rotary tables, heads) stays eager:
    transformers then skips the causal mask and SDPA runs with ``is_causal`` and
    ``enable_gqa``, and the rotary cos/sin are computed once, not per block.
    """
    blocks = transformer_blocks(policy)
    for block in blocks:
        block.compile()
    return len(blocks)


def parameter_counts(policy: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters, tied tensors counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in policy.parameters()}
    total = sum(p.numel() for p in seen.values())
    return total, sum(p.numel() for p in seen.values() if p.requires_grad)
