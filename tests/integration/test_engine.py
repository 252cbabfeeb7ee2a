"""The Hugging Face inference engine on a tiny chat model that knows a few answers by heart."""

from __future__ import annotations

import importlib.util
import threading

import pytest
import torch

from chat_model import (
    CONVERSATIONS,
    HELLO,
    JOKE,
    PARIS,
    cached_chat_model,
    chat_config,
    messages,
    random_lora,
)
from tuneforge.errors import ConfigError, DataError, ModelError, NotAvailableError, UserError
from tuneforge.inference import load_engine

HI = [{"role": "user", "content": "hi"}]
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = [{"role": "user", "content": "Count to five."}]


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir):
    return cached_chat_model(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(chat_model_dir):
    engine = load_engine(chat_config(chat_model_dir))
    yield engine
    engine.close()


def token_count(engine, text: str) -> int:
    return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


# ---- greedy answers, stop words, lengths -----------------------------------------------------


def test_greedy_answers_are_the_learned_ones_and_repeat(engine):
    for conversation in CONVERSATIONS:
        prompt = messages(conversation[:-1])
        first = engine.chat(prompt)
        assert len(first) == 1
        answer = first[0]
        assert answer.text == conversation[-1][1]
        assert answer.finish_reason == "stop"
        # the answer's tokens plus the <|im_end|> that ended it
        assert answer.completion_tokens == token_count(engine, answer.text) + 1
        assert answer.prompt_tokens == token_count(engine, engine.template.render_prompt(prompt))
        assert engine.chat(prompt) == first


def test_template_stop_word_ends_the_answer_and_is_not_in_it(engine):
    answer = engine.chat(HI, skip_special_tokens=False)[0]
    assert answer.text == HELLO
    assert "<|im_end|>" not in answer.text
    assert engine.template.stop_words == ("<|im_end|>",)


def test_stop_string_cuts_the_answer_where_it_occurs(engine):
    answer = engine.chat(COUNTING, stop=["three"])[0]
    assert answer.text == "one, two, "
    assert answer.finish_reason == "stop"
    full = engine.chat(COUNTING)[0]
    assert answer.completion_tokens < full.completion_tokens
    # the earliest of several stop strings wins; a single string is accepted too
    assert engine.chat(COUNTING, stop=["four", "two"])[0].text == "one, "
    assert engine.chat(CAPITAL, stop="Paris")[0].text == "The capital of France is "
    # a stop string that never occurs changes nothing
    assert engine.chat(COUNTING, stop=["seven"])[0] == full


def test_max_new_tokens_ends_with_length_and_exact_count(engine):
    full_ids = engine.tokenizer(HELLO, add_special_tokens=False)["input_ids"]
    answer = engine.chat(HI, max_new_tokens=4)[0]
    assert answer.finish_reason == "length"
    assert answer.completion_tokens == 4
    assert answer.text == engine.tokenizer.decode(full_ids[:4])
    # max_length alone bounds prompt + answer (LLaMA-Factory's meaning)
    prompt_tokens = answer.prompt_tokens
    bounded = engine.chat(HI, max_length=prompt_tokens + 3)[0]
    assert (bounded.completion_tokens, bounded.finish_reason) == (3, "length")
    with pytest.raises(ConfigError, match="max_length"):
        engine.chat(HI, max_length=prompt_tokens)


def test_streamed_pieces_join_to_the_chat_text(engine):
    cases = [
        (HI, {}),
        (COUNTING, {"stop": ["four"]}),
        (CAPITAL, {"max_new_tokens": 5}),
        (messages(CONVERSATIONS[3][:-1]), {}),
    ]
    for prompt, generation in cases:
        pieces = list(engine.stream_chat(prompt, **generation))
        assert len(pieces) > 1
        assert "".join(pieces) == engine.chat(prompt, **generation)[0].text
    assert "".join(engine.stream_chat(CAPITAL)) == PARIS


def test_several_answers(engine):
    greedy = engine.chat(CAPITAL, n=3)
    assert [answer.text for answer in greedy] == [PARIS] * 3
    sampled = engine.chat(CAPITAL, num_return_sequences=2, do_sample=True, temperature=1.0)
    assert len(sampled) == 2
    assert all(answer.finish_reason in ("stop", "length") for answer in sampled)
    beams = engine.chat(CAPITAL, num_beams=2, num_return_sequences=2)
    assert len(beams) == 2
    assert beams[0].text == PARIS
    assert "".join(engine.stream_chat(CAPITAL, num_beams=2)) == PARIS
    with pytest.raises(ConfigError, match="single answer"):
        engine.stream_chat(CAPITAL, n=2)
    with pytest.raises(ConfigError, match="num_beams"):
        engine.chat(CAPITAL, num_beams=2, n=3)


def test_bad_generation_keys_are_refused(engine):
    with pytest.raises(ConfigError, match="unknown generation key `temprature`.*temperature"):
        engine.chat(HI, temprature=0.5)
    with pytest.raises(ConfigError, match="temperature"):
        engine.chat(HI, temperature="hot")
    with pytest.raises(ConfigError, match="top_p"):
        engine.stream_chat(HI, top_p=0)  # checked when called, before any piece
    with pytest.raises(DataError, match="alternate"):
        engine.chat([{"role": "assistant", "content": "hello"}])


def test_system_prompt_tools_and_thinking_reach_the_prompt(engine, chat_model_dir):
    template = engine.template
    brief = engine.chat(HI, system="Be brief.")[0]
    assert brief.prompt_tokens == token_count(engine, template.render_prompt(HI, "Be brief."))
    assert engine.chat(HI, default_system="Be brief.")[0].prompt_tokens == brief.prompt_tokens
    tools = '[{"name": "weather", "description": "Weather in a city", "parameters": {}}]'
    with_tools = engine.chat(HI, tools=tools, max_new_tokens=1)[0]
    expected = template.render_prompt(HI, tools=tools)
    assert with_tools.prompt_tokens == token_count(engine, expected)
    assert "weather" in expected

    thinking = load_engine(chat_config(chat_model_dir, template="qwen3"))
    try:
        on = thinking.chat(HI, max_new_tokens=1, enable_thinking=True)[0].prompt_tokens
        off = thinking.chat(HI, max_new_tokens=1, enable_thinking=False)[0].prompt_tokens
        block = thinking.template.render_prompt(HI, enable_thinking=False)
        assert block.endswith("<think>\n\n</think>\n\n")
        assert off == on + token_count(thinking, "<think>\n\n</think>\n\n")
    finally:
        thinking.close()


# ---- concurrency ------------------------------------------------------------------------------


def test_concurrent_requests_get_what_they_get_alone(engine):
    alone = {
        "chat": engine.chat(CAPITAL)[0].text,
        "stream": "".join(engine.stream_chat(messages(CONVERSATIONS[3][:-1]))),
    }
    results: dict[str, list[str]] = {"chat": [], "stream": []}
    start = threading.Barrier(2)

    def ask_chat():
        start.wait()
        for _ in range(3):
            results["chat"].append(engine.chat(CAPITAL)[0].text)

    def ask_stream():
        start.wait()
        for _ in range(3):
            results["stream"].append("".join(engine.stream_chat(messages(CONVERSATIONS[3][:-1]))))

    threads = [threading.Thread(target=ask_chat), threading.Thread(target=ask_stream)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == {"chat": [alone["chat"]] * 3, "stream": [alone["stream"]] * 3}
    assert alone == {"chat": PARIS, "stream": JOKE}


def test_a_stream_closed_early_frees_the_engine(engine):
    stream = engine.stream_chat(HI)
    first = next(stream)
    assert HELLO.startswith(first)
    stream.close()
    assert engine.chat(HI)[0].text == HELLO


# ---- adapters ---------------------------------------------------------------------------------


def _peft_greedy(model_dir, adapters, prompt_ids, stop_id, max_new_tokens=24):
    """peft's own answer: adapters before the last merged, the last one applied live."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for path in adapters[:-1]:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    model = PeftModel.from_pretrained(model, adapters[-1]).eval()
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_id,
            pad_token_id=stop_id,
        )
    new = output[0, len(prompt_ids) :].tolist()
    return new[: new.index(stop_id)] if stop_id in new else new


@pytest.mark.slow
def test_lora_adapters_change_the_answer_like_peft(engine, chat_model_dir, tmp_path):
    first = random_lora(chat_model_dir, tmp_path / "first", seed=1)
    second = random_lora(chat_model_dir, tmp_path / "second", seed=2, base_adapters=[first])
    prompt_ids = engine.tokenizer(engine.template.render_prompt(HI), add_special_tokens=False)[
        "input_ids"
    ]
    stop_id = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for adapters in ([first], [first, second]):
        adapted = load_engine(chat_config(chat_model_dir, adapter_name_or_path=adapters))
        try:
            answer = adapted.chat(HI, max_new_tokens=24, skip_special_tokens=False)[0]
        finally:
            adapted.close()
        expected = _peft_greedy(chat_model_dir, adapters, prompt_ids, stop_id)
        assert answer.text == engine.tokenizer.decode(expected, skip_special_tokens=False)
        assert answer.text != HELLO
    with pytest.raises(ConfigError, match="`adapter_name_or_path`: folder .* does not exist"):
        load_engine(chat_config(chat_model_dir, adapter_name_or_path=[str(tmp_path / "none")]))


# ---- reward scores ----------------------------------------------------------------------------


def _write_value_head(folder, hidden: int, seed: int, keys=("weight", "bias")):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, hidden, generator=generator)
    bias = torch.randn(1, generator=generator)
    tensors = dict(zip([f"v_head.summary.{key}" for key in keys], (weight, bias)))
    save_file(tensors, str(folder / "value_head.safetensors"))
    return weight, bias


def _reference_scores(model_dir, tokenizer, texts, weight, bias):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores = []
    with torch.no_grad():
        for text in texts:  # one text at a time: no padding involved
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            last = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
            scores.append((last @ weight[0] + bias[0]).item())
    return scores


def test_get_scores_with_a_value_head(engine, chat_model_dir, tmp_path):
    import shutil

    assert engine.is_reward_model is False
    with pytest.raises(ConfigError, match="no value head"):
        engine.get_scores(["hello"])

    reward_dir = tmp_path / "reward"
    shutil.copytree(chat_model_dir, reward_dir)
    hidden = engine.model.config.hidden_size
    weight, bias = _write_value_head(reward_dir, hidden, seed=3)
    texts = ["hi", "The capital of France is Paris.", "a longer text that needs padding " * 3]
    reward = load_engine(chat_config(reward_dir))
    try:
        assert reward.is_reward_model is True
        scores = reward.get_scores(texts)
        with pytest.raises(DataError, match="over max_length 2"):
            reward.get_scores(texts, max_length=2)
    finally:
        reward.close()
    expected = _reference_scores(chat_model_dir, engine.tokenizer, texts, weight, bias)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len(set(scores)) == 3

    # LLaMA-Factory's value_head.bin (written when save_safetensors is off) loads the same
    (reward_dir / "value_head.safetensors").unlink()
    torch.save(
        {"v_head.summary.weight": weight, "v_head.summary.bias": bias},
        reward_dir / "value_head.bin",
    )
    from_bin = load_engine(chat_config(reward_dir))
    try:
        assert from_bin.get_scores(texts) == pytest.approx(scores, abs=1e-5)
    finally:
        from_bin.close()


def test_value_head_in_the_adapter_folder_and_malformed_heads(engine, chat_model_dir, tmp_path):
    adapter = random_lora(chat_model_dir, tmp_path / "adapter", seed=4)
    hidden = engine.model.config.hidden_size
    _write_value_head(tmp_path / "adapter", hidden, seed=5)
    scored = load_engine(chat_config(chat_model_dir, adapter_name_or_path=[adapter]))
    try:
        assert scored.is_reward_model
        assert len(scored.get_scores(["hi", "hello there"])) == 2
    finally:
        scored.close()
    _write_value_head(tmp_path / "adapter", hidden, seed=5, keys=("w", "b"))
    with pytest.raises(ModelError, match="v_head.summary.weight"):
        load_engine(chat_config(chat_model_dir, adapter_name_or_path=[adapter]))


# ---- backends ---------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_names_the_extra(chat_model_dir):
    with pytest.raises(NotAvailableError, match=r"tuneforge\[vllm\]"):
        load_engine(chat_config(chat_model_dir, infer_backend="vllm"))


def test_sglang_backend_is_refused_clearly(chat_model_dir):
    with pytest.raises(UserError, match="sglang"):  # refused when the config is built
        load_engine(chat_config(chat_model_dir, infer_backend="sglang"))


def test_vllm_engine_arguments_follow_the_config(chat_model_dir):
    from tuneforge.inference.vllm import engine_arguments

    config = chat_config(
        chat_model_dir,
        adapter_name_or_path=["some/adapter"],
        vllm_maxlen=512,
        vllm_gpu_util=0.5,
        vllm_enforce_eager=True,
        vllm_max_lora_rank=16,
        infer_dtype="bfloat16",
        vllm_config={"max_num_seqs": 8, "gpu_memory_utilization": 0.6},
    )
    arguments = engine_arguments(config, device_count=2)
    assert arguments["model"] == str(chat_model_dir)
    assert arguments["max_model_len"] == 512
    assert arguments["enforce_eager"] is True
    assert arguments["enable_lora"] is True
    assert arguments["max_lora_rank"] == 16
    assert arguments["dtype"] == "bfloat16"
    assert arguments["tensor_parallel_size"] == 2
    assert arguments["max_num_seqs"] == 8
    assert arguments["gpu_memory_utilization"] == 0.6  # vllm_config wins over vllm_gpu_util
