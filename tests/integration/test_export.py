"""`tuneforge export` on the tiny model: LoRA adapters merged (verified) and reloaded with plain
transformers, shards, tokenizer chat_template, generation config, Ollama Modelfile, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, training_config
from tuneforge.config.loader import build_config, load_config
from tuneforge.errors import ConfigError, DataError, ModelError, NotAvailableError
from tuneforge.export import export_model
from tuneforge.export.ollama import build_modelfile, go_template
from tuneforge.export.quantize import calibration_texts
from tuneforge.stages import run_stage
from tuneforge.templates import Template, get_template

SHARD_GB = 0.0012  # 1.2 MB: the tiny model's embedding (1 MB) fits, the whole model does not
PROBE = "Who are you? Tell me about the weather today."
CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def train_adapter(model_dir, out, **keys):
    keys = {
        "finetuning_type": "lora",
        "learning_rate": 1e-2,
        "max_steps": 3,
        "disable_gradient_checkpointing": True,
        **keys,
    }
    assert run_stage(training_config(model_dir, out, **keys)) == 0
    return out


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir, tmp_path_factory):
    return train_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "out")


@pytest.fixture(scope="module")
def dora_adapter(tiny_model_dir, tmp_path_factory):
    """DoRA, with every norm layer trained whole (`additional_target`: peft's modules_to_save)."""
    out = tmp_path_factory.mktemp("dora") / "out"
    return train_adapter(tiny_model_dir, out, use_dora=True, additional_target="norm")


@pytest.fixture
def zero_adapter(tiny_model_dir, tmp_path):
    """An adapter as peft initialises it: lora_B is zero, so it changes nothing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "zero")
    return tmp_path / "zero"


def export(model_dir, export_dir, **keys):
    raw = {"model_name_or_path": str(model_dir), "template": "qwen", "export_dir": str(export_dir)}
    return export_model(build_config({**raw, **keys}))


def probe_ids(model_dir):
    from transformers import AutoTokenizer

    return torch.tensor([AutoTokenizer.from_pretrained(model_dir)(PROBE)["input_ids"]])


def base_plus_adapter_logits(model_dir, adapter, ids):
    """Logits of the base model with the adapter applied by peft, unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(adapter)).eval()(input_ids=ids).logits


def reloaded_logits(export_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_lora_round_trip(tiny_model_dir, lora_adapter, tmp_path):
    out = tmp_path / "export"
    result = export(
        tiny_model_dir, out, adapter_name_or_path=str(lora_adapter), export_size=SHARD_GB
    )

    # the merged model, reloaded with plain transformers, is base + adapter
    ids = probe_ids(tiny_model_dir)
    expected = base_plus_adapter_logits(tiny_model_dir, lora_adapter, ids)
    torch.testing.assert_close(reloaded_logits(out, ids), expected, atol=1e-5, rtol=1e-5)
    check = result.merges[0]
    assert check.parameters == 14  # 7 linear layers x 2 decoder layers
    assert check.adapter_effect > 100 * check.logit_error

    # several shards, each within export_size, and an index that covers every tensor
    assert len(result.weight_files) >= 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == result.weight_files
    stored = {}
    for name in result.weight_files:
        tensors = load_file(out / name)
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= SHARD_GB * 1e9
        stored.update({key: name for key in tensors})
    assert stored == index["weight_map"]
    assert "tuneforge" not in (out / "config.json").read_text()  # no custom attention saved


@pytest.mark.slow
def test_tokenizer_generation_config_and_modelfile(tiny_model_dir, lora_adapter, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    out = tmp_path / "export"
    result = export(tiny_model_dir, out, adapter_name_or_path=str(lora_adapter))
    tokenizer = AutoTokenizer.from_pretrained(out)
    template = get_template("qwen", tokenizer)
    rendered = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    assert rendered == template.render_prompt(CONVERSATION[1:], system=CONVERSATION[0]["content"])
    assert tokenizer.eos_token == "<|im_end|>"  # qwen's replace_eos

    stops = [tokenizer.convert_tokens_to_ids(word) for word in template.stop_words]
    assert GenerationConfig.from_pretrained(out).eos_token_id == stops == result.stop_token_ids
    assert (out / "Modelfile").read_text() == build_modelfile(template)
    record = json.loads((out / "tuneforge_export.json").read_text())
    assert record["adapter_name_or_path"] == [str(lora_adapter)]
    assert record["merges"][0]["parameters"] == 14


@pytest.mark.slow
def test_dora_with_modules_trained_whole(tiny_model_dir, dora_adapter, tmp_path):
    out = tmp_path / "export"
    result = export(tiny_model_dir, out, adapter_name_or_path=str(dora_adapter))
    ids = probe_ids(tiny_model_dir)
    expected = base_plus_adapter_logits(tiny_model_dir, dora_adapter, ids)
    torch.testing.assert_close(reloaded_logits(out, ids), expected, atol=1e-5, rtol=1e-5)
    assert result.merges[0].parameters == 14 + 5  # LoRA layers and 5 norms trained whole
    merged = load_file(out / "model.safetensors")["model.norm.weight"]
    trained = load_file(dora_adapter / "adapter_model.safetensors")
    torch.testing.assert_close(merged, trained["base_model.model.model.norm.weight"])


@pytest.mark.slow
def test_adapters_merge_in_order(tiny_model_dir, lora_adapter, dora_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "export"
    adapters = f"{lora_adapter},{dora_adapter}"
    result = export(tiny_model_dir, out, adapter_name_or_path=adapters)
    assert [check.adapter for check in result.merges] == [str(lora_adapter), str(dora_adapter)]
    ids = probe_ids(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    first = PeftModel.from_pretrained(base, str(lora_adapter)).merge_and_unload()
    with torch.no_grad():
        expected = PeftModel.from_pretrained(first, str(dora_adapter)).eval()(input_ids=ids).logits
    torch.testing.assert_close(reloaded_logits(out, ids), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_legacy_format_and_value_head(tiny_model_dir, lora_adapter, tmp_path):
    adapter = tmp_path / "reward_adapter"
    shutil.copytree(lora_adapter, adapter)
    head = {"v_head.summary.weight": torch.randn(1, 64), "v_head.summary.bias": torch.randn(1)}
    save_file(head, adapter / "value_head.safetensors")

    out = tmp_path / "export"
    result = export(
        tiny_model_dir,
        out,
        adapter_name_or_path=str(adapter),
        export_size=SHARD_GB,
        export_legacy_format=True,
    )
    assert result.weight_files == [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ]
    assert not list(out.glob("model*.safetensors"))
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    assert set(index["weight_map"].values()) == set(result.weight_files)
    ids = probe_ids(tiny_model_dir)
    expected = base_plus_adapter_logits(tiny_model_dir, adapter, ids)
    torch.testing.assert_close(reloaded_logits(out, ids), expected, atol=1e-5, rtol=1e-5)
    copied = load_file(out / "value_head.safetensors")
    assert copied.keys() == head.keys()
    for name, tensor in head.items():
        assert torch.equal(copied[name], tensor)
    from tuneforge.models.value_head import load_value_head

    reloaded = load_value_head(out)  # what a reward model served from the export reads
    assert torch.equal(reloaded.summary.weight.data, head["v_head.summary.weight"])


def test_full_model_example_resaves_in_bfloat16(tiny_model_dir, tmp_path):
    out = tmp_path / "full"
    overrides = [f"model_name_or_path={tiny_model_dir}", f"export_dir={out}"]
    result = export_model(load_config(REPO / "examples/merge/merge_full.yaml", overrides))
    assert result.merges == []
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    weights = load_file(out / "model.safetensors")
    original = load_file(tiny_model_dir / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[name], original[name].to(torch.bfloat16))


def leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_zero_adapter_is_refused(tiny_model_dir, zero_adapter, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ModelError, match="changes nothing"):
        export(tiny_model_dir, out, adapter_name_or_path=str(zero_adapter))
    assert not out.exists()
    assert leftovers(tmp_path) == []  # the staging folder is gone too


@pytest.mark.slow
def test_a_merge_that_misses_the_weights_is_refused(
    tiny_model_dir, lora_adapter, tmp_path, monkeypatch
):
    from peft.tuners.lora import LoraModel

    # a broken merge: unloads the adapter without merging it
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, **kw: self.unload())
    with pytest.raises(ModelError, match="left 14 of 14 adapted layers unchanged"):
        export(tiny_model_dir, tmp_path / "export", adapter_name_or_path=str(lora_adapter))
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_a_merge_with_wrong_logits_is_refused(tiny_model_dir, lora_adapter, tmp_path, monkeypatch):
    from peft.tuners.lora import LoraModel

    merge = LoraModel.merge_and_unload

    def merge_twice_in_one_layer(self, **kwargs):
        layer = self.model.model.layers[0].self_attn.q_proj
        layer.get_base_layer().weight.data += layer.get_delta_weight("default")
        return merge(self, **kwargs)

    monkeypatch.setattr(LoraModel, "merge_and_unload", merge_twice_in_one_layer)
    with pytest.raises(ModelError, match="logits differ from base \\+ adapter"):
        export(tiny_model_dir, tmp_path / "export", adapter_name_or_path=str(lora_adapter))


@pytest.mark.slow
def test_bad_adapters_fail_clearly(tiny_model_dir, lora_adapter, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ConfigError, match="does not exist"):
        export(tiny_model_dir, out, adapter_name_or_path=str(tmp_path / "no" / "adapter"))
    with pytest.raises(ModelError, match="cannot load the adapter"):
        export(tiny_model_dir, out, adapter_name_or_path=str(tiny_model_dir))  # not an adapter
    partial = tmp_path / "partial"
    shutil.copytree(lora_adapter, partial)
    weights = load_file(partial / "adapter_model.safetensors")
    kept = {name: t for name, t in weights.items() if ".layers.1." not in name}
    save_file(kept, partial / "adapter_model.safetensors")
    with pytest.raises(ModelError, match="does not hold weights for every layer"):
        export(tiny_model_dir, out, adapter_name_or_path=str(partial))
    assert not out.exists()


def test_export_dir_rules(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="`export_dir` is required"):
        export_model(build_config({"model_name_or_path": str(tiny_model_dir)}))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and was not written by `tuneforge export`"):
        export(tiny_model_dir, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    # a previous export is replaced whole: no shard of the old one is left behind
    out = tmp_path / "export"
    assert len(export(tiny_model_dir, out, export_size=SHARD_GB).weight_files) == 2
    assert export(tiny_model_dir, out).weight_files == ["model.safetensors"]
    assert not list(out.glob("model-*")) and not (out / "model.safetensors.index.json").exists()
    assert leftovers(tmp_path) == []


def test_hub_push_offline_fails_fast(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("tuneforge.utils.hub.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelError, match="cannot be reached"):
        export(tiny_model_dir, tmp_path / "export", export_hub_model_id="me/tiny")
    assert not (tmp_path / "export").exists()


def test_hub_push_failure_keeps_the_export(tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    def refuse(self, *args, **kwargs):
        raise OSError("401 Client Error: Unauthorized")

    monkeypatch.setattr("tuneforge.utils.hub.hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    out = tmp_path / "export"
    with pytest.raises(ModelError, match="Unauthorized. The export itself is complete"):
        export(tiny_model_dir, out, export_hub_model_id="me/tiny")
    assert (out / "model.safetensors").is_file()


def test_gptq_needs_its_packages_and_no_adapters(tiny_model_dir, tmp_path):
    import importlib.util

    keys = {"export_quantization_bit": 4, "export_quantization_dataset": str(tmp_path / "c.jsonl")}
    with pytest.raises(ConfigError, match="merge the adapters first"):
        export(tiny_model_dir, tmp_path / "q", adapter_name_or_path=str(tmp_path), **keys)
    with pytest.raises(ConfigError, match="`quantization_bit` loads the base model quantized"):
        export(tiny_model_dir, tmp_path / "q", quantization_bit=4)
    if all(importlib.util.find_spec(name) for name in ("optimum", "gptqmodel")):
        pytest.skip("optimum and gptqmodel are installed")
    with pytest.raises(NotAvailableError, match=r"pip install 'tuneforge\[gptq\]'"):
        export(tiny_model_dir, tmp_path / "q", **keys)


def test_calibration_windows(tiny_tokenizer, tmp_path):
    documents = ["short", " ".join(f"word{i}" for i in range(200)), "tiny too"]
    path = tmp_path / "calibration.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in documents), encoding="utf-8")
    samples = calibration_texts(str(path), tiny_tokenizer, nsamples=5, maxlen=16, seed=1)
    assert len(samples) == 5 and len(set(samples)) > 1
    for sample in samples:
        assert sample in documents[1]
        assert len(tiny_tokenizer(sample, add_special_tokens=False)["input_ids"]) >= 14
    with pytest.raises(DataError, match="no document .* is longer than"):
        calibration_texts(str(path), tiny_tokenizer, nsamples=1, maxlen=1000)


def test_modelfile_for_qwen(tiny_tokenizer):
    template = get_template("qwen", tiny_tokenizer)
    expected_template = (
        "{{ $replied := false }}"
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ range $i, $m := .Messages }}"
        '{{ if eq .Role "user" }}{{ if $replied }}\n{{ $replied = false }}{{ end }}'
        "<|im_start|>user\n{{ .Content }}<|im_end|>\n"
        "{{ if eq (len (slice $.Messages $i)) 1 }}<|im_start|>assistant\n{{ end }}"
        '{{ else if eq .Role "tool" }}{{ if $replied }}\n{{ $replied = false }}{{ end }}'
        "<|im_start|>user\n<tool_response>\n{{ .Content }}\n</tool_response><|im_end|>\n"
        "{{ if eq (len (slice $.Messages $i)) 1 }}<|im_start|>assistant\n{{ end }}"
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>'
        "{{ $replied = true }}{{ end }}{{ end }}"
    )
    assert go_template(template) == expected_template
    assert build_modelfile(template) == (
        "# Ollama Modelfile written by tuneforge export\n\nFROM .\n\n"
        f'TEMPLATE """{expected_template}"""\n\n'
        'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""\n\n'
        'PARAMETER stop "<|im_end|>"\n'
    )


def test_modelfile_system_in_user_reasoning_and_escaping(tiny_tokenizer):
    gemma = go_template(get_template("gemma", tiny_tokenizer))
    assert "{{ if .System }}" not in gemma  # the system prompt goes into the first user turn
    assert (
        "<start_of_turn>user\n{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}"
        "{{ .Content }}<end_of_turn>\n{{ $first = false }}"
    ) in gemma
    qwen3 = go_template(get_template("qwen3", tiny_tokenizer, enable_thinking=False))
    empty = "<think>\n\n</think>\n\n"
    assert f'"assistant" }}}}<|im_start|>assistant\n{empty}{{{{ .Content }}}}' in qwen3
    assert f"1 }}}}<|im_start|>assistant\n{empty}{{{{ end }}}}" in qwen3  # thinking off
    thinking = go_template(get_template("qwen3", tiny_tokenizer, enable_thinking=True))
    assert "1 }}<|im_start|>assistant\n{{ end }}" in thinking
    braces = go_template(Template("braces", user="{{{content}}}", stop_words=("}",)))
    assert '{{ "{{" }}{{ .Content }}}}' in braces


@pytest.mark.slow
def test_cli(tiny_model_dir, lora_adapter, zero_adapter, tmp_path):
    def tuneforge(*overrides):
        command = [sys.executable, "-m", "tuneforge", "export", "examples/merge/merge_lora.yaml"]
        base = [f"model_name_or_path={tiny_model_dir}"]
        return subprocess.run(
            [*command, *base, *overrides], capture_output=True, text=True, timeout=300, cwd=REPO
        )

    out = tmp_path / "export"
    done = tuneforge(f"adapter_name_or_path={lora_adapter}", f"export_dir={out}")
    assert done.returncode == 0, done.stderr
    assert f"Exported to {out}" in done.stdout and "14 weights changed" in done.stdout
    assert (out / "Modelfile").is_file()
    for overrides, message in (
        ((f"adapter_name_or_path={zero_adapter}", f"export_dir={tmp_path / 'z'}"), "nothing"),
        (("export_sise=1",), "unknown config key `export_sise`"),
    ):
        failed = tuneforge(*overrides)
        assert failed.returncode == 2, failed.stderr
        assert message in failed.stderr and "Traceback" not in failed.stderr
