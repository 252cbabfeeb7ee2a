"""Data keys: which datasets, how they are mixed, split, encoded and cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tuneforge.config.base import key


@dataclass(frozen=True)
class DataConfig:
    template: str | None = key(None, "chat template name, or `auto` for the tokenizer's own")
    dataset: list[str] | None = key(None, "training dataset names from dataset_info.json, a,b")
    eval_dataset: list[str] | None = key(None, "evaluation dataset names, a,b")
    dataset_dir: str = key("data", "folder holding dataset_info.json, or ONLINE for hub ids")
    media_dir: str | None = key(None, "folder of images/videos/audio", not_yet="multimodal data")
    cutoff_len: int = key(2048, "maximum tokens of an encoded example")
    train_on_prompt: bool = key(False, "also train on prompt tokens")
    mask_history: bool = key(False, "train only on the last turn of a conversation")
    streaming: bool = key(False, "stream datasets", not_yet="streaming datasets")
    buffer_size: int = key(16384, "shuffle buffer size for streaming")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = key(
        "concat", "how several datasets are mixed"
    )
    interleave_probs: list[float] | None = key(None, "sampling probabilities when interleaving")
    overwrite_cache: bool = key(False, "encode again even if a cached encoding exists")
    preprocessing_batch_size: int = key(1000, "examples encoded per tokenizer call")
    preprocessing_num_workers: int | None = key(None, "processes that encode in parallel")
    max_samples: int | None = key(None, "keep at most this many examples of each dataset")
    eval_num_beams: int | None = key(None, "num_beams for evaluation generation")
    ignore_pad_token_for_loss: bool = key(True, "pad tokens are never trained")
    val_size: float = key(0.0, "validation split: a fraction (<1) or a count (>=1)")
    eval_on_each_dataset: bool = key(
        False, "evaluate each eval dataset separately", not_yet="one evaluation per eval dataset"
    )
    packing: bool | None = key(None, "pack examples into cutoff_len bins")
    neat_packing: bool = key(False, "packed examples never attend to each other")
    tool_format: str | None = key(None, "tool-call format, overriding the template's")
    default_system: str | None = key(None, "system prompt, overriding the template's default")
    enable_thinking: bool | None = key(True, "reasoning models: think before answering")
    preserve_thinking: bool = key(
        False, "reasoning models: keep the thoughts of history turns instead of stripping them"
    )
    tokenized_path: str | None = key(None, "save the encoded dataset here, or load it if present")
    data_shared_file_system: bool = key(False, "nodes share one file system (encode once)")
    # tuneforge's own keys
    skip_bad_rows: bool = key(
        False, "skip malformed rows (counted and reported) instead of failing"
    )
    data_cache_dir: str | None = key(
        None, "cache of encoded datasets (~/.cache/tuneforge/datasets)"
    )
