"""The API under load, live on loopback: more clients than threads, a full server, clients that
leave, a graceful stop, batched answers, and requests the model cannot take (not Unicode, over
its context). Every wait is bounded; speed is measured by benchmarks/serve.py, not here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
import httpx
import openai
import pytest

from live_server import LiveServer
from tuneforge.config.loader import build_config
from tuneforge.inference import load_engine
from tuneforge.inference.engine import Limits
from tuneforge.serving.app import DrainingServer, create_app

MODEL = "tiny-qwen"
VARIED = {"repetition_penalty": 10.0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WAIT = 120  # seconds any single wait may take at most


def draining(app, engine) -> LiveServer:
    """The app live on loopback, stopped as SIGTERM would stop it (draining the engine)."""
    config = __import__("uvicorn").Config(app, log_level="warning", timeout_graceful_shutdown=10)
    return LiveServer(DrainingServer(config, engine))


def tiny_engine(model_dir, limits: Limits):
    config = {"model_name_or_path": str(model_dir), "template": "qwen", "infer_dtype": "float32"}
    return load_engine(build_config(config), limits)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = tiny_engine(tiny_model_dir, Limits(max_concurrent=16, max_queue=256))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine):
    with draining(create_app(engine, MODEL), engine) as live:
        yield live


def body(**fields) -> dict:
    """A greedy request. The random tiny model then repeats one token and never ends its answer
    before max_tokens, so answers last as long as asked."""
    return {"model": MODEL, "messages": QUESTION, "temperature": 0, **fields}


def sse_events(lines) -> list[dict | str]:
    """The data of each server-sent event ("[DONE]" as a string)."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def stream_once(client: httpx.AsyncClient, url: str, **fields) -> list:
    async with client.stream(
        "POST", f"{url}/v1/chat/completions", json=body(stream=True, **fields)
    ) as response:
        assert response.status_code == 200, await response.aread()
        return sse_events([line async for line in response.aiter_lines()])


def test_three_times_more_streaming_clients_than_threads_all_finish(server):
    clients = 3 * asyncio.run(_pool_threads())

    async def run() -> list:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=WAIT, limits=limits) as client:
            streams = [
                stream_once(client, server.url, max_tokens=4 + i % 5) for i in range(clients)
            ]
            return await asyncio.wait_for(asyncio.gather(*streams), WAIT)

    results = asyncio.run(run())
    assert len(results) == clients == 120
    for events in results:
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text  # each got its own answer
    assert httpx.get(f"{server.url}/v1/models", timeout=WAIT).status_code == 200


async def _pool_threads() -> int:
    """The threads of starlette's pool (anyio's default limiter, as in the server's loop)."""
    return int(anyio.to_thread.current_default_thread_limiter().total_tokens)


def test_concurrent_greedy_answers_are_the_answers_alone(server, engine):
    questions = [[{"role": "user", "content": f"Tell me about {'Paris ' * k}"}] for k in range(8)]
    budgets = [5 + 3 * k for k in range(8)]
    alone = [
        engine.chat(q, do_sample=False, max_new_tokens=b, **VARIED)[0].text
        for q, b in zip(questions, budgets)
    ]
    steps = engine.scheduler.steps
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

    def ask(args):
        question, budget = args
        return client.chat.completions.create(
            model=MODEL, messages=question, temperature=0, max_tokens=budget, extra_body=VARIED
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, zip(questions, budgets)))
    assert [a.choices[0].message.content for a in answers] == alone
    assert len(set(alone)) == 8
    one_by_one = sum(budget - 1 for budget in budgets)  # decoding steps, each request alone
    assert engine.scheduler.steps - steps <= one_by_one / 2  # they shared forward passes


def test_a_full_server_answers_429_at_once_and_a_leaving_client_frees_its_place(tiny_model_dir):
    engine = tiny_engine(tiny_model_dir, Limits(max_concurrent=1, max_queue=0))
    try:
        with draining(create_app(engine, MODEL), engine) as live:
            client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
            for _ in range(2):  # a streamed client leaves mid-answer, twice
                holder = httpx.Client(timeout=WAIT)
                long = body(max_tokens=1500)
                with holder.stream(
                    "POST", f"{live.url}/v1/chat/completions", json={**long, "stream": True}
                ) as response:
                    lines = response.iter_lines()  # kept: dropping it would close the stream
                    next(line for line in lines if line)  # decoding now
                    started = time.monotonic()
                    refused = httpx.post(
                        f"{live.url}/v1/chat/completions", json=body(max_tokens=2), timeout=WAIT
                    )
                    assert time.monotonic() - started < 10  # at once, not after the answer
                    assert refused.status_code == 429
                    assert int(refused.headers["Retry-After"]) >= 1
                    error = refused.json()["error"]
                    assert (error["type"], error["code"]) == (
                        "rate_limit_error",
                        "rate_limit_exceeded",
                    )
                    with pytest.raises(openai.RateLimitError):
                        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
                holder.close()  # left mid-stream: the place is freed at the next token
                answer = _when_accepted(client)
                assert answer.choices[0].finish_reason == "length"

            # a non-streamed client that gives up (a timeout) frees its place too
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    f"{live.url}/v1/chat/completions", json=body(max_tokens=1500), timeout=0.5
                )
            _when_accepted(client)
    finally:
        engine.close()


def _when_accepted(client: openai.OpenAI):
    """The answer to a short request, retried while the server is still full."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return client.chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=2, temperature=0
            )
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the place was never freed"
            time.sleep(0.05)


def test_text_that_is_not_unicode_and_prompts_over_the_context_get_400(server, engine):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=raw,
        headers={"Content-Type": "application/json"},
        timeout=WAIT,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[0].content", "invalid_value")
    assert "lone surrogate" in error["message"]

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    context = engine.context_length
    huge = [{"role": "user", "content": "Paris " * context}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=huge)
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
    assert f"maximum context length is {context} tokens" in caught.value.message
    assert "your messages resulted in" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="in the completion"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=context)
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_sigterm_ends_every_stream_with_a_final_chunk_and_exits(tiny_model_dir, tmp_path):
    config = tmp_path / "api.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ntemplate: qwen\nmax_new_tokens: 1800\n"
    )
    port = _free_port()
    env = {**os.environ, "API_PORT": str(port), "API_MAX_CONCURRENT": "2", "API_MAX_QUEUE": "4"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "api", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                httpx.get(f"{url}/v1/models", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)

        results: list = [None] * 3

        def stream(index: int, started: threading.Event) -> None:
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body(stream=True), timeout=WAIT
            ) as response:
                lines = response.iter_lines()
                first = [next(line for line in lines if line)]
                started.set()
                results[index] = (response.status_code, sse_events(first + list(lines)))

        threads, started = [], []
        for index in range(2):  # both decoding; a third waits in the queue
            started.append(threading.Event())
            threads.append(threading.Thread(target=stream, args=(index, started[-1])))
            threads[-1].start()
        assert all(event.wait(WAIT) for event in started)
        waiting = threading.Thread(target=lambda: results.__setitem__(2, _post(url)))
        waiting.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        for thread in [*threads, waiting]:
            thread.join(WAIT)
        # it exits by itself, within uvicorn's graceful deadline, by the signal (uvicorn raises
        # it again once stopped, so the exit status says SIGTERM, as for any other program)
        assert process.wait(timeout=60) == -signal.SIGTERM
        for status, events in results[:2]:
            assert status == 200
            assert events[-1] == "[DONE]"  # a clean end, not a cut connection
            final = events[-2]["choices"][0]
            assert final["finish_reason"] == "length"
            tokens = sum(bool(e["choices"][0]["delta"].get("content")) for e in events[:-1])
            assert 0 < tokens < 1800  # stopped early, at the next token
        assert results[2] == 503  # refused: it had not started when the stop came
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v1/models", timeout=5)  # no longer accepting
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=60)[0]
    assert "Stopping: in-flight answers end at their next token." in output
    assert "Traceback" not in output


def _post(url: str) -> int:
    return httpx.post(
        f"{url}/v1/chat/completions", json=body(max_tokens=1000), timeout=WAIT
    ).status_code
