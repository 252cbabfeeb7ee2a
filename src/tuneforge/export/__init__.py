"""`tuneforge export`: merge LoRA adapters into the base model (verified), or GPTQ-quantize a
model, and write a folder that transformers, vLLM and Ollama load as it is.

Modules: `merge` (load, merge and verify), `quantize` (GPTQ with calibration data), `save`
(shards, tokenizer, generation config, value head, atomic replacement of the folder), `ollama`
(the Modelfile).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from tuneforge.config.loader import Config
    from tuneforge.export.merge import MergeCheck

logger = logging.getLogger("tuneforge")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes:
        export_dir: The folder.
        weight_files: Its weight files (shards), by name.
        merges: One verification record per merged adapter.
        stop_token_ids: The generation config's eos ids.
        hub_url: The hub repository it was pushed to, if any.
    """

    export_dir: Path
    weight_files: list[str]
    merges: list[MergeCheck]
    stop_token_ids: list[int]
    hub_url: str | None = None


def export_model(config: Config) -> ExportResult:
    """Exports the model a config describes into `export_dir` (see the module docstring).

    Raises:
        ConfigError: `export_dir` is missing or holds files of another kind, or settings
            that cannot export (see `_check_settings`).
        ModelError: loading failed, a merge changed nothing or not as the adapter says, or the
            hub cannot be reached for `export_hub_model_id`.
        NotAvailableError: `export_quantization_bit` without the GPTQ packages.
    """
    from tuneforge.export import save
    from tuneforge.export.merge import load_merged_model
    from tuneforge.export.quantize import load_quantized
    from tuneforge.models.loader import set_generation_stops
    from tuneforge.models.tokenizer import base_model_path, load_tokenizer_and_template

    export, model_config = config.export, config.model
    target = _check_settings(config)  # before the slow part: fail in seconds
    tokenizer, template = load_tokenizer_and_template(config)
    merges: list[MergeCheck] = []
    if export.export_quantization_bit is not None:
        model = load_quantized(config, tokenizer)
    else:
        model, merges = load_merged_model(config, tokenizer, template)
    stop_ids = set_generation_stops(model, tokenizer, template.stop_words)
    adapters = list(model_config.adapter_name_or_path or [])
    record = _record(config, template, model, merges)

    def write(folder: Path) -> None:
        save.save_model(model, folder, export.export_size, export.export_legacy_format)
        save.save_tokenizer(tokenizer, template, folder)
        save.write_modelfile(template, folder)
        save.copy_value_head([*reversed(adapters), base_model_path(model_config)], folder)
        save.write_record(folder, record)

    save.write_export(target, write)
    weight_files = sorted(
        p.name
        for p in target.iterdir()
        if p.suffix in (".safetensors", ".bin") and not p.name.startswith("value_head.")
    )
    url = None
    if export.export_hub_model_id:
        url = save.push_to_hub(target, export.export_hub_model_id, model_config.hf_hub_token)
    return ExportResult(target, weight_files, merges, stop_ids, url)


def _check_settings(config: Config) -> Path:
    """The export folder, once every setting that would make the export fail is ruled out."""
    from tuneforge.export.quantize import check_quantization
    from tuneforge.export.save import check_export_dir
    from tuneforge.utils.hub import hub_reachable

    export = config.export
    target = check_export_dir(export.export_dir)
    if export.export_hub_model_id and not hub_reachable():
        raise ModelError(
            f"`export_hub_model_id: {export.export_hub_model_id}` needs the Hugging Face Hub, "
            "which cannot be reached from this machine (offline?). Nothing was exported; remove "
            "the key to export locally, and upload the folder later."
        )
    if config.model.quantization_bit is not None:
        raise ConfigError(
            "`quantization_bit` loads the base model quantized, but export merges into and writes "
            "full-precision weights: remove it (a QLoRA adapter merges into the full-precision "
            "base); `export_quantization_bit` quantizes the export."
        )
    if export.export_quantization_bit is not None:
        check_quantization(config)
    return target


def _record(config: Config, template: Any, model: Any, merges: list[MergeCheck]) -> dict[str, Any]:
    """What `EXPORT_RECORD` says of the export: its sources and the merges' verification."""
    from tuneforge import __version__

    return {
        "tuneforge_version": __version__,
        "model_name_or_path": config.model.model_name_or_path,
        "adapter_name_or_path": list(config.model.adapter_name_or_path or []),
        "template": template.name,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "quantization_bit": config.export.export_quantization_bit,
        "merges": [dataclasses.asdict(check) for check in merges],
    }
