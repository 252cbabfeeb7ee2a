"""From the page's field values to the flat config keys of a `tuneforge` run, its YAML, and
back (loading an argument set into the page). No gradio here: the tests drive it directly.

The keys the page writes are the ones a user would write by hand (LLaMA-Factory's names), so
that the YAML shown in the page is the YAML that runs, and it runs the same from a terminal.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tuneforge.webui.locale import FormError
from tuneforge.webui.paths import Saves, check_existing, check_model_path, is_path_like
from tuneforge.webui.spec import NONE_CHOICE, Field, FormSpec, form_spec

Values = Mapping[str, Any]  # field name -> widget value

# acceleration choice -> the config keys it sets
ACCELERATION: dict[str, dict[str, Any]] = {
    "auto": {},
    "sdpa": {"flash_attn": "sdpa"},
    "flashattn2": {"flash_attn": "fa2"},
    "liger_kernel": {"enable_liger_kernel": True},
    "unsloth": {"use_unsloth": True},
}
COMPUTE_TYPE: dict[str, dict[str, Any]] = {
    "bf16": {"bf16": True},
    "fp16": {"fp16": True},
    "fp32": {},
    "pure_bf16": {"pure_bf16": True},
}
# Keys every training run of the page sets, which the page does not show as fields.
FIXED_TRAIN_KEYS = {"do_train": True, "plot_loss": True}
_SKIP = object()


def convert(field: Field, value: Any) -> Any:
    """A widget value as the config value of `field`; `_SKIP` when the key is left out."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or value in ("", NONE_CHOICE, []) or value in field.omit:
        return _SKIP
    if field.type == "list":
        items = value if isinstance(value, list) else value.split(",")
        return ",".join(str(item).strip() for item in items if str(item).strip()) or _SKIP
    if field.type in ("int", "float"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FormError("msg_not_a_number", field=field.key, value=value) from None
        if not math.isfinite(number) or (field.type == "int" and not number.is_integer()):
            raise FormError("msg_not_a_number", field=field.key, value=value)
        if number in field.omit:
            return _SKIP
        return int(number) if field.type == "int" else number
    return value


def field_keys(names: Iterable[str], values: Values, spec: FormSpec | None = None) -> dict:
    """Config keys of the named fields; fields of a panel that does not apply are left out."""
    spec = spec or form_spec()
    keys = {}
    for name in names:
        field = spec.fields[name]
        panel = spec.panel_of(name)
        if field.key is None or (panel is not None and not panel.applies(values)):
            continue
        value = convert(field, values.get(name, field.default))
        if value is not _SKIP:
            keys[field.key] = value
    return keys


def model_folder(values: Values) -> str:
    """What names the model's folder under the saves root: its name, else its path."""
    return (values.get("model_name") or "").strip() or values["model_name_or_path"]


def checkpoint_paths(values: Values, saves: Saves) -> list[str]:
    method = values["finetuning_type"]
    names = values.get("checkpoint") or []
    return [str(saves.checkpoint_path(model_folder(values), method, name)) for name in names]


def model_keys(values: Values, saves: Saves) -> dict[str, Any]:
    """The top bar's keys: model, adapters or fine-tuned weights, method, template, backends."""
    method = values["finetuning_type"]
    keys: dict[str, Any] = {"model_name_or_path": values["model_name_or_path"].strip()}
    checkpoints = checkpoint_paths(values, saves)
    if checkpoints and method == "lora":
        keys["adapter_name_or_path"] = ",".join(checkpoints)
    elif checkpoints:  # a full or freeze run holds whole weights: it is the model
        keys["model_name_or_path"] = checkpoints[-1]
    keys["finetuning_type"] = method
    keys |= field_keys(("template", "quantization_bit", "rope_scaling"), values)
    keys |= ACCELERATION[values.get("acceleration") or "auto"]
    return keys


def extra_keys(text: str) -> dict[str, Any]:
    """The "extra arguments" box: a YAML mapping of any other config keys."""
    if not (text or "").strip():
        return {}
    try:
        extra = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise FormError("msg_extra_args", error=str(error).splitlines()[0]) from None
    if not isinstance(extra, dict):
        raise FormError("msg_extra_args", error=repr(extra))
    return {str(name): value for name, value in extra.items()}


def output_path(values: Values, saves: Saves, name_field: str, path_field: str = "") -> str:
    """The run's output dir: the explicit path of `path_field` when it is set (absolute, or
    under the saves folder), else the run name of `name_field` under the method folder."""
    explicit = str(values.get(path_field) or "").strip() if path_field else ""
    if explicit:
        return str(saves.output_path(explicit, "what_output_path"))
    name = str(values.get(name_field) or "")
    return str(saves.run_path(model_folder(values), values["finetuning_type"], name))


def train_keys(values: Values, saves: Saves) -> dict[str, Any]:
    """Every key of the training run the Train tab describes, in a readable order."""
    spec = form_spec()
    keys: dict[str, Any] = {"stage": values["stage"], **FIXED_TRAIN_KEYS}
    keys |= model_keys(values, saves)
    train_fields = [n for n in spec.names("train") if n not in ("stage", "output_dir")]
    keys |= field_keys(train_fields, values, spec)
    keys |= COMPUTE_TYPE[values.get("compute_type") or "fp32"]
    keys["output_dir"] = output_path(values, saves, "output_dir", "output_path")
    extra = extra_keys(values.get("extra_args", ""))
    if "output_dir" in extra:  # the same rule as the output path field
        extra["output_dir"] = str(saves.output_path(str(extra["output_dir"]), "what_output_path"))
    return keys | extra


def predict_keys(values: Values, saves: Saves) -> dict[str, Any]:
    """The Evaluate & Predict tab's run: sft generation on the chosen datasets, no training."""
    keys: dict[str, Any] = {"stage": "sft", "do_train": False, "do_predict": True}
    keys["predict_with_generate"] = True
    keys |= model_keys(values, saves)
    keys |= field_keys([n for n in form_spec().names("eval") if n != "eval_output_dir"], values)
    if keys.get("temperature", 0) == 0:  # greedy: the same scores on every run
        keys.pop("temperature", None)
        keys.pop("top_p", None)
        keys["do_sample"] = False
    keys |= COMPUTE_TYPE[values.get("compute_type") or "fp32"]
    keys["output_dir"] = output_path(values, saves, "eval_output_dir")
    return keys


def export_keys(values: Values, saves: Saves) -> dict[str, Any]:
    """The Export tab's run: the top bar's model (and adapters) into export_dir (absolute, or
    under the saves folder)."""
    keys = model_keys(values, saves) | field_keys(form_spec().names("export"), values)
    if "export_dir" in keys:
        keys["export_dir"] = str(saves.output_path(str(keys["export_dir"]), "what_export_dir"))
    return keys


def chat_keys(values: Values, saves: Saves) -> dict[str, Any]:
    """The engine the Chat tab loads."""
    return model_keys(values, saves) | field_keys(form_spec().names("chat"), values)


def check_paths(keys: Mapping[str, Any]) -> None:
    """Paths the run reads must exist (hub ids aside): errors in the page, not in the log."""
    check_model_path(str(keys["model_name_or_path"]))
    for adapter in str(keys.get("adapter_name_or_path") or "").split(","):
        if adapter:
            check_existing(adapter, "what_checkpoint")
    if "dataset_dir" in keys:
        check_existing(keys["dataset_dir"], "what_dataset_dir")
    if (keys.get("dataset") or keys.get("eval_dataset")) is None and "dataset_dir" in keys:
        raise FormError("msg_no_dataset")
    reward = str(keys.get("reward_model") or "")
    if reward and is_path_like(reward):
        check_existing(reward, "what_reward_model")


def validate(keys: Mapping[str, Any]) -> Any:
    """The Config the keys build (paths checked first); raises a UserError saying what is wrong."""
    from tuneforge.config.loader import build_config

    check_paths(keys)
    return build_config(dict(keys), source="the web workbench")


def validate_yaml(config_text: str) -> Any:
    """The Config of a run's YAML text, read as the CLI reads the file it is written to."""
    return validate(yaml.safe_load(config_text) or {})


def to_yaml(keys: Mapping[str, Any], command: str) -> str:
    """The YAML text of a run, opening with the command that runs it (as examples/ do).

    The body is yaml.safe_dump's, so a typed value stays one value of its key; every line of
    the command is a comment. The text must read back as exactly `keys`.
    """
    body = yaml.safe_dump(dict(keys), sort_keys=False, allow_unicode=True)
    comment = "".join(f"# {line}\n" for line in command.splitlines())
    config_text = f"{comment}# written by `tuneforge webui`\n{body}"
    if yaml.safe_load(config_text) != dict(keys):
        raise FormError("msg_yaml_mismatch")
    return config_text


def declared_default(key: str) -> Any:
    """A config key's default as its declaration says (before derived defaults)."""
    from tuneforge.config.loader import KEYS
    from tuneforge.config.training import training_argument_types

    if key in KEYS:
        declared = KEYS[key][1]
    elif key in training_argument_types():
        from transformers import Seq2SeqTrainingArguments

        declared = {f.name: f for f in dataclasses.fields(Seq2SeqTrainingArguments)}[key]
    else:
        return None
    if declared.default_factory is not dataclasses.MISSING:
        return declared.default_factory()
    return None if declared.default is dataclasses.MISSING else declared.default


def shown(field: Field, value: Any) -> Any:
    """A config value as `field`'s widget shows it (the inverse of `convert`)."""
    value = getattr(value, "value", value)  # enums (e.g. SchedulerType) as their values
    if value is None:
        if NONE_CHOICE in field.choices:
            return NONE_CHOICE
        return field.omit[0] if field.omit else field.default
    if field.widget == "multiselect":
        return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if field.widget in ("textbox", "dropdown") and not isinstance(value, str):
        return str(value)
    return value


def _pop_choice(table: dict[str, dict[str, Any]], raw: dict[str, Any], default: str) -> str:
    """The choice of `table` whose keys `raw` holds (removing them), else `default`."""
    for choice, keys in table.items():
        if keys and all(raw.get(k) == v for k, v in keys.items()):
            for k in keys:
                raw.pop(k)
            return choice
    return default


def output_fields(output_dir: Any, values: Values, saves: Saves | None) -> dict[str, Any]:
    """The run name and output path fields that give `output_dir`: its name alone when it is
    a run of the page's model and method under `saves`, else the path itself."""
    if output_dir is None:
        return {}  # the page keeps its run name
    path = Path(str(output_dir))
    if saves is not None and "model_name_or_path" in values and "finetuning_type" in values:
        folder = saves.method_dir(model_folder(values), values["finetuning_type"])
        if path.parent.resolve() == folder.resolve():
            return {"output_dir": path.name, "output_path": ""}
    return {"output_dir": path.name, "output_path": str(output_dir)}


def values_from_keys(keys: Mapping[str, Any], saves: Saves | None = None) -> dict[str, Any]:
    """Field values for a loaded argument set (a training YAML). Train-tab fields the YAML
    leaves out get their defaults; keys that no field shows go to the extra-arguments box;
    output_dir becomes a run name under `saves` or else an explicit output path."""
    spec = form_spec()
    rest = dict(keys)
    for name in FIXED_TRAIN_KEYS:
        rest.pop(name, None)
    output_dir = rest.pop("output_dir", None)
    values: dict[str, Any] = {}
    train = spec.names("train")
    for name in spec.names("top") + train:
        field = spec.fields[name]
        if field.key is not None and field.key in rest:
            values[name] = shown(field, rest.pop(field.key))
        elif field.key is not None and name in train:  # what the YAML means by leaving it out
            values[name] = shown(field, declared_default(field.key))
    adapters = rest.pop("adapter_name_or_path", None)
    if adapters:
        values["checkpoint"] = shown(spec.fields["checkpoint"], adapters)
    values |= output_fields(output_dir, values, saves)
    values["compute_type"] = _pop_choice(COMPUTE_TYPE, rest, "fp32")
    values["acceleration"] = _pop_choice(ACCELERATION, rest, "auto")
    values["extra_args"] = yaml.safe_dump(rest, sort_keys=False, allow_unicode=True) if rest else ""
    return values
