"""`lora_target: all`: which layers of a model get adapters.

Every linear layer of the language model (the decoder below the output layer) except MoE
routers: no output layer, no vision or audio tower, no projector of a multimodal model (they
are outside its language model), and no router gate (a LoRA update on a router shifts which
experts every token reaches, for little gain in what the experts say; name a router in
`lora_target` to train it anyway), and no linear layer of a state-space mixer (see
`_state_space_layers`). peft's `all-linear` would take them all. The fused experts of an MoE
layer are parameters, not linear layers: peft adapts them itself where it knows the
family's layout (it maps the per-expert names to the fused tensors).

The choice is written as one regular expression over module names, with layer numbers as
`\\d+`, so that the adapter's config stays short for a model of any depth.
"""

from __future__ import annotations

import re

import torch

from tuneforge.utils.modules import decoder_of

# GPT-2's transposed linear layer (peft adapts it like torch's)
_CONV1D = "Conv1D"
_STATE_SPACE = re.compile(r"Mamba|Mixer")


def all_linear_targets(model: torch.nn.Module) -> str:
    """The peft `target_modules` regex for `lora_target: all` (see the module docstring)."""
    decoder = decoder_of(model)
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    left_out = _router_layers(decoder) | _state_space_layers(decoder)
    patterns: dict[str, None] = {}
    for name, module in decoder.named_modules():
        if _is_linear(module) and module not in left_out:
            full = f"{prefix}.{name}" if prefix else name
            patterns[re.sub(r"\\.\d+\\.", r"\\.\\d+\\.", re.escape(full))] = None
    if not patterns:
        raise ValueError(f"{type(model).__name__} has no linear layer for LoRA")
    return "^(?:" + "|".join(patterns) + ")$"


def is_router(model: torch.nn.Module, module_name: str) -> bool:
    """Whether the module called `module_name` is one of `model`'s MoE router layers."""
    module = model.get_submodule(module_name)
    return module in _router_layers(decoder_of(model))


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == _CONV1D


def _state_space_layers(decoder: torch.nn.Module) -> set[torch.nn.Module]:
    """Linear layers of state-space mixers (Mamba, Falcon-H1's mixer): their fused kernels
    read the weights directly, so an adapter there would be skipped on a GPU (peft refuses
    `out_proj` in Mamba models for that reason)."""
    return {
        child
        for parent in decoder.modules()
        if _STATE_SPACE.search(type(parent).__name__)
        for child in parent.children()
        if _is_linear(child)
    }


def _router_layers(decoder: torch.nn.Module) -> set[torch.nn.Module]:
    """Linear layers that route tokens to experts: those beside an `experts` module (Mixtral's
    `gate`, Qwen-MoE's `shared_expert_gate`), and those inside a module whose class is a
    router or a gate (DBRX's `router.layer`)."""
    routers: set[torch.nn.Module] = set()
    for parent in decoder.modules():
        beside_experts = isinstance(getattr(parent, "experts", None), torch.nn.Module)
        kind = type(parent).__name__
        a_router = kind.endswith(("Router", "Gate")) or "Router" in kind
        if beside_experts or a_router:
            routers.update(child for child in parent.children() if _is_linear(child))
    return routers
