"""Model keys: what to load, how (dtype, attention, RoPE, quantization), and which engine
serves it. Names, meanings and defaults follow LLaMA-Factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tuneforge.config.base import key

MULTIMODAL = "multimodal models"
KTRANSFORMERS = "the KTransformers backend"
SGLANG = "the SGLang engine"


@dataclass(frozen=True)
class ModelConfig:
    model_name_or_path: str | None = key(None, "local folder or hub id of the base model")
    adapter_name_or_path: list[str] | None = key(None, "adapter folder(s) to load, a,b")
    adapter_folder: str | None = key(None, "sub-folder of the adapter repository")
    cache_dir: str | None = key(None, "download cache for hub models")
    use_fast_tokenizer: bool = key(True, "use the fast (Rust) tokenizer")
    resize_vocab: bool = key(False, "resize embeddings to the tokenizer's vocabulary")
    split_special_tokens: bool = key(False, "tokenize special tokens as plain text")
    add_tokens: list[str] | None = key(None, "new ordinary tokens, a,b")
    add_special_tokens: list[str] | None = key(None, "new special tokens, a,b")
    new_special_tokens_config: str | None = key(
        None, "YAML of new special tokens", not_yet="special tokens from a YAML with descriptions"
    )
    init_special_tokens: Literal["noise_init", "desc_init", "desc_init_w_noise"] = key(
        "noise_init", "initialisation of new token embeddings", not_yet="description-based init"
    )
    model_revision: str = key("main", "hub revision of the model")
    low_cpu_mem_usage: bool = key(True, "memory-efficient model loading")
    rope_scaling: Literal["linear", "dynamic", "yarn", "llama3"] | None = key(
        None, "RoPE scaling to extend the context"
    )
    flash_attn: Literal["auto", "disabled", "eager", "sdpa", "fa2", "fa3"] = key(
        "auto", "attention implementation (disabled = eager)"
    )
    shift_attn: bool = key(False, "LongLoRA shift attention", not_yet="LongLoRA shift attention")
    mixture_of_depths: Literal["convert", "load"] | None = key(
        None, "mixture-of-depths", not_yet="mixture-of-depths"
    )
    use_unsloth: bool = key(False, "use Unsloth's patched models (needs unsloth)")
    use_unsloth_gc: bool = key(
        False, "Unsloth's gradient checkpointing", not_yet="Unsloth's offloaded checkpointing"
    )
    enable_liger_kernel: bool = key(False, "Liger fused kernels (needs liger-kernel)")
    moe_aux_loss_coef: float | None = key(
        None,
        "MoE router load-balancing loss coefficient, added to the training loss (unset: the"
        " checkpoint's config decides, usually off; 0: off)",
    )
    disable_gradient_checkpointing: bool | None = key(
        None,
        "turn gradient checkpointing off (unset: off on CPU, where batches run in passes of at"
        " most cutoff_len tokens; on for GPUs)",
    )
    use_reentrant_gc: bool = key(True, "reentrant gradient checkpointing")
    upcast_layernorm: bool = key(False, "layer norms in fp32")
    upcast_lmhead_output: bool = key(False, "lm_head output in fp32")
    train_from_scratch: bool = key(False, "random weights instead of the checkpoint's")
    infer_backend: Literal["huggingface", "vllm", "sglang"] = key("huggingface", "inference engine")
    offload_folder: str = key("offload", "folder for weights offloaded by device_map auto")
    use_kv_cache: bool = key(True, "KV cache during generation")
    use_v1_kernels: bool | None = key(
        False, "LLaMA-Factory v1 kernels", not_yet="LLaMA-Factory's v1 kernels"
    )
    infer_dtype: Literal["auto", "float16", "bfloat16", "float32"] = key(
        "auto", "dtype for inference and export"
    )
    hf_hub_token: str | None = key(None, "Hugging Face token")
    ms_hub_token: str | None = key(None, "ModelScope token", not_yet="ModelScope hub")
    om_hub_token: str | None = key(None, "Modelers token", not_yet="Modelers hub")
    print_param_status: bool = key(False, "print every parameter's dtype and trainability")
    trust_remote_code: bool = key(False, "run model code from the hub")
    # quantization
    quantization_method: Literal[
        "bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8"
    ] = key("bnb", "on-the-fly quantization backend")
    quantization_bit: int | None = key(None, "4 or 8: quantize the base model (QLoRA)")
    quantization_type: Literal["fp4", "nf4"] = key("nf4", "bitsandbytes 4-bit type")
    double_quantization: bool = key(True, "bitsandbytes double quantization")
    quantization_device_map: Literal["auto"] | None = key(None, "device_map for 4-bit inference")
    # multimodal processors
    image_max_pixels: int = key(768 * 768, "max pixels of an image", not_yet=MULTIMODAL)
    image_min_pixels: int = key(32 * 32, "min pixels of an image", not_yet=MULTIMODAL)
    image_do_pan_and_scan: bool = key(False, "gemma3 pan-and-scan", not_yet=MULTIMODAL)
    crop_to_patches: bool = key(False, "InternVL patches", not_yet=MULTIMODAL)
    video_max_pixels: int = key(256 * 256, "max pixels of a frame", not_yet=MULTIMODAL)
    video_min_pixels: int = key(16 * 16, "min pixels of a frame", not_yet=MULTIMODAL)
    video_fps: float = key(2.0, "sampled frames per second", not_yet=MULTIMODAL)
    video_maxlen: int = key(128, "max sampled frames", not_yet=MULTIMODAL)
    use_audio_in_video: bool = key(False, "audio track of videos", not_yet=MULTIMODAL)
    audio_sampling_rate: int = key(16000, "audio sampling rate", not_yet=MULTIMODAL)
    # KTransformers
    use_kt: bool = key(False, "KTransformers MoE backend", not_yet=KTRANSFORMERS)
    kt_weight_path: str | None = key(None, "KTransformers weights", not_yet=KTRANSFORMERS)
    kt_expert_checkpoint_path: str | None = key(None, "KT experts", not_yet=KTRANSFORMERS)
    kt_use_lora_experts: bool | None = key(None, "KT LoRA experts", not_yet=KTRANSFORMERS)
    kt_lora_expert_num: int | None = key(None, "KT LoRA expert count", not_yet=KTRANSFORMERS)
    kt_lora_expert_intermediate_size: int | None = key(
        None, "KT LoRA expert size", not_yet=KTRANSFORMERS
    )
    # vLLM
    vllm_maxlen: int = key(4096, "vLLM maximum sequence length")
    vllm_gpu_util: float = key(0.7, "fraction of GPU memory vLLM may use")
    vllm_enforce_eager: bool = key(False, "disable CUDA graphs in vLLM")
    vllm_max_lora_rank: int = key(32, "largest LoRA rank vLLM serves")
    vllm_config: dict[str, Any] | None = key(None, "extra vLLM engine arguments")
    # SGLang
    sglang_maxlen: int = key(4096, "SGLang maximum sequence length", not_yet=SGLANG)
    sglang_mem_fraction: float = key(0.7, "SGLang memory fraction", not_yet=SGLANG)
    sglang_tp_size: int = key(-1, "SGLang tensor parallel size", not_yet=SGLANG)
    sglang_config: dict[str, Any] | None = key(None, "SGLang engine arguments", not_yet=SGLANG)
    sglang_lora_backend: Literal["triton", "flashinfer"] = key(
        "triton", "SGLang LoRA backend", not_yet=SGLANG
    )
