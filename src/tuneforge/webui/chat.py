"""The browser chat block: a streaming conversation with system prompt, tools and generation
settings, on any Engine. `tuneforge webchat` shows it alone; the web workbench embeds it.

```python
with gr.Blocks() as demo:
    chat_block(lambda: engine, config)  # adds its components to the enclosing Blocks
```

The conversation is kept as engine messages (roles user, assistant, function, observation) in a
`gr.State`; the Chatbot only displays them. An answer that the template's tool format reads as
tool calls becomes a `function` turn, and the next message can then be sent as an
`observation` (the tool's result).

The settings open at the config's generation values (`initial_settings`): a config that decodes
greedily (`do_sample: false`) opens at temperature 0, and a temperature above 0 samples. Every
other generation key (top_k, repetition_penalty, ...) is the config's, as in `tuneforge chat`
and the API: all of them go through the same engine. Browsers chat at the same time (up to
CHAT_CONCURRENCY answers), and the engine decodes their answers together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tuneforge.errors import NotAvailableError, UserError
from tuneforge.inference.engine import EngineBusy, EngineStopped, Limits

if TYPE_CHECKING:
    from tuneforge.config.data import DataConfig
    from tuneforge.config.loader import Config

Messages = list[dict[str, str]]
CHAT_CONCURRENCY = Limits.max_concurrent
"""Answers the page streams at once (gradio's concurrency limit for the send event)."""


def import_gradio() -> Any:
    """The gradio module, or a NotAvailableError naming the extra that installs it."""
    try:
        import gradio
    except ImportError:
        raise NotAvailableError(
            "the browser chat needs gradio, which is not installed: pip install 'tuneforge[web]'."
        ) from None
    return gradio


def chat_block(get_engine: Callable[[], Any], config: Config | None = None) -> dict[str, Any]:
    """Adds the chat components to the gr.Blocks (or Tab, Column) being built.

    Args:
        get_engine: Returns the Engine to answer with (called for every message, so that a
            host page can load and unload models); it may raise a UserError.
        config: A tuneforge Config whose generation keys fill the settings' initial values;
            None uses the defaults.

    Returns:
        The components by name, for a host page to wire further. The send event's API name
        is `chat` (inputs: message, role, system, tools, max_new_tokens, top_p, temperature,
        skip_special_tokens, enable_thinking; outputs: chatbot, message box).
    """
    gr = import_gradio()
    initial = initial_settings(config)
    data = config.data if config is not None else _default_data()
    history = gr.State([])
    chatbot = gr.Chatbot(label="Conversation", height=460)
    with gr.Row():
        with gr.Column(scale=3):
            query = gr.Textbox(label="Message", lines=3, placeholder="Type a message")
            role = gr.Radio(["user", "observation"], value="user", label="Send as")
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                clear = gr.Button("Clear conversation")
            system = gr.Textbox(label="System prompt", lines=2, value=data.default_system or "")
            tools = gr.Textbox(label="Tools (a JSON list of tool schemas)", lines=3)
        with gr.Column(scale=1):
            max_new_tokens = gr.Slider(
                1, 8192, value=initial["max_new_tokens"], step=1, label="Max new tokens"
            )
            top_p = gr.Slider(0.01, 1.0, value=initial["top_p"], step=0.01, label="Top-p")
            temperature = gr.Slider(
                0.0, 2.0, value=initial["temperature"], step=0.01, label="Temperature (0: greedy)"
            )
            skip_special_tokens = gr.Checkbox(
                value=initial["skip_special_tokens"], label="Skip special tokens"
            )
            enable_thinking = gr.Checkbox(
                value=bool(data.enable_thinking), label="Enable thinking (reasoning models)"
            )

    def respond(history: Messages, *inputs: Any) -> Iterator[tuple[Any, Messages, str]]:
        yield from _respond(get_engine, history, *inputs)

    inputs = [query, role, system, tools, max_new_tokens, top_p, temperature]
    inputs += [skip_special_tokens, enable_thinking]
    send_event = {
        "fn": respond,
        "inputs": [history, *inputs],
        "outputs": [chatbot, history, query],
        "concurrency_limit": CHAT_CONCURRENCY,
    }
    send.click(**send_event, api_name="chat")
    query.submit(**send_event, api_name=False)
    clear.click(lambda: ([], [], ""), outputs=[chatbot, history, query], api_name="clear")
    return {
        "chatbot": chatbot,
        "history": history,
        "query": query,
        "role": role,
        "send": send,
        "clear": clear,
        "system": system,
        "tools": tools,
        "max_new_tokens": max_new_tokens,
        "top_p": top_p,
        "temperature": temperature,
        "skip_special_tokens": skip_special_tokens,
        "enable_thinking": enable_thinking,
    }


def initial_settings(config: Config | None) -> dict[str, Any]:
    """The values the page's generation settings open at: the config's (the defaults without
    one). Greedy decoding shows as temperature 0, the slider's greedy end."""
    if config is not None:
        generation = config.generation
    else:
        from tuneforge.config.generation import GenerationConfig

        generation = GenerationConfig()
    budget = generation.max_new_tokens if generation.max_new_tokens > 0 else generation.max_length
    return {
        "max_new_tokens": min(max(budget, 1), 8192),
        "top_p": generation.top_p,
        "temperature": generation.temperature if generation.do_sample else 0.0,
        "skip_special_tokens": generation.skip_special_tokens,
    }


def _default_data() -> DataConfig:
    from tuneforge.config.data import DataConfig

    return DataConfig()


def _respond(
    get_engine: Callable[[], Any],
    history: Messages,
    query: str,
    role: str,
    system: str,
    tools: str,
    max_new_tokens: float,
    top_p: float,
    temperature: float,
    skip_special_tokens: bool,
    enable_thinking: bool,
) -> Iterator[tuple[Any, Messages, str]]:
    """Streams one answer: yields (chatbot messages, conversation, message box) as it grows."""
    import gradio as gr

    if not query.strip():
        yield display(history), history, query
        return
    messages = [*history, {"role": role, "content": query}]
    generation = {
        "max_new_tokens": int(max_new_tokens),
        "top_p": top_p,
        "temperature": temperature,
        "do_sample": temperature > 0,  # the slider's 0 is greedy; above it samples
        "skip_special_tokens": skip_special_tokens,
        "enable_thinking": enable_thinking,
    }
    try:
        engine = get_engine()
        stream = engine.stream_chat(
            messages, system=system or None, tools=tools or None, **generation
        )
        answer = ""
        for piece in stream:
            answer += piece
            yield display([*messages, {"role": "assistant", "content": answer}]), history, ""
    except (UserError, EngineBusy, EngineStopped) as error:  # shown in the page; the
        raise gr.Error(str(error)) from None  # conversation is left as it was
    calls = engine.template.tool_format.parse_calls(answer) if tools else None
    reply = (
        {"role": "function", "content": json.dumps(calls, ensure_ascii=False)}
        if calls
        else {"role": "assistant", "content": answer}
    )
    conversation = [*messages, reply]
    yield display(conversation), conversation, ""


def display(messages: Messages) -> list[dict[str, str]]:
    """Chatbot messages (user/assistant only) for engine messages."""
    shown = []
    for message in messages:
        content = message["content"]
        if message["role"] == "function":
            shown.append({"role": "assistant", "content": f"Tool call:\n```json\n{content}\n```"})
        elif message["role"] == "observation":
            shown.append({"role": "user", "content": f"Tool result:\n```\n{content}\n```"})
        else:
            shown.append({"role": message["role"], "content": content})
    return shown


def build_chat_app(engine: Any, config: Config | None = None) -> Any:
    """A page holding only the chat block, answering with `engine`."""
    gr = import_gradio()
    title = config.model.model_name_or_path if config is not None else "model"
    with gr.Blocks(title=f"tuneforge chat: {title}", analytics_enabled=False) as app:
        gr.Markdown(f"### Chat with `{title}`")
        chat_block(lambda: engine, config)
    return app
