"""Finding the parts of a transformers causal LM."""

from __future__ import annotations

import torch

# where causal LMs keep their decoder when `get_decoder` does not say (Llama 4's returns the
# whole model): transformers' usual name, GPT-2/BLOOM/Falcon's
_DECODER_NAMES = ("model", "transformer")


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder of a causal LM: the model below its output layer (a multimodal model's
    language model, without its vision or audio towers)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if isinstance(decoder, torch.nn.Module) and decoder is not model:
        return decoder
    for name in (*_DECODER_NAMES, getattr(model, "base_model_prefix", "")):
        candidate = getattr(model, name, None) if name else None
        if isinstance(candidate, torch.nn.Module) and candidate is not model:
            return candidate
    raise ValueError(f"{type(model).__name__} has no decoder module that tuneforge can find")
