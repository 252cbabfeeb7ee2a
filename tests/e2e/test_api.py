"""The OpenAI-compatible API, live on loopback, driven by the official `openai` client.

The server runs the real Hugging Face engine on the tiny model. A random tiny model with tied
embeddings repeats its last token under greedy decoding, so the texts compared here use
`repetition_penalty: 10` (an extension field, sent with `extra_body`), which makes greedy
answers varied and still deterministic.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from live_server import LiveServer
from tuneforge.config.loader import build_config
from tuneforge.inference import load_engine
from tuneforge.serving.app import create_app

MODEL = "tiny-qwen"
KEY = "sk-test-key"
MAX_TOKENS = 64
MAX_BYTES = 64 * 1024
VARIED = {"repetition_penalty": 10.0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "city name"}},
            "required": ["city"],
        },
    },
}


def serving(app) -> LiveServer:
    """uvicorn serving `app` on a free loopback port, in a background thread."""
    return LiveServer(uvicorn.Server(uvicorn.Config(app, log_level="warning")))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = load_engine(
        build_config({"model_name_or_path": str(tiny_model_dir), "template": "qwen"})
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, MODEL, api_key=KEY, max_tokens=MAX_TOKENS, max_request_bytes=MAX_BYTES)
    with serving(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=120, **kwargs)


def greedy(client, messages=QUESTION, **kwargs):
    extra = {**VARIED, **kwargs.pop("extra_body", {})}
    return client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, extra_body=extra, **kwargs
    )


def engine_answer(engine, messages=QUESTION, system=None, tools=None, **generation):
    return engine.chat(messages, system, tools, do_sample=False, **VARIED, **generation)[0]


# ---- answers --------------------------------------------------------------------------------


def test_models_are_listed_and_any_model_name_is_served(client, engine):
    assert [model.id for model in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    # as LLaMA-Factory: another name is answered by the served model, which the response names
    answer = client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, temperature=0, max_tokens=6, extra_body=VARIED
    )
    assert answer.model == MODEL
    assert answer.choices[0].message.content == engine_answer(engine, max_new_tokens=6).text


def test_strict_model_names_get_openais_404(engine):
    app = create_app(engine, MODEL, strict_model_name=True)
    with serving(app) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        assert caught.value.code == "model_not_found"
        assert MODEL in caught.value.message
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o")
        assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)


def test_a_greedy_completion_is_the_engines_answer(client, engine):
    system = "You answer briefly."
    expected = engine_answer(engine, system=system, max_new_tokens=20)
    response = greedy(client, [{"role": "system", "content": system}, *QUESTION], max_tokens=20)
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.id.startswith("chatcmpl-")
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert len(expected.text) > 20  # varied text, not an empty or one-token answer
    assert choice.message.tool_calls is None
    assert choice.finish_reason == expected.finish_reason == "length"
    assert response.usage.prompt_tokens == expected.prompt_tokens
    assert response.usage.completion_tokens == expected.completion_tokens == 20
    assert response.usage.total_tokens == expected.prompt_tokens + 20


def test_max_completion_tokens_and_text_parts(client, engine):
    expected = engine_answer(engine, max_new_tokens=6)
    parts = [
        {"type": "text", "text": "What is the capital"},
        {"type": "text", "text": "of France?"},
    ]
    joined = engine_answer(
        engine, [{"role": "user", "content": "What is the capital\nof France?"}], max_new_tokens=6
    )
    assert greedy(client, max_completion_tokens=6).choices[0].message.content == expected.text
    answer = greedy(client, [{"role": "user", "content": parts}], max_tokens=6)
    assert answer.choices[0].message.content == joined.text


def test_streamed_chunks_join_to_the_same_answer_with_usage_last(client, engine):
    expected = engine_answer(engine, max_new_tokens=24)
    stream = greedy(client, max_tokens=24, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == MODEL for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 3  # streamed piece by piece
    assert "".join(pieces) == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens


def test_a_stream_ends_with_done(server):
    body = {"model": MODEL, "messages": QUESTION, "stream": True, "max_tokens": 4}
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"


def test_n_choices(client, engine):
    expected = engine_answer(engine, max_new_tokens=8)
    response = greedy(client, n=2, max_tokens=8)
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.message.content for c in response.choices] == [expected.text] * 2
    assert response.usage.completion_tokens == 2 * expected.completion_tokens

    sampled = client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=3, temperature=1.0, top_p=1.0, max_tokens=8
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in sampled.choices)
    assert len({c.message.content for c in sampled.choices}) > 1  # independent samples

    stream = greedy(client, n=2, max_tokens=8, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: expected.text, 1: expected.text}


def test_stop_strings_cut_the_answer(client, engine):
    full = engine_answer(engine, max_new_tokens=24).text
    stop = full[8:14]
    assert stop and full.index(stop) == 8
    for value in (stop, [stop, "never-generated"]):
        response = greedy(client, max_tokens=24, stop=value)
        assert response.choices[0].message.content == full[:8]
        assert response.choices[0].finish_reason == "stop"
    streamed = greedy(client, max_tokens=24, stop=[stop], stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full[:8]


def test_concurrent_requests_do_not_mix(client, engine):
    lengths = [5, 9, 13]
    expected = [engine_answer(engine, max_new_tokens=n).text for n in lengths]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda n: greedy(client, max_tokens=n), lengths))
    assert [a.choices[0].message.content for a in answers] == expected


# ---- tools ----------------------------------------------------------------------------------


def test_tool_schemas_reach_the_prompt(client, engine, tiny_tokenizer):
    tools_json = json.dumps([WEATHER_TOOL["function"]])
    prompt = engine.template.render_prompt(QUESTION, tools=tools_json)
    assert '"name": "get_weather"' in prompt
    expected = engine_answer(engine, tools=tools_json, max_new_tokens=12)
    response = greedy(client, tools=[WEATHER_TOOL], max_tokens=12)
    assert response.usage.prompt_tokens == len(tiny_tokenizer(prompt)["input_ids"])
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == "length"  # the random model calls nothing

    plain = greedy(client, max_tokens=12)
    hidden = greedy(client, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=12)
    assert hidden.usage.prompt_tokens == plain.usage.prompt_tokens < response.usage.prompt_tokens

    # streamed with tools: text that cannot open a tool call is sent as it comes
    chunks = list(greedy(client, tools=[WEATHER_TOOL], max_tokens=12, stream=True))
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(contents) > 3 and "".join(contents) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tool_calls_and_results_in_the_history_reach_the_prompt(client, engine, tiny_tokenizer):
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    as_engine = [
        QUESTION[0],
        {
            "role": "function",
            "content": '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        },
        {"role": "observation", "content": "sunny, 21 C"},
    ]
    tools_json = json.dumps([WEATHER_TOOL["function"]])
    prompt = engine.template.render_prompt(as_engine, tools=tools_json)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    response = greedy(client, history, tools=[WEATHER_TOOL], max_tokens=8)
    assert response.usage.prompt_tokens == len(tiny_tokenizer(prompt)["input_ids"])
    expected = engine_answer(engine, as_engine, tools=tools_json, max_new_tokens=8)
    assert response.choices[0].message.content == expected.text


def test_tool_choice_that_forces_a_call_is_refused(client):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        with pytest.raises(openai.BadRequestError) as caught:
            greedy(client, tools=[WEATHER_TOOL], tool_choice=choice)
        assert caught.value.param == "tool_choice"


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_requests_without_the_key_get_401(server, key):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "unused", max_retries=0)
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if key is not None:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model=MODEL, messages=QUESTION)
        assert caught.value.code == "invalid_api_key"
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", b"{not json"),
        ("POST", "/v1/score/evaluation", b"{}"),
        ("GET", "/nowhere", None),
    ]:
        response = httpx.request(method, f"{server.url}{path}", content=body, headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"messages": []}, "messages", "at least 1"),
        (
            {"messages": [*QUESTION, {"role": "assistant", "content": "x"}]},
            "messages[1].role",
            "from the user or a tool",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0]",
            "only text",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "valid string"),
        ({"temperature": 5}, "temperature", "less than or equal to 2"),
        ({"n": 50}, "n", "less than or equal to 8"),
        ({"max_tokens": 10_000}, "max_tokens", "limit of 64"),
        ({"presence_penalty": 0.5}, "presence_penalty", "no additive presence penalty"),
        ({"frequency_penalty": 1.0}, "frequency_penalty", "repetition_penalty"),
        ({"seed": 7}, "seed", "not supported"),
        ({"stop": ["a"] * 9}, "stop", "at most 8"),
        ({"extra_body": {"top_k": 0}}, "top_k", "greater than or equal to 1"),
    ],
)
def test_bad_requests_get_400_in_openai_shape(client, kwargs, param, words):
    request = {"model": MODEL, "messages": QUESTION, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    error = caught.value
    assert error.status_code == 400
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert words in error.message


@pytest.mark.parametrize(
    ("content", "headers", "code", "words"),
    [
        (
            b'{"model": "tiny-qwen", "messages": [',
            {"Content-Type": "application/json"},
            "invalid_json",
            "not valid JSON",
        ),
        (b"[1, 2]", {"Content-Type": "application/json"}, "invalid_body", "JSON object"),
        (b"", {"Content-Type": "application/json"}, "invalid_body", "JSON object"),
        (b"hello", {"Content-Type": "text/plain"}, "invalid_body", "JSON object"),
        (
            b'{"model": "tiny-qwen"}',
            {"Content-Type": "application/json"},
            "invalid_value",
            "messages: Field required",
        ),
    ],
)
def test_malformed_bodies_get_400(server, content, headers, code, words):
    response = post(server, "/v1/chat/completions", content=content, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert words in error["message"]


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    missing = httpx.get(f"{server.url}/v1/completions", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{server.url}/v1/chat/completions", headers=headers)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_bodies_over_the_limit_get_413(client, server):
    big = "word " * (MAX_BYTES // 5 + 10)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": big}])
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"

    def chunked():  # no Content-Length: the limit is counted while reading
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": big}]})
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096].encode()

    response = post(server, "/v1/chat/completions", content=chunked())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert greedy(client, max_tokens=2).choices  # the server is still well


def test_score_endpoint_refuses_a_generative_model(server):
    response = post(server, "/v1/score/evaluation", json={"model": MODEL, "messages": ["a b c"]})
    assert response.status_code == 400
    assert "reward model" in response.json()["error"]["message"]
    empty = post(server, "/v1/score/evaluation", json={"model": MODEL, "messages": []})
    assert empty.status_code == 400
    assert empty.json()["error"]["param"] == "messages"


@pytest.mark.slow
def test_a_reward_model_scores_texts_and_does_not_chat(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    reward_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "reward"))
    hidden = json.loads((reward_dir / "config.json").read_text())["hidden_size"]
    head = {
        "v_head.summary.weight": torch.randn(1, hidden, generator=torch.Generator().manual_seed(0)),
        "v_head.summary.bias": torch.tensor([0.5]),
    }
    save_file(head, str(reward_dir / "value_head.safetensors"))  # LLaMA-Factory's RM layout
    reward = load_engine(build_config({"model_name_or_path": str(reward_dir), "template": "qwen"}))
    assert reward.is_reward_model
    texts = ["The answer is Paris.", "The answer is a potato, obviously."]
    expected = reward.get_scores(texts)
    with serving(create_app(reward, "rm")) as live:
        body = {"model": "rm", "messages": texts}
        answer = httpx.post(f"{live.url}/v1/score/evaluation", json=body, timeout=120).json()
        assert answer["object"] == "score.evaluation" and answer["model"] == "rm"
        assert answer["scores"] == pytest.approx(expected)
        assert len(set(answer["scores"])) == 2
        too_long = httpx.post(
            f"{live.url}/v1/score/evaluation", json={**body, "max_length": 2}, timeout=120
        )
        assert too_long.status_code == 400
        assert "over max_length 2" in too_long.json()["error"]["message"]
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="/v1/score/evaluation"):
            client.chat.completions.create(model="rm", messages=QUESTION)
    reward.close()


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(client, engine, server):
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "stream": True,
        "max_tokens": MAX_TOKENS,
        **VARIED,
    }
    for _ in range(2):
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=120,
        ) as response:
            first = next(line for line in response.iter_lines() if line)
            assert first.startswith("data: ")
        # leaving the block closed the connection after one event
    expected = engine_answer(engine, max_new_tokens=10)
    assert greedy(client, max_tokens=10).choices[0].message.content == expected.text


@pytest.mark.slow
def test_an_unexpected_engine_failure_is_a_500_in_openai_shape(tiny_model_dir):
    broken = load_engine(
        build_config({"model_name_or_path": str(tiny_model_dir), "template": "qwen"})
    )
    broken.close()  # the model is gone: generating fails inside the engine
    with serving(create_app(broken, MODEL)) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
        assert caught.value.type == "server_error"
        assert [m.id for m in client.models.list().data] == [MODEL]  # still serving


# ---- the command ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_tuneforge_api_serves_the_config(tiny_model_dir, tmp_path):
    config = tmp_path / "api.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ntemplate: qwen\nmax_new_tokens: 16\n")
    port = _free_port()
    env = {**os.environ, "API_PORT": str(port), "API_KEY": KEY, "API_MODEL_NAME": "served"}
    command = [sys.executable, "-m", "tuneforge", "api", str(config)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                assert [m.id for m in client.models.list().data] == ["served"]
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        answer = client.chat.completions.create(model="served", messages=QUESTION, temperature=0)
        assert answer.usage.completion_tokens <= 16
        with pytest.raises(openai.BadRequestError, match="limit of 16"):
            client.chat.completions.create(model="served", messages=QUESTION, max_tokens=17)
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert f"Serving 'served' on http://127.0.0.1:{port}/v1" in output


def test_tuneforge_api_refuses_a_bad_port_before_loading(tmp_path):
    config = tmp_path / "api.yaml"
    config.write_text(f"model_name_or_path: {Path(tmp_path)}\ntemplate: qwen\n")
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge", "api", str(config)],
        env={**os.environ, "API_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "API_PORT='eighty' must be an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_that_calls_a_tool_answers_with_tool_calls(tiny_model_dir):
    """The tiny chat model learned to call get_weather: the official client gets tool_calls."""
    from chat_model import WEATHER_CALL, WEATHER_QUESTION, WEATHER_TOOL, cached_chat_model

    config = {"model_name_or_path": str(cached_chat_model(tiny_model_dir)), "template": "qwen"}
    engine = load_engine(build_config(config))
    question = [{"role": "user", "content": WEATHER_QUESTION}]
    tools = [{"type": "function", "function": WEATHER_TOOL}]
    try:
        with serving(create_app(engine, MODEL, api_key=KEY)) as live:
            client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0)
            for stream in (False, True):
                reply = client.chat.completions.create(
                    model=MODEL, messages=question, tools=tools, temperature=0, stream=stream
                )
                if stream:
                    chunks = list(reply)
                    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
                    finish = chunks[-1].choices[0].finish_reason
                else:
                    calls = reply.choices[0].message.tool_calls
                    finish = reply.choices[0].finish_reason
                assert finish == "tool_calls"
                assert [call.function.name for call in calls] == [WEATHER_CALL["name"]]
                assert json.loads(calls[0].function.arguments) == WEATHER_CALL["arguments"]
                assert calls[0].id and calls[0].type == "function"
            # without the tool offered, the same question gets a plain answer
            plain = client.chat.completions.create(model=MODEL, messages=question, temperature=0)
            assert plain.choices[0].message.tool_calls is None
    finally:
        engine.close()
