"""Reading a config: a YAML (or JSON) file plus `key=value` overrides, flat keys with
LLaMA-Factory's names, checked once and frozen into typed sections."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneforge.config.base import not_yet_note
from tuneforge.config.data import DataConfig
from tuneforge.config.export import EvaluationConfig, ExportConfig
from tuneforge.config.fields import coerce
from tuneforge.config.finetuning import FinetuningConfig
from tuneforge.config.generation import GenerationConfig
from tuneforge.config.model import ModelConfig
from tuneforge.config.training import (
    LEGACY_TRAINING_KEYS,
    TrainingExtras,
    training_argument_types,
)
from tuneforge.errors import ConfigError
from tuneforge.utils.suggest import did_you_mean
from tuneforge.utils.text import not_utf8

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "finetuning": FinetuningConfig,
    "generation": GenerationConfig,
    "export": ExportConfig,
    "evaluation": EvaluationConfig,
    "extras": TrainingExtras,
}
# LLaMA-Factory computes these itself; they are not keys a config may set.
DERIVED_KEYS = ("compute_dtype", "device_map", "model_max_length", "block_diag_attn")
SECRET_KEYS = ("hf_hub_token", "ms_hub_token", "om_hub_token", "hub_token", "swanlab_api_key")
RESOLVED_FILE = "resolved.yaml"


@dataclass(frozen=True)
class Config:
    """Every section of a validated config. `training` holds the Seq2SeqTrainingArguments
    keys the user set (typed); `training_arguments()` builds the transformers object."""

    model: ModelConfig
    data: DataConfig
    finetuning: FinetuningConfig
    generation: GenerationConfig
    export: ExportConfig
    evaluation: EvaluationConfig
    extras: TrainingExtras
    training: Mapping[str, Any]
    source: str = "<defaults>"

    @property
    def seed(self) -> int:
        return self.training.get("seed", 42)

    def training_arguments(self) -> Any:
        """transformers' Seq2SeqTrainingArguments for these keys (they validate themselves)."""
        from transformers import Seq2SeqTrainingArguments

        try:
            return Seq2SeqTrainingArguments(**self.training)
        except (ValueError, TypeError, OverflowError) as error:
            raise ConfigError(f"training arguments in {self.source}: {error}") from None

    def flat(self) -> dict[str, dict[str, Any]]:
        """Section name -> {key: effective value}, secrets masked."""
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        sections["training"] = dict(self.training)
        for values in sections.values():
            for secret in SECRET_KEYS:
                if values.get(secret):
                    values[secret] = "<redacted>"
        return sections


def _key_index() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    index = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            index[field.name] = (section, field, hints[field.name])
    return index


KEYS = _key_index()


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON config file.

    Raises:
        ConfigError: the file is missing, not UTF-8 (naming the byte), not valid YAML/JSON,
            not a mapping, or sets one key twice (naming both lines: YAML keeps the last).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: {not_utf8(path)}.") from None
    try:
        data = _parse_json(text) if path.suffix == ".json" else yaml.load(text, _UniqueKeyLoader)
    except DuplicateKeyError as error:
        raise ConfigError(f"{path}: {error}") from None
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{path} is not valid {path.suffix.lstrip('.').upper()}: {error}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level.")
    return data


class DuplicateKeyError(ValueError):
    """A mapping of a config file sets one key twice (YAML and JSON keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key given twice in one mapping (naming both lines).

    A key that overrides one merged in with `<<: *anchor` is not a duplicate."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says what is wrong
                continue
            if first is not None:
                lines = f"line {line}" if first == line else f"lines {first} and {line}"
                raise DuplicateKeyError(
                    f"key `{key}` is set twice, on {lines} (YAML would keep the last one "
                    "silently); keep one of them."
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def _parse_json(text: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key, value in pairs:
            if key in mapping:
                raise DuplicateKeyError(
                    f"key `{key}` is set twice in one object (JSON would keep the last one "
                    "silently); keep one of them."
                )
            mapping[key] = value
        return mapping

    return json.loads(text, object_pairs_hook=unique)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> {key: value}; values are read as YAML scalars or lists."""
    parsed = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"override `{item}` is not of the form key=value.")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parsed[name.strip()] = value
    return parsed


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Reads, merges, validates and freezes a config."""
    raw = read_config_file(path) if path else {}
    extra = parse_overrides(overrides)
    origins = {name: f"in {path}" for name in raw} | {name: "on the command line" for name in extra}
    return build_config({**raw, **extra}, origins, source=str(path or "the command line"))


def build_config(
    raw: Mapping[str, Any], origins: Mapping[str, str] | None = None, source: str = "<dict>"
) -> Config:
    """Validates flat `raw` keys into a Config; errors name the key and where it was set."""
    from tuneforge.config.checks import run_checks

    origins = dict(origins or {})
    refuse_other_formats(raw, source)
    raw = _translate_legacy(raw, origins, source)
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    training: dict[str, Any] = {}
    problems: list[str] = []  # every bad key at once: each retry costs a full start-up
    megatron = [name for name in raw if _is_megatron_key(name)]
    if megatron:
        problems.append(_megatron_problem(megatron))
    for name, value in raw.items():
        where = origins.get(name, f"in {source}")
        if name in megatron:
            continue
        try:
            section, coerced = _place(name, value)
        except ConfigError as error:
            problems.append(f"{error} (set {where})")
            continue
        (training if section == "training" else values[section])[name] = coerced
    if problems:
        raise config_problems(problems)
    _resolve_defaults(values)
    try:
        sections = {name: SECTIONS[name](**values[name]) for name in SECTIONS}
    except (TypeError, ValueError) as error:  # pragma: no cover - guarded by _place
        raise ConfigError(str(error)) from None
    config = Config(**sections, training=training, source=source)
    run_checks(config)
    return config


# Keys of LLaMA-Factory's v1 configs (`USE_V1=1 llamafactory-cli`, llamafactory/v1/config/) that
# its flat v0 format, which tuneforge reads, does not have: the v0 key to use instead, if any.
V1_KEYS: dict[str, str | None] = {
    "model": "model_name_or_path",
    "data": None,
    "train_dataset": "dataset",
    "micro_batch_size": "per_device_train_batch_size",
    "global_batch_size": None,
    "model_class": None,
    "peft_config": "finetuning_type, lora_rank, lora_target",
    "init_config": None,
    "kernel_config": None,
    "quant_config": "quantization_bit",
    "dist_config": "deepspeed",
    "optim_config": "optim",
    "lr_scheduler_config": "lr_scheduler_type",
    "batching_strategy": "packing",
    "batching_workers": "preprocessing_num_workers",
    "enable_activation_checkpointing": "gradient_checkpointing",
    "save_epochs": "save_strategy: epoch",
    "save_ckpt_as_hf": None,
}
# Megatron-Core's parallelism and fusion keys, as LLaMA-Factory's mcore_adapter takes them
# (USE_MCA=1); any key ending in `_model_parallel_size` is one too.
MEGATRON_KEYS = frozenset(
    {
        "sequence_parallel",
        "context_parallel_size",
        "expert_tensor_parallel_size",
        "recompute_granularity",
        "recompute_method",
        "recompute_num_layers",
        "use_distributed_optimizer",
        "overlap_grad_reduce",
        "overlap_param_gather",
        "moe_grouped_gemm",
        "moe_token_dispatcher_type",
        "moe_layer_recompute",
        "bias_activation_fusion",
        "apply_rope_fusion",
        "account_for_embedding_in_pipeline_split",
        "account_for_loss_in_pipeline_split",
        "num_layers_per_virtual_pipeline_stage",
        "transformer_impl",
    }
)
MEGATRON_UNSUPPORTED = (
    "Megatron-Core training (LLaMA-Factory's USE_MCA=1 with mcore_adapter) is not supported by "
    "tuneforge: it trains with transformers' Trainer, where DeepSpeed ZeRO "
    "(`deepspeed: examples/deepspeed/ds_z3_config.json`) or FSDP shard a model too big for one "
    "GPU"
)


def _known_key(name: str) -> bool:
    return name in KEYS or name in training_argument_types() or name in LEGACY_TRAINING_KEYS


def refuse_other_formats(raw: Mapping[str, Any], source: str) -> None:
    """Refuses LLaMA-Factory's v1 config format as a whole, instead of one unknown key each.

    Raises:
        ConfigError: naming the v1 keys found and the flat keys to write instead.
    """
    found = [name for name in raw if name in V1_KEYS and not _known_key(name)]
    nested = [name for name in ("model", "data") if isinstance(raw.get(name), Mapping)]
    if not (nested or "model" in found or len(found) >= 2):
        return
    if nested:
        shape = f"top-level {' and '.join(f'`{name}:`' for name in nested)} mappings"
        hint = "; move the keys inside them to the top level"
    else:
        shape = f"keys {', '.join(f'`{name}`' for name in found)}"
        instead = [f"`{name}` -> `{V1_KEYS[name]}`" for name in found if V1_KEYS[name]]
        hint = f"; rename {', '.join(instead)}" if instead else ""
    raise ConfigError(
        f"{source}: this is LLaMA-Factory's v1 config format ({shape}); tuneforge reads the "
        "flat format of LLaMA-Factory's v0 configs, one key per line at the top level, as in "
        f"tuneforge's examples/sft_lora.yaml{hint}."
    )


def _is_megatron_key(name: str) -> bool:
    return not _known_key(name) and (name in MEGATRON_KEYS or name.endswith("_model_parallel_size"))


def _megatron_problem(names: list[str]) -> str:
    keys = ", ".join(f"`{name}`" for name in names)
    return f"{keys}: {MEGATRON_UNSUPPORTED}. Remove the Megatron keys."


def config_problems(problems: list[str]) -> ConfigError:
    """One error for one problem; for several, one error that lists them all."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return ConfigError(f"{len(problems)} problems in the config:\n{listed}")


def _translate_legacy(
    raw: Mapping[str, Any], origins: dict[str, str], source: str
) -> dict[str, Any]:
    """Replaces keys that transformers 5 removed by their successors (see training.py)."""
    translated = {k: v for k, v in raw.items() if k not in LEGACY_TRAINING_KEYS}
    for name in raw.keys() & LEGACY_TRAINING_KEYS.keys():
        where = origins.get(name, f"in {source}")
        try:
            replacement = LEGACY_TRAINING_KEYS[name](raw[name])
        except ValueError as error:
            raise ConfigError(f"config key `{name}`: {error} (set {where}).") from None
        for new, value in replacement.items():
            if new in raw:
                raise ConfigError(
                    f"config key `{name}` means `{new}` in transformers 5, which is also set; "
                    f"keep only `{new}` (set {where})."
                )
            translated[new] = value
            origins[new] = f"{where}, as `{name}`"
    return translated


def _place(name: str, value: Any) -> tuple[str, Any]:
    """The section `name` belongs to and `value` coerced to its type."""
    if name in KEYS:
        section, field, annotation = KEYS[name]
        coerced = coerce(name, value, annotation)
        note = not_yet_note(field)
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if note and coerced != default:
            raise ConfigError(
                f"config key `{name}` ({note}) is not supported by tuneforge yet; "
                f"remove it or set it back to {default!r}."
            )
        return section, coerced
    training_types = training_argument_types()
    if name in training_types:
        return "training", coerce(name, value, training_types[name])
    if name in DERIVED_KEYS:
        raise ConfigError(f"`{name}` is computed by tuneforge and cannot be set; remove it.")
    known = [*KEYS, *training_types]
    raise ConfigError(f"unknown config key `{name}`.{did_you_mean(name, known)}")


def _resolve_defaults(values: dict[str, dict[str, Any]]) -> None:
    """LLaMA-Factory's derived defaults, resolved before the sections are frozen."""
    finetuning, data = values["finetuning"], values["data"]
    if not finetuning.get("lora_alpha"):
        finetuning["lora_alpha"] = 2 * finetuning.get("lora_rank", 8)
    if data.get("neat_packing"):
        data["packing"] = True
    if data.get("packing") is None:
        data["packing"] = finetuning.get("stage", "sft") == "pt"


def write_resolved(
    config: Config, output_dir: str | Path, training_values: Mapping[str, Any] | None = None
) -> Path:
    """Writes every effective value, grouped by section, to output_dir/resolved.yaml.

    `training_values` (e.g. TrainingArguments.to_dict()) replaces the user's training keys
    with the full set of effective training values when the caller has built them."""
    sections = config.flat()
    if training_values is not None:
        sections["training"] = dict(training_values)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    lines = [f"# Every effective value of this run (from {config.source}).", ""]
    for name, values in sections.items():
        lines.append(f"# --- {name} ---")
        lines.append(yaml.safe_dump(_plain(values), sort_keys=False, allow_unicode=True).rstrip())
        lines.append("")
    (output / RESOLVED_FILE).write_text("\n".join(lines), encoding="utf-8")
    return output / RESOLVED_FILE


def _plain(value: Any) -> Any:
    """Values YAML can write: enums as their values, tuples as lists, objects as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
