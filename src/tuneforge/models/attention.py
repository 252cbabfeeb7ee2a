"""Attention for padding-free batches.

A padding-free batch (data/batch.py) is one row holding several examples back to back, each
with positions 0..n-1 (`position_ids`) and its boundaries in `cu_seq_lens_q` (cumulative
lengths). Attention must stay inside each example. transformers handles such rows in two ways:
FlashAttention-2 reads the boundaries natively; sdpa and eager build a block-diagonal
(length x length) mask, which costs memory and compute quadratic in the whole row.
`varlen_sdpa` instead runs PyTorch's scaled_dot_product_attention once per example with
`is_causal=True`: no mask, no work across examples, and the fused (flash) kernels of the CPU
and CUDA backends stay usable.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.data.batch import sequence_bounds

logger = logging.getLogger("tuneforge")

VARLEN = "tuneforge_varlen"


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each example of a packed row ([1, heads, length, head_dim]).

    Falls back to plain causal SDPA for an unpacked batch (one example per row, no padding),
    and to masked SDPA when a padding mask is given (e.g. batched generation).
    """
    # grouped-query attention: SDPA shares each key/value head across its group itself, so no
    # repeated copy of keys and values is made (and kept for backward)
    grouped = query.shape[1] != key.shape[1]
    dropout = dropout if module.training else 0.0
    length = query.shape[2]
    bounds = sequence_bounds(kwargs, length) if query.shape[0] == 1 else None
    if attention_mask is not None and bounds is None:
        output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            scale=scaling,
            enable_gqa=grouped,
        )
    elif bounds is None:
        output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            dropout_p=dropout,
            scale=scaling,
            is_causal=length > 1,
            enable_gqa=grouped,
        )
    else:
        output = torch.cat(
            [
                F.scaled_dot_product_attention(
                    query[:, :, start:end],
                    key[:, :, start:end],
                    value[:, :, start:end],
                    dropout_p=dropout,
                    scale=scaling,
                    is_causal=end - start > 1,
                    enable_gqa=grouped,
                )
                for start, end in itertools.pairwise(bounds)
            ],
            dim=2,
        )
    return output.transpose(1, 2).contiguous(), None


def _no_mask(attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """The mask transformers would build for us: none when there is no padding (the
    segments carry the causal structure), else the 2-D padding mask turned 4-D boolean.
    transformers passes every argument of a mask function by name."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def register_varlen_attention() -> str:
    """Registers `varlen_sdpa` with transformers under VARLEN and returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_sdpa)
    AttentionMaskInterface.register(VARLEN, _no_mask)
    return VARLEN


def attention_implementation(flash_attn: str, device_type: str) -> str:
    """The transformers attn_implementation for a `flash_attn` key value.

    auto and sdpa: FlashAttention-2 on CUDA when installed, else VARLEN (SDPA per example).
    disabled / eager: transformers' eager attention. fa2 / fa3: FlashAttention, which must be
    installed.
    """
    from tuneforge.errors import ConfigError

    if flash_attn in ("disabled", "eager"):
        return "eager"
    if flash_attn in ("fa2", "fa3"):
        package = "flash_attn" if flash_attn == "fa2" else "flash_attn_interface"
        if device_type != "cuda":
            raise ConfigError(f"`flash_attn: {flash_attn}` needs a CUDA GPU; use `auto` on CPU.")
        if not _installed(package):
            # FlashAttention-3 has no wheel on PyPI: it is built from the flash-attention repo.
            how = (
                "pip install 'tuneforge[flash-attn]'"
                if flash_attn == "fa2"
                else "build it from the hopper/ folder of https://github.com/Dao-AILab/"
                "flash-attention (`cd hopper && python setup.py install`; Hopper GPUs only)"
            )
            raise ConfigError(
                f"`flash_attn: {flash_attn}` needs the `{package}` package: "
                f"{how} (or use `flash_attn: auto`)."
            )
        return "flash_attention_2" if flash_attn == "fa2" else "flash_attention_3"
    if device_type == "cuda" and _installed("flash_attn"):
        return "flash_attention_2"
    return register_varlen_attention()


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None
