"""Encoding: label masks, truncation that keeps the assistant header and the response's start,
mask_history, train_on_prompt, and each kind of example."""

from __future__ import annotations

import pytest

from tuneforge.data.encode import IGNORE_INDEX, EncodeOptions, Tokenize, encode_batch, fit_turns
from tuneforge.data.example import Example, Message
from tuneforge.templates import get_template

HEADER = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen(tiny_tokenizer):
    return get_template("qwen", tiny_tokenizer)


def conversation(turns: int, words: int = 5) -> Example:
    messages = []
    for index in range(turns):
        messages.append(Message("user", f"question {index} " + "ask " * words))
        messages.append(Message("assistant", f"answer {index} " + "reply " * words))
    return Example(tuple(messages), system="Be brief.")


def encode(kind, examples, template, tokenizer, **options):
    columns, report = encode_batch(
        examples,
        kind,
        template,
        Tokenize(tokenizer),
        EncodeOptions(**{"cutoff_len": 1024, **options}),
    )
    return columns, report


def trained_runs(ids, labels, tokenizer):
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_labels_train_exactly_the_responses(qwen, tiny_tokenizer):
    example = conversation(2)
    columns, report = encode("supervised", [example], qwen, tiny_tokenizer)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    turns = qwen.render(example.messages, example.system)
    assert trained_runs(ids, labels, tiny_tokenizer) == [turn.response for turn in turns]
    assert tiny_tokenizer.decode(ids) == "".join(t.prompt + t.response for t in turns)
    assert report.encoded == 1 and report.truncated == 0


def test_pieces_are_tokenized_separately_like_llamafactory(qwen, tiny_tokenizer):
    example = conversation(1)
    columns, _ = encode("supervised", [example], qwen, tiny_tokenizer)
    turn = qwen.render(example.messages, example.system)[0]
    expected = tiny_tokenizer(turn.prompt, add_special_tokens=False)["input_ids"]
    expected += tiny_tokenizer(turn.response, add_special_tokens=False)["input_ids"]
    assert columns["input_ids"][0] == expected


def test_train_on_prompt_and_mask_history(qwen, tiny_tokenizer):
    example = conversation(3)
    columns, _ = encode("supervised", [example], qwen, tiny_tokenizer, train_on_prompt=True)
    assert columns["labels"][0] == columns["input_ids"][0]
    columns, _ = encode("supervised", [example], qwen, tiny_tokenizer, mask_history=True)
    runs = trained_runs(columns["input_ids"][0], columns["labels"][0], tiny_tokenizer)
    assert runs == [qwen.render(example.messages, example.system)[-1].response]


def test_long_prompt_keeps_its_start_and_the_assistant_header(qwen, tiny_tokenizer):
    example = Example(
        (Message("user", "START " + "filler " * 400 + "END"), Message("assistant", "Yes " * 30)),
        system="SYS",
    )
    columns, report = encode("supervised", [example], qwen, tiny_tokenizer, cutoff_len=128)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert len(ids) <= 128 and report.truncated == 1
    first_trained = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    prompt_text = tiny_tokenizer.decode(ids[:first_trained])
    assert prompt_text.startswith("<|im_start|>system\nSYS")  # beginning kept
    assert prompt_text.endswith("<|im_end|>\n" + HEADER)  # header kept: answers follow it
    response = tiny_tokenizer.decode(ids[first_trained:])
    assert response == "Yes " * 30 + "<|im_end|>"  # a short response is kept whole


def test_long_response_keeps_its_beginning(qwen, tiny_tokenizer):
    answer = " ".join(f"w{i}" for i in range(300))
    example = Example((Message("user", "Count."), Message("assistant", answer)))
    columns, report = encode("supervised", [example], qwen, tiny_tokenizer, cutoff_len=64)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert len(ids) == 64 and report.truncated == 1
    trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert answer.startswith(tiny_tokenizer.decode(trained))
    assert tiny_tokenizer.decode(ids).count(HEADER) == 1


def test_multi_turn_keeps_whole_turns_then_cuts_the_next_response(qwen, tiny_tokenizer):
    example = conversation(4, words=20)
    full, _ = encode("supervised", [example], qwen, tiny_tokenizer)
    turns = qwen.render(example.messages, example.system)
    sizes = [
        len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
        for turn in turns
        for text in (turn.prompt, turn.response)
    ]
    cutoff = sum(sizes[:4]) + sizes[4] + 5  # two whole turns, the third prompt, 5 answer tokens
    columns, report = encode("supervised", [example], qwen, tiny_tokenizer, cutoff_len=cutoff)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert len(ids) <= cutoff and report.truncated == 1
    assert ids == full["input_ids"][0][: len(ids)]  # a prefix of the full encoding
    runs = trained_runs(ids, labels, tiny_tokenizer)
    assert len(runs) == 3 and runs[2].startswith("answer 2")


def test_mask_history_drops_leading_turns_but_keeps_the_system_prompt(qwen, tiny_tokenizer):
    example = conversation(6, words=20)
    columns, _ = encode(
        "supervised", [example], qwen, tiny_tokenizer, cutoff_len=160, mask_history=True
    )
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert len(ids) <= 160
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.")
    runs = trained_runs(ids, labels, tiny_tokenizer)
    assert len(runs) == 1 and runs[0].startswith("answer 5")


def test_an_example_that_cannot_fit_is_dropped_and_counted(qwen, tiny_tokenizer):
    example = conversation(1)
    columns, report = encode("supervised", [example], qwen, tiny_tokenizer, cutoff_len=4)
    assert columns["input_ids"] == [] and report.dropped["longer than cutoff_len"] == 1


def test_fit_turns_shares_the_budget_of_one_long_turn():
    prompt, response = list(range(100)), list(range(100, 200))
    fitted = fit_turns([(prompt, response)], 50, prompt_tail=3)
    ((kept_prompt, kept_response),) = fitted
    assert (len(kept_prompt), len(kept_response)) == (25, 25)  # two long sides: half each
    assert kept_prompt[-3:] == prompt[-3:] and kept_prompt[:22] == prompt[:22]
    assert kept_response == response[:25]
    ((short_prompt, cut_response),) = fit_turns([(prompt[:10], response)], 50, prompt_tail=3)
    assert short_prompt == prompt[:10] and cut_response == response[:40]


def test_pairwise_shares_the_prompt(qwen, tiny_tokenizer):
    example = Example(
        (Message("user", "Capital of France?"), Message("assistant", "Paris.")),
        rejected=Message("assistant", "Lyon, I think."),
    )
    columns, _ = encode("pairwise", [example], qwen, tiny_tokenizer)
    sft, _ = encode("supervised", [example], qwen, tiny_tokenizer)
    prompt = columns["prompt_ids"][0]
    assert sft["input_ids"][0] == prompt + columns["chosen_ids"][0]
    assert tiny_tokenizer.decode(prompt).endswith(HEADER)
    assert tiny_tokenizer.decode(columns["rejected_ids"][0]) == "Lyon, I think.<|im_end|>"


def test_feedback_keeps_the_label(qwen, tiny_tokenizer):
    good = Example((Message("user", "Hi"), Message("assistant", "Hello!")), kto_tag=True)
    bad = Example((Message("user", "Hi"), Message("assistant", "Go away.")), kto_tag=False)
    columns, _ = encode("feedback", [good, bad], qwen, tiny_tokenizer)
    assert columns["kto_tag"] == [True, False]
    assert tiny_tokenizer.decode(columns["response_ids"][1]) == "Go away.<|im_end|>"


def test_pretraining_appends_eos_and_chunks_long_documents(qwen, tiny_tokenizer):
    short = Example((Message("user", "A short document."),))
    long = Example((Message("user", "word " * 200),))
    columns, report = encode("pretrain", [short, long], qwen, tiny_tokenizer, cutoff_len=64)
    chunks = columns["input_ids"]
    assert chunks[0][-1] == tiny_tokenizer.eos_token_id
    assert len(chunks) > 2 and all(len(chunk) <= 64 for chunk in chunks)
    assert report.truncated == 1


def test_unsupervised_prompt_ends_with_generation_prompt(qwen, tiny_tokenizer):
    example = conversation(2)
    columns, _ = encode("unsupervised", [example], qwen, tiny_tokenizer)
    prompt = tiny_tokenizer.decode(columns["input_ids"][0])
    assert prompt == qwen.render_prompt(example.messages[:-1], example.system)
    assert prompt.endswith(HEADER)
    assert tiny_tokenizer.decode(columns["label_ids"][0]) == example.messages[-1].content
