"""The generation worker (inference/scheduler.py) on the tiny models: requests that wait
together decode together and each gets what it gets alone; places are bounded, freed by
cancelling, and a drain ends everything cleanly; over-long prompts are refused."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from chat_model import CONVERSATIONS, HELLO, JOKE, PARIS, cached_chat_model, chat_config, messages
from tuneforge.errors import DataError
from tuneforge.inference import load_engine
from tuneforge.inference.engine import (
    ContextLengthError,
    Done,
    EngineBusy,
    EngineStopped,
    Failed,
    Limits,
    Piece,
)

# The random tiny model repeats one token under plain greedy decoding, so its answers last as
# long as asked; a repetition penalty makes them varied (and they may then end early).
VARIED = {"repetition_penalty": 10.0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WAIT = 120  # seconds any single wait in these tests may take at most


@pytest.fixture(scope="module")
def chat_engine(tiny_model_dir):
    engine = load_engine(chat_config(cached_chat_model(tiny_model_dir)), Limits(8, 8))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = load_engine(chat_config(tiny_model_dir), Limits(8, 32))
    yield engine
    engine.close()


class Collector:
    """A listener that keeps a request's events, and waits for them."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.log: list = []

    def __call__(self, event) -> None:
        self.events.put(event)

    def wait(self, count: int = 1) -> list:
        """Events until `count` answers are done (or the request failed)."""
        done = 0
        while done < count:
            event = self.events.get(timeout=WAIT)
            self.log.append(event)
            if isinstance(event, Failed):
                raise event.error
            done += isinstance(event, Done)
        return [event.response for event in self.log if isinstance(event, Done)]

    def first_piece(self) -> str:
        event = self.events.get(timeout=WAIT)
        self.log.append(event)
        assert isinstance(event, Piece), event
        return event.text


def submit_together(engine, prompts):
    """Submit every prompt at once (so that they wait together); their answers."""
    collectors = [Collector() for _ in prompts]
    for prompt, collector in zip(prompts, collectors):
        engine.submit(prompt, collector)
    return [collector.wait(prompt.n) for prompt, collector in zip(prompts, collectors)]


def test_requests_waiting_together_decode_together_and_get_their_answers_alone(chat_engine):
    prompts = [chat_engine.prepare(messages(c[:-1])) for c in CONVERSATIONS]
    prompts.append(chat_engine.prepare(QUESTION, stop=["France"]))  # a stop string of its own
    prompts.append(chat_engine.prepare(messages(CONVERSATIONS[0][:-1]), max_new_tokens=4))
    alone = [submit_together(chat_engine, [prompt])[0] for prompt in prompts]
    assert [answers[0].text for answers in alone[:4]] == [c[-1][1] for c in CONVERSATIONS]
    widest = chat_engine.scheduler.widest
    together = submit_together(chat_engine, prompts)
    assert together == alone
    assert chat_engine.scheduler.widest == len(prompts) > widest  # one forward for them all
    assert together[4][0].text == "The capital of "
    assert (together[5][0].completion_tokens, together[5][0].finish_reason) == (4, "length")


def test_batched_greedy_tokens_equal_transformers_generate(engine):
    questions = [[{"role": "user", "content": "Tell me about " + "Paris " * k}] for k in (1, 4, 9)]
    budgets = [12, 20, 7]
    prompts = [
        engine.prepare(q, max_new_tokens=b, skip_special_tokens=False, **VARIED)
        for q, b in zip(questions, budgets)
    ]
    together = submit_together(engine, prompts)
    for prompt, budget, (answer,) in zip(prompts, budgets, together):
        reference = engine._generate(prompt.ids, prompt.settings, budget)[0]
        expected = engine.tokenizer.decode(reference, skip_special_tokens=False)
        assert answer.text == expected
        assert answer.completion_tokens == budget
    assert len({answer.text for (answer,) in together}) == 3


def test_a_request_joins_a_running_batch_at_the_next_token(engine):
    long = engine.prepare(QUESTION, max_new_tokens=600)
    short = engine.prepare(QUESTION, max_new_tokens=5, **VARIED)
    alone = submit_together(engine, [short])[0]
    first, second = Collector(), Collector()
    engine.submit(long, first)
    first.first_piece()  # the long answer is decoding
    engine.submit(short, second)
    assert second.wait() == alone  # done while the long one still runs
    assert not any(isinstance(event, Done) for event in first.log)
    (answer,) = first.wait()
    assert answer.completion_tokens == 600


def test_n_answers_share_one_prefill_and_one_batch(engine):
    prompt = engine.prepare(QUESTION, n=4, do_sample=True, temperature=1.0, max_new_tokens=16)
    steps = engine.scheduler.steps
    (answers,) = submit_together(engine, [prompt])
    assert len(answers) == 4 and len({answer.text for answer in answers}) > 1
    assert all(answer.completion_tokens <= 16 for answer in answers)
    assert engine.scheduler.steps - steps <= 16  # decoded side by side, not one after another


def test_the_sync_api_is_the_same_engine(chat_engine):
    assert chat_engine.chat(QUESTION)[0].text == PARIS
    assert "".join(chat_engine.stream_chat(messages(CONVERSATIONS[3][:-1]))) == JOKE
    results = []

    def ask():
        results.append(chat_engine.chat(messages(CONVERSATIONS[0][:-1]))[0].text)

    threads = [threading.Thread(target=ask) for _ in range(12)]  # more than max_concurrent
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [HELLO] * 12


def test_a_full_engine_refuses_at_once_and_a_cancel_frees_the_place(tiny_model_dir):
    small = load_engine(chat_config(tiny_model_dir), Limits(max_concurrent=1, max_queue=1))
    try:
        long = small.prepare(QUESTION, max_new_tokens=1500)
        decoding, waiting = Collector(), Collector()
        ticket = small.submit(long, decoding)
        decoding.first_piece()
        queued = small.submit(long, waiting)
        started = time.monotonic()
        with pytest.raises(EngineBusy):
            small.submit(long, Collector())
        assert time.monotonic() - started < 1  # at once, no waiting
        queued.cancel()  # a waiting request leaves the queue at once
        third = Collector()
        small.submit(small.prepare(QUESTION, max_new_tokens=3), third)
        ticket.cancel()  # the decoding one leaves the batch at its next token
        (answer,) = third.wait()
        assert answer.completion_tokens == 3
        assert not any(isinstance(event, Done) for event in decoding.log)
        deadline = time.monotonic() + WAIT
        while small.capacity.held:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        small.close()


def test_drain_ends_answers_at_the_next_token_and_refuses_new_ones(tiny_model_dir):
    drained = load_engine(chat_config(tiny_model_dir), Limits(max_concurrent=1, max_queue=2))
    try:
        long = drained.prepare(QUESTION, max_new_tokens=1500)
        decoding, waiting = Collector(), Collector()
        drained.submit(long, decoding)
        decoding.first_piece()
        drained.submit(long, waiting)
        drained.drain()
        (answer,) = decoding.wait()
        assert answer.finish_reason == "length" and answer.completion_tokens < 1500
        assert answer.text.startswith(decoding.log[0].text)
        with pytest.raises(EngineStopped):
            waiting.wait()
        with pytest.raises(EngineStopped):
            drained.submit(long, Collector())
    finally:
        drained.close()
    assert not drained.scheduler._thread.is_alive()


def test_prompts_longer_than_the_context_are_refused_with_the_counts(engine):
    context = engine.context_length
    assert context == engine.model.config.max_position_embeddings
    long = [{"role": "user", "content": "Paris " * context}]
    with pytest.raises(ContextLengthError) as caught:
        engine.prepare(long)
    assert caught.value.limit == context and caught.value.prompt_tokens > context
    assert caught.value.completion_tokens is None
    words = 10
    while len(engine.tokenizer("Paris " * (words + 10))["input_ids"]) < context - 150:
        words += 10
    near = [{"role": "user", "content": "Paris " * words}]
    prompt_tokens = len(engine.prepare(near, max_new_tokens=1).ids)
    assert context - 200 < prompt_tokens < context - 100
    with pytest.raises(ContextLengthError, match="in the completion"):
        engine.prepare(near, exact_budget=True, max_new_tokens=200)
    clipped = engine.prepare(near, max_new_tokens=200)  # not asked exactly: the context wins
    assert clipped.budget == context - prompt_tokens


def test_text_that_is_not_unicode_is_a_data_error(engine):
    with pytest.raises(DataError, match="not valid Unicode"):
        engine.chat([{"role": "user", "content": "a\ud800b"}])


def test_beam_search_and_an_engine_without_a_kv_cache_are_served_one_at_a_time(tiny_model_dir):
    model = cached_chat_model(tiny_model_dir)
    plain = load_engine(chat_config(model, use_kv_cache=False), Limits(4, 4))
    try:
        assert plain.scheduler.batched is False
        prompts = [plain.prepare(messages(c[:-1])) for c in CONVERSATIONS]
        answers = submit_together(plain, prompts)
        assert [a.text for (a,) in answers] == [c[-1][1] for c in CONVERSATIONS]
        (beams,) = submit_together(plain, [plain.prepare(QUESTION, num_beams=2, n=2)])
        assert beams[0].text == PARIS
        streamed = list(plain.stream_chat(QUESTION))
        assert len(streamed) > 1 and "".join(streamed) == PARIS
        assert plain.scheduler.steps == 0  # no batched step: all through generate
    finally:
        plain.close()
