"""The family table (families.yaml): what tuneforge knows of each transformers model type and
of LLaMA-Factory's model groups, and the training path a loaded model takes.

The table is data so that the web UI's model list, the conformance suite
(tests/integration/test_conformance.py) and the loader read one source. A model type takes
the padding-free path only when the table says so, and the table says so only for types the
conformance suite proves equal to transformers' eager implementation; everything else, remote
code and model types the table does not know included, takes the padded path, which is
correct for any model.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

logger = logging.getLogger(__name__)

Path = Literal["padding_free", "padded"]
PATHS: tuple[Path, ...] = ("padding_free", "padded")
FEATURES = frozenset(
    {
        "sliding_window",
        "chunked_attention",
        "attn_softcap",
        "final_softcap",
        "sinks",
        "moe",
        "mla",
        "qk_norm",
        "partial_rotary",
        "tied_embeddings",
        "parallel_block",
        "absolute_positions",
        "alibi",
        "own_attention",
        "hybrid_layers",
        "remote_code",
    }
)
# features that need transformers' own attention masks: their layers cannot see the
# sequence bounds of a padding-free row, or the varlen attention lacks the feature
PADDED_FEATURES = frozenset(
    {"alibi", "chunked_attention", "own_attention", "hybrid_layers", "remote_code"}
)


@dataclass(frozen=True)
class ModelType:
    """One transformers model type: the features that matter to training it, and its path."""

    name: str
    features: frozenset[str]
    path: Path
    moe_block: str | None = None  # the class of one MoE layer: a ZeRO-3 leaf module


@dataclass(frozen=True)
class ModelGroup:
    """One of LLaMA-Factory's text model groups."""

    name: str
    template: str
    model_types: tuple[str, ...]
    models: dict[str, str]  # display name -> hub id


@dataclass(frozen=True)
class TrainingPath:
    """How training batches reach a loaded model, and why."""

    padding_free: bool
    reason: str

    @property
    def name(self) -> Path:
        return "padding_free" if self.padding_free else "padded"


@functools.cache
def _table() -> dict[str, Any]:
    text = resources.files("tuneforge.models").joinpath("families.yaml").read_text("utf-8")
    return yaml.safe_load(text)


@functools.cache
def model_types() -> dict[str, ModelType]:
    """Every model type of the table, by name."""
    return {
        name: ModelType(name, frozenset(entry["features"]), entry["path"], entry.get("moe_block"))
        for name, entry in _table()["model_types"].items()
    }


@functools.cache
def model_groups() -> tuple[ModelGroup, ...]:
    """LLaMA-Factory's text model groups, in its order."""
    return tuple(
        ModelGroup(g["name"], g["template"], tuple(g["model_types"]), dict(g["models"]))
        for g in _table()["groups"]
    )


def training_path(hf_config: Any, trust_remote_code: bool = False) -> TrainingPath:
    """The path a model with this config trains on (see the module docstring). transformers
    runs a checkpoint's own code when it has some for causal LMs and it is trusted, even for
    a model type it implements itself."""
    model_type = getattr(hf_config, "model_type", "") or ""
    auto_map = getattr(hf_config, "auto_map", None)
    if trust_remote_code and isinstance(auto_map, dict) and "AutoModelForCausalLM" in auto_map:
        return TrainingPath(False, f"{model_type or 'this model'} runs its own remote code")
    known = model_types().get(model_type)
    if known is None:
        return TrainingPath(False, f"{model_type or 'this model type'} is not in the family table")
    if known.path == "padding_free":
        return TrainingPath(True, f"{model_type} is proven on it")
    because = sorted(known.features & PADDED_FEATURES) or ["not proven on the padding-free path"]
    return TrainingPath(False, f"{model_type}: {', '.join(because)}")


def log_training_path(path: TrainingPath) -> None:
    how = (
        "padding-free rows (sequence bounds in the attention)"
        if path.padding_free
        else "padded batches through transformers' own attention"
    )
    logger.info("Training path: %s (%s).", how, path.reason)
