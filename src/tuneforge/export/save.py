"""Writing an export folder: weight shards, tokenizer, generation config, Modelfile, the value
head of a reward model, and a record of what was exported.

Everything is written into a temporary sibling folder that is renamed into place at the end,
so that a failed export leaves nothing half-written. An existing `export_dir` is replaced only
when it is empty or was written by `tuneforge export` (it holds `EXPORT_RECORD`); any other
non-empty folder is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, ModelError
from tuneforge.export.ollama import build_modelfile
from tuneforge.models.value_head import VALUE_HEAD_BIN, VALUE_HEAD_FILE

logger = logging.getLogger("tuneforge")

EXPORT_RECORD = "tuneforge_export.json"
SAFE_INDEX = "model.safetensors.index.json"
BYTES_PER_GB = 10**9  # transformers' "GB", as in max_shard_size="5GB"


def check_export_dir(export_dir: str | None) -> Path:
    """The export folder, if it may be written: new, empty, or a previous export.

    Raises:
        ConfigError: `export_dir` is not set, is a file, or is a folder holding other files.
    """
    if not export_dir:
        raise ConfigError("`export_dir` is required: the folder `tuneforge export` writes to.")
    target = Path(export_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"`export_dir` {target} is a file; give a folder.")
    if target.is_dir() and any(target.iterdir()) and not (target / EXPORT_RECORD).is_file():
        raise ConfigError(
            f"`export_dir` {target} is not empty and was not written by `tuneforge export` "
            f"(no {EXPORT_RECORD}); choose a new or empty folder, so that no file of yours is "
            "overwritten."
        )
    return target


def write_export(target: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(folder)` on a temporary sibling of `target`, then puts it in target's place
    (replacing a previous export); on any failure the temporary folder is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / "export")
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model(model: Any, folder: Path, export_size: float, legacy_format: bool) -> None:
    """Weights in shards of at most `export_size` GB (a single larger tensor gets a shard of
    its own), with config.json and generation_config.json; `.bin` files if `legacy_format`."""
    if export_size <= 0:
        raise ConfigError(f"`export_size` must be a positive number of GB, got {export_size}.")
    model.save_pretrained(folder, max_shard_size=int(export_size * BYTES_PER_GB))
    if legacy_format:
        _to_legacy_format(folder)


def _to_legacy_format(folder: Path) -> None:
    """Rewrites safetensors shards as PyTorch `.bin` shards (transformers 5 writes only
    safetensors): `pytorch_model[-0000i-of-0000n].bin` and `pytorch_model.bin.index.json`."""
    import torch
    from safetensors.torch import load_file

    renamed = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        legacy = "pytorch_model" + shard.name.removeprefix("model").removesuffix(".safetensors")
        renamed[shard.name] = legacy + ".bin"
        torch.save(load_file(shard), folder / renamed[shard.name])
        shard.unlink()
    index = folder / SAFE_INDEX
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {name: renamed[file] for name, file in data["weight_map"].items()}
        (folder / "pytorch_model.bin.index.json").write_text(
            json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        index.unlink()


def save_tokenizer(tokenizer: Any, template: Any, folder: Path) -> None:
    """The tokenizer, with the template's jinja chat_template."""
    tokenizer.chat_template = template.chat_template
    tokenizer.save_pretrained(folder)


def write_modelfile(template: Any, folder: Path) -> None:
    (folder / "Modelfile").write_text(build_modelfile(template), encoding="utf-8")


def copy_value_head(sources: list[str], folder: Path) -> Path | None:
    """Copies a reward model's value head (`value_head.safetensors`, or LLaMA-Factory's
    `value_head.bin`) from the first source folder holding one (the last adapter, then the
    base model), so that the exported reward model still scores."""
    for source in sources:
        for name in (VALUE_HEAD_FILE, VALUE_HEAD_BIN):
            head = Path(source).expanduser() / name
            if head.is_file():
                shutil.copyfile(head, folder / name)
                logger.info("Copied the value head %s.", head)
                return head
    return None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def push_to_hub(folder: Path, repo_id: str, token: str | None) -> str:
    """Uploads the export folder to a (new or existing) hub model repository; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as error:  # HTTP, auth, network: the hub client's error types vary by version
        raise ModelError(
            f"pushing {folder} to the hub as `{repo_id}` failed: {error}. The export itself is "
            f"complete in {folder}; check `hf_hub_token` and the repository name."
        ) from None
    return str(url)
