"""Merging LoRA adapters into the base weights, and proving that the merge did something.

A merge that silently changes nothing (an adapter that failed to load, was never trained, or
whose changes round away) would export a copy of the base model under the adapter's name. So
each adapter is merged with peft's `merge_and_unload` and then checked twice:

1. Weights: in every LoRA layer whose delta (B @ A * scaling) is non-zero, the merged weight
   must differ from the base weight at the positions where the delta is largest (and likewise
   for modules trained whole, `additional_target`).
2. Logits: the merged model's logits on a short probe prompt must equal those of the base model
   with the adapter active (the peft model before merging) within a tolerance set by the dtype.

Either failure raises a ModelError that says what went wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tuneforge.adapters.lora import load_adapter
from tuneforge.errors import ModelError

if TYPE_CHECKING:
    from tuneforge.config.loader import Config
    from tuneforge.config.model import ModelConfig

logger = logging.getLogger("tuneforge")

PROBE_TEXT = "Hello! Who are you, and what can you do for me today?"
PROBE_TOKENS = 64
POSITIONS_PER_LAYER = 8  # largest-delta positions whose merged value is checked
# Largest allowed |merged - (base + adapter)| logit difference, relative to max |logit|:
# a merge in float32 rounds a little; one in 16 bits rounds every merged weight.
RELATIVE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class MergeCheck:
    """What the verification of one merged adapter found.

    Attributes:
        adapter: The adapter's folder or hub id.
        parameters: Weights (of LoRA layers, or of modules trained whole) the adapter changes.
        logit_error: Largest |merged - (base + adapter)| logit difference on the probe.
        adapter_effect: Largest |(base + adapter) - base| logit difference on the probe.
    """

    adapter: str
    parameters: int
    logit_error: float
    adapter_effect: float


@dataclass(frozen=True)
class _Expectation:
    """Positions of one parameter that the merge must change."""

    module: str  # name in the unwrapped model
    parameter: str
    positions: torch.Tensor  # flat indices
    before: torch.Tensor  # base values there


def probe_ids(tokenizer: Any, template: Any, device: torch.device) -> torch.Tensor:
    """A short prompt rendered by the template, as a [1, n] batch of token ids."""
    text = template.render_prompt([{"role": "user", "content": PROBE_TEXT}])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:PROBE_TOKENS]
    return torch.tensor([ids or [tokenizer.eos_token_id]], device=device)


def merge_adapter(
    model: Any, path: str, probe: torch.Tensor, subfolder: str | None = None
) -> tuple[Any, MergeCheck]:
    """Merges the adapter at `path` into `model` and verifies the merge.

    Args:
        model: The base model (transformers), possibly with earlier adapters merged in.
        path: Adapter folder or hub id.
        probe: Token ids on which logits are compared.
        subfolder: `adapter_folder`, the adapter's sub-folder.

    Returns:
        (merged model, MergeCheck).

    Raises:
        ModelError: the adapter changes nothing, the merged weights did not change where the
            adapter is non-zero, or the merged model's logits are not base + adapter.
    """
    peft_model = load_adapter(model, path, subfolder=subfolder)
    expectations, below_resolution = _expected_changes(peft_model)
    if not expectations:
        raise ModelError(_nothing_to_merge(path, below_resolution, _dtype(model)))
    with torch.no_grad():
        reference = _logits(peft_model, probe)
        with peft_model.disable_adapter():
            base = _logits(peft_model, probe)
        try:
            # safe: refuses NaNs; peft's own bar shows the layers merged, at a rate
            merged = peft_model.merge_and_unload(safe_merge=True, progressbar=True)
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"merging the adapter at {path} failed: {error}") from None
        unchanged = [e.module for e in expectations if not _changed(merged, e)]
        if unchanged:
            raise ModelError(
                f"merging the adapter at {path} left {len(unchanged)} of {len(expectations)} "
                f"adapted layers unchanged ({', '.join(unchanged[:3])} ...): the merge did not "
                "reach the base weights. Refusing to export."
            )
        drift = (_logits(merged, probe) - reference).abs().max().item()
    scale = max(reference.abs().max().item(), 1.0)
    tolerance = RELATIVE_TOLERANCE.get(_dtype(merged), 5e-2) * scale
    effect = (reference - base).abs().max().item()
    if drift > tolerance:
        raise ModelError(
            f"after merging the adapter at {path} the model's logits differ from base + adapter "
            f"by up to {drift:.4g} (tolerance {tolerance:.3g}; the adapter itself moves them by "
            f"{effect:.4g}). Refusing to export; try `infer_dtype: float32`."
        )
    logger.info(
        "Merged adapter %s: %d weights changed; logits match base + adapter to %.2g "
        "(the adapter moves them by up to %.3g).",
        path,
        len(expectations),
        drift,
        effect,
    )
    return merged, MergeCheck(path, len(expectations), drift, effect)


def _dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


def _nothing_to_merge(path: str, below_resolution: int, dtype: torch.dtype) -> str:
    if below_resolution:
        return (
            f"the adapter at {path} changes {below_resolution} layers, but by less than "
            f"{dtype} can represent in their weights: merged, it would change nothing. "
            "Merge in full precision with `infer_dtype: float32`."
        )
    return (
        f"the adapter at {path} changes nothing: in every layer its product B @ A is zero "
        "(lora_B is still all zeros, as peft initialises it). Was it trained, or saved before "
        "its first optimizer step? Refusing to export a copy of the base model."
    )


def _expected_changes(peft_model: Any) -> tuple[list[_Expectation], int]:
    """Where merging must change weights, and how many non-zero changes round away."""
    expectations: list[_Expectation] = []
    below_resolution = 0
    for name, parameter, weight, delta in _deltas(peft_model):
        expectation = _expectation(name, parameter, weight, delta)
        if expectation is not None:
            expectations.append(expectation)
        elif bool(delta.any()):
            below_resolution += 1
    return expectations, below_resolution


def _deltas(peft_model: Any) -> Iterator[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """(module name, parameter name, base weight, change) for every weight the adapter
    changes; one at a time, since each change is as large as its weight."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    adapter = peft_model.active_adapter
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.scaling:
            # only the concrete layer classes define get_delta_weight: peft's LoRA on
            # GPTQ/AWQ/EETQ/AQLM-quantized layers has none, and cannot be merged
            delta_weight = getattr(module, "get_delta_weight", None)
            # peft's ParamWrapper adapts one parameter of a module (the fused experts of an
            # MoE layer); wrappers of two parameters nest, each under a `base_layer`
            target = getattr(module, "parameter_name", None) or "weight"
            weight = getattr(module.get_base_layer(), target, None)
            if delta_weight is None or not isinstance(weight, torch.Tensor):
                raise ModelError(
                    f"the adapter's layer {name} ({type(module).__name__}) cannot be merged "
                    "into its base weight: export from an unquantized base model."
                )
            merged_name = name.replace(".base_layer", "")  # where the merge leaves it
            yield merged_name, target, weight.detach(), delta_weight(adapter).detach().float()
        elif isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
            trained = module.modules_to_save[adapter]
            for parameter, original in module.original_module.named_parameters():
                delta = (
                    trained.get_parameter(parameter).detach().float() - original.detach().float()
                )
                yield name, parameter, original.detach(), delta


def _expectation(
    module: str, parameter: str, weight: torch.Tensor, delta: torch.Tensor
) -> _Expectation | None:
    """The positions of the largest |delta| where base + delta differs from the base weight
    in its dtype; None when there are none (a zero delta, or one that rounds away)."""
    delta = delta.flatten()
    positions = delta.abs().topk(min(POSITIONS_PER_LAYER, delta.numel())).indices
    before = weight.flatten()[positions].clone()
    moved = (before.float() + delta[positions]).to(before.dtype) != before
    if not bool(moved.any()):
        return None
    return _Expectation(module, parameter, positions[moved], before[moved])


def _changed(merged: Any, expectation: _Expectation) -> bool:
    """Whether the merged parameter differs from the base at one checked position at least
    (not all: peft may round a sum differently from our prediction at the margin)."""
    parameter = merged.get_submodule(expectation.module).get_parameter(expectation.parameter)
    return bool((parameter.detach().flatten()[expectation.positions] != expectation.before).any())


def export_device(setting: str) -> torch.device:
    """`export_device`: cpu, or auto (the GPU when there is one: faster, but the whole model
    must fit on it)."""
    return torch.device("cuda" if setting == "auto" and torch.cuda.is_available() else "cpu")


def output_dtype(model_config: ModelConfig) -> torch.dtype:
    """The exported weights' dtype: `infer_dtype` when set, else the checkpoint's own (a bf16
    model stays bf16, even when it was merged in float32 on a CPU)."""
    from tuneforge.models.loader import DTYPES, load_config

    if model_config.infer_dtype != "auto":
        return DTYPES[model_config.infer_dtype]
    declared = getattr(load_config(model_config, None), "dtype", None)
    name = str(declared).removeprefix("torch.") if declared is not None else "float32"
    if name in DTYPES:  # `in` narrows the name to a DTYPES key; `.get` would not type-check
        return DTYPES[name]
    return torch.float32


def load_merged_model(
    config: Config, tokenizer: Any, template: Any
) -> tuple[Any, list[MergeCheck]]:
    """The base model with every adapter of `adapter_name_or_path` merged in turn (each one
    verified), in the export dtype, on the CPU or the export device."""
    from tuneforge.models.loader import load_model

    model = load_model(config.model, tokenizer, template.stop_words)
    model.to(export_device(config.export.export_device))
    probe = probe_ids(tokenizer, template, model.device)
    checks = []
    for path in config.model.adapter_name_or_path or []:
        model, check = merge_adapter(model, path, probe, config.model.adapter_folder)
        checks.append(check)
    if not checks:
        logger.info(
            "No `adapter_name_or_path`: exporting %s as it is.", config.model.model_name_or_path
        )
    return model.to(output_dtype(config.model)), checks
