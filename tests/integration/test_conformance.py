"""The conformance suite: every model type of the family table, through tuneforge's own
loading, training, LoRA, generation and export, against transformers' eager implementation of
the same model.

Each family is a tiny random model (family_configs.py) with its features switched on, saved
with a tiny tokenizer and loaded the way a user's model is (models/loader.py: the family
table's training path, its attention, the lean layers). The checks:
- step: the loss and every gradient of one training step, full and LoRA, on a padding-free
  batch (and the same examples packed into one row), equal the eager model's on a right-padded
  batch of the same examples (fp32);
- lora_targets: `lora_target: all` adapts the language model's linear layers, never a router;
- generation: greedy generation through the engine equals the eager model's;
- export: a LoRA adapter merged by `tuneforge export` reloads in plain transformers with the
  logits of the adapted eager model.
`pytest -s` prints the family x check table at the end (tests/integration/conftest.py).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from family_configs import MODEL_TYPES, tiny_config

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.models.families import model_types, training_path
from tuneforge.training.collate import PaddingFreeCollator
from tuneforge.training.loss import language_model_loss

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
LENGTHS = (17, 9, 23)  # longer and shorter than the window
PROMPT = 3  # untrained prompt tokens of each example
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tuneforge.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer("qwen2", vocab_size=400)


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, tokenizer):
    """The saved tiny model of a family, built once per module."""
    root = tmp_path_factory.mktemp("families")
    return functools.cache(lambda family: save_family(root / family, family, tokenizer))


def save_family(folder: Path, family: str, tokenizer) -> Path:
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("sinks"):  # big enough to take real probability mass
                parameter.copy_(torch.linspace(-1.0, 2.0, parameter.numel()))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def examples(vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    result = []
    for length in LENGTHS:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        result.append({"input_ids": ids, "labels": [IGNORE_INDEX] * PROMPT + ids[PROMPT:]})
    return result


def packed(features: list[dict]) -> list[dict]:
    """The same examples as one packed dataset row."""
    return [
        {
            "input_ids": [t for f in features for t in f["input_ids"]],
            "labels": [t for f in features for t in f["labels"]],
            "lengths": [len(f["input_ids"]) for f in features],
        }
    ]


def eager_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float()


def padded_reference_loss(model, features) -> torch.Tensor:
    """Mean token loss of transformers' own forward on a right-padded batch with a mask."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), longest, dtype=torch.long)
    mask = torch.zeros(len(features), longest, dtype=torch.long)
    targets = torch.full((len(features), longest), IGNORE_INDEX)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        ids[row, :n] = torch.tensor(feature["input_ids"])
        mask[row, :n] = 1
        targets[row, : n - 1] = torch.tensor(feature["labels"][1:])
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
    )


def run_config(folder: Path, output: Path, **keys):
    from tuneforge.config.loader import build_config

    return build_config(
        {
            "model_name_or_path": str(folder),
            "template": "qwen",
            "dataset_dir": str(DATA_DIR),
            "dataset": "identity",
            "output_dir": str(output / "out"),
            "do_train": True,
            "cutoff_len": 128,
            "report_to": "none",
            "lora_dropout": 0.0,
            **keys,
        }
    )


def product_model(folder: Path, output: Path, method: str):
    """The family's model as `tuneforge train` prepares it (with LoRA: adapters whose B is
    not zero, so that every adapter weight gets a gradient)."""
    from tuneforge.adapters.lora import apply_lora
    from tuneforge.models.loader import load_model
    from tuneforge.training.arguments import effective_training_arguments

    config = run_config(folder, output, finetuning_type=method)
    tokenizer = _tokenizer(folder)
    training = effective_training_arguments(config)
    model = load_model(config.model, tokenizer, (), training=training, cutoff_len=128)
    if method == "lora":
        model = apply_lora(model, config.finetuning, config.model)
        torch.manual_seed(2)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.1)
    return model.train()


@functools.cache
def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def with_same_lora(eager, product):
    """The eager model with the product's adapters (same config, same weights)."""
    from peft import get_peft_model

    reference = get_peft_model(eager, product.peft_config["default"])
    missing, unexpected = reference.load_state_dict(product.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "lora" in k]
    return reference


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def no_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# ---- the table and the suite cover each other ------------------------------------------------


def test_every_model_type_transformers_implements_is_in_the_suite():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    native = {name for name in model_types() if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}
    assert native == set(MODEL_TYPES)
    remote = {n for n in model_types() if n not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}
    assert all("remote_code" in model_types()[name].features for name in remote)


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_the_family_takes_the_path_of_the_table(family):
    path = training_path(tiny_config(family))
    assert path.name == model_types()[family].path


# ---- the checks, family by family ------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", MODEL_TYPES)
def test_step(family, method, family_dir, tmp_path):
    folder = family_dir(family)
    product = product_model(folder, tmp_path, method)
    eager = eager_model(folder).train()
    if method == "lora":
        eager = with_same_lora(eager, product)
    for model in (eager, product):
        no_dropout(model)
    features = examples(product.config.vocab_size)
    expected = padded_reference_loss(eager, features)
    expected.backward()
    batch = PaddingFreeCollator()(features)
    loss, _ = language_model_loss(product, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=LOSS_RTOL, atol=1e-6)
    wanted, got = gradients(eager), gradients(product)
    assert wanted.keys() == got.keys() and wanted
    for name, gradient in wanted.items():
        torch.testing.assert_close(got[name], gradient, rtol=GRAD_RTOL, atol=1e-6, msg=name)
    if method == "full":  # the same examples packed into one dataset row: the same batch
        row = PaddingFreeCollator()(packed(features))
        assert torch.equal(row.input_ids, batch.input_ids)
        assert torch.equal(row.cu_seq_lens, batch.cu_seq_lens)
        with torch.no_grad():
            torch.testing.assert_close(language_model_loss(product, row)[0], loss.detach())


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_lora_targets(family, family_dir, tmp_path):
    """Every linear layer of the decoder, and nothing else: no output layer, no router (a
    linear layer of the family's MoE block itself, beside its experts)."""
    from tuneforge.utils.modules import decoder_of

    product = product_model(family_dir(family), tmp_path, "lora")
    base = product.get_base_model()
    adapted = {name for name, module in base.named_modules() if hasattr(module, "lora_A")}
    decoder = next(name for name, module in base.named_modules() if module is decoder_of(base))
    linear = {
        name
        for name, module in base.named_modules()
        if type(module).__name__ in ("Linear", "Conv1D")
        and ".lora_" not in name
        and not name.endswith(".base_layer")  # peft's wrapped original
    }
    output_layer = next(n for n, m in base.named_modules() if m is base.get_output_embeddings())
    block = model_types()[family].moe_block
    blocks = [n for n, m in base.named_modules() if type(m).__name__ == block]
    assert bool(blocks) == ("moe" in model_types()[family].features)
    # a router: a linear layer of the block itself, or one inside its router module
    routers = {
        name
        for name in linear
        for b in blocks
        if name.rpartition(".")[0] == b
        or (
            name.startswith(b + ".")
            and re.search(
                "router|gate$", type(base.get_submodule(name.rpartition(".")[0])).__name__.lower()
            )
        )
    }
    state_space = {
        n
        for n in linear
        if re.search("Mamba|Mixer", type(base.get_submodule(n.rpartition(".")[0])).__name__)
    }
    assert output_layer not in adapted
    assert not routers & adapted, "a router got an adapter"
    assert not state_space & adapted, "a state-space mixer got an adapter"
    wanted = {n for n in linear - routers - state_space if n.startswith(decoder + ".")}
    assert all(n.startswith(decoder + ".") for n in adapted)
    # peft's transformers-5 MoE conversion takes these names for the fused experts and
    # drops the dense layers of the same names (the loader warns of it): the experts must
    # then have adapters
    dropped = wanted - adapted
    assert {n.rpartition(".")[2] for n in dropped} <= PEFT_RENAMED
    if dropped:
        assert any(n.endswith(".experts") for n in adapted)


PEFT_RENAMED = {"gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_generation(family, family_dir):
    from chat_model import chat_config
    from tuneforge.inference import load_engine

    folder = family_dir(family)
    engine = load_engine(chat_config(folder))
    try:
        prompt = examples(engine.model.config.vocab_size)[0]["input_ids"][:14]
        settings = engine.settings({"max_new_tokens": 8})
        got = engine._generate(prompt, settings, 8)[0]
        eager = eager_model(folder).eval()
        with torch.no_grad():
            wanted = eager.generate(
                torch.tensor([prompt]),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=engine.model.generation_config.eos_token_id,
                pad_token_id=engine.model.generation_config.pad_token_id,
            )[0, len(prompt) :].tolist()
    finally:
        engine.close()
    assert got[: len(wanted)] == wanted


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_export(family, family_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.export import export_model

    folder = family_dir(family)
    product = product_model(folder, tmp_path, "lora")
    product.save_pretrained(tmp_path / "adapter")
    reference = with_same_lora(eager_model(folder), product).eval()
    config = run_config(
        folder,
        tmp_path,
        adapter_name_or_path=str(tmp_path / "adapter"),
        export_dir=str(tmp_path / "merged"),
        do_train=False,
        infer_dtype="float32",
    )
    export_model(config)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    ids = torch.tensor([examples(product.config.vocab_size)[2]["input_ids"]])
    with torch.no_grad():
        wanted = reference(input_ids=ids).logits
        got = merged.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, wanted, rtol=1e-4, atol=1e-5)
