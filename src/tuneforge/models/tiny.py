"""Tiny causal language models, built offline and deterministically, for tests and demos.

Nothing here touches a model hub. A byte-level BPE tokenizer (the GPT-2 / Qwen2 scheme) is
trained on the bundled ``tiny_corpus.txt``, a randomly initialised Qwen2 or Llama model is sized
to it, and both are saved with ``save_pretrained`` so that any code path that loads a real
checkpoint from a folder can load these too. The same arguments give byte-identical files.

Example:
    >>> from tuneforge.models.tiny import cached_tiny_model
    >>> path = cached_tiny_model("qwen2", "tiny")  # built once, then reused

Command line::

    python -m tuneforge.models.tiny OUT_DIR [--arch qwen2|llama] [--size tiny|small] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside functions so that importing this module is cheap
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

CORPUS_PATH = Path(__file__).with_name("tiny_corpus.txt")
DEFAULT_CACHE_ROOT = Path("~/.cache/tuneforge/tiny")
INFO_FILE = "tuneforge_tiny.json"
MAX_POSITIONS = 2048

# Control tokens every tiny tokenizer carries, whatever the arch: ChatML (Qwen) and Llama 3
# headers, so that both flavours can render either family's chat format as single tokens.
CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
# Markers that are single tokens but not "special": as in Qwen2.5/Qwen3, decoding with
# skip_special_tokens=True must keep them, because reasoning and tool-call parsers read them.
TEXT_MARKERS: tuple[str, ...] = (
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)
# Used only while tuneforge.templates.registry.all_special_tokens() does not exist yet (it is
# being written in parallel); delete once the registry has landed.
_FALLBACK_EXTRA_TOKENS: tuple[str, ...] = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_CALLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)

# Qwen2's split pattern: like GPT-2's, but digits are split one by one, which keeps arithmetic
# and numbers tokenised consistently.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


@dataclass(frozen=True)
class _ArchSpec:
    """How one model family names and uses its control tokens."""

    model_type: str
    bos: str | None
    eos: str
    pad: str | None
    stop: tuple[str, ...]  # generation stops at any of these (end of text, end of turn)
    add_bos: bool
    chat_template: str


ARCHS: dict[str, _ArchSpec] = {
    # Qwen2 base: no BOS, <|endoftext|> is both EOS and pad.
    "qwen2": _ArchSpec(
        "qwen2",
        bos=None,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        stop=("<|endoftext|>", "<|im_end|>"),
        add_bos=False,
        chat_template=_CHATML_TEMPLATE,
    ),
    # Llama 3: BOS prepended by the tokenizer and no pad token, as in the real checkpoints,
    # so that the pad-less path (pad := eos) is exercised by tests.
    "llama": _ArchSpec(
        "llama",
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        pad=None,
        stop=("<|end_of_text|>", "<|eot_id|>"),
        add_bos=True,
        chat_template=_LLAMA3_TEMPLATE,
    ),
}

SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 704,
    },
}


def _check_choice(kind: str, value: str, choices: dict[str, Any]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


def default_extra_special_tokens() -> list[str]:
    """Special tokens that the chat templates of the registry need as single tokens.

    Returns:
        The tokens from ``tuneforge.templates.registry.all_special_tokens()``, or a built-in
        list while that function does not exist yet.
    """
    try:
        from tuneforge.templates.registry import all_special_tokens
    except ImportError:
        # Fallback while the template registry is being written; remove once it has landed.
        return list(_FALLBACK_EXTRA_TOKENS)
    return list(all_special_tokens())


def _added_tokens(extra_special_tokens: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Split all added tokens into (special, non-special), in a stable order."""
    extras = (
        default_extra_special_tokens() if extra_special_tokens is None else extra_special_tokens
    )
    known = set(CONTROL_TOKENS) | set(TEXT_MARKERS)
    # Sorted, so that the registry's iteration order cannot change the token ids.
    special = list(CONTROL_TOKENS) + sorted({t for t in extras if t and t not in known})
    return special, list(TEXT_MARKERS)


def build_tiny_tokenizer(
    arch: str = "qwen2",
    vocab_size: int = 4096,
    extra_special_tokens: Sequence[str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the bundled corpus.

    Args:
        arch: ``"qwen2"`` or ``"llama"``; selects BOS/EOS/pad roles and the chat template.
        vocab_size: Target size including added tokens. A small corpus may stop short of it;
            ``len(tokenizer)`` is the real size.
        extra_special_tokens: Further special tokens; ``None`` takes them from the template
            registry.

    Returns:
        The tokenizer, not yet saved.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    _check_choice("arch", arch, ARCHS)
    spec = ARCHS[arch]
    special, markers = _added_tokens(extra_special_tokens)
    n_added = len(special) + len(markers)
    if vocab_size < 256 + n_added:
        raise ValueError(f"vocab_size must be at least {256 + n_added} (256 bytes + added tokens)")

    # No normaliser: any string, in any Unicode form, encodes and decodes back exactly.
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,  # added tokens go after the learned vocabulary, as in Qwen
        min_frequency=1,  # the corpus is small; pairs seen once are needed to reach ~4k tokens
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train([str(CORPUS_PATH)], trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in markers])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=None,  # byte-level BPE can encode every string; nothing is unknown
        # Listed so that `all_special_tokens` names them all, as real checkpoints do.
        extra_special_tokens=[t for t in special if t not in (spec.bos, spec.eos, spec.pad)],
        add_bos_token=spec.add_bos,
        add_eos_token=False,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def _build_model(
    arch: str, size: str, tokenizer: PreTrainedTokenizerFast, seed: int
) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    _check_choice("size", size, SIZES)
    spec = ARCHS[arch]
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **SIZES[size],
    )
    # fork_rng: seed the initialisation without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(list(spec.stop)),
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    arch: str = "qwen2",
    size: str = "tiny",
    vocab_size: int = 4096,
    seed: int = 0,
    extra_special_tokens: Sequence[str] | None = None,
) -> Path:
    """Build a tokenizer and a randomly initialised model and save both to ``out_dir``.

    Args:
        out_dir: Folder to write (created if missing; existing files are overwritten).
        arch: ``"qwen2"`` (Qwen2ForCausalLM) or ``"llama"`` (LlamaForCausalLM).
        size: ``"tiny"`` (hidden 64, 2 layers) or ``"small"`` (hidden 256, 4 layers).
        vocab_size: Target tokenizer size; the model's vocabulary equals the real size.
        seed: Seed for the weight initialisation.
        extra_special_tokens: Further special tokens; ``None`` takes them from the template
            registry.

    Returns:
        The folder, loadable with ``AutoTokenizer`` and ``AutoModelForCausalLM``.
    """
    from transformers.utils import logging as hf_logging

    _check_choice("arch", arch, ARCHS)
    _check_choice("size", size, SIZES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(arch, vocab_size, extra_special_tokens)
    model = _build_model(arch, size, tokenizer, seed)

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a shard bar per tiny model is noise in test logs
    try:
        model.save_pretrained(out)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    info = {
        "arch": arch,
        "size": size,
        "seed": seed,
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "corpus_sha256": _sha256(CORPUS_PATH.read_bytes()),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_key(
    arch: str, size: str, vocab_size: int, seed: int, extra: Sequence[str] | None
) -> str:
    """Hash of everything that changes the files: arguments, corpus, this module, libraries."""
    special, markers = _added_tokens(extra)
    parts = {
        "args": [arch, size, vocab_size, seed],
        "tokens": special + markers,
        "corpus": _sha256(CORPUS_PATH.read_bytes()),
        "module": _sha256(Path(__file__).read_bytes()),
        # Read from package metadata, so that a cache hit does not pay for importing them.
        "libs": [version(lib) for lib in ("torch", "transformers", "tokenizers", "safetensors")],
    }
    return _sha256(json.dumps(parts, sort_keys=True).encode())[:16]


def cached_tiny_model(
    arch: str = "qwen2",
    size: str = "tiny",
    vocab_size: int = 4096,
    seed: int = 0,
    extra_special_tokens: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Return a tiny model folder, building it only the first time.

    The folder name carries a hash of the arguments, the corpus, this module and the library
    versions, so a change to any of them builds afresh. The build goes to a temporary folder
    that is renamed into place, so concurrent workers never see a half-written model.

    Args:
        arch: See `build_tiny_model`.
        size: See `build_tiny_model`.
        vocab_size: See `build_tiny_model`.
        seed: See `build_tiny_model`.
        extra_special_tokens: See `build_tiny_model`.
        cache_dir: Cache root; defaults to ``~/.cache/tuneforge/tiny``.

    Returns:
        The cached model folder.
    """
    _check_choice("arch", arch, ARCHS)
    _check_choice("size", size, SIZES)
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_ROOT).expanduser()
    key = _cache_key(arch, size, vocab_size, seed, extra_special_tokens)
    final = root / f"{arch}-{size}-v{vocab_size}-s{seed}-{key}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        build_tiny_model(tmp, arch, size, vocab_size, seed, extra_special_tokens)
        # mkdtemp (and safetensors) write private files; the cache may be shared.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        try:
            os.rename(tmp, final)  # atomic on one file system
        except OSError:
            if not final.is_dir():
                raise
            # Another worker won the race; its files are identical to ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: build a tiny model into a folder and print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m tuneforge.models.tiny",
        description="Build a tiny random Qwen2/Llama model and tokenizer, offline.",
    )
    parser.add_argument("out_dir", help="folder to write the model to")
    parser.add_argument("--arch", choices=list(ARCHS), default="qwen2")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = build_tiny_model(args.out_dir, args.arch, args.size, args.vocab_size, args.seed)
    info = json.loads((out / INFO_FILE).read_text(encoding="utf-8"))
    print(out)
    print(
        f"{args.arch}/{args.size}: {info['num_parameters']:,} parameters, "
        f"vocab {info['vocab_size']:,}, seed {args.seed}, "
        f"built in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
