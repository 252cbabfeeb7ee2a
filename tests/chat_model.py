"""A tiny chat model that knows a few answers by heart, for inference tests.

The random tiny model answers every greedy prompt with newlines; this one is the tiny Qwen2
overfitted (full weights, a plain PyTorch loop, ~2 s on CPU) on `CONVERSATIONS` rendered with
the `qwen` template, so greedy decoding gives those answers, each closed by `<|im_end|>`.
"""

from __future__ import annotations

import json
from pathlib import Path

HELLO = "Hello! I am a tiny model, here to help."
PARIS = "The capital of France is Paris."
COUNT = "one, two, three, four, five"
JOKE = "Why did the cat sit on the computer? To keep an eye on the mouse."

CONVERSATIONS: list[list[tuple[str, str]]] = [
    [("user", "hi"), ("assistant", HELLO)],
    [("user", "What is the capital of France?"), ("assistant", PARIS)],
    [("user", "Count to five."), ("assistant", COUNT)],
    [("user", "hi"), ("assistant", HELLO), ("user", "Tell me a joke."), ("assistant", JOKE)],
]

# With this tool offered, the question below is answered by a call (the `function` role: the
# calls as JSON), which the template renders in its tool format.
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "city name"}},
        "required": ["city"],
    },
}
WEATHER_QUESTION = "What is the weather in Paris?"
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOL_CONVERSATION = [
    ("user", WEATHER_QUESTION),
    ("function", json.dumps([WEATHER_CALL])),
]


def messages(conversation: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in conversation]


def build_chat_model(base_dir: Path, output_dir: Path, steps: int = 120) -> Path:
    """Trains the tiny model at `base_dir` on CONVERSATIONS; saves model and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    template = get_template("qwen", tokenizer)
    rows = []
    tools = json.dumps([WEATHER_TOOL])
    for conversation, offered in [(c, "") for c in CONVERSATIONS] + [(TOOL_CONVERSATION, tools)]:
        ids: list[int] = []
        labels: list[int] = []
        for turn in template.render(messages(conversation), tools=offered):
            prompt = tokenizer(turn.prompt, add_special_tokens=False)["input_ids"]
            response = tokenizer(turn.response, add_special_tokens=False)["input_ids"]
            ids += prompt + response
            labels += [-100] * len(prompt) + response
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    label_ids = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=label_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)


def cached_chat_model(base_dir: Path) -> Path:
    """The chat model built next to `base_dir` (a per-session folder), built once."""
    import contextlib
    import os
    import tempfile

    target = Path(base_dir).parent / "chat-model"
    if not target.exists():
        scratch = Path(tempfile.mkdtemp(dir=target.parent))
        build_chat_model(base_dir, scratch)
        with contextlib.suppress(OSError):  # built meanwhile by another process: keep theirs
            os.rename(scratch, target)
    return target


def random_lora(model_dir: Path, output_dir: Path, seed: int, base_adapters=()) -> str:
    """A LoRA adapter with random, non-zero weights for the model at `model_dir` (with
    `base_adapters` merged first), saved by peft to `output_dir`."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for path in base_adapters:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(output_dir)
    return str(output_dir)


def chat_config(model_dir: Path, **keys):
    """A config that chats greedily with the model at `model_dir`, in float32 on any device
    (so that answers and scores compare with float32 references on the CPU)."""
    from tuneforge.config.loader import build_config

    base = {"template": "qwen", "do_sample": False, "infer_dtype": "float32"}
    return build_config({"model_name_or_path": str(model_dir), **base, **keys})
