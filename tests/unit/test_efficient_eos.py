"""Templates with `efficient_eos` (glm4, falcon...) train the eos after every response, not only
after the last: LLaMA-Factory labels the first token of each later prompt with the eos. The
ids and labels are compared with LLaMA-Factory 0.9.5's own encoding (`lf_encodings/glm4.json`,
written by `python -m tests.unit.lf_encodings.regen`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.encode import IGNORE_INDEX, EncodeOptions, Tokenize, encode_batch
from tuneforge.data.example import Example, Message
from tuneforge.data.preview import render_row
from tuneforge.models.tiny import build_tiny_tokenizer
from tuneforge.models.tokenizer import fit_tokenizer_to_template
from tuneforge.templates import get_template

GOLDEN = json.loads(
    (Path(__file__).parent / "lf_encodings" / "glm4.json").read_text(encoding="utf-8")
)
REGEN = "not LLaMA-Factory's ids: did rendering change? If the tiny tokenizer did, rerun regen"


@pytest.fixture(scope="module")
def glm4_tokenizer():
    """The tokenizer LLaMA-Factory encoded with, fitted to glm4 as training fits it."""
    tokenizer = build_tiny_tokenizer(**GOLDEN["tokenizer"])
    template = get_template(GOLDEN["template"], tokenizer)
    fit_tokenizer_to_template(tokenizer, template.stop_words, template.replace_eos)
    return tokenizer


def example(case: dict, response: str | None = None) -> Example:
    messages = [Message(m["role"], m["content"]) for m in case["messages"]]
    if response is not None:
        messages.append(Message("assistant", response))
    return Example(tuple(messages), system=case["system"], tools=case["tools"])


def encode(kind, examples, template, tokenizer, **options):
    columns, _ = encode_batch(
        examples,
        kind,
        template,
        Tokenize(tokenizer),
        EncodeOptions(**{"cutoff_len": 4096, **options}),
    )
    return columns


def trained_spans(labels: list[int]) -> list[list[int]]:
    """The runs of consecutive trained labels."""
    spans: list[list[int]] = []
    for previous, label in zip([IGNORE_INDEX, *labels], labels):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
    return spans


@pytest.mark.parametrize("case", GOLDEN["supervised"], ids=["tool_call", "three_turns"])
def test_supervised_glm4_is_llamafactorys_encoding(case, glm4_tokenizer):
    template = get_template("glm4", glm4_tokenizer)
    columns = encode("supervised", [example(case)], template, glm4_tokenizer)
    assert columns["input_ids"][0] == case["input_ids"], REGEN
    assert columns["labels"][0] == case["labels"]
    eos = glm4_tokenizer.eos_token_id
    responses = sum(m["role"] in ("assistant", "function") for m in case["messages"])
    spans = trained_spans(case["labels"])
    assert len(spans) == responses and all(span[-1] == eos for span in spans)


@pytest.mark.parametrize("case", GOLDEN["pairwise"], ids=["pair"])
def test_pairwise_glm4_is_llamafactorys_encoding(case, glm4_tokenizer):
    template = get_template("glm4", glm4_tokenizer)
    pair = Example(
        example(case, case["chosen"]).messages,
        system=case["system"],
        rejected=Message("assistant", case["rejected"]),
    )
    columns = encode("pairwise", [pair], template, glm4_tokenizer)
    prompt = columns["prompt_ids"][0]
    for side in ("chosen", "rejected"):
        response = columns[f"{side}_ids"][0]
        assert prompt + response == case[f"{side}_input_ids"]
        assert [IGNORE_INDEX] * len(prompt) + response == case[f"{side}_labels"]
        assert response[-1] == glm4_tokenizer.eos_token_id


def conversation(turns: int) -> Example:
    messages = []
    for index in range(turns):
        messages += [Message("user", f"question {index}"), Message("assistant", f"answer {index}")]
    return Example(tuple(messages))


@pytest.mark.parametrize("name", ["glm4", "falcon"])
def test_every_response_is_trained_to_end_with_the_eos(name, tiny_tokenizer):
    template = get_template(name, tiny_tokenizer)
    item = conversation(3)
    columns = encode("supervised", [item], template, tiny_tokenizer)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    spans = trained_spans(labels)
    eos = tiny_tokenizer.eos_token_id
    assert len(spans) == 3 and all(span[-1] == eos for span in spans)
    turns = template.render(item.messages)
    assert tiny_tokenizer.decode(ids) == "".join(t.prompt + t.response for t in turns)
    # the input holds no eos but the last: the eos is a label in place of the next prompt's start
    assert ids.count(eos) == 1 and ids[-1] == eos


def test_the_eos_is_kept_and_cut_with_its_response(tiny_tokenizer):
    template = get_template("glm4", tiny_tokenizer)
    item = conversation(3)
    whole = encode("supervised", [item], template, tiny_tokenizer)["labels"][0]
    first, second, _ = trained_spans(whole)
    trained = [i for i, label in enumerate(whole) if label != IGNORE_INDEX]
    end = trained[len(first) + len(second) - 1] + 1  # right after the second response's eos
    # cut right after the second response: its eos stays, as an end marker would
    labels = encode("supervised", [item], template, tiny_tokenizer, cutoff_len=end)["labels"][0]
    assert trained_spans(labels) == [first, second]
    # one token less: the response is cut short, so it must not learn to stop there
    labels = encode("supervised", [item], template, tiny_tokenizer, cutoff_len=end - 1)["labels"][0]
    assert trained_spans(labels) == [first, second[:-1]]


def test_mask_history_trains_the_eos_of_the_last_response_only(tiny_tokenizer):
    template = get_template("glm4", tiny_tokenizer)
    columns = encode("supervised", [conversation(3)], template, tiny_tokenizer, mask_history=True)
    spans = trained_spans(columns["labels"][0])
    assert len(spans) == 1 and spans[0][-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(spans[0]) == "\nanswer 2<|endoftext|>"


def test_templates_with_an_end_marker_are_unchanged(tiny_tokenizer):
    template = get_template("qwen", tiny_tokenizer)
    columns = encode("supervised", [conversation(2)], template, tiny_tokenizer)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))


def test_the_preview_shows_the_eos_each_response_is_trained_to_end_with(glm4_tokenizer):
    template = get_template("glm4", glm4_tokenizer)
    case = GOLDEN["supervised"][1]
    columns = encode("supervised", [example(case)], template, glm4_tokenizer)
    row = {"input_ids": columns["input_ids"][0], "labels": columns["labels"][0]}
    text = render_row(row, "supervised", glm4_tokenizer)
    assert text == (
        "[gMASK]<sop><|user|>\nWhat is 2+2?<|assistant|>⟦\n4<|endoftext|>⟧"
        "<|user|>\nAnd 3+3?<|assistant|>⟦\n6<|endoftext|>⟧"
        "<|user|>\nThanks!<|assistant|>⟦\nYou are welcome.<|endoftext|>⟧"
    )


def test_with_train_on_prompt_the_eos_label_wins(tiny_tokenizer):
    template = get_template("glm4", tiny_tokenizer)
    columns = encode(
        "supervised", [conversation(2)], template, tiny_tokenizer, train_on_prompt=True
    )
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    eos, user = tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|user|>")
    closed = [i for i, (token, label) in enumerate(zip(ids, labels)) if token != label]
    assert len(closed) == 1 and labels[closed[0]] == eos and ids[closed[0]] == user
