"""The fast training path, family by family, against transformers' eager implementation.

Attention variants on the padding-free path: sliding windows, soft-capped logits and
attention sinks give what transformers' own eager attention gives on a padded batch of the same
examples, for the loss and every gradient of a training step, and for a query attending to a
KV cache (generation).

Each family is a tiny random model built from its transformers config class, with its feature
switched on so that it matters: a window shorter than the examples, a soft-cap that bends the
logits, sinks large enough to take real probability mass.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.models.attention import register_varlen_attention
from tuneforge.models.lean_layers import apply_lean_layers
from tuneforge.training.collate import PaddingFreeCollator
from tuneforge.training.loss import language_model_loss

WINDOW = 6
LENGTHS = (17, 9, 23)  # longer and shorter than the window
VOCAB = 96
SIZES = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 128,
    # token ids inside the tiny vocabulary (the config classes default to their real ones)
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
NO_HEAD_DIM = {k: v for k, v in SIZES.items() if k != "head_dim"}
EXPERTS = {"num_experts_per_tok": 2, "moe_intermediate_size": 16}
TWO_LAYER_TYPES = ["sliding_attention", "full_attention"]
LOSS_RTOL = 1e-5


def family_config(family: str):
    import transformers as t

    if family == "llama":  # the control: no variant at all
        return t.LlamaConfig(**SIZES)
    # dense and MoE families with no attention variant: the plain fast path must hold for them
    if family == "qwen2":
        return t.Qwen2Config(**SIZES)
    if family == "qwen3":  # qk-norm
        return t.Qwen3Config(**SIZES)
    if family == "phi3":  # fused qkv and gate_up projections
        return t.Phi3Config(**NO_HEAD_DIM)
    if family == "olmo2":  # norms after attention and MLP, qk-norm
        return t.Olmo2Config(**NO_HEAD_DIM)
    if family == "glm4":  # partial rotary, extra norms
        return t.Glm4Config(**SIZES)
    if family == "qwen2_moe":
        return t.Qwen2MoeConfig(
            **SIZES, **EXPERTS, num_experts=4, shared_expert_intermediate_size=16
        )
    if family == "mixtral":
        return t.MixtralConfig(**SIZES, num_local_experts=4, num_experts_per_tok=2)
    if family == "deepseek_v3":  # multi-head latent attention, grouped routing
        sizes = {**NO_HEAD_DIM, "num_key_value_heads": 4}  # MLA: one key per head
        return t.DeepseekV3Config(
            **sizes,
            **EXPERTS,
            n_routed_experts=4,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
        )
    if family == "mistral":
        return t.MistralConfig(**SIZES, sliding_window=WINDOW)
    if family == "qwen2_sliding":
        return t.Qwen2Config(
            **SIZES, use_sliding_window=True, sliding_window=WINDOW, layer_types=TWO_LAYER_TYPES
        )
    if family == "gemma2":
        return t.Gemma2Config(
            **SIZES,
            sliding_window=WINDOW,
            layer_types=TWO_LAYER_TYPES,
            attn_logit_softcapping=0.5,
            final_logit_softcapping=3.0,
            query_pre_attn_scalar=8,
        )
    if family == "gemma3_text":
        return t.Gemma3TextConfig(**SIZES, sliding_window=WINDOW, layer_types=TWO_LAYER_TYPES)
    if family == "cohere2":
        return t.Cohere2Config(**SIZES, sliding_window=WINDOW, layer_types=TWO_LAYER_TYPES)
    if family == "gpt_oss":
        sizes = {**SIZES, "intermediate_size": 32}
        return t.GptOssConfig(
            **sizes,
            sliding_window=WINDOW,
            layer_types=TWO_LAYER_TYPES,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    raise ValueError(family)


# the variants, then the families with none (LLaMA-Factory trains all of them)
VARIANT_FAMILIES = ["mistral", "qwen2_sliding", "gemma2", "gemma3_text", "cohere2", "gpt_oss"]
PLAIN_FAMILIES = [
    "llama",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo2",
    "glm4",
    "qwen2_moe",
    "mixtral",
    "deepseek_v3",
]
FAMILIES = PLAIN_FAMILIES + VARIANT_FAMILIES


def build_pair(family: str):
    """The same random weights under eager attention and under tuneforge's training path:
    varlen attention and the lean SwiGLU/RMSNorm layers (the fused loss comes with
    language_model_loss)."""
    from transformers import AutoModelForCausalLM

    config = family_config(family)
    torch.manual_seed(0)
    # each model its own config: the attention implementation is read from it at every forward
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    with torch.no_grad():
        for name, parameter in eager.named_parameters():
            if name.endswith("sinks"):  # big enough to take real probability mass
                parameter.copy_(torch.linspace(-1.0, 2.0, parameter.numel()))
    varlen = AutoModelForCausalLM.from_config(
        config, attn_implementation=register_varlen_attention()
    )
    varlen.load_state_dict(eager.state_dict())
    apply_lean_layers(varlen)
    return eager.float().train(), varlen.float().train()


def examples() -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    result = []
    for length in LENGTHS:
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * 3 + ids[3:]  # a short untrained prompt
        result.append({"input_ids": ids, "labels": labels})
    return result


def padded_reference_loss(model, features) -> torch.Tensor:
    """Mean token loss of transformers' own forward on a right-padded batch with a mask."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), longest, dtype=torch.long)
    mask = torch.zeros(len(features), longest, dtype=torch.long)
    targets = torch.full((len(features), longest), IGNORE_INDEX)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        ids[row, :n] = torch.tensor(feature["input_ids"])
        mask[row, :n] = 1
        targets[row, : n - 1] = torch.tensor(feature["labels"][1:])
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
    )


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def with_lora(eager, varlen):
    """The same LoRA adapters (random, B non-zero so that every adapter weight gets a
    gradient) on both models' linear layers."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(2)
    eager = get_peft_model(eager, config)
    varlen = get_peft_model(varlen, config)
    varlen.load_state_dict(eager.state_dict())
    return eager, varlen


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_step_equals_eager_attention_on_a_padded_batch(family, method):
    eager, varlen = build_pair(family)
    if method == "lora":
        eager, varlen = with_lora(eager, varlen)
    features = examples()
    for model in (eager, varlen):  # no dropout: the two must see the same arithmetic
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    expected = padded_reference_loss(eager, features)
    expected.backward()
    loss, _ = language_model_loss(varlen, PaddingFreeCollator()(features))
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=LOSS_RTOL, atol=1e-6)
    wanted, got = gradients(eager), gradients(varlen)
    assert wanted.keys() == got.keys()
    for name, gradient in wanted.items():
        torch.testing.assert_close(got[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gpt_oss"])
def test_the_feature_is_really_exercised(family):
    """The same weights with the variant switched off give another loss: the comparison above
    would catch a path that ignores it."""
    eager, _ = build_pair(family)
    config = copy.deepcopy(eager.config)  # the model reads its own config at every forward
    config.sliding_window = 10_000  # longer than any example: plain causal attention
    if family == "gemma2":
        config.attn_logit_softcapping = None
    plain = type(eager)(config).float()
    plain.load_state_dict(eager.state_dict())
    if family == "gpt_oss":
        with torch.no_grad():
            for name, parameter in plain.named_parameters():
                if name.endswith("sinks"):
                    parameter.fill_(-1e4)  # a sink that takes no mass
    with torch.no_grad():
        with_feature = padded_reference_loss(eager.eval(), examples())
        without = padded_reference_loss(plain.eval(), examples())
    # five times the relative tolerance the training-step comparison allows
    assert abs(with_feature.item() - without.item()) > 5 * LOSS_RTOL * with_feature.item()


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gpt_oss"])
def test_greedy_generation_with_a_kv_cache_equals_eager(family):
    """A prompt longer than the window, then tokens one at a time against the cache: each
    query sees only its window, on both paths."""
    eager, varlen = build_pair(family)
    prompt = torch.tensor([examples()[2]["input_ids"][:14]])
    outputs = []
    for model in (eager.eval(), varlen.eval()):
        with torch.no_grad():
            generated = model.generate(
                prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
            )
            logits = model(generated).logits
        outputs.append((generated, logits))
    assert torch.equal(outputs[0][0], outputs[1][0])
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-4, atol=1e-5)


def test_a_model_with_sinks_never_takes_flash_attention_2(monkeypatch):
    """transformers' FlashAttention-2 path drops gpt-oss's sinks silently: auto avoids it, and
    asking for it is refused."""
    from tuneforge.errors import ConfigError
    from tuneforge.models import attention

    monkeypatch.setattr(attention, "_installed", lambda package: True)
    assert attention.attention_implementation("auto", "cuda", "llama") == "flash_attention_2"
    assert attention.attention_implementation("auto", "cuda", "gpt_oss") == attention.VARLEN
    with pytest.raises(ConfigError, match="cannot compute gpt_oss's attention sinks"):
        attention.attention_implementation("fa2", "cuda", "gpt_oss")
