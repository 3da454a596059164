"""The policy: built from configs, loaded from local directories only (seed 000's HFValidationError cannot
happen), our own checkpoints loaded by name, gradient checkpointing through the HF API, the FLOP count."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from training.config import ModelConfig  # noqa: E402
from training.policy import (  # noqa: E402
    LoadReport,
    ModelPathError,
    PolicySpec,
    build_policy,
    load_policy_weights,
    local_model_dir,
    parameter_counts,
)
from training.throughput import matmul_params, policy_flops  # noqa: E402

pytestmark = pytest.mark.train
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 16, "patch_size": 8}
LANGUAGE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": False}
INSTRUCTIONS = ["pick up the ketchup", "put the milk in the basket"]
# Seed 000's checkpoint directory name, made by str(datetime.now()).
UNSAFE = "output_2025-10-02||12:35:19"


def model_config(**changes: object) -> ModelConfig:
    base = {"vision": {"config": VISION}, "language": {"config": LANGUAGE}, "max_text_tokens": 32}
    return ModelConfig.model_validate({**base, **changes})


def spec(objective: str = "l1_chunk", action_dim: int = 7) -> PolicySpec:
    return PolicySpec(action_dim=action_dim, proprio_dim=8, chunk=3, cameras=("cam",), objective=objective)


def batch(size: int = 2, objective: str = "l1_chunk", table=None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"cam": torch.randint(0, 255, (size, 16, 16, 3), dtype=torch.uint8, generator=g),
           "proprio": torch.randn(size, 8, generator=g), "actions": torch.randn(size, 3, 7, generator=g),
           "action_mask": torch.ones(size, 3, dtype=torch.bool)}
    ids = torch.tensor([0, 1] * (size // 2))
    out["text_ids"], out["text_mask"] = table.ids[ids], table.mask[ids]
    if objective == "flow_matching":
        out.update(flow_x_t=torch.randn(size, 3, 7, generator=g), flow_target=torch.randn(size, 3, 7, generator=g),
                   flow_time=torch.rand(size, generator=g))
    return out


@pytest.mark.parametrize("objective", ["l1_chunk", "flow_matching", "next_token_ce"])
def test_each_head_gives_a_finite_loss_and_gradients_for_every_trainable_weight(objective: str) -> None:
    torch.manual_seed(0)
    policy, table, report = build_policy(model_config(), spec(objective), INSTRUCTIONS)
    assert report.sources == [] and table.length == len(INSTRUCTIONS[1]) + 1  # bytes + BOS
    out = policy(batch(objective=objective, table=table))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # DDP fails on a trainable weight without a gradient: there must be none.
    assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == []
    if objective != "next_token_ce":
        assert not policy.language.lm_head.weight.requires_grad  # unscored logits are frozen, not counted


def test_missing_or_foreign_paths_fail_with_our_message_never_hfvalidationerror(tmp_path: Path) -> None:
    relative = f"train_ckpt/virl_vl/{UNSAFE}/checkpoint-epoch-4"  # seed 000's path, from another cwd
    with pytest.raises(ModelPathError, match=r"does not exist .* local directory only"):
        local_model_dir(relative, "model.language.pretrained")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelPathError, match="is a file"):
        local_model_dir(str(tmp_path / "weights.bin"), "model.vision.pretrained")
    with pytest.raises(ModelPathError, match="has no config.json"):
        local_model_dir(str(tmp_path), "model.vision.pretrained")
    with pytest.raises(ModelPathError, match="does not exist"):
        build_policy(model_config(language={"pretrained": relative}), spec(), INSTRUCTIONS)


def test_pretrained_components_load_from_a_directory_with_seed_000s_unsafe_name(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", vocab_size=259, **LANGUAGE))
    vision = SiglipVisionModel(SiglipVisionConfig(**VISION))  # with its pooling head, which we skip
    lm_dir, vision_dir = tmp_path / UNSAFE / "language", tmp_path / UNSAFE / "vision"
    lm.save_pretrained(lm_dir)
    vision.save_pretrained(vision_dir)
    cfg = model_config(language={"pretrained": str(lm_dir)}, vision={"pretrained": str(vision_dir)})
    policy, _, report = build_policy(cfg, spec(), INSTRUCTIONS)
    head = [k for k in vision.state_dict() if ".head." in f".{k}"]
    assert report.loaded == len(lm.state_dict()) + len(vision.state_dict()) - len(head)
    assert report.skipped == len(head) and report.missing == []
    assert torch.equal(policy.language.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    patch = next(k for k in vision.state_dict() if k.endswith("patch_embedding.weight"))
    assert torch.equal(policy.vision.state_dict()[patch], vision.state_dict()[patch])


def test_policy_weights_load_by_name_and_shape_and_count_what_was_skipped(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    torch.manual_seed(2)
    source, _, _ = build_policy(model_config(), spec(action_dim=15), INSTRUCTIONS)  # another robot's head
    save_model(source, str(tmp_path / "model.safetensors"))
    torch.manual_seed(3)
    target, _, _ = build_policy(model_config(), spec(action_dim=7), INSTRUCTIONS)
    report = LoadReport()
    load_policy_weights(target, str(tmp_path), report)
    assert report.skipped == 2 and sorted(report.missing) == ["action_out.bias", "action_out.weight"]
    assert report.loaded == len(target.state_dict()) - 2
    assert torch.equal(target.projector.weight, source.projector.weight)
    with pytest.raises(ModelPathError, match="no model.safetensors"):
        load_policy_weights(target, str(tmp_path / "nothing"), LoadReport())


def test_gradient_checkpointing_uses_the_hf_api_without_reentrancy() -> None:
    torch.manual_seed(0)
    policy, table, _ = build_policy(model_config(gradient_checkpointing=True), spec(), INSTRUCTIONS)
    flag = "is_activation_checkpointing" if hasattr(policy.language, "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    assert getattr(policy.language, flag) and getattr(policy.vision, flag)
    plain, _, _ = build_policy(model_config(), spec(), INSTRUCTIONS)
    plain.load_state_dict(policy.state_dict())
    data = batch(table=table)
    a, b = policy(data).loss, plain(data).loss
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(policy.projector.weight.grad, plain.projector.weight.grad)


def test_flop_count_follows_the_stated_formula() -> None:
    torch.manual_seed(0)
    policy, table, _ = build_policy(model_config(), spec(), INSTRUCTIONS)
    flops = policy_flops(policy)
    t, layers, d = policy.seq_len, LANGUAGE["num_hidden_layers"], LANGUAGE["hidden_size"]
    assert t == 4 + table.length + 1 + 3  # 4 patches, text, proprio, 3 action queries
    assert flops.language == 6 * matmul_params(policy.language.model) * t + 12 * layers * d * t ** 2
    p, dv = 4, VISION["hidden_size"]
    assert flops.vision == 6 * matmul_params(policy.vision) * p + 12 * VISION["num_hidden_layers"] * dv * p ** 2
    total, trainable = parameter_counts(policy)
    assert total > trainable > 0 and flops.total > 0
