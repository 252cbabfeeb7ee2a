"""Training keys: every key of transformers' Seq2SeqTrainingArguments, plus the few that
LLaMA-Factory adds beside them."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

from tuneforge.config.base import key

RAY = "Ray launching (use torchrun)"
PROFILER = "the torch profiler callbacks"
FP8 = "FP8 training"


@dataclass(frozen=True)
class TrainingExtras:
    overwrite_output_dir: bool = key(False, "start afresh instead of resuming in output_dir")
    tensorboard_dir: str | None = key(None, "TensorBoard folder (default: output_dir/runs)")
    ray_num_workers: int = key(1, "Ray workers", not_yet=RAY)
    ray_init_kwargs: dict[str, Any] | None = key(None, "ray.init arguments", not_yet=RAY)
    master_addr: str | None = key(None, "Ray master address", not_yet=RAY)
    master_port: str | None = key(None, "Ray master port", not_yet=RAY)
    enable_torch_profiler: bool = key(False, "torch profiler traces", not_yet=PROFILER)
    profiler_output_dir: str | None = key(None, "profiler output folder", not_yet=PROFILER)
    profiler_wait_steps: int = key(1, "profiler wait steps", not_yet=PROFILER)
    profiler_warmup_steps: int = key(1, "profiler warm-up steps", not_yet=PROFILER)
    profiler_active_steps: int = key(1, "profiler active steps", not_yet=PROFILER)
    profiler_repeat: int = key(1, "profiler cycles", not_yet=PROFILER)
    profiler_record_shapes: bool = key(True, "profiler records shapes", not_yet=PROFILER)
    profiler_profile_memory: bool = key(True, "profiler records memory", not_yet=PROFILER)
    profiler_with_stack: bool = key(True, "profiler records stacks", not_yet=PROFILER)
    profile_modules: str | None = key(None, "modules to time", not_yet=PROFILER)
    fp8: bool = key(False, "FP8 mixed precision", not_yet=FP8)
    fp8_backend: str = key("auto", "FP8 backend", not_yet=FP8)
    fp8_enable_fsdp_float8_all_gather: bool = key(False, "FP8 all-gather", not_yet=FP8)


@functools.cache
def training_argument_types() -> dict[str, Any]:
    """Name -> type annotation of every init field of Seq2SeqTrainingArguments."""
    from transformers import Seq2SeqTrainingArguments

    hints = typing.get_type_hints(Seq2SeqTrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init}


def _warmup_ratio(value: Any) -> dict[str, Any]:
    ratio = float(value)
    if not 0 <= ratio < 1:
        raise ValueError(f"`warmup_ratio` must be in [0, 1), got {value!r}")
    return {"warmup_steps": ratio}  # transformers 5 reads a float below 1 as a ratio


def _save_safetensors(value: Any) -> dict[str, Any]:
    if str(value).lower() in ("false", "0", "no"):
        raise ValueError("transformers 5 always saves safetensors; remove `save_safetensors`")
    return {}


def _renamed(new: str) -> Any:
    return lambda value: {new: value}


def _gone(hint: str) -> Any:
    def refuse(value: Any) -> dict[str, Any]:
        raise ValueError(hint)

    return refuse


# Keys of transformers 4's TrainingArguments that transformers 5 removed. LLaMA-Factory YAMLs
# still carry them: translated where the meaning carries over exactly, refused with the
# replacement otherwise.
LEGACY_TRAINING_KEYS: dict[str, Any] = {
    "warmup_ratio": _warmup_ratio,
    "save_safetensors": _save_safetensors,
    "logging_dir": _renamed("tensorboard_dir"),
    "group_by_length": lambda v: {"train_sampling_strategy": "group_by_length"} if v else {},
    "no_cuda": lambda v: {"use_cpu": v},
    "per_gpu_train_batch_size": _renamed("per_device_train_batch_size"),
    "per_gpu_eval_batch_size": _renamed("per_device_eval_batch_size"),
    "adafactor": lambda v: {"optim": "adafactor"} if v else {},
    "include_tokens_per_second": _renamed("include_effective_tokens_per_second"),
    "push_to_hub_model_id": _renamed("hub_model_id"),
    "push_to_hub_token": _renamed("hub_token"),
    "include_inputs_for_metrics": lambda v: {"include_for_metrics": ["inputs"]} if v else {},
    "torchdynamo": _renamed("torch_compile_backend"),
    "use_mps_device": _gone("removed in transformers 5: MPS is used automatically"),
    "fsdp_min_num_params": _gone("removed in transformers 5: use `fsdp_config`"),
    "fsdp_transformer_layer_cls_to_wrap": _gone("removed in transformers 5: use `fsdp_config`"),
    "half_precision_backend": _gone("removed in transformers 5: mixed precision uses torch amp"),
    "fp16_backend": _gone("removed in transformers 5: mixed precision uses torch amp"),
    "fp16_opt_level": _gone("removed in transformers 5 (apex is no longer supported)"),
    "jit_mode_eval": _gone("removed in transformers 5"),
    "use_legacy_prediction_loop": _gone("removed in transformers 5"),
    "past_index": _gone("removed in transformers 5"),
    "tpu_num_cores": _gone("removed in transformers 5"),
    "tpu_metrics_debug": _gone("removed in transformers 5"),
    "mp_parameters": _gone("removed in transformers 5"),
    "ray_scope": _gone("removed in transformers 5"),
    "push_to_hub_organization": _gone("removed in transformers 5: use `hub_model_id: org/name`"),
}
