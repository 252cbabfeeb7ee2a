"""Loading a causal language model the way a config asks: dtype, attention, RoPE scaling,
vocabulary size, upcasts, gradient checkpointing, and the template's stop words as the
generation EOS."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Literal

import torch

from tuneforge.errors import ConfigError, NotAvailableError
from tuneforge.models.attention import attention_implementation
from tuneforge.models.families import log_training_path, training_path
from tuneforge.models.lean_layers import apply_lean_layers
from tuneforge.models.padded_forward import enable_padded_forward
from tuneforge.models.tokenizer import base_model_path, load_pretrained

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from tuneforge.config.model import ModelConfig

logger = logging.getLogger("tuneforge")

DtypeName = Literal["float16", "bfloat16", "float32"]  # the `infer_dtype` values but auto
DTYPES: dict[DtypeName, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(training: TrainingArguments | None, model: ModelConfig) -> torch.dtype:
    """Weights' dtype: bf16/fp16 as the training arguments ask on an accelerator; float32 on
    CPU (the same code, without mixed precision); `infer_dtype` for inference."""
    if training is None:
        if model.infer_dtype != "auto":
            return DTYPES[model.infer_dtype]
        if device_type() == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if device_type() == "cpu":
        return torch.float32
    if training.bf16:
        return torch.bfloat16
    if training.fp16:
        return torch.float16
    return torch.float32


def load_config(model: ModelConfig, cutoff_len: int | None) -> Any:
    """The model's transformers config with RoPE scaling applied (LLaMA-Factory's rule: the
    factor is ceil(cutoff_len / max_position_embeddings), and only when it is needed)."""
    from transformers import AutoConfig

    hf_config = load_pretrained(AutoConfig, base_model_path(model), _hub_kwargs(model), "config")
    if model.rope_scaling and cutoff_len:
        _scale_rope(hf_config, model.rope_scaling, cutoff_len)
    elif cutoff_len:
        warn_of_positions_beyond(hf_config, cutoff_len)
    return hf_config


def warn_of_positions_beyond(hf_config: Any, cutoff_len: int) -> bool:
    """Warns when `cutoff_len` reaches past the positions the model was trained on and no
    `rope_scaling` stretches them (LLaMA-Factory trains on without a word): the tokens beyond
    get positions the model has never seen. A warning, not a refusal: the data may hold no
    example that long. Returns whether it warned."""
    text_config = getattr(hf_config, "text_config", None) or hf_config
    current = getattr(text_config, "max_position_embeddings", None)
    if not isinstance(current, int) or cutoff_len <= current:
        return False
    logger.warning(
        "cutoff_len %d is beyond this model's %d positions (max_position_embeddings), and no "
        "`rope_scaling` is set: tokens past position %d get positions the model was never "
        "trained on. Set `rope_scaling: linear|dynamic|yarn` to stretch them, or lower "
        "`cutoff_len` to %d.",
        cutoff_len,
        current,
        current,
        current,
    )
    return True


# the names MoE configs give the weight of the router's load-balancing loss: most families,
# JetMoE, DeepSeek's remote code, DBRX (in its ffn_config)
ROUTER_COEFFICIENTS = (
    "router_aux_loss_coef",
    "aux_loss_coef",
    "aux_loss_alpha",
    "moe_loss_weight",
)


def configure_router_loss(hf_config: Any, coefficient: float | None, training: bool) -> bool:
    """An MoE model's router load-balancing loss, as LLaMA-Factory's `configure_moe` sets it.

    Training with `moe_aux_loss_coef` set: the coefficient goes to the family's own name of it
    and `output_router_logits` is turned on, so the forward returns `aux_loss`
    (training/loss.py adds it); 0 turns the router logits off. Unset, the checkpoint's own
    config decides (usually off), as in LLaMA-Factory. For inference the router logits are off.
    Only configs that name a coefficient are touched: DeepSeek-V3 and GLM-4.5 return router
    logits but balance their experts without a loss. Returns whether the forward will return
    a router loss.
    """
    configs = _router_configs(hf_config)
    for config in configs:
        if not training:
            if hasattr(config, "output_router_logits"):
                config.output_router_logits = False
            continue
        holder, name = _coefficient_home(config)
        if coefficient is not None:
            setattr(holder, name, coefficient)
            if hasattr(config, "output_router_logits"):
                config.output_router_logits = coefficient != 0
    if not (training and configs):
        return False
    holder, name = _coefficient_home(configs[-1])  # the text config of a multimodal one
    weight = getattr(holder, name)
    if getattr(configs[-1], "output_router_logits", False) is True and weight:
        logger.info("MoE router load-balancing loss on: %s = %g.", name, weight)
        return True
    if getattr(configs[-1], "output_router_logits", None) is None and weight:
        # DeepSeek's remote code: its gate adds the loss's gradient itself, in its forward
        logger.info("MoE router load-balancing loss: %s = %g, in the model's code.", name, weight)
        return False
    unset = "unset, and off in the checkpoint's config" if coefficient is None else "0"
    logger.info("MoE router load-balancing loss off (moe_aux_loss_coef %s).", unset)
    return False


def _router_configs(hf_config: Any) -> list[Any]:
    """The config, or a multimodal model's text config, that weighs a router loss."""
    configs = [hf_config, getattr(hf_config, "text_config", None)]
    return [c for c in configs if c is not None and _coefficient_home(c)[1]]


def _coefficient_home(config: Any) -> tuple[Any, str]:
    for holder in (config, getattr(config, "ffn_config", None)):
        for name in ROUTER_COEFFICIENTS:
            if holder is not None and hasattr(holder, name):
                return holder, name
    return config, ""


def _hub_kwargs(model: ModelConfig) -> dict[str, Any]:
    return {
        "revision": model.model_revision,
        "cache_dir": model.cache_dir,
        "token": model.hf_hub_token,
        "trust_remote_code": model.trust_remote_code,
    }


def _scale_rope(hf_config: Any, kind: str, cutoff_len: int) -> None:
    current = getattr(hf_config, "max_position_embeddings", None)
    if not current:
        raise ConfigError(f"`rope_scaling: {kind}`: this model has no max_position_embeddings.")
    if cutoff_len <= current:
        logger.warning(
            "rope_scaling: cutoff_len %d fits the model's %d positions; not scaling.",
            cutoff_len,
            current,
        )
        return
    factor = float(math.ceil(cutoff_len / current))
    parameters = dict(getattr(hf_config, "rope_parameters", None) or {})
    parameters.update({"rope_type": kind, "factor": factor})
    if kind in ("dynamic", "yarn", "llama3"):
        parameters["original_max_position_embeddings"] = current
    if kind == "llama3":
        parameters.update({"low_freq_factor": 1.0, "high_freq_factor": 4.0})
    hf_config.rope_parameters = parameters
    hf_config.max_position_embeddings = int(current * factor)
    logger.info("RoPE %s scaling by %.0fx: %d positions.", kind, factor, int(current * factor))


def load_model(
    model: ModelConfig,
    tokenizer: Any,
    stop_words: tuple[str, ...],
    *,
    training: TrainingArguments | None = None,
    cutoff_len: int | None = None,
) -> Any:
    """The model of `model.model_name_or_path`, ready to train (`training` given) or to infer."""
    from transformers import AutoModelForCausalLM

    liger = _check_accelerations(model, training)
    hf_config = load_config(model, cutoff_len)
    router_loss = configure_router_loss(hf_config, model.moe_aux_loss_coef, training is not None)
    dtype = compute_dtype(training, model)
    path = training_path(hf_config, model.trust_remote_code)
    if training is not None:
        log_training_path(path)
    kwargs = {
        "config": hf_config,
        "dtype": dtype,
        "attn_implementation": attention_implementation(
            model.flash_attn, device_type(), getattr(hf_config, "model_type", ""), path.padding_free
        ),
        **_hub_kwargs(model),
        **quantization_kwargs(model, dtype, training is not None),
    }
    if model.train_from_scratch:  # random weights: only the config and the code are needed
        loaded = AutoModelForCausalLM.from_config(
            hf_config,
            dtype=dtype,
            attn_implementation=kwargs["attn_implementation"],
            trust_remote_code=model.trust_remote_code,
        )
    else:
        loaded = load_pretrained(AutoModelForCausalLM, base_model_path(model), kwargs, "model")
    if liger:
        apply_liger_kernel(loaded)
    elif training is not None:
        apply_lean_layers(loaded)  # less kept for backward; Liger's kernels do that themselves
    if training is not None and not path.padding_free:
        enable_padded_forward(loaded)
    _fit_vocabulary(loaded, tokenizer, model.resize_vocab)
    set_generation_stops(loaded, tokenizer, stop_words)
    if training is None:
        loaded.requires_grad_(False)
        return loaded.eval()
    loaded.config.use_cache = False  # no KV cache while training
    if model.upcast_layernorm:
        _upcast_norms(loaded)
    if model.upcast_lmhead_output:
        loaded.get_output_embeddings().register_forward_hook(
            lambda module, args, output: output.to(torch.float32)
        )
    if checkpointing_wanted(model, training):
        reentrant = model.use_reentrant_gc
        if reentrant and router_loss:
            # a reentrant checkpoint runs its forward without grad, so the router logits that
            # transformers records inside it would give the router loss no gradient
            logger.info("MoE router loss: non-reentrant gradient checkpointing.")
            reentrant = False
        loaded.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": reentrant}
        )
        if reentrant:
            loaded.enable_input_require_grads()  # reentrant checkpoints need a grad-requiring input
    return loaded


def checkpointing_wanted(model: ModelConfig, training: TrainingArguments) -> bool:
    """Gradient checkpointing unless turned off. Unset, it is off on CPU: there a batch runs in
    passes of at most cutoff_len tokens (Trainer.max_pass_tokens), so the activations kept are
    one long example's at most, and the recompute would cost a quarter of the speed of a
    compute-bound machine; on GPUs memory is the scarce resource, so LLaMA-Factory's default
    (on) holds."""
    if training.gradient_checkpointing:
        return True
    if model.disable_gradient_checkpointing is None:
        return device_type() != "cpu"
    return not model.disable_gradient_checkpointing


def quantization_kwargs(model: ModelConfig, dtype: torch.dtype, training: bool) -> dict[str, Any]:
    """from_pretrained arguments that load the base model quantized by bitsandbytes (QLoRA)."""
    import importlib.util

    bits = model.quantization_bit
    if bits is None:
        return {}
    if model.quantization_method != "bnb":
        raise NotAvailableError(
            f"`quantization_method: {model.quantization_method}` is not available yet; "
            "on-the-fly quantization uses bitsandbytes (`quantization_method: bnb`)."
        )
    if device_type() != "cuda":  # first: installing bitsandbytes would not help here
        raise ConfigError(f"`quantization_bit: {bits}` (bitsandbytes) needs a CUDA GPU.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise NotAvailableError(
            f"`quantization_bit: {bits}` needs bitsandbytes: pip install 'tuneforge[qlora]'."
        )
    from transformers import BitsAndBytesConfig

    if bits == 8:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=model.double_quantization,
            bnb_4bit_quant_type=model.quantization_type,
        )
    # training: the whole model on this process's GPU; inference may spread it over several
    device_map: str | dict[str, int] = "auto"
    if model.quantization_device_map != "auto" or training:
        device_map = {"": torch.cuda.current_device()}
    kwargs = {"quantization_config": quantization, "device_map": device_map}
    if device_map == "auto":  # layers that fit nowhere else go to disk, as in LLaMA-Factory
        kwargs["offload_folder"] = model.offload_folder
    return kwargs


def _check_accelerations(model: ModelConfig, training: TrainingArguments | None) -> bool:
    """Refuses accelerations that cannot run here; returns whether Liger kernels apply."""
    import importlib.util

    # `use_unsloth` is refused with the other config rules (config/checks.py)
    liger = model.enable_liger_kernel or (training is not None and training.use_liger_kernel)
    if liger:
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError(
                "`enable_liger_kernel: true` needs liger-kernel: pip install 'tuneforge[liger]'."
            )
        if device_type() != "cuda":
            raise ConfigError("`enable_liger_kernel: true` needs a CUDA GPU (Triton kernels).")
    return liger


def apply_liger_kernel(loaded: Any) -> None:
    """Liger's fused kernels for the model's family (RMSNorm, SwiGLU, RoPE); cross-entropy
    stays ours, since tuneforge computes logits only where tokens are trained."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=loaded, cross_entropy=False, fused_linear_cross_entropy=False
    )


def _fit_vocabulary(loaded: Any, tokenizer: Any, resize_vocab: bool) -> None:
    weight = loaded.get_input_embeddings().weight
    # under ZeRO-3 the weight is an empty placeholder; its real shape is kept beside it
    embeddings = getattr(weight, "ds_shape", weight.shape)[0]
    if len(tokenizer) > embeddings:
        if not resize_vocab:
            logger.info(
                "Tokenizer has %d tokens, embeddings %d: resizing.", len(tokenizer), embeddings
            )
        loaded.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    elif resize_vocab and len(tokenizer) != embeddings:
        loaded.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)


def set_generation_stops(loaded: Any, tokenizer: Any, stop_words: tuple[str, ...]) -> list[int]:
    """Generation stops at the template's stop words and the tokenizer's EOS (the generation
    config's eos ids, so any transformers-based server stops where the template ends a turn);
    returns those ids."""
    ids: list[int] = []
    for word in (*stop_words, tokenizer.eos_token):
        token = tokenizer.convert_tokens_to_ids(word) if word else None
        if token is not None and token != tokenizer.unk_token_id and token not in ids:
            ids.append(token)
    if loaded.generation_config is not None and ids:
        loaded.generation_config.eos_token_id = ids
        loaded.generation_config.pad_token_id = tokenizer.pad_token_id
    return ids


def _upcast_norms(loaded: Any) -> None:
    for name, parameter in loaded.named_parameters():
        if parameter.ndim == 1 and "norm" in name:
            parameter.data = parameter.data.to(torch.float32)
