"""Batched decoding (inference/scheduler.py) on every model type of the family table: prompts
of different lengths decoded together, one joining while the others run, give the greedy
tokens transformers' eager `generate` gives each prompt alone; families that cannot decode in a
batch (the padded path) are served one request at a time, with the same answers."""

from __future__ import annotations

import queue

import pytest
import torch
from family_configs import MODEL_TYPES
from test_conformance import eager_model, examples, family_dir, tokenizer  # noqa: F401 (fixtures)

from tuneforge.inference.engine import Done, Failed, Limits, Piece, Prompt
from tuneforge.models.families import model_types

pytestmark = pytest.mark.slow

LENGTHS = (14, 5, 9)
NEW_TOKENS = (8, 6, 10)


def eager_greedy(model, prompt: list[int], new_tokens: int, stop_ids) -> list[int]:
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=next(iter(stop_ids)),
        )
    tokens = output[0, len(prompt) :].tolist()
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: index + 1]
    return tokens


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_batched_greedy_decoding_equals_eager_generate_alone(family, family_dir):  # noqa: F811
    from chat_model import chat_config
    from tuneforge.inference import load_engine

    folder = family_dir(family)
    engine = load_engine(chat_config(folder), Limits(max_concurrent=4, max_queue=4))
    try:
        batched = engine.scheduler.batched
        assert batched == (model_types()[family].path == "padding_free")
        ids = examples(engine.model.config.vocab_size)[0]["input_ids"] * 2
        prompts = [  # token prompts of several lengths (no template needed)
            Prompt(
                ids[index : index + length],
                engine.settings({"skip_special_tokens": False, "max_new_tokens": new_tokens}),
                new_tokens,
            )
            for index, (length, new_tokens) in enumerate(zip(LENGTHS, NEW_TOKENS))
        ]
        events: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in prompts]
        engine.submit(prompts[0], events[0].put)
        engine.submit(prompts[1], events[1].put)
        first = events[0].get(timeout=120)  # prompt 0 is decoding (or done already)
        assert not isinstance(first, Failed), first
        engine.submit(prompts[2], events[2].put)  # joins the running batch
        got = []
        for index, stream in enumerate(events):
            event = first if index == 0 else stream.get(timeout=120)
            while not isinstance(event, Done):
                assert isinstance(event, Piece), event
                event = stream.get(timeout=120)
            got.append((event.response.text, event.response.completion_tokens))
        eager = eager_model(folder).eval()
        for prompt, new_tokens, (text, count) in zip(prompts, NEW_TOKENS, got):
            wanted = eager_greedy(eager, prompt.ids, new_tokens, engine.stop_ids)
            expected = engine.tokenizer.decode(
                [t for t in wanted if t not in engine.stop_ids], skip_special_tokens=False
            )
            assert (text, count) == (expected, len(wanted))
        if batched:
            assert engine.scheduler.widest > 1
    finally:
        engine.close()
