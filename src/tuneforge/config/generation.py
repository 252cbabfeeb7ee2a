"""Generation keys for chat, the API and predictions (LLaMA-Factory's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.base import key


@dataclass(frozen=True)
class GenerationConfig:
    do_sample: bool = key(True, "sample (true) or decode greedily (false)")
    temperature: float = key(0.95, "sampling temperature")
    top_p: float = key(0.7, "nucleus sampling threshold")
    top_k: int = key(50, "top-k sampling")
    num_beams: int = key(1, "beam search width")
    max_length: int = key(1024, "maximum total length (used when max_new_tokens <= 0)")
    max_new_tokens: int = key(1024, "maximum new tokens")
    repetition_penalty: float = key(1.0, "repetition penalty")
    length_penalty: float = key(1.0, "beam length penalty")
    skip_special_tokens: bool = key(True, "strip special tokens when decoding")
