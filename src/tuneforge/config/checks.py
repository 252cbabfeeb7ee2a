"""Cross-field rules, each a small named function that raises ConfigError (NotAvailableError
for what tuneforge does not do yet).

They are LLaMA-Factory's rules (same combinations refused), with messages that say what to
change, and the rules the stages and the model loader used to apply when a run started.
`run_checks` runs them all once, when a config is built, so that every command (and the web
UI's validation) refuses a config before any model loads. Only what a config alone decides
lives here; what needs the model, files or the device is checked where those are.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.config.finetuning import uses_reference
from tuneforge.errors import ConfigError, NotAvailableError, UserError

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

CHECKS: list[Callable[[Config], None]] = []


def check(function: Callable[[Config], None]) -> Callable[[Config], None]:
    CHECKS.append(function)
    return function


def run_checks(config: Config) -> None:
    """Runs every rule and raises one error naming every problem found (a rule that cannot
    run on a config already found bad is skipped by the problem it would repeat)."""
    from tuneforge.config.loader import config_problems

    problems: list[UserError] = []
    for rule in CHECKS:
        try:
            rule(config)
        except UserError as error:
            problems.append(error)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise config_problems([str(problem) for problem in problems])


@check
def adapters_need_lora(config: Config) -> None:
    if config.model.adapter_name_or_path and config.finetuning.finetuning_type != "lora":
        raise ConfigError(
            "`adapter_name_or_path` needs `finetuning_type: lora` (adapters are LoRA weights); "
            "merge them first with `tuneforge export` to continue with full or freeze tuning."
        )


# The keys of one finetuning method: set to anything but their default under another method,
# they would be ignored (LLaMA-Factory ignores them without a word).
LORA_KEYS = (
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "additional_target",
    "loraplus_lr_ratio",
    "loraplus_lr_embedding",
    "use_rslora",
    "use_dora",
    "create_new_adapter",
)


def _non_default(section: Any, names: tuple[str, ...]) -> list[str]:
    """The keys of `names` whose value in `section` differs from the declared default."""
    import dataclasses

    fields = {field.name: field for field in dataclasses.fields(section)}
    changed = []
    for name in names:
        field = fields[name]
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        value = getattr(section, name)
        if name == "lora_alpha":  # unset, it resolves to 2 x lora_rank
            default = 2 * section.lora_rank
        if value != default:
            changed.append(name)
    return changed


@check
def lora_only_options(config: Config) -> None:
    finetuning = config.finetuning
    method = finetuning.finetuning_type
    if method == "lora":
        return
    changed = _non_default(finetuning, LORA_KEYS)
    if changed:
        keys = ", ".join(f"`{name}`" for name in changed)
        raise ConfigError(
            f"{keys} only {'applies' if len(changed) == 1 else 'apply'} to LoRA, and this "
            f"config has `finetuning_type: {method}`, which would ignore "
            f"{'it' if len(changed) == 1 else 'them'}; set `finetuning_type: lora` or remove "
            f"{'it' if len(changed) == 1 else 'them'}."
        )


@check
def lora_values(config: Config) -> None:
    finetuning = config.finetuning
    if finetuning.finetuning_type != "lora":
        return
    if not finetuning.lora_rank >= 1:
        raise ConfigError(
            f"`lora_rank: {finetuning.lora_rank}`: the rank of a LoRA adapter is a positive "
            "integer (8 by default; 4 to 64 is usual)."
        )
    if finetuning.lora_alpha is not None and not finetuning.lora_alpha > 0:
        raise ConfigError(
            f"`lora_alpha: {finetuning.lora_alpha}` must be positive (unset, it is 2 x lora_rank)."
        )
    if not 0 <= finetuning.lora_dropout < 1:
        raise ConfigError(
            f"`lora_dropout: {finetuning.lora_dropout}` is a probability: give a value in "
            "[0, 1), e.g. 0.05 (0, the default, turns it off)."
        )


@check
def quantization_rules(config: Config) -> None:
    model, finetuning = config.model, config.finetuning
    if model.quantization_bit is None:
        return
    if model.quantization_method == "bnb" and model.quantization_bit not in (4, 8):
        raise ConfigError(
            f"`quantization_bit: {model.quantization_bit}`: bitsandbytes quantizes to 4 or 8 bits."
        )
    if finetuning.finetuning_type != "lora":
        raise ConfigError(
            "a quantized model (`quantization_bit`) can only be trained with "
            "`finetuning_type: lora` (QLoRA)."
        )
    if model.resize_vocab:
        raise ConfigError("`resize_vocab` cannot be used with `quantization_bit`.")
    adapters = model.adapter_name_or_path or []
    if len(adapters) > 1:
        raise ConfigError("a quantized model takes a single adapter in `adapter_name_or_path`.")
    if adapters and finetuning.create_new_adapter:
        raise ConfigError("`create_new_adapter` cannot be used with a quantized model's adapter.")


@check
def side_model_quantization(config: Config) -> None:
    for name in ("ref_model_quantization_bit", "reward_model_quantization_bit"):
        bits = getattr(config.finetuning, name)
        if bits not in (None, 4, 8):
            raise ConfigError(f"`{name}` must be 4 or 8, got {bits}.")


@check
def export_quantization_needs_data(config: Config) -> None:
    export = config.export
    if export.export_quantization_bit is not None and not export.export_quantization_dataset:
        raise ConfigError(
            "`export_quantization_bit` needs `export_quantization_dataset` for calibration."
        )


@check
def validation_split(config: Config) -> None:
    data = config.data
    if not data.val_size >= 0:
        raise ConfigError(f"`val_size` must be >= 0, got {data.val_size}.")
    if data.val_size >= 1 and not float(data.val_size).is_integer():
        raise ConfigError(
            f"`val_size: {data.val_size}`: a fraction of the examples must be below 1 "
            "(e.g. 0.1), and a number of examples an integer (e.g. 100)."
        )
    if data.val_size > 0 and data.eval_dataset:
        raise ConfigError("set either `val_size` or `eval_dataset`, not both.")
    if data.val_size > 0 and not data.dataset:
        raise ConfigError("`val_size` splits `dataset`, which is not set.")


@check
def interleave_probabilities(config: Config) -> None:
    data = config.data
    if data.interleave_probs is None:
        return
    if data.mix_strategy == "concat":
        raise ConfigError(
            "`interleave_probs` needs `mix_strategy: interleave_under` or `interleave_over`."
        )
    for name in ("dataset", "eval_dataset"):
        names = getattr(data, name)
        if names and len(names) != len(data.interleave_probs):
            raise ConfigError(
                f"`interleave_probs` has {len(data.interleave_probs)} values but `{name}` "
                f"names {len(names)} datasets; give one probability per dataset."
            )
    if any(p < 0 for p in data.interleave_probs) or sum(data.interleave_probs) <= 0:
        raise ConfigError("`interleave_probs` must be non-negative and not all zero.")


@check
def prompt_masking(config: Config) -> None:
    if config.data.mask_history and config.data.train_on_prompt:
        raise ConfigError("`mask_history` and `train_on_prompt` contradict each other; pick one.")


@check
def sft_only_options(config: Config) -> None:
    if config.finetuning.stage == "sft":
        return
    for name, active in (
        ("predict_with_generate", config.training.get("predict_with_generate")),
        ("neat_packing", config.data.neat_packing),
        ("train_on_prompt", config.data.train_on_prompt),
        ("mask_history", config.data.mask_history),
    ):
        if active:
            raise ConfigError(
                f"`{name}` only applies to `stage: sft` (this config has "
                f"`stage: {config.finetuning.stage}`)."
            )


@check
def prediction_settings(config: Config) -> None:
    training = config.training
    predicts = config.finetuning.stage == "sft" and training.get("do_predict")
    if predicts and not training.get("predict_with_generate"):
        raise ConfigError("`do_predict` in sft needs `predict_with_generate: true`.")
    if training.get("predict_with_generate") and config.finetuning.compute_accuracy:
        raise ConfigError("`compute_accuracy` cannot be combined with `predict_with_generate`.")
    evaluates = training.get("do_eval") or training.get("do_predict")
    if evaluates and not config.data.eval_dataset and config.data.val_size <= 0:
        raise ConfigError("evaluation needs data: set `eval_dataset` or `val_size`.")


@check
def reward_and_ppo(config: Config) -> None:
    finetuning = config.finetuning
    if finetuning.stage in ("rm", "ppo") and config.training.get("load_best_model_at_end"):
        raise ConfigError(
            f"`load_best_model_at_end` is not supported for `stage: {finetuning.stage}`."
        )
    if finetuning.stage != "ppo":
        return
    if not finetuning.reward_model:
        raise ConfigError("`stage: ppo` needs a `reward_model`.")
    if finetuning.reward_model_type == "lora" and finetuning.finetuning_type != "lora":
        raise ConfigError(
            "`reward_model_type: lora` needs `finetuning_type: lora`; "
            "use `reward_model_type: full` with full or freeze tuning."
        )
    if finetuning.reward_model_type == "api" and not finetuning.reward_model.startswith("http"):
        raise ConfigError("`reward_model_type: api` needs `reward_model` to be an http(s) URL.")


@check
def preference_loss(config: Config) -> None:
    finetuning = config.finetuning
    smoothing = finetuning.dpo_label_smoothing > 1e-6
    if finetuning.stage == "dpo" and finetuning.pref_loss != "sigmoid" and smoothing:
        raise ConfigError("`dpo_label_smoothing` only applies to `pref_loss: sigmoid`.")
    if finetuning.pref_loss == "kto_pair" and finetuning.stage == "dpo":
        raise ConfigError(
            "`pref_loss: kto_pair` is not supported by tuneforge yet; use `stage: kto`."
        )


@check
def methods_not_yet(config: Config) -> None:
    if config.finetuning.finetuning_type == "oft":
        raise ConfigError("`finetuning_type: oft` is not supported by tuneforge yet.")
    if config.model.infer_backend == "sglang":
        raise ConfigError("`infer_backend: sglang` is not supported by tuneforge yet; use vllm.")
    if config.data.mix_strategy not in ("concat", "interleave_under", "interleave_over"):
        raise ConfigError(f"`mix_strategy: {config.data.mix_strategy}` is not supported yet.")


@check
def training_needs_data(config: Config) -> None:
    if config.training.get("do_train") and not config.data.dataset:
        raise ConfigError("`do_train: true` needs `dataset` (names from dataset_info.json).")
    if config.training.get("do_train") and config.model.quantization_device_map == "auto":
        raise ConfigError("`quantization_device_map: auto` is for inference, not training.")


@check
def positive_lengths(config: Config) -> None:
    if config.data.cutoff_len < 2:
        raise ConfigError(f"`cutoff_len` must be at least 2, got {config.data.cutoff_len}.")
    if config.data.max_samples is not None and config.data.max_samples < 1:
        raise ConfigError(f"`max_samples` must be at least 1, got {config.data.max_samples}.")


_STAGE_UNITS = {"kto": "examples", "ppo": "prompts"}


@check
def packing_needs_language_modelling(config: Config) -> None:
    stage = config.finetuning.stage
    if config.data.packing and stage not in ("pt", "sft"):
        raise ConfigError(
            f"`packing: true` applies to `stage: pt` and `sft`, and this config has "
            f"`stage: {stage}`, whose {_STAGE_UNITS.get(stage, 'preference pairs')} are never "
            "packed (LLaMA-Factory ignores the key there); remove it."
        )


# Training keys of transformers' that transformers does not check itself: a bad value fails
# only once the model has loaded (the optimizer, the data loader) or trains nothing.
def _at_least_one(value: Any) -> bool:
    return value >= 1


def _not_negative(value: Any) -> bool:
    return value >= 0  # also False for NaN


def _below_one(value: Any) -> bool:
    return 0 <= value < 1


TRAINING_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (_not_negative, "must be >= 0 (e.g. 1.0e-4 for LoRA, 1.0e-5 in full)"),
    "per_device_train_batch_size": (_at_least_one, "must be at least 1 (examples per device)"),
    "per_device_eval_batch_size": (_at_least_one, "must be at least 1 (examples per device)"),
    "gradient_accumulation_steps": (_at_least_one, "must be at least 1 (1: no accumulation)"),
    "weight_decay": (_not_negative, "must be >= 0 (0, the default, turns it off)"),
    "adam_beta1": (_below_one, "must be in [0, 1) (default 0.9)"),
    "adam_beta2": (_below_one, "must be in [0, 1) (default 0.999)"),
    "adam_epsilon": (_not_negative, "must be >= 0 (default 1e-8)"),
    "max_grad_norm": (_not_negative, "must be >= 0 (0 turns clipping off; default 1.0)"),
    "dataloader_num_workers": (_not_negative, "must be >= 0 (0 loads in the main process)"),
}


@check
def training_values(config: Config) -> None:
    training = config.training
    problems = []
    for name, (valid, rule) in TRAINING_BOUNDS.items():
        value = training.get(name)
        try:
            good = value is None or valid(value)
        except TypeError:  # not a number: transformers' own parsing has the last word
            good = True
        if not good:
            problems.append(f"`{name}: {value}` {rule}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


@check
def training_length(config: Config) -> None:
    training = config.training
    if not training.get("do_train"):
        return
    epochs, steps = training.get("num_train_epochs", 3.0), training.get("max_steps", -1)
    if steps <= 0 and not epochs > 0:
        raise ConfigError(
            f"`num_train_epochs: {epochs:g}` without `max_steps` trains no step: give a "
            "positive number of epochs (e.g. 3) or `max_steps` (e.g. 1000)."
        )


# Rules the stages applied when they started, in the order they did (after every rule above,
# which already ran with the config), so that the same error wins as before.


@check
def kto_weights_need_kto(config: Config) -> None:
    finetuning = config.finetuning
    if finetuning.stage != "dpo":
        return
    for name in ("kto_chosen_weight", "kto_rejected_weight"):
        if getattr(finetuning, name) != 1.0:  # 1.0 is the default: spelled out, it is harmless
            raise ConfigError(f"`{name}` applies to `stage: kto`, not dpo; remove it.")


@check
def kto_refuses_dpo_keys(config: Config) -> None:
    finetuning = config.finetuning
    if finetuning.stage != "kto":
        return
    if finetuning.pref_loss != "sigmoid":
        raise ConfigError(
            f"`pref_loss: {finetuning.pref_loss}` applies to `stage: dpo`; KTO has its own loss "
            "(remove the key)."
        )
    if finetuning.ld_alpha is not None:
        raise ConfigError("`ld_alpha` (LD-DPO) applies to `stage: dpo`, not kto; remove it.")


@check
def ppo_has_no_evaluation(config: Config) -> None:
    if config.finetuning.stage != "ppo":
        return
    if config.data.eval_dataset or config.data.val_size > 0:
        raise NotAvailableError(
            "`stage: ppo` does not evaluate yet; remove `eval_dataset` / `val_size`."
        )


@check
def reference_keys_used(config: Config) -> None:
    finetuning = config.finetuning
    # only dpo and kto load their reference by these keys; ppo merges `ref_model_adapters`
    # into the starting model when `ref_model` is not set
    if finetuning.stage not in ("dpo", "kto"):
        return
    for name in ("ref_model", "precompute_ref_log_probs"):
        if not uses_reference(finetuning) and getattr(finetuning, name):
            raise ConfigError(
                f"`{name}` is not used by `pref_loss: {finetuning.pref_loss}` (a reference-free "
                "loss); remove it, or choose sigmoid, hinge or ipo."
            )
    if not finetuning.ref_model:
        for name in ("ref_model_adapters", "ref_model_quantization_bit"):
            if getattr(finetuning, name):
                raise ConfigError(f"`{name}` applies to `ref_model`, which is not set.")


# Rules the model loader applied to every model it loaded, whatever the machine.


@check
def unsloth_not_yet(config: Config) -> None:
    if config.model.use_unsloth:
        raise ConfigError(
            "`use_unsloth` is not supported by tuneforge yet (installed or not); remove it: "
            "tuneforge's own padding-free batching already gives much of its speed."
        )


@check
def quantization_backend(config: Config) -> None:
    model = config.model
    # bitsandbytes is the only on-the-fly backend; pre-quantized models need no key
    if model.quantization_bit is not None and model.quantization_method != "bnb":
        raise NotAvailableError(
            f"`quantization_method: {model.quantization_method}` is not available yet; "
            "on-the-fly quantization uses bitsandbytes (`quantization_method: bnb`)."
        )


# Rules of the freeze method that need no model: the layer count bounds come with the model.


@check
def freeze_layers_not_zero(config: Config) -> None:
    finetuning = config.finetuning
    if finetuning.finetuning_type == "freeze" and finetuning.freeze_trainable_layers == 0:
        raise ConfigError(
            "`freeze_trainable_layers: 0` trains no layer: N trains the last N layers, "
            "-N the first N (not 0)."
        )


@check
def token_accuracy_needs_language_modelling(config: Config) -> None:
    stage = config.finetuning.stage
    # the reward model always reports its pairwise accuracy; preference stages have none
    if config.finetuning.compute_accuracy and stage not in ("pt", "sft"):
        raise ConfigError(
            f"`compute_accuracy` (token accuracy in evaluation) applies to `stage: pt` and "
            f"`sft`, not {stage}; remove it (rm reports its pairwise `eval_accuracy` anyway)."
        )


@check
def deepspeed_config(config: Config) -> None:
    check_deepspeed(config.training.get("deepspeed"))


def check_deepspeed(value: str | dict[str, Any] | None) -> None:
    """Refuses a `deepspeed` training key that cannot work, before transformers fails with a
    traceback: a missing or malformed JSON file, or no DeepSpeed package.

    Args:
        value: the `deepspeed` value: a JSON file path, an inline dict, or None (no DeepSpeed).

    Raises:
        ConfigError: naming the file or the pip extra to install.
    """
    if not value:
        return
    if isinstance(value, str):
        path = Path(value)
        try:
            found = path.is_file()
        except OSError:  # a name too long for the file system, say
            found = False
        if not found:
            raise ConfigError(
                f"`deepspeed: {value}`: no such file. Point it at a DeepSpeed JSON config, "
                "such as examples/deepspeed/ds_z2_config.json."
            )
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"`deepspeed: {value}` is not valid JSON: {error}") from None
    elif not isinstance(value, dict):
        raise ConfigError(f"`deepspeed` must be a JSON file path or a mapping, got {value!r}")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"`deepspeed: {value}` needs the DeepSpeed package, which is not installed: "
            "pip install 'tuneforge[deepspeed]' (DeepSpeed trains on CUDA GPUs)."
        )


# transformers' keys whose transformers consumer tuneforge's own code replaces
_REPLACED_TRANSFORMERS_KEYS = {
    "generation_max_length": "tuneforge's predictions read `max_new_tokens` (as LLaMA-Factory's"
    " generating keys do)",
    "generation_num_beams": "tuneforge's predictions read `num_beams`",
    "generation_config": "tuneforge's predictions read the generation keys (`max_new_tokens`,"
    " `num_beams`, `temperature` ...) and the model's own generation_config.json",
    "include_for_metrics": "tuneforge computes its metrics itself",
    "eval_do_concat_batches": "tuneforge computes its metrics itself",
    "batch_eval_metrics": "tuneforge computes its metrics itself",
}


@check
def replaced_transformers_keys(config: Config) -> None:
    defaults = _transformers_defaults()
    for name, why in _REPLACED_TRANSFORMERS_KEYS.items():
        if name in config.training and config.training[name] != defaults.get(name):
            raise ConfigError(f"`{name}` has no effect in tuneforge: {why}. Remove it.")


def _transformers_defaults() -> dict[str, Any]:
    import dataclasses

    from transformers import Seq2SeqTrainingArguments

    return {
        f.name: f.default
        for f in dataclasses.fields(Seq2SeqTrainingArguments)
        if f.default is not dataclasses.MISSING
    }


@check
def label_smoothing_needs_language_modelling(config: Config) -> None:
    if config.training.get("label_smoothing_factor") and config.finetuning.stage not in (
        "pt",
        "sft",
    ):
        raise ConfigError(
            "`label_smoothing_factor` smooths the language-modelling loss (pt, sft); "
            f"stage {config.finetuning.stage} has its own loss"
            + (" (`dpo_label_smoothing` for DPO)." if config.finetuning.stage == "dpo" else ".")
        )


@check
def evaluating_with_generation(config: Config) -> None:
    training = config.training
    if training.get("do_eval") and training.get("predict_with_generate"):
        raise ConfigError(
            "`do_eval` with `predict_with_generate` would evaluate nothing in tuneforge: "
            "generation metrics (BLEU, ROUGE) come from `do_predict: true`; evaluation "
            "computes the loss (drop `predict_with_generate` for it)."
        )


@check
def keys_with_nothing_to_do(config: Config) -> None:
    if not config.model.low_cpu_mem_usage:
        raise ConfigError(
            "`low_cpu_mem_usage: false` cannot be honoured: transformers 5 always loads weights "
            "straight into place. Remove it."
        )
    if not config.data.ignore_pad_token_for_loss:
        raise ConfigError(
            "`ignore_pad_token_for_loss: false` cannot be honoured: tuneforge's batches hold no "
            "padding (examples are packed back to back), so there is no pad token to train. "
            "Remove it."
        )


@check
def early_stopping_needs_the_best_model(config: Config) -> None:
    if config.finetuning.early_stopping_steps is None:
        return
    training = config.training
    if config.finetuning.early_stopping_steps < 1:
        raise ConfigError("`early_stopping_steps` counts evaluations: give 1 or more.")
    if not training.get("load_best_model_at_end"):
        raise ConfigError(
            "`early_stopping_steps` needs `load_best_model_at_end: true` (and an evaluation: "
            "`eval_strategy: steps` with `eval_steps`, and `val_size` or `eval_dataset`), as "
            "transformers' EarlyStoppingCallback does."
        )
