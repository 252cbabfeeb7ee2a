"""The family table (models/families.yaml) says true things: its words are known, its paths
follow its features, its MoE blocks exist in transformers, and what a default config of each
type shows agrees with the features it lists."""

from __future__ import annotations

import importlib
import logging

import pytest

from tuneforge.models.families import (
    FEATURES,
    PADDED_FEATURES,
    PATHS,
    log_training_path,
    model_groups,
    model_types,
    training_path,
)

NATIVE = pytest.importorskip("transformers.models.auto.modeling_auto")
CAUSAL_LMS = NATIVE.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
TYPES = model_types()


def test_every_group_names_known_model_types_and_models():
    assert len(model_groups()) == 79  # LLaMA-Factory 0.9.5's text model groups
    for group in model_groups():
        assert set(group.model_types) <= TYPES.keys(), group.name
        assert group.models and all("/" in hub for hub in group.models.values()), group.name
    used = {t for g in model_groups() for t in g.model_types}
    assert used <= TYPES.keys()


@pytest.mark.parametrize("name", sorted(TYPES))
def test_features_and_path_agree(name):
    entry = TYPES[name]
    assert entry.features <= FEATURES
    assert entry.path in PATHS
    if entry.features & PADDED_FEATURES:
        assert entry.path == "padded"
    if name not in CAUSAL_LMS:  # transformers cannot build it: only its own code can
        assert "remote_code" in entry.features
    elif "moe" in entry.features:
        assert entry.moe_block, "an MoE type needs its block (a ZeRO-3 leaf module)"
    else:
        assert entry.moe_block is None


@pytest.mark.parametrize("name", sorted(n for n, t in TYPES.items() if t.moe_block))
def test_the_moe_block_is_a_class_of_the_type(name):
    folder = "llama4" if name == "llama4_text" else name
    module = importlib.import_module(f"transformers.models.{folder}.modeling_{folder}")
    assert isinstance(getattr(module, TYPES[name].moe_block), type)


def _default_config(name):
    from transformers import AutoConfig

    return AutoConfig.for_model(name)


@pytest.mark.parametrize("name", sorted(n for n in TYPES if n in CAUSAL_LMS))
def test_a_default_config_shows_the_listed_features(name):
    """What a config says outright must be listed (features a config only allows, such as
    Qwen2's optional window, are listed as well and not checked here)."""
    config = _default_config(name)
    features = TYPES[name].features
    shown = {
        "attn_softcap": getattr(config, "attn_logit_softcapping", None) is not None,
        "final_softcap": getattr(config, "final_logit_softcapping", None) is not None,
        "mla": getattr(config, "kv_lora_rank", None) is not None,
        "hybrid_layers": any(
            kind not in ("full_attention", "sliding_attention", "chunked_attention")
            for kind in getattr(config, "layer_types", None) or ()
        )
        or name in ("jamba", "falcon_h1"),  # their layer kinds live elsewhere in the config
        "sliding_window": bool(getattr(config, "sliding_window", None)),
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
    for feature, present in shown.items():
        if present:
            assert feature in features, f"{name}'s config shows {feature}"
    for feature in ("attn_softcap", "final_softcap", "mla"):
        if feature in features:
            assert shown[feature], f"{name} lists {feature}, its config has none"


def test_the_path_of_a_config(caplog):
    from transformers import LlamaConfig

    assert training_path(LlamaConfig()).padding_free
    remote = LlamaConfig(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    assert training_path(remote).padding_free  # untrusted: transformers runs its own code
    assert not training_path(remote, trust_remote_code=True).padding_free
    unknown = LlamaConfig()
    unknown.model_type = "brand_new"
    path = training_path(unknown)
    assert not path.padding_free and "not in the family table" in path.reason
    with caplog.at_level(logging.INFO, logger="tuneforge.models.families"):
        log_training_path(path)
    assert "padded batches through transformers' own attention" in caplog.text
