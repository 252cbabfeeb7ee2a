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
