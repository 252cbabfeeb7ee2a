"""The offline tiny-model builder: deterministic, loadable, and usable by the rest of the suite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.models import tiny

TEXTS = [
    "Who are you? I am a small model, trained on 54 KB of text.",
    "你是谁？我是一个很小的语言模型。",
    "Mixed: 你好, world!\n\tdef f(x):\n        return x ** 2  # 3.14159\n",
    "Unseen bytes still work: ü é ß ∑ 🙂 — ok.",
]


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    a = tiny.build_tiny_model(tmp_path / "a", seed=3)
    b = tiny.build_tiny_model(tmp_path / "b", seed=3)
    hashes = _file_hashes(a)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= hashes.keys()
    assert hashes == _file_hashes(b)


def test_seed_changes_weights_only(tmp_path: Path) -> None:
    a = _file_hashes(tiny.build_tiny_model(tmp_path / "a", seed=0))
    b = _file_hashes(tiny.build_tiny_model(tmp_path / "b", seed=1))
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["tokenizer.json"] == b["tokenizer.json"]


def test_loads_back_and_forward_pass(built: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert model.config.vocab_size == len(tokenizer) == 4096
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.dtype == torch.float32
    batch = tokenizer(["Hello there.", "A longer second line of text."], padding=False)
    ids = torch.tensor([batch.input_ids[1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_special_tokens_are_single_tokens(built: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    tokens = [*tiny.CONTROL_TOKENS, *tiny.TEXT_MARKERS, *tiny.default_extra_special_tokens()]
    for token in tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert tokenizer.convert_ids_to_tokens(ids[0]) == token
    # Reasoning and tool-call markers survive skip_special_tokens, as in Qwen's tokenizers.
    kept = "<think>a</think><tool_call>b</tool_call>"
    ids = tokenizer.encode(kept + "<|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == kept


def test_arch_roles(built: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    spec = tiny.ARCHS[model.config.model_type]
    assert tokenizer.eos_token == spec.eos and tokenizer.pad_token == spec.pad
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(list(spec.stop))
    starts_with_bos = tokenizer("hi").input_ids[0] == tokenizer.bos_token_id
    assert starts_with_bos == spec.add_bos
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "hi" in prompt and prompt.endswith("\n")


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(built: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_generate_runs(built: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    ids = torch.tensor([tokenizer.encode("The sea", add_special_tokens=False)])
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_cached_model_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tiny.cached_tiny_model(cache_dir=tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny, "build_tiny_model", fail)
    second = tiny.cached_tiny_model(cache_dir=tmp_path)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.iterdir()} == mtimes
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folder left behind


def test_cache_key_depends_on_arguments(tmp_path: Path) -> None:
    key = tiny._cache_key("qwen2", "tiny", 4096, 0, None)
    assert key == tiny._cache_key("qwen2", "tiny", 4096, 0, None)
    assert key != tiny._cache_key("qwen2", "tiny", 4096, 1, None)
    assert key != tiny._cache_key("llama", "tiny", 4096, 0, None)
    assert key != tiny._cache_key("qwen2", "tiny", 4096, 0, ["<|new|>"])


def test_explicit_extra_tokens_and_bad_arguments(tmp_path: Path) -> None:
    tokenizer = tiny.build_tiny_tokenizer(extra_special_tokens=["<|custom|>"], vocab_size=1000)
    assert len(tokenizer) == 1000
    assert len(tokenizer.encode("<|custom|>", add_special_tokens=False)) == 1
    with pytest.raises(ValueError, match="choose one of: qwen2, llama"):
        tiny.build_tiny_model(tmp_path, arch="gpt2")
    with pytest.raises(ValueError, match="choose one of: tiny, small"):
        tiny.build_tiny_model(tmp_path, size="huge")


def test_global_rng_is_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_model(tmp_path, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_cli_prints_path_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny.main([str(tmp_path / "m"), "--arch", "llama", "--seed", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(tmp_path / "m")
    assert lines[1].startswith("llama/tiny: ") and "vocab 4,096" in lines[1]
