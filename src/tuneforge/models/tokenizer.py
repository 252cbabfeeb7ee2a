"""Loading a tokenizer from a local folder or a hub id, and binding it to its chat template.

Training, inference and export all start from `load_tokenizer_and_template`, so each depends
only on models/ and templates/ for it, never on the training stack."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError, ModelError
from tuneforge.templates import template_for
from tuneforge.utils.hub import hub_reachable, looks_like_path

if TYPE_CHECKING:
    from tuneforge.config.loader import Config
    from tuneforge.config.model import ModelConfig


def base_model_path(model: ModelConfig) -> str:
    """`model_name_or_path`: optional as a key, but every loader needs it."""
    if not model.model_name_or_path:
        raise ConfigError("`model_name_or_path` is required: a model folder or a hub id.")
    return model.model_name_or_path


def load_tokenizer(model: ModelConfig) -> Any:
    """The tokenizer of `model.model_name_or_path` with the config's added tokens.

    A local folder loads directly; a hub id loads from the local cache when it is there,
    and otherwise needs the Hub: when that cannot be reached, a ModelError says so at once.
    """
    from transformers import AutoTokenizer

    name = base_model_path(model)
    kwargs = {
        "use_fast": model.use_fast_tokenizer,
        "revision": model.model_revision,
        "cache_dir": model.cache_dir,
        "token": model.hf_hub_token,
        "trust_remote_code": model.trust_remote_code,
        "split_special_tokens": model.split_special_tokens,
    }
    tokenizer = load_pretrained(AutoTokenizer, name, kwargs, "tokenizer")
    if model.add_tokens:
        tokenizer.add_tokens(list(model.add_tokens))
    if model.add_special_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": list(model.add_special_tokens)},
            replace_extra_special_tokens=False,
        )
    return tokenizer


def load_pretrained(loader: Any, name: str, kwargs: dict[str, Any], what: str) -> Any:
    """`loader.from_pretrained(name)` with errors a user can act on."""
    local = Path(name).expanduser()
    try:
        exists = local.exists()
    except OSError as error:  # a name too long for the file system, say
        raise ModelError(
            f"`model_name_or_path` {name[:80]}...: {error.strerror}; give a model folder or a "
            "hub id."
        ) from None
    if exists:
        if not local.is_dir():
            raise ModelError(f"`model_name_or_path` {name} is a file; give the model's folder.")
        check_model_folder(local, what)
        try:
            return loader.from_pretrained(str(local), **kwargs)
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load a {what} from folder {local}: {error}") from None
    if looks_like_path(name):
        raise ModelError(f"model folder {name} does not exist (check `model_name_or_path`).")
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass  # not in the local cache: the Hub is needed
    if not hub_reachable():
        raise ModelError(
            f"`{name}` is neither a local folder nor in the Hugging Face cache, and the Hub "
            "cannot be reached from this machine (offline?). Download the model elsewhere and "
            "set `model_name_or_path` to its folder."
        )
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load a {what} for `{name}` from the Hub: {error}") from None


# files any one of which lets a tokenizer load from a folder without the model's config.json
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(folder: Path, what: str) -> None:
    """Refuses a local `model_name_or_path` folder that holds no model (no config.json), such as
    a data folder, before transformers guesses at it (and talks of sentencepiece). A tokenizer
    may come from a folder with its own files only.

    Raises:
        ModelError: naming the folder, what it holds and what to point the key at.
    """
    if (folder / "config.json").is_file():
        return
    if what == "tokenizer" and any((folder / name).is_file() for name in TOKENIZER_FILES):
        return
    if (folder / "adapter_config.json").is_file():
        raise ModelError(
            f"`model_name_or_path` {folder} holds a LoRA adapter (adapter_config.json), not a "
            "model: set `adapter_name_or_path` to it and `model_name_or_path` to its base model."
        )
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    held = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "nothing"
    raise ModelError(
        f"`model_name_or_path` {folder} has no config.json, so it is not a model folder (it "
        f"holds {held}); point it at a model's folder (config.json and the weights) or a hub id."
    )


def fit_tokenizer_to_template(
    tokenizer: Any, stop_words: tuple[str, ...], replace_eos: bool
) -> None:
    """Makes the template's stop words real tokens, its first stop word the EOS when the
    template says so (LLaMA-Factory's `replace_eos`), and sets a pad token when missing."""
    vocabulary = tokenizer.get_vocab()
    missing = [word for word in stop_words if word not in vocabulary]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    if replace_eos and stop_words and tokenizer.eos_token != stop_words[0]:
        tokenizer.eos_token = stop_words[0]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer_and_template(config: Config) -> tuple[Any, Any]:
    """The tokenizer, fitted to the template's stop words, and the template bound to it."""
    tokenizer = load_tokenizer(config.model)
    template = template_for(config.data, tokenizer)
    fit_tokenizer_to_template(tokenizer, template.stop_words, template.replace_eos)
    template = template_for(config.data, tokenizer)  # bound again: the EOS may have changed
    tokenizer.chat_template = template.chat_template  # saved with every checkpoint
    return tokenizer, template
