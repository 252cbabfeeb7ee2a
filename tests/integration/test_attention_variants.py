"""The attention variants beyond one training step (that is the conformance suite's,
test_conformance.py): each variant really changes the result, a query attending to a KV cache
sees only its window (generation), and sinks are kept away from FlashAttention-2."""

from __future__ import annotations

import copy

import pytest
import torch
from family_configs import VOCAB, tiny_config

from tuneforge.models.attention import register_varlen_attention
from tuneforge.models.lean_layers import apply_lean_layers

LENGTHS = (17, 9, 23)
GRAD_RTOL = 1e-4  # the conformance suite's


def build_pair(family: str):
    """The same random weights under eager attention and under the varlen attention (with
    the lean layers)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
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
    return eager.float().eval(), varlen.float().eval()


def examples() -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in LENGTHS]


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma2_attention_cap", "gpt_oss"])
def test_the_feature_is_really_exercised(family):
    """The same weights with the variant switched off give other logits: the conformance
    suite's comparison would catch a path that ignores it."""
    eager, _ = build_pair(family.removesuffix("_attention_cap"))
    config = copy.deepcopy(eager.config)  # the model reads its own config at every forward
    if family == "gemma2_attention_cap":  # the attention soft-cap alone
        config.attn_logit_softcapping = None
    else:
        config.sliding_window = 10_000  # longer than any example: plain causal attention
    if family == "gemma2":
        config.attn_logit_softcapping = None
        config.final_logit_softcapping = None
    plain = type(eager)(config).float().eval()
    plain.load_state_dict(eager.state_dict())
    if family == "gpt_oss":
        with torch.no_grad():
            for name, parameter in plain.named_parameters():
                if name.endswith("sinks"):
                    parameter.fill_(-1e4)  # a sink that takes no mass
    ids = torch.tensor([examples()[2]])
    with torch.no_grad():
        with_feature, without = eager(ids).logits, plain(ids).logits
    # a hundred times the tolerance of the conformance suite's gradient comparison
    assert (with_feature - without).abs().max() > 100 * GRAD_RTOL * with_feature.abs().max()


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gpt_oss", "qwen2_moe", "phimoe"])
def test_greedy_generation_with_a_kv_cache_equals_eager(family):
    """A prompt longer than the window, then tokens one at a time against the cache: each
    query sees only its window, on both paths (Qwen2-MoE and Phi-MoE lay their window only
    into transformers' mask)."""
    eager, varlen = build_pair(family)
    prompt = torch.tensor([examples()[2][:14]])
    outputs = []
    for model in (eager, varlen):
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


def test_the_padded_path_takes_transformers_own_attention(monkeypatch):
    from tuneforge.models import attention

    monkeypatch.setattr(attention, "_installed", lambda package: False)
    assert attention.attention_implementation("auto", "cpu", "jamba", padding_free=False) is None
    assert attention.attention_implementation("auto", "cpu", "llama") == attention.VARLEN
