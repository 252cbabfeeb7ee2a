"""GPTQ quantization at export (`export_quantization_bit`), through transformers' GPTQConfig,
which quantizes while loading with optimum and gptqmodel, on calibration text.

Calibration (LLaMA-Factory's recipe): `export_quantization_nsamples` windows of
`export_quantization_maxlen` tokens, each cut at a random place from a random document of
`export_quantization_dataset` (a .json/.jsonl file with a `text` field, or a .txt file with one
document per line) that is longer than the window.
"""

from __future__ import annotations

import importlib.util
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError, DataError, NotAvailableError

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")

GPTQ_BITS = (2, 3, 4, 8)
GPTQ_PACKAGES = ("optimum", "gptqmodel")  # transformers' GPTQ quantizer needs both


def check_quantization(config: Config) -> None:
    """Refuses GPTQ settings that cannot work here, before anything is loaded.

    Raises:
        ConfigError: adapters to merge as well, or an unsupported bit width.
        NotAvailableError: optimum or gptqmodel is not installed.
    """
    bits = config.export.export_quantization_bit
    if config.model.adapter_name_or_path:
        raise ConfigError(
            "`export_quantization_bit` quantizes a whole model: merge the adapters first "
            "(`tuneforge export` without it), then quantize that export with "
            "`model_name_or_path: <its export_dir>`."
        )
    if bits not in GPTQ_BITS:
        raise ConfigError(f"`export_quantization_bit`: GPTQ takes {GPTQ_BITS}, not {bits}.")
    missing = [name for name in GPTQ_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise NotAvailableError(
            f"`export_quantization_bit` quantizes with GPTQ through {' and '.join(GPTQ_PACKAGES)}; "
            f"{', '.join(missing)} not installed: pip install 'tuneforge[gptq]'."
        )


def calibration_texts(
    path: str, tokenizer: Any, nsamples: int, maxlen: int, seed: int = 42
) -> list[str]:
    """`nsamples` random windows of `maxlen` tokens from the documents of `path`, decoded.

    Raises:
        DataError: the file cannot be read, has no `text` field, or no document is longer
            than `maxlen` tokens.
    """
    from tuneforge.data.sources import read_path

    rows = read_path(Path(path))
    documents = []
    for row in rows:
        text = row.fields.get("text")
        if not isinstance(text, str):
            raise DataError(f"{row.where}: calibration data needs a `text` string field.")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > maxlen:
            documents.append(ids)
    if not documents:
        raise DataError(
            f"no document in {path} is longer than `export_quantization_maxlen` ({maxlen} "
            "tokens); lower it or give longer documents."
        )
    rng = random.Random(seed)
    samples = []
    for _ in range(nsamples):
        ids = rng.choice(documents)
        start = rng.randrange(len(ids) - maxlen)
        samples.append(tokenizer.decode(ids[start : start + maxlen], skip_special_tokens=True))
    return samples


def load_quantized(config: Config, tokenizer: Any) -> Any:
    """The model of `model_name_or_path`, GPTQ-quantized on the calibration texts."""
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    from tuneforge.models.tokenizer import base_model_path, load_pretrained

    export = config.export
    bits = export.export_quantization_bit
    if bits is None:  # export_model only comes here with it set
        raise ConfigError("load_quantized needs `export_quantization_bit`.")
    if export.export_quantization_dataset is None:  # also a config check; kept for direct calls
        raise ConfigError("`export_quantization_bit` needs `export_quantization_dataset`.")
    samples = calibration_texts(
        export.export_quantization_dataset,
        tokenizer,
        export.export_quantization_nsamples,
        export.export_quantization_maxlen,
        config.seed,
    )
    logger.info(
        "GPTQ %d-bit quantization on %d calibration windows.",
        bits,
        len(samples),
    )
    quantization = GPTQConfig(bits=bits, dataset=samples, tokenizer=tokenizer)
    kwargs = {
        "dtype": torch.float16,
        "device_map": "auto",
        "quantization_config": quantization,
        "trust_remote_code": config.model.trust_remote_code,
        "revision": config.model.model_revision,
        "cache_dir": config.model.cache_dir,
        "token": config.model.hf_hub_token,
    }
    return load_pretrained(AutoModelForCausalLM, base_model_path(config.model), kwargs, "model")
