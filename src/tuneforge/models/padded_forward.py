"""The padded training path: a padding-free row reaches the model's layers as a right-padded
batch with an attention mask, and their output is un-padded again.

Taken by the model types that cannot see a row's sequence bounds (models/families.py): alibi
biases built from the attention mask, state-space, linear-attention and convolution layers
that would carry state from one sequence into the next, remote code. Only the decoder (the
model below its output layer) sees the padding, so everything built on the row stays as it
is: logits only at trained positions, the fused output layer + loss, value heads reading the
hidden states, sequence log-probabilities. An MoE model's router logits are un-padded too:
its load-balancing loss, computed by the model from them, then covers the real tokens only,
which is what transformers computes on a padded batch with its mask.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

import torch

from tuneforge.data.batch import BOUNDS_KEYS, MAX_LENGTH_KEYS, sequence_bounds
from tuneforge.utils.modules import decoder_of


def enable_padded_forward(model: torch.nn.Module) -> None:
    """Makes `model`'s decoder take each padding-free row as a padded batch.

    The bounds are taken from the model's own forward: not every model hands its keyword
    arguments (or even the position ids) down to its decoder."""
    decoder = decoder_of(model)
    state = _RowBounds()
    model.forward = functools.wraps(model.forward)(
        functools.partial(_take_bounds, model.forward, state)
    )
    decoder.forward = functools.wraps(decoder.forward)(
        functools.partial(_padded_forward, decoder.forward, state)
    )


class _RowBounds(threading.local):
    """The sequence bounds of the row the model's forward is running on."""

    bounds: list[int] | None = None


def _take_bounds(original: Any, state: _RowBounds, *args: Any, **kwargs: Any) -> Any:
    row = kwargs.get("input_ids", args[0] if args else None)
    if row is None:
        row = kwargs.get("inputs_embeds")
    state.bounds = sequence_bounds(kwargs, 0 if row is None else int(row.shape[1]))
    for key in (*BOUNDS_KEYS, *MAX_LENGTH_KEYS):
        kwargs.pop(key, None)  # the padded batch's mask carries the bounds now
    try:
        return original(*args, **kwargs)
    finally:
        state.bounds = None


def _padded_forward(original: Any, state: _RowBounds, *args: Any, **kwargs: Any) -> Any:
    for key in (*BOUNDS_KEYS, *MAX_LENGTH_KEYS):
        kwargs.pop(key, None)
    if state.bounds is None:  # one sequence (or generation): nothing to pad
        return original(*args, **kwargs)
    call = inspect.signature(original).bind(*args, **kwargs)
    arguments = call.arguments
    lengths = torch.tensor(state.bounds).diff()
    real = torch.arange(int(lengths.max())) < lengths[:, None]  # [sequences, longest]
    name = "input_ids" if arguments.get("input_ids") is not None else "inputs_embeds"
    row = arguments[name]
    real = real.to(row.device)
    arguments[name] = _pad(row[0], real)
    if arguments.get("position_ids") is not None:
        arguments["position_ids"] = _pad(arguments["position_ids"][0], real)
    _set(call, "attention_mask", real.long())
    outputs = original(**_by_name(call))
    outputs.last_hidden_state = outputs.last_hidden_state[real][None]
    if getattr(outputs, "hidden_states", None) is not None:
        outputs.hidden_states = tuple(states[real][None] for states in outputs.hidden_states)
    if getattr(outputs, "router_logits", None) is not None:
        outputs.router_logits = tuple(_unpad_tokens(r, real) for r in outputs.router_logits)
    return outputs


def _by_name(call: inspect.BoundArguments) -> dict[str, Any]:
    """A bound call's arguments, every one by name (decorators such as transformers'
    `deprecate_kwarg` may not keep the positions of the signature they report)."""
    named: dict[str, Any] = {}
    for name, value in call.arguments.items():
        kind = call.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError("the decoder's forward was given extra positional arguments")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _set(call: inspect.BoundArguments, name: str, value: Any) -> None:
    """Sets an argument of a bound call, a named parameter or one of its **kwargs."""
    parameters = call.signature.parameters
    if name in parameters:
        call.arguments[name] = value
        return
    extra = next(
        (p.name for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
    )
    if extra is None:
        raise TypeError(f"the decoder's forward takes no {name}")
    call.arguments.setdefault(extra, {})[name] = value


def _pad(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[tokens, ...] spread into [sequences, longest, ...] (zeros where padding)."""
    padded = values.new_zeros((*real.shape, *values.shape[1:]))
    padded[real] = values
    return padded


def _unpad_tokens(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Router logits for the real tokens: models give them [sequences * longest, experts] or
    [sequences, longest, experts]."""
    if values.shape[: real.dim()] == real.shape:
        return values[real]
    if values.shape[0] == real.numel():
        return values[real.flatten()]
    raise ValueError(f"router logits of shape {tuple(values.shape)} fit no padded batch")
