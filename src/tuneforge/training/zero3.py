"""DeepSpeed ZeRO around tuneforge's models: the MoE blocks ZeRO-3 keeps whole, and tied
weights in the state dicts DeepSpeed hands to saving.

Leaf modules: ZeRO-3 gathers a module's weights in hooks on that module and prefetches them in
the order modules ran before. An MoE block runs only the experts its tokens are routed to, so
that order changes from batch to batch and from rank to rank, and ranks would wait on gathers
the others never start. Marked as a leaf (`deepspeed.utils.set_z3_leaf_modules`, as
LLaMA-Factory does), the whole block is gathered when it is entered. The family table names
each MoE family's block class (`models/families.yaml: moe_block`).

Tied weights: under ZeRO-2, accelerate's state dict clones every tensor, so an output layer
tied to the input embeddings no longer shares its storage, and `save_pretrained` (which finds
ties by storage) writes it a second time; `retied` makes the copies one tensor again.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tuneforge.models.families import model_types

logger = logging.getLogger("tuneforge")


def moe_block_name(model: Any) -> str | None:
    """The class name of one MoE layer of `model`'s family (its text model's for a multimodal
    model), from the family table; None for a dense family or one the table does not know."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for candidate in configs:
        known = model_types().get(getattr(candidate, "model_type", "") or "")
        if known is not None and known.moe_block:
            return known.moe_block
    return None


def set_moe_leaf_modules(model: Any) -> list[type]:
    """Marks `model`'s MoE blocks as ZeRO-3 leaf modules when ZeRO-3 is on (see the module
    docstring); call it after loading and before the DeepSpeed engine wraps the model.

    Returns:
        The block classes marked (none when ZeRO-3 is off or the family has no MoE block).
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return []
    name = moe_block_name(model)
    if name is None:
        return []
    classes = sorted({type(m) for m in model.modules() if type(m).__name__ == name}, key=str)
    if not classes:
        logger.warning(
            "DeepSpeed ZeRO-3: the family table names %s as this model's MoE block, but the "
            "model has no module of that class; its experts are gathered one by one.",
            name,
        )
        return []
    from deepspeed.utils import set_z3_leaf_modules

    blocks = set_z3_leaf_modules(model, classes)
    logger.info(
        "DeepSpeed ZeRO-3: %d %s blocks are leaf modules (each gathered whole, whichever "
        "experts its tokens take).",
        len(blocks),
        name,
    )
    return classes


def retied(model: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """`state_dict` with the weights that `model` ties (one parameter under several names) as
    one tensor again, so that `save_pretrained` writes each once, as a plain run does.

    Ties are read from the parameters themselves, not from their storage: under ZeRO-3 every
    parameter is an empty placeholder, and empty tensors may share a storage address.
    """
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    result = dict(state_dict)
    for group in names.values():
        present = [name for name in group if name in result]
        if len(present) < 2:
            continue
        first = result[present[0]]
        for name in present[1:]:
            other = result[name]
            same = (
                isinstance(first, torch.Tensor)
                and isinstance(other, torch.Tensor)
                and first.shape == other.shape
                and torch.equal(first, other)
            )
            if same:
                result[name] = first
    return result
