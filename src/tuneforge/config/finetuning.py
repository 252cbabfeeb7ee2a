"""Finetuning keys: the stage (pt, sft, rm, dpo, kto, ppo), the method (full, freeze, lora)
and their options, preference and PPO settings. Names and defaults follow LLaMA-Factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tuneforge.config.base import key

GALORE = "the GaLore optimizer"
APOLLO = "the APOLLO optimizer"
BADAM = "the BAdam optimizer"
SWANLAB = "SwanLab's callback (use report_to: swanlab)"
OFT = "OFT adapters"
# The `pref_loss` values that compare the policy with itself only: no reference model. Here,
# beside the key, so that config checks and training read the same fact.
REFERENCE_FREE = ("orpo", "simpo")


@dataclass(frozen=True)
class FinetuningConfig:
    stage: Literal["pt", "sft", "rm", "ppo", "dpo", "kto"] = key("sft", "training stage")
    finetuning_type: Literal["lora", "oft", "freeze", "full"] = key("lora", "which weights train")
    pure_bf16: bool = key(False, "train in bf16 without mixed precision")
    use_llama_pro: bool = key(False, "LLaMA Pro block expansion", not_yet="LLaMA Pro")
    use_adam_mini: bool = key(False, "Adam-mini optimizer", not_yet="the Adam-mini optimizer")
    use_mca: bool = key(False, "Megatron core adapter", not_yet="Megatron training")
    use_hyper_parallel: bool = key(False, "HyperParallel", not_yet="HyperParallel")
    hyper_parallel_args: str | None = key(None, "HyperParallel arguments", not_yet="HyperParallel")
    use_muon: bool = key(False, "Muon optimizer", not_yet="the Muon optimizer")
    use_dft_loss: bool = key(False, "DFT loss for sft", not_yet="the DFT loss")
    use_asft_loss: bool = key(False, "ASFT loss for sft", not_yet="the ASFT loss")
    asft_alpha: float = key(0.1, "ASFT weight power", not_yet="the ASFT loss")
    use_eaft_loss: bool = key(False, "EAFT loss for sft", not_yet="the EAFT loss")
    eaft_alpha: float = key(1.0, "EAFT weight power", not_yet="the EAFT loss")
    freeze_vision_tower: bool = key(
        True, "freeze the vision tower (multimodal)", not_yet="multimodal models"
    )
    freeze_multi_modal_projector: bool = key(
        True, "freeze the projector (multimodal)", not_yet="multimodal models"
    )
    freeze_language_model: bool = key(
        False, "freeze the language model (multimodal)", not_yet="multimodal models"
    )
    compute_accuracy: bool = key(False, "token accuracy in evaluation")
    disable_shuffling: bool = key(False, "keep the training data in order")
    early_stopping_steps: int | None = key(None, "stop after this many evals without progress")
    plot_loss: bool = key(False, "save loss curves as PNG")
    include_effective_tokens_per_second: bool = key(False, "report effective tokens/s")
    # freeze
    freeze_trainable_layers: int = key(2, "trainable layers: N last, -N first")
    freeze_trainable_modules: list[str] = key(["all"], "modules trained within those layers")
    freeze_extra_modules: list[str] | None = key(None, "other modules to train (embed_tokens...)")
    # lora
    additional_target: list[str] | None = key(None, "modules trained fully beside LoRA")
    lora_alpha: int | None = key(None, "LoRA alpha (default: 2 x lora_rank)")
    lora_dropout: float = key(0.0, "LoRA dropout")
    lora_rank: int = key(8, "LoRA rank")
    lora_target: list[str] = key(["all"], "modules that get LoRA (all = every linear layer)")
    loraplus_lr_ratio: float | None = key(None, "LoRA+: learning-rate ratio of B to A")
    loraplus_lr_embedding: float = key(1e-6, "LoRA+: learning rate of embedding adapters")
    use_rslora: bool = key(False, "rank-stabilised LoRA scaling")
    use_dora: bool = key(False, "weight-decomposed LoRA (DoRA)")
    pissa_init: bool = key(False, "PiSSA initialisation", not_yet="PiSSA")
    pissa_iter: int = key(16, "PiSSA iterations", not_yet="PiSSA")
    pissa_convert: bool = key(False, "convert PiSSA to LoRA", not_yet="PiSSA")
    create_new_adapter: bool = key(False, "a new adapter on top of loaded ones")
    # oft
    module_dropout: float = key(0.0, "OFT module dropout", not_yet=OFT)
    oft_rank: int = key(0, "OFT rank", not_yet=OFT)
    oft_block_size: int = key(32, "OFT block size", not_yet=OFT)
    oft_target: list[str] = key(["all"], "OFT target modules", not_yet=OFT)
    # preference and RL
    pref_beta: float = key(0.1, "beta of the preference losses")
    pref_ftx: float = key(0.0, "weight of the SFT loss mixed into DPO")
    pref_bco_weight: float = key(0.0, "BCO loss weight", not_yet="the BCO loss")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = key(
        "sigmoid", "DPO loss variant"
    )
    dpo_label_smoothing: float = key(0.0, "cDPO label smoothing")
    kto_chosen_weight: float = key(1.0, "KTO weight of desirable examples")
    kto_rejected_weight: float = key(1.0, "KTO weight of undesirable examples")
    simpo_gamma: float = key(0.5, "SimPO target margin")
    ppo_buffer_size: int = key(1, "mini-batches per PPO experience buffer")
    ppo_epochs: int = key(4, "PPO epochs per step")
    ppo_score_norm: bool = key(False, "normalise PPO rewards")
    ppo_target: float = key(6.0, "target KL of adaptive KL control")
    ppo_whiten_rewards: bool = key(False, "whiten PPO rewards")
    ref_model: str | None = key(None, "reference model (full/freeze DPO, KTO, PPO)")
    ref_model_adapters: list[str] | None = key(None, "adapters of the reference model")
    ref_model_quantization_bit: int | None = key(None, "quantize the reference model (4/8)")
    reward_model: str | None = key(None, "reward model path (or URL for api)")
    reward_model_adapters: list[str] | None = key(None, "adapters of the reward model")
    reward_model_quantization_bit: int | None = key(None, "quantize the reward model (4/8)")
    reward_model_type: Literal["lora", "full", "api"] = key("lora", "how the reward model loads")
    ld_alpha: float | None = key(None, "LD-DPO alpha")
    # tuneforge's own key (TRL's name)
    precompute_ref_log_probs: bool = key(
        False, "dpo/kto: score the data with the reference once, before training"
    )
    # GaLore, APOLLO, BAdam
    use_galore: bool = key(False, "GaLore", not_yet=GALORE)
    galore_target: list[str] = key(["all"], "GaLore modules", not_yet=GALORE)
    galore_rank: int = key(16, "GaLore rank", not_yet=GALORE)
    galore_update_interval: int = key(200, "GaLore update interval", not_yet=GALORE)
    galore_scale: float = key(2.0, "GaLore scale", not_yet=GALORE)
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = key(
        "std", "GaLore projection", not_yet=GALORE
    )
    galore_layerwise: bool = key(False, "layer-wise GaLore", not_yet=GALORE)
    use_apollo: bool = key(False, "APOLLO", not_yet=APOLLO)
    apollo_target: list[str] = key(["all"], "APOLLO modules", not_yet=APOLLO)
    apollo_rank: int = key(16, "APOLLO rank", not_yet=APOLLO)
    apollo_update_interval: int = key(200, "APOLLO update interval", not_yet=APOLLO)
    apollo_scale: float = key(32.0, "APOLLO scale", not_yet=APOLLO)
    apollo_proj: Literal["svd", "random"] = key("random", "APOLLO projection", not_yet=APOLLO)
    apollo_proj_type: Literal["std", "right", "left"] = key("std", "APOLLO type", not_yet=APOLLO)
    apollo_scale_type: Literal["channel", "tensor"] = key(
        "channel", "APOLLO scaling", not_yet=APOLLO
    )
    apollo_layerwise: bool = key(False, "layer-wise APOLLO", not_yet=APOLLO)
    apollo_scale_front: bool = key(False, "APOLLO norm-growth limiter", not_yet=APOLLO)
    use_badam: bool = key(False, "BAdam", not_yet=BADAM)
    badam_mode: Literal["layer", "ratio"] = key("layer", "BAdam mode", not_yet=BADAM)
    badam_start_block: int | None = key(None, "BAdam first block", not_yet=BADAM)
    badam_switch_mode: Literal["ascending", "descending", "random", "fixed"] | None = key(
        "ascending", "BAdam block order", not_yet=BADAM
    )
    badam_switch_interval: int | None = key(50, "BAdam switch interval", not_yet=BADAM)
    badam_update_ratio: float = key(0.05, "BAdam update ratio", not_yet=BADAM)
    badam_mask_mode: Literal["adjacent", "scatter"] = key("adjacent", "BAdam mask", not_yet=BADAM)
    badam_verbose: int = key(0, "BAdam verbosity", not_yet=BADAM)
    # SwanLab
    use_swanlab: bool = key(False, "SwanLab logging", not_yet=SWANLAB)
    swanlab_project: str | None = key("llamafactory", "SwanLab project", not_yet=SWANLAB)
    swanlab_workspace: str | None = key(None, "SwanLab workspace", not_yet=SWANLAB)
    swanlab_run_name: str | None = key(None, "SwanLab run name", not_yet=SWANLAB)
    swanlab_mode: Literal["cloud", "local"] = key("cloud", "SwanLab mode", not_yet=SWANLAB)
    swanlab_api_key: str | None = key(None, "SwanLab API key", not_yet=SWANLAB)
    swanlab_logdir: str | None = key(None, "SwanLab log folder", not_yet=SWANLAB)
    swanlab_lark_webhook_url: str | None = key(None, "SwanLab Lark webhook", not_yet=SWANLAB)
    swanlab_lark_secret: str | None = key(None, "SwanLab Lark secret", not_yet=SWANLAB)


def uses_reference(finetuning: FinetuningConfig) -> bool:
    """Whether the dpo/kto loss compares against a reference model (KTO always does)."""
    return finetuning.stage == "kto" or finetuning.pref_loss not in REFERENCE_FREE
