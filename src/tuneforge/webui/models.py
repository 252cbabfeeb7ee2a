"""The web workbench's model list, read from the family table (tuneforge/models/families.yaml):
every model of LLaMA-Factory's text model groups, in LLaMA-Factory's order, each model's hub id
and the chat template its group uses.

Display names are unique across the groups today; were one to repeat, the first group (in the
table's order) would keep it, for the list, its hub id and its template alike.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from tuneforge.models.families import ModelGroup, model_groups

# a model size such as 7b, 0.5b or 135m
_SIZE = re.compile(r"\d+(?:\.\d+)?[bm](?![a-z0-9])")


@dataclass(frozen=True)
class _Index:
    names: dict[str, str]  # display name -> hub id, first group wins, in the table's order
    by_name: dict[str, ModelGroup]  # lower-case display name -> group
    by_hub_id: dict[str, ModelGroup]  # lower-case hub id -> group
    by_basename: dict[str, ModelGroup]  # lower-case last component of a hub id -> group


@functools.cache
def _index() -> _Index:
    index = _Index({}, {}, {}, {})
    for group in model_groups():
        for name, hub in group.models.items():
            index.names.setdefault(name, hub)
            index.by_name.setdefault(name.lower(), group)
            index.by_hub_id.setdefault(hub.lower(), group)
            index.by_basename.setdefault(_last_component(hub), group)
    return index


def _last_component(text: str) -> str:
    return re.split(r"[/\\]", text.strip().rstrip("/\\"))[-1].lower()


def _stem(name: str) -> str:
    """`name` up to its first character other than a letter, digit or '.', or up to a size
    token (7b, 0.5b, 135m) before that: qwen2.5-3b -> qwen2.5, mistral7b -> mistral."""
    stem = re.split(r"[^a-z0-9.]", name, maxsplit=1)[0]
    size = _SIZE.search(stem)
    return stem[: size.start()] if size else stem


def _word_end(text: str, k: int) -> bool:
    """Whether a word (a run of letters or a run of digits) of `text` ends at `k`."""
    if k == 0 or not text[k - 1].isalnum():
        return False
    return k == len(text) or not text[k].isalnum() or text[k - 1].isdigit() != text[k].isdigit()


def _shared_words(a: str, b: str) -> int:
    """The length of the longest common prefix of `a` and `b` that ends a word in both."""
    pairs = enumerate(zip(a, b, strict=False))
    k = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
    while k and not (_word_end(a, k) and _word_end(b, k)):
        k -= 1
    return k


def model_names() -> list[str]:
    """Every known model's display name, group by group in LLaMA-Factory's order."""
    return list(_index().names)


def hub_id(model_name: str) -> str | None:
    """The hub id of a known display name (exact), else None."""
    return _index().names.get(model_name)


def suggested_template(model_name: str) -> str | None:
    """The chat template of the group `model_name` belongs to, else None.

    Tried in this order, case-insensitively; the first that matches decides:
    1. `model_name` is a model's display name (Qwen2.5-7B-Instruct);
    2. it is a model's hub id (Qwen/Qwen2.5-7B-Instruct), or a path whose last component is a
       hub id's last component (/models/Qwen2.5-7B-Instruct/);
    3. the last component shares a prefix with hub ids' last components: the model whose shared
       prefix is the longest decides, the first in the table's order on a tie. The prefix
       counts whole words only (a word is a run of letters or a run of digits, so llama-3 does
       not share "llama-3" with llama-30b), and it must cover at least the name's stem: the
       name up to its first character other than a letter, digit or '.', or up to a size token
       such as 7b before that. qwen2.5-3b-custom -> qwen (Qwen2.5-3B); llama-3.2-1b-foo ->
       llama3; gemma-2-2b-it-ft -> gemma2; mistral-7b-finetune -> mistral; my-model -> None
       (no hub id starts with the word "my").
    A group whose template is `default` suggests `default`.
    """
    index = _index()
    text = model_name.strip().rstrip("/\\").lower()
    group = index.by_name.get(text) or index.by_hub_id.get(text)
    if group is None:
        name = _last_component(text)
        group = index.by_basename.get(name) or _by_prefix(name)
    return group.template if group is not None else None


def _by_prefix(name: str) -> ModelGroup | None:
    stem = _stem(name)
    if not stem:
        return None
    best, best_length = None, len(stem) - 1
    for basename, group in _index().by_basename.items():
        length = _shared_words(name, basename)
        if length > best_length:
            best, best_length = group, length
    return best
