"""The reference model of DPO and KTO: which weights score the reference log-probabilities.

- LoRA without `ref_model`: the policy itself with its adapters disabled (peft's
  `disable_adapter()`), so no second copy of the weights is ever loaded.
- full/freeze: `ref_model` (with `ref_model_adapters` merged into it), or else a frozen copy of
  the starting model (`model_name_or_path`), loaded in the training compute dtype.
- With `precompute_ref_log_probs` and no `ref_model`, full/freeze load no copy either: the
  policy scores the whole dataset once before its first step, which is exactly the starting model.
- Reference-free losses (orpo, simpo) load nothing.

A separate reference model never trains: it is loaded for inference (eval mode, no gradients).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tuneforge.config.finetuning import uses_reference
from tuneforge.errors import ModelError
from tuneforge.models.tokenizer import base_model_path
from tuneforge.templates import Template

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")


class RunParts(Protocol):
    """What loading a scoring model needs of a stage's PreparedRun (stages/runner.py)."""

    @property
    def args(self) -> Any: ...  # transformers' training arguments

    @property
    def tokenizer(self) -> Any: ...

    @property
    def template(self) -> Template: ...


@dataclasses.dataclass
class Reference:
    """Where reference log-probabilities come from.

    `model` is a separate frozen model, or None when the policy is its own reference: with its
    LoRA adapters disabled, or (full/freeze with precomputed log-probs) as it is before training.
    """

    model: Any | None = None


def load_reference(config: Config, run: RunParts) -> Reference | None:
    """The reference for `config` (None for the reference-free losses orpo and simpo).

    Args:
        config: the run's Config.
        run: the PreparedRun (tokenizer, template, training arguments).

    Returns:
        A Reference, or None when the loss needs none.
    """
    finetuning = config.finetuning
    # the reference keys were checked with the config (config/checks.py: reference_keys_used)
    if not uses_reference(finetuning):
        return None
    if finetuning.ref_model:
        return Reference(
            load_frozen_model(
                config,
                run,
                finetuning.ref_model,
                finetuning.ref_model_adapters,
                finetuning.ref_model_quantization_bit,
            )
        )
    if finetuning.finetuning_type == "lora":
        logger.info("Reference model: the policy with its LoRA adapters disabled.")
        return Reference()
    if finetuning.precompute_ref_log_probs:
        logger.info("Reference model: the starting weights, scored once before training.")
        return Reference()
    path = base_model_path(config.model)
    logger.info("Reference model: a frozen copy of %s.", path)
    return Reference(load_frozen_model(config, run, path))


def load_frozen_model(
    config: Config,
    run: RunParts,
    path: str,
    adapters: list[str] | None = None,
    quantization_bit: int | None = None,
) -> Any:
    """A model for scoring only (eval mode, no gradients) in the training compute dtype, with
    `adapters` merged into its weights."""
    from tuneforge.models.loader import DTYPES, compute_dtype, load_model

    dtype = compute_dtype(run.args, config.model)
    dtype_name = next(name for name, value in DTYPES.items() if value == dtype)
    model_config = dataclasses.replace(
        config.model,
        model_name_or_path=path,
        adapter_name_or_path=None,
        infer_dtype=dtype_name,
        quantization_bit=quantization_bit,  # bitsandbytes, through load_model (needs CUDA)
    )
    try:
        model = load_model(
            model_config, run.tokenizer, run.template.stop_words, cutoff_len=config.data.cutoff_len
        )
    except ModelError as error:
        raise ModelError(f"reference model ({path}): {error}") from None
    for adapter in adapters or []:
        model = _merge_adapter(model, adapter)
    return model.requires_grad_(False).eval()


def _merge_adapter(model: Any, path: str) -> Any:
    from tuneforge.adapters.lora import load_adapter

    merged = load_adapter(model, path, key="ref_model_adapters").merge_and_unload()
    logger.info("Merged adapter %s into the reference model.", path)
    return merged


@contextmanager
def scoring(model: Any) -> Iterator[Any]:
    """`model` in eval mode under no_grad for the block: no dropout, no activation
    checkpointing, nothing kept for a backward pass."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextmanager
def scoring_as_reference(reference: Reference, policy: Any) -> Iterator[Any]:
    """The model that scores as the reference, for the duration of the block.

    Args:
        reference: from `load_reference`.
        policy: the (unwrapped) model being trained.
    """
    if reference.model is not None:
        with scoring(reference.model) as model:
            yield model
        return
    adapters_off = policy.disable_adapter() if _is_peft(policy) else nullcontext()
    with adapters_off, scoring(policy) as model:
        yield model


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
