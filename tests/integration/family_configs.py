"""Tiny random configs, one per transformers model type, for the family-by-family tests.

`tiny_config(model_type)` gives a config small enough to build and run a training step on the
CPU in well under a second, with the family's own features switched on so that they matter on
short sequences (9 to 23 tokens): sliding windows and attention chunks of `WINDOW` tokens, soft-
capped logits, mixtures of experts with at least one MoE layer, multi-head latent attention,
partial rotary, qk-norm, and, for the hybrids, at least one attention layer beside one
state-space / linear-attention / convolution layer. Every config builds with
`AutoModelForCausalLM.from_config(config, attn_implementation="eager")` and runs on the
pure-torch paths (no mamba_ssm, causal-conv1d or fla needed).

This is test data, not a test module: it has no tests of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import transformers

VOCAB = 96  # every config's vocab_size
WINDOW = 6  # sliding windows and attention chunks: shorter than the test sequences

# token ids inside the tiny vocabulary (the config classes default to their real ones)
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# the sizes every family shares (its config class's own names where they differ)
SIZES = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 128,
    **TOKENS,
}
# for the config classes with no `head_dim` argument (hidden_size / heads is 8 anyway)
NO_HEAD_DIM = {k: v for k, v in SIZES.items() if k != "head_dim"}
# multi-head latent attention: one key and value per query head, low-rank projections
MLA = {
    **NO_HEAD_DIM,
    "num_key_value_heads": 4,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
}
EXPERT_SIZE = 16  # every expert's (and shared expert's) intermediate size
# families whose experts are sized by `intermediate_size` (no dense MLP shares it)
EXPERT_SIZES = {**SIZES, "intermediate_size": EXPERT_SIZE}
# 4 experts, 2 per token, in the names most MoE families use
EXPERTS = {"num_experts_per_tok": 2, "moe_intermediate_size": EXPERT_SIZE}
# one windowed layer and one full-attention layer
SLIDING_AND_FULL = ["sliding_attention", "full_attention"]
# granite's scalings, away from 1 so that a path that drops one shows it
GRANITE_MULTIPLIERS = {
    "embedding_multiplier": 2.0,
    "logits_scaling": 2.0,
    "residual_multiplier": 0.5,
    "attention_multiplier": 0.25,  # not head_dim ** -0.5
}
# q/k/v clipping (olmo, dbrx) that bites: about a fifth of the random model's q/k/v values
CLIP_QKV = 0.15
# tiny mamba-2 mixers (falcon_h1, granitemoehybrid): 4 heads, a small state, chunks of 8
# tokens so that a 23-token sequence spans three of them
MAMBA2 = {
    "mamba_n_heads": 4,
    "mamba_n_groups": 1,
    "mamba_d_state": 8,
    "mamba_d_conv": 4,
    "mamba_chunk_size": 8,
}
# rotary embeddings on half of each head (phi3 and minimax_m2 take it from rope_parameters)
HALF_ROTARY = {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """A tiny random config of `model_type` with the family's features switched on."""
    import transformers as t

    # ---- dense decoders, rotary positions
    if model_type == "llama":  # the control: no variant at all
        return t.LlamaConfig(**SIZES)
    if model_type == "mistral":  # sliding window on every layer
        return t.MistralConfig(**SIZES, sliding_window=WINDOW)
    if model_type == "ministral":  # sliding and full layers
        return t.MinistralConfig(**SIZES, sliding_window=WINDOW, layer_types=SLIDING_AND_FULL)
    if model_type == "qwen2":  # sliding and full layers (only with use_sliding_window)
        return t.Qwen2Config(
            **NO_HEAD_DIM,
            use_sliding_window=True,
            sliding_window=WINDOW,
            layer_types=SLIDING_AND_FULL,
        )
    if model_type == "qwen3":  # qk-norm; sliding and full layers
        return t.Qwen3Config(
            **SIZES, use_sliding_window=True, sliding_window=WINDOW, layer_types=SLIDING_AND_FULL
        )
    if model_type == "gemma":  # (1 + weight) RMSNorm, scaled embeddings, tied output layer
        return t.GemmaConfig(**SIZES)
    if model_type == "gemma2":  # sliding and full layers, soft-capped attention and output logits
        return t.Gemma2Config(
            **SIZES,
            sliding_window=WINDOW,
            layer_types=SLIDING_AND_FULL,
            attn_logit_softcapping=0.002,  # random attention logits are tiny: a cap they feel
            final_logit_softcapping=3.0,
            query_pre_attn_scalar=8,
        )
    if model_type == "gemma3_text":  # sliding and full layers (own rope each), qk-norm
        # a query scale that is not head_dim ** -0.5
        return t.Gemma3TextConfig(
            **SIZES, sliding_window=WINDOW, layer_types=SLIDING_AND_FULL, query_pre_attn_scalar=16
        )
    if model_type == "cohere":  # parallel attention + MLP block, qk-norm (LayerNorm per head)
        return t.CohereConfig(**NO_HEAD_DIM, use_qk_norm=True)
    if model_type == "cohere2":  # parallel block; sliding layers with rope, full layers without
        return t.Cohere2Config(**NO_HEAD_DIM, sliding_window=WINDOW, layer_types=SLIDING_AND_FULL)
    if model_type == "glm":  # partial (half) rotary, interleaved; qkv bias
        return t.GlmConfig(**SIZES)
    if model_type == "glm4":  # partial rotary, extra norms after attention and MLP
        return t.Glm4Config(**SIZES)
    if model_type == "phi3":  # fused qkv and gate_up projections, partial rotary, sliding window
        return t.Phi3Config(
            **NO_HEAD_DIM,
            sliding_window=WINDOW,
            rope_parameters=HALF_ROTARY,
        )
    if model_type == "olmo":  # non-parametric LayerNorm, clipped q/k/v
        return t.OlmoConfig(**NO_HEAD_DIM, clip_qkv=CLIP_QKV)
    if model_type == "olmo2":  # norms after attention and MLP, qk-norm over all heads
        return t.Olmo2Config(**NO_HEAD_DIM)
    if model_type == "granite":  # embedding, residual, attention and logits multipliers
        return t.GraniteConfig(**NO_HEAD_DIM, **GRANITE_MULTIPLIERS)
    if model_type == "internlm3":  # transformers builds it as a Llama
        return t.AutoConfig.for_model("internlm3", **SIZES)
    if model_type == "exaone":  # llama-like under other names
        return t.ExaoneConfig(**SIZES)
    if model_type == "ernie4_5":  # interleaved rotary, tied output layer
        return t.Ernie4_5Config(**SIZES)
    if model_type == "hunyuan_v1_dense":  # qk-norm after rotary
        return t.HunYuanDenseV1Config(**SIZES)
    if model_type == "seed_oss":  # qkv bias (its dropouts default to 0.1: off here)
        return t.SeedOssConfig(**SIZES, attention_dropout=0.0, residual_dropout=0.0)
    if model_type == "starcoder2":  # LayerNorm, biases, sliding window
        return t.Starcoder2Config(**NO_HEAD_DIM, sliding_window=WINDOW)
    if model_type == "youtu":  # multi-head latent attention, dense MLP
        return t.YoutuConfig(**MLA)
    if model_type == "falcon":  # new decoder architecture: grouped kv heads, two parallel norms
        return t.FalconConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            ffn_hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
            max_position_embeddings=128,
            **TOKENS,
        )
    if model_type == "gpt2":  # learned absolute positions, Conv1D layers
        return t.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_inner=48,
            n_layer=2,
            n_head=4,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            **TOKENS,
        )
    if model_type == "bloom":  # alibi position biases built from the attention mask
        return t.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, **TOKENS)

    # ---- mixtures of experts: 4 experts, 2 per token
    if model_type == "mixtral":  # top-2 softmax router; sliding window
        return t.MixtralConfig(
            **EXPERT_SIZES, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW
        )
    if model_type == "qwen2_moe":  # MoE + gated shared expert; sliding and full layers
        return t.Qwen2MoeConfig(
            **NO_HEAD_DIM,
            **EXPERTS,
            num_experts=4,
            shared_expert_intermediate_size=EXPERT_SIZE,
            use_sliding_window=True,
            sliding_window=WINDOW,
            layer_types=SLIDING_AND_FULL,
        )
    if model_type == "qwen3_moe":  # MoE, qk-norm; sliding window (on every layer)
        return t.Qwen3MoeConfig(
            **NO_HEAD_DIM, **EXPERTS, num_experts=4, use_sliding_window=True, sliding_window=WINDOW
        )
    if model_type == "phimoe":  # sparsemixer router; sliding window
        return t.PhimoeConfig(
            **{**NO_HEAD_DIM, "intermediate_size": EXPERT_SIZE},
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=WINDOW,
            # in training the sparsemixer samples (Gumbel) among the experts scoring within
            # 2 * eps of the top one; at 0 it takes the top ones, so a training step is repeatable
            router_jitter_noise=0.0,
            input_jitter_noise=0.0,
        )
    if model_type == "granitemoe":  # MoE + granite's multipliers
        return t.GraniteMoeConfig(
            **{**NO_HEAD_DIM, "intermediate_size": EXPERT_SIZE},
            **GRANITE_MULTIPLIERS,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    if model_type == "dbrx":  # MoE (fused experts), clipped qkv, grouped kv heads
        return t.DbrxConfig(
            vocab_size=VOCAB,
            d_model=32,
            n_heads=4,
            n_layers=2,
            max_seq_len=128,
            # rope_theta: DbrxAttention reads it from attn_config, whose class lacks it (5.24)
            attn_config={"kv_n_heads": 2, "clip_qkv": CLIP_QKV, "rope_theta": 10_000.0},
            ffn_config={"ffn_hidden_size": EXPERT_SIZE, "moe_num_experts": 4, "moe_top_k": 2},
            **TOKENS,
        )
    if model_type == "deepseek_v2":  # MLA; first layer dense, then MoE + a shared expert
        return t.DeepseekV2Config(
            **MLA,
            **EXPERTS,
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        )
    if model_type == "deepseek_v3":  # MLA; first layer dense, then sigmoid grouped routing
        return t.DeepseekV3Config(
            **MLA,
            **EXPERTS,
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        )
    if model_type == "glm4_moe":  # partial rotary, qk-norm; first layer dense, then MoE
        return t.Glm4MoeConfig(
            **NO_HEAD_DIM,
            **EXPERTS,
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            use_qk_norm=True,
        )
    if model_type == "glm4_moe_lite":  # MLA; a dense then a sparse layer
        return t.Glm4MoeLiteConfig(
            **MLA,
            **EXPERTS,
            n_routed_experts=4,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            mlp_layer_types=["dense", "sparse"],
        )
    if model_type == "ernie4_5_moe":  # first layer dense, then MoE + a shared expert
        return t.Ernie4_5_MoeConfig(
            **NO_HEAD_DIM,
            moe_intermediate_size=EXPERT_SIZE,
            moe_num_experts=4,
            moe_k=2,
            moe_num_shared_experts=1,
            moe_layer_start_index=1,
        )
    if model_type == "hunyuan_v1_moe":  # MoE + a shared MLP, qk-norm
        return t.HunYuanMoEV1Config(**EXPERT_SIZES, num_experts=4, moe_topk=2)
    if model_type == "hy_v3":  # a dense then a sparse layer, shared expert
        return t.HYV3Config(
            **SIZES,
            **EXPERTS,
            num_experts=4,
            num_shared_experts=1,
            mlp_layer_types=["dense", "sparse"],
        )
    if model_type == "minimax_m2":  # MoE, qk-norm over all heads, partial rotary
        return t.MiniMaxM2Config(
            **EXPERT_SIZES,
            num_local_experts=4,
            num_experts_per_tok=2,
            rope_parameters=HALF_ROTARY,
        )
    if model_type == "mimo_v2_flash":  # sliding layers (with sinks, double kv heads) and full ones
        return t.MiMoV2FlashConfig(
            **SIZES,
            **EXPERTS,
            n_routed_experts=4,
            n_group=1,
            topk_group=1,
            v_head_dim=4,  # values narrower than queries and keys
            sliding_window=WINDOW,
            layer_types=SLIDING_AND_FULL,
            mlp_layer_types=["dense", "sparse"],
        )
    if model_type == "llama4_text":  # chunked rope layers, full NoPE layers; dense then MoE
        return t.Llama4TextConfig(
            **{**SIZES, "intermediate_size": EXPERT_SIZE},
            intermediate_size_mlp=48,  # the dense layer's MLP
            num_local_experts=4,
            num_experts_per_tok=2,
            interleave_moe_layer_step=2,  # layer 1 is MoE
            no_rope_layer_interval=2,  # layer 0 rope + chunked, layer 1 NoPE + full
            attention_chunk_size=WINDOW,
            floor_scale=4,  # NoPE temperature tuning grows within the test sequences
        )
    if model_type == "gpt_oss":  # sliding and full layers, attention sinks, clamped SwiGLU experts
        return t.GptOssConfig(
            **EXPERT_SIZES,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=WINDOW,
            layer_types=SLIDING_AND_FULL,
        )

    # ---- hybrids: at least one attention layer beside one mamba / linear / conv layer
    if model_type == "falcon_h1":  # attention and mamba-2 in parallel in every layer, muP scalings
        return t.FalconH1Config(
            **SIZES,
            **MAMBA2,
            mamba_d_ssm=32,
            embedding_multiplier=2.0,
            lm_head_multiplier=0.5,
            key_multiplier=0.5,
            mlp_multipliers=[1.5, 0.5],
            ssm_multipliers=[1.5, 0.5, 1.0, 1.0, 2.0],
        )
    if model_type == "granitemoehybrid":  # mamba-2 and attention (NoPE) layers; MoE + shared MLP
        return t.GraniteMoeHybridConfig(
            **{**NO_HEAD_DIM, "intermediate_size": EXPERT_SIZE},
            **GRANITE_MULTIPLIERS,
            **MAMBA2,
            num_local_experts=4,
            num_experts_per_tok=2,
            shared_intermediate_size=EXPERT_SIZE,
            layer_types=["linear_attention", "full_attention"],
        )
    if model_type == "jamba":  # a mamba layer (dense MLP), an attention layer (MoE)
        return t.JambaConfig(
            **NO_HEAD_DIM,
            num_experts=4,
            num_experts_per_tok=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
            mamba_d_conv=4,
            mamba_expand=2,
            use_mamba_kernels=False,
        )
    if model_type == "lfm2":  # a short-convolution layer and an attention layer (qk-norm)
        return t.Lfm2Config(
            **NO_HEAD_DIM,
            layer_types=["conv", "full_attention"],
            conv_L_cache=3,
            block_auto_adjust_ff_dim=False,  # keep intermediate_size as given
        )
    if model_type == "minimax":  # a lightning (linear) attention layer and a full one; MoE
        return t.MiniMaxConfig(
            **EXPERT_SIZES,
            num_local_experts=4,
            num_experts_per_tok=2,
            layer_types=["linear_attention", "full_attention"],
            block_size=4,  # linear attention in blocks of 4: several per sequence
            full_attn_alpha_factor=2.0,
            linear_attn_alpha_factor=2.0,
            mlp_alpha_factor=2.0,
        )
    if model_type == "qwen3_next":  # gated delta-net and gated full attention; MoE + shared expert
        return t.Qwen3NextConfig(
            **SIZES,
            **EXPERTS,
            num_experts=4,
            shared_expert_intermediate_size=EXPERT_SIZE,
            layer_types=["linear_attention", "full_attention"],
            linear_conv_kernel_dim=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
        )
    raise ValueError(f"no tiny config for model type {model_type!r}")


MODEL_TYPES: tuple[str, ...] = (
    "cohere",
    "cohere2",
    "bloom",
    "mistral",
    "ministral",
    "llama",
    "gemma",
    "dbrx",
    "deepseek_v2",
    "deepseek_v3",
    "qwen2",
    "qwen3",
    "ernie4_5",
    "ernie4_5_moe",
    "exaone",
    "internlm3",
    "falcon",
    "falcon_h1",
    "gemma2",
    "gemma3_text",
    "glm",
    "glm4",
    "glm4_moe",
    "glm4_moe_lite",
    "gpt2",
    "gpt_oss",
    "minimax",
    "minimax_m2",
    "granite",
    "granitemoe",
    "granitemoehybrid",
    "hunyuan_v1_dense",
    "hunyuan_v1_moe",
    "hy_v3",
    "jamba",
    "lfm2",
    "llama4_text",
    "mimo_v2_flash",
    "mixtral",
    "olmo",
    "olmo2",
    "phi3",
    "phimoe",
    "qwen2_moe",
    "qwen3_moe",
    "qwen3_next",
    "seed_oss",
    "starcoder2",
    "youtu",
)
