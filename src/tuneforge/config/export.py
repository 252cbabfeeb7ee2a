"""Export and evaluation keys (LLaMA-Factory's names and defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tuneforge.config.base import key

EVAL = "`tuneforge eval` (benchmarks)"


@dataclass(frozen=True)
class ExportConfig:
    export_dir: str | None = key(None, "where `tuneforge export` writes the model")
    export_size: float = key(5, "largest weight shard, in GB (10^9 bytes; fractions allowed)")
    export_device: Literal["cpu", "auto"] = key("cpu", "device used to merge")
    export_quantization_bit: int | None = key(None, "GPTQ bits at export")
    export_quantization_dataset: str | None = key(None, "GPTQ calibration dataset")
    export_quantization_nsamples: int = key(128, "GPTQ calibration examples")
    export_quantization_maxlen: int = key(1024, "GPTQ calibration length")
    export_legacy_format: bool = key(False, "save .bin instead of .safetensors")
    export_hub_model_id: str | None = key(None, "hub repository to push the export to")


@dataclass(frozen=True)
class EvaluationConfig:
    task: str | None = key(None, "benchmark task, e.g. mmlu_test", not_yet=EVAL)
    task_dir: str = key("evaluation", "folder of the benchmark datasets", not_yet=EVAL)
    batch_size: int = key(4, "evaluation batch size", not_yet=EVAL)
    lang: Literal["en", "zh"] = key("en", "prompt language", not_yet=EVAL)
    n_shot: int = key(5, "few-shot examples", not_yet=EVAL)
    save_dir: str | None = key(None, "where results are saved (must not exist)", not_yet=EVAL)
    download_mode: Literal[
        "reuse_dataset_if_exists", "reuse_cache_if_exists", "force_redownload"
    ] = key("reuse_dataset_if_exists", "datasets download mode", not_yet=EVAL)
