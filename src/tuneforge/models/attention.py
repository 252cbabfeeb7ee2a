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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.data.batch import sequence_bounds

logger = logging.getLogger("tuneforge")

VARLEN = "tuneforge_varlen"


class _Unset:
    """A keyword argument that was not passed (None means "no window" when it is)."""


_UNSET = _Unset()


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | _Unset | None = _UNSET,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each example of a packed row ([1, heads, length, head_dim]),
    with the variants a model's attention layer asks for: a sliding window (Mistral, Gemma 2
    and 3, Cohere 2, gpt-oss, Qwen2 with `use_sliding_window`), soft-capped attention logits
    (Gemma 2) and attention sinks (gpt-oss's `s_aux`).

    Falls back to one causal attention over the row for an unpacked batch (one example per
    row, no padding, or a query attending to a KV cache), and to the mask transformers built
    when a padding mask is given (batched generation).
    """
    variant = _Variant(
        scale=scaling if scaling is not None else query.shape[-1] ** -0.5,
        dropout=dropout if module.training else 0.0,
        window=_window(module, sliding_window),
        softcap=softcap,
        sinks=s_aux,
    )
    bounds = sequence_bounds(kwargs, query.shape[2]) if query.shape[0] == 1 else None
    if bounds is None:
        output = _attend(query, key, value, attention_mask, variant)
    else:
        segments = itertools.pairwise(bounds)
        parts = [
            _attend(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, variant)
            for a, b in segments
        ]
        output = torch.cat(parts, dim=2)
    return output.transpose(1, 2).contiguous(), None


def _window(module: torch.nn.Module, given: int | _Unset | None) -> int | None:
    """The layer's sliding window. Most layers pass theirs (None for a full-attention layer);
    some lay it only into the mask transformers builds, which this attention does not take
    (see _no_mask): Qwen2-MoE keeps it on the layer, Phi-MoE only in its config, for every
    layer unless the config's `layer_types` says otherwise."""
    if not isinstance(given, _Unset):
        return given
    if hasattr(module, "sliding_window"):
        own: int | None = getattr(module, "sliding_window")  # noqa: B009 (typed as Any)
        return own
    config = getattr(module, "config", None)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    index = getattr(module, "layer_idx", None)
    if window is not None and layer_types is not None and index is not None:
        return window if layer_types[index] == "sliding_attention" else None
    return window


@dataclass(frozen=True)
class _Variant:
    """How one attention layer attends: its scale and dropout, and the optional features."""

    scale: float
    dropout: float
    window: int | None  # each query sees itself and the window - 1 keys before it
    softcap: float | None  # logits become softcap * tanh(logits / softcap)
    sinks: torch.Tensor | None  # [heads]: one extra logit per head that takes probability mass


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    variant: _Variant,
) -> torch.Tensor:
    """Causal attention of queries to keys ([batch, heads, length, head_dim]): the queries
    are the last of the keys' positions (a KV cache holds the earlier ones). `mask`, when
    given, is transformers' (padding, causality and window already in it)."""
    queries, keys = query.shape[2], key.shape[2]
    windowed = variant.window is not None and keys > variant.window
    if mask is None and (windowed or queries not in (1, keys)):
        mask = _causal_mask(queries, keys, variant.window, query.device)
    if variant.softcap is not None or variant.sinks is not None:
        if mask is None:  # plain causal; the explicit path always takes a mask
            mask = _causal_mask(queries, keys, None, query.device)
        return _explicit_attention(query, key, value, mask, variant)
    # grouped-query attention: SDPA shares each key/value head across its group itself, so no
    # repeated copy of keys and values is made (and kept for backward)
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=variant.dropout,
        scale=variant.scale,
        is_causal=mask is None and queries > 1,
        enable_gqa=query.shape[1] != key.shape[1],
    )


def _causal_mask(queries: int, keys: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[queries, keys] True where a query may attend: keys up to its own position (the
    queries being the last positions) and, with a window, no further back than window - 1."""
    query_positions = torch.arange(keys - queries, keys, device=device)[:, None]
    key_positions = torch.arange(keys, device=device)[None, :]
    allowed = key_positions <= query_positions
    if window is not None:
        allowed &= key_positions > query_positions - window
    return allowed


def _explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    variant: _Variant,
) -> torch.Tensor:
    """Attention written out, for what SDPA cannot do (soft-capping, sinks); the same
    arithmetic as transformers' eager attention of those models, one sequence at a time."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * variant.scale
    if variant.softcap is not None:
        scores = torch.tanh(scores / variant.softcap) * variant.softcap
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    if variant.sinks is None:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        # the sink is one more logit per head whose probability is dropped: it lets a head
        # attend to nothing
        sinks = variant.sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:3], 1).to(scores.dtype)
        logits = torch.cat([scores, sinks], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = F.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1]
    if variant.dropout > 0:
        probs = F.dropout(probs, p=variant.dropout)
    return torch.matmul(probs.to(value.dtype), value)


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


# Model types whose attention has learned sinks (`s_aux`): FlashAttention-2 has none, and
# transformers' FA2 path drops them without a word, so these never take it.
SINK_MODEL_TYPES = frozenset({"gpt_oss"})


def attention_implementation(
    flash_attn: str, device_type: str, model_type: str = "", padding_free: bool = True
) -> str | None:
    """The transformers attn_implementation for a `flash_attn` key value and a model type.

    auto and sdpa: FlashAttention-2 on CUDA when installed and the model needs nothing it
    lacks, else VARLEN (SDPA per example, with sliding windows, soft-capping and sinks) on the
    padding-free path, or transformers' own default (None: SDPA where the model supports it)
    on the padded one (models/families.py). disabled / eager: transformers' eager attention.
    fa2 / fa3: FlashAttention, which must be installed (and, for fa2, able to compute the
    model's attention).
    """
    from tuneforge.errors import ConfigError

    if flash_attn in ("disabled", "eager"):
        return _chosen("eager", "asked for with `flash_attn`")
    if flash_attn in ("fa2", "fa3"):
        package = "flash_attn" if flash_attn == "fa2" else "flash_attn_interface"
        if device_type != "cuda":
            raise ConfigError(f"`flash_attn: {flash_attn}` needs a CUDA GPU; use `auto` on CPU.")
        if flash_attn == "fa2" and model_type in SINK_MODEL_TYPES:
            raise ConfigError(
                f"`flash_attn: fa2` cannot compute {model_type}'s attention sinks "
                "(FlashAttention-2 has none); use `flash_attn: auto`."
            )
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
        name = "flash_attention_2" if flash_attn == "fa2" else "flash_attention_3"
        return _chosen(name, "asked for with `flash_attn`")
    if device_type == "cuda" and _installed("flash_attn") and model_type not in SINK_MODEL_TYPES:
        return _chosen("flash_attention_2", "installed, on CUDA")
    why = "attention sinks" if model_type in SINK_MODEL_TYPES else "no FlashAttention-2 here"
    if not padding_free:
        return _chosen(None, f"{why}; the padded path")
    return _chosen(register_varlen_attention(), f"{why}; SDPA per sequence")


def _chosen(name: str | None, why: str) -> str | None:
    logger.info("Attention: %s (%s).", name or "transformers' default for the model", why)
    return name


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None
