"""`tuneforge webchat` served on loopback and driven with gradio's own client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from chat_model import HELLO, JOKE, cached_chat_model, chat_config
from tuneforge.inference import load_engine

# message, role, system, tools, max_new_tokens, top_p, temperature, skip_special_tokens, thinking
GREEDY = ("user", "", "", 64, 0.7, 0.0, True, True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The webchat command on a free loopback port; yields (url, log file)."""
    folder = tmp_path_factory.mktemp("webchat")
    config = folder / "chat.yaml"
    config.write_text(
        f"model_name_or_path: {cached_chat_model(tiny_model_dir)}\ntemplate: qwen\n"
        "do_sample: false\ninfer_dtype: float32\n"
    )
    port = free_port()
    log = folder / "server.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_SERVER_NAME", None)  # the default must be loopback
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "webchat", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_listening(port, process, log)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=60)


def _wait_until_listening(port: int, process: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 600  # gradio's import alone takes a while on a busy CPU
    while time.monotonic() < deadline:
        assert process.poll() is None, f"webchat exited early:\n{log.read_text()}"
        if "Running on local URL" in log.read_text():
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.5)
    raise AssertionError(f"webchat did not start:\n{log.read_text()}")


def last_answer(chatbot: list[dict]) -> str:
    """Text of the last message of a Chatbot value as the client returns it."""
    content = chatbot[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


@pytest.mark.slow
def test_streamed_answers_equal_the_engine_greedy_answers(server, tiny_model_dir):
    from gradio_client import Client

    url, log = server
    assert f"Running on local URL:  {url.rstrip('/')}\n" in log.read_text()  # loopback
    client = Client(url, verbose=False)
    assert {"/chat", "/clear"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )

    job = client.submit("hi", *GREEDY, api_name="/chat")
    updates = [last_answer(chatbot) for chatbot, _ in job]
    final_chatbot, message_box = job.result()
    assert last_answer(final_chatbot) == HELLO
    assert message_box == ""
    assert len(updates) > 2  # streamed, piece by piece
    assert all(HELLO.startswith(update) for update in updates)

    # the second turn is answered with the first in its history
    second, _ = client.predict("Tell me a joke.", *GREEDY, api_name="/chat")
    assert last_answer(second) == JOKE
    assert [message["role"] for message in second] == ["user", "assistant"] * 2

    engine = load_engine(chat_config(cached_chat_model(tiny_model_dir)))
    try:
        joke_alone = engine.chat([{"role": "user", "content": "Tell me a joke."}])[0].text
        capped = engine.chat([{"role": "user", "content": "hi"}], max_new_tokens=3)[0].text
    finally:
        engine.close()
    client.predict(api_name="/clear")
    after_clear, _ = client.predict("Tell me a joke.", *GREEDY, api_name="/chat")
    assert len(after_clear) == 2
    assert last_answer(after_clear) == joke_alone

    # generation settings from the page reach the engine
    client.predict(api_name="/clear")
    short, _ = client.predict("hi", "user", "", "", 3, 0.7, 0.0, True, True, api_name="/chat")
    assert last_answer(short) == capped


def test_tool_calls_become_function_turns(tiny_tokenizer):
    from tuneforge.templates import get_template
    from tuneforge.webui.chat import _respond

    template = get_template("qwen", tiny_tokenizer)
    calls = json.dumps([{"name": "weather", "arguments": {"city": "Paris"}}])

    class ToolCallingEngine:  # answers every message with one tool call, in the template's format
        def __init__(self):
            self.template = template
            self.seen = None

        def stream_chat(self, messages, system=None, tools=None, **generation):
            self.seen = (messages, system, tools, generation)
            text = template.tool_format.format_calls(calls)
            return iter([text[:5], text[5:]])

    engine = ToolCallingEngine()
    tools = '[{"name": "weather", "parameters": {}}]'
    inputs = ("Weather in Paris?", "user", "Be brief.", tools, 32, 0.5, 0.7, True, False)
    *_, (shown, conversation, _) = _respond(lambda: engine, [], *inputs)
    assert conversation[-1]["role"] == "function"
    assert json.loads(conversation[-1]["content"]) == json.loads(calls)
    assert shown[-1]["content"].startswith("Tool call:")
    _, system, seen_tools, generation = engine.seen
    assert (system, seen_tools) == ("Be brief.", tools)
    assert generation == {
        "max_new_tokens": 32,
        "top_p": 0.5,
        "temperature": 0.7,
        "do_sample": True,  # a temperature above the slider's 0 samples
        "skip_special_tokens": True,
        "enable_thinking": False,
    }
    # the tool's result goes back as an observation turn
    result = ("22 degrees", "observation", "", tools, 32, 0.5, 0.7, True, False)
    *_, (shown, conversation, _) = _respond(lambda: engine, conversation, *result)
    assert [m["role"] for m in engine.seen[0]] == ["user", "function", "observation"]
    assert shown[2]["content"].startswith("Tool result:")


def test_missing_gradio_names_the_web_extra(monkeypatch, tmp_path, capsys):
    from tuneforge.cli.main import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails
    config = tmp_path / "chat.yaml"
    config.write_text("model_name_or_path: anything\n")
    assert main(["webchat", str(config)]) == 2
    assert "pip install 'tuneforge[web]'" in capsys.readouterr().err
