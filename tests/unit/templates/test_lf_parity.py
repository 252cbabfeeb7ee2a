"""Renderings agree with LLaMA-Factory's slot definitions, transcribed here in LF's own shape.

LLaMA-Factory writes a user slot that ends with the assistant header and an assistant slot that
ends with the separator; tuneforge splits those. This file copies LF's slots as LF writes them
(`{{content}}`, `{bos}`/`{eos}` for its bos/eos token slots) and renders them the way LF's
`Template._encode` concatenates (system fused into the first user turn for its Llama2Template,
one eos appended at the end for `efficient_eos`, an empty thought block in front of every
response for its ReasoningTemplate with thinking on). The only differences allowed are the
documented ones: the separator after the last response is not part of tuneforge's rendering, an
efficient_eos eos follows the response directly, and gemma2 has no efficient_eos.
"""

from __future__ import annotations

import pytest

from tuneforge.data.example import Message
from tuneforge.templates import TEMPLATES, get_tool_format

from .cases import CASES, Case, golden_template

_CHATML_U = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_A = "{{content}}<|im_end|>\n"
_CHATML_S = "<|im_start|>system\n{{content}}<|im_end|>\n"
_CHATML_O = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_QWEN_O = (
    "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)
_GEMMA = {
    "user": "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
    "assistant": "{{content}}<end_of_turn>\n",
    "system": "{{content}}\n\n",
    "observation": "<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
    "prefix": "{bos}",
    "fused": True,
}
_LLAMA3 = {
    "user": "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "assistant": "{{content}}<|eot_id|>",
    "system": "<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",
    "function": "{{content}}<|eot_id|>",
    "observation": "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "prefix": "{bos}",
    "tools": "llama3",
}
_QWEN = {
    "user": _CHATML_U,
    "assistant": _CHATML_A,
    "system": _CHATML_S,
    "function": "{{content}}<|im_end|>\n",
    "observation": _QWEN_O,
    "tools": "qwen",
}
_INTERN_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文."
)
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

LF: dict[str, dict] = {
    "alpaca": {
        "user": "### Instruction:\n{{content}}\n\n### Response:\n",
        "assistant": "{{content}}{eos}\n\n",
        "default_system": "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n",
    },
    "chatml": {
        "user": _CHATML_U,
        "assistant": _CHATML_A,
        "system": _CHATML_S,
        "observation": _CHATML_O,
    },
    "chatml_de": {
        "user": _CHATML_U,
        "assistant": _CHATML_A,
        "system": _CHATML_S,
        "observation": _CHATML_O,
        "default_system": "Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
    },
    "cohere": {
        "user": "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "system": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>",
        "prefix": "{bos}",
    },
    "deepseek": {
        "user": "User: {{content}}\n\nAssistant:",
        "system": "{{content}}\n\n",
        "prefix": "{bos}",
    },
    "deepseek3": {"user": "<｜User｜>{{content}}<｜Assistant｜>", "prefix": "{bos}"},
    "deepseekr1": {
        "user": "<｜User｜>{{content}}<｜Assistant｜>",
        "prefix": "{bos}",
        "reasoning": True,
    },
    "deepseekcoder": {
        "user": "### Instruction:\n{{content}}\n### Response:",
        "assistant": "\n{{content}}\n<|EOT|>\n",
        "prefix": "{bos}",
        "default_system": "You are an AI programming assistant, utilizing the DeepSeek Coder "
        "model, developed by DeepSeek Company, and you only answer questions related to "
        "computer science. For politically sensitive questions, security and privacy issues, "
        "and other non-computer science questions, you will refuse to answer.\n",
    },
    "default": {
        "user": "Human: {{content}}{eos}\nAssistant:",
        "assistant": "{{content}}{eos}\n",
        "system": "System: {{content}}{eos}\n",
    },
    "empty": {"assistant": "{{content}}"},
    "falcon": {
        "user": "User: {{content}}\nFalcon:",
        "assistant": "{{content}}\n",
        "efficient_eos": True,
    },
    "gemma": _GEMMA,
    "gemma2": {**_GEMMA, "efficient_eos": True},
    "gemma3": _GEMMA,
    "glm4": {
        "user": "<|user|>\n{{content}}<|assistant|>",
        "assistant": "\n{{content}}",
        "system": "<|system|>\n{{content}}",
        "function": "{{content}}",
        "observation": "<|observation|>\n{{content}}<|assistant|>",
        "prefix": "[gMASK]<sop>",
        "efficient_eos": True,
        "tools": "glm4",
    },
    "granite3": {
        "user": "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>",
        "assistant": "{{content}}<|end_of_text|>\n",
        "system": "<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",
    },
    "intern2": {
        "user": _CHATML_U,
        "assistant": _CHATML_A,
        "system": _CHATML_S,
        "prefix": "{bos}",
        "default_system": _INTERN_SYSTEM,
    },
    "llama2": {
        "user": "{bos}[INST] {{content}} [/INST]",
        "system": "<<SYS>>\n{{content}}\n<</SYS>>\n\n",
        "fused": True,
    },
    "llama2_zh": {
        "user": "{bos}[INST] {{content}} [/INST]",
        "system": "<<SYS>>\n{{content}}\n<</SYS>>\n\n",
        "fused": True,
        "default_system": "You are a helpful assistant. 你是一个乐于助人的助手。",
    },
    "llama3": _LLAMA3,
    "llama4": {
        "user": "<|header_start|>user<|header_end|>\n\n{{content}}<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\n",
        "assistant": "{{content}}<|eot|>",
        "system": "<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>",
        "function": "{{content}}<|eot|>",
        "observation": "<|header_start|>ipython<|header_end|>\n\n{{content}}<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\n",
        "prefix": "{bos}",
        "tools": "llama3",
    },
    "ministral": {
        "user": "[INST]{{content}}[/INST]",
        "system": "{{content}}\n\n",
        "function": "[TOOL_CALLS]{{content}}{eos}",
        "observation": '[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',
        "prefix": "{bos}",
        "fused": True,
        "tools": "mistral",
    },
    "mistral": {
        "user": "[INST] {{content}}[/INST]",
        "assistant": " {{content}}{eos}",
        "system": "{{content}}\n\n",
        "function": "[TOOL_CALLS] {{content}}{eos}",
        "observation": '[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]',
        "prefix": "{bos}",
        "fused": True,
        "tools": "mistral",
    },
    "mistral_small": {
        "user": "[INST]{{content}}[/INST]",
        "system": "[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]",
        "function": "[TOOL_CALLS]{{content}}{eos}",
        "observation": '[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',
        "prefix": "{bos}",
        "tools": "mistral",
    },
    "moonlight": {
        "user": "<|im_user|>user<|im_middle|>{{content}}<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>",
        "assistant": "{{content}}<|im_end|>",
        "system": "<|im_system|>system<|im_middle|>{{content}}<|im_end|>",
        "default_system": "You are a helpful assistant provided by Moonshot-AI.",
    },
    "olmo": {"user": "<|user|>\n{{content}}<|assistant|>\n", "prefix": "{eos}"},
    "openchat": {
        "user": "GPT4 Correct User: {{content}}{eos}GPT4 Correct Assistant:",
        "prefix": "{bos}",
    },
    "opencoder": {
        "user": _CHATML_U,
        "assistant": _CHATML_A,
        "system": _CHATML_S,
        "observation": _CHATML_O,
        "default_system": "You are OpenCoder, created by OpenCoder Team.",
    },
    "phi": {
        "user": "<|user|>\n{{content}}<|end|>\n<|assistant|>\n",
        "assistant": "{{content}}<|end|>\n",
        "system": "<|system|>\n{{content}}<|end|>\n",
    },
    "phi4": {
        "user": "<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",
        "assistant": "{{content}}<|im_end|>",
        "system": "<|im_start|>system<|im_sep|>{{content}}<|im_end|>",
    },
    "qwen": {
        **_QWEN,
        "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    },
    "qwen3": {**_QWEN, "reasoning": True},
    "qwen3_nothink": _QWEN,
    "smollm": {"user": _CHATML_U, "assistant": _CHATML_A, "system": _CHATML_S},
    "smollm2": {
        "user": _CHATML_U,
        "assistant": _CHATML_A,
        "system": _CHATML_S,
        "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
    },
    "starchat": {
        "user": "<|user|>\n{{content}}<|end|>\n<|assistant|>",
        "assistant": "{{content}}<|end|>\n",
        "system": "<|system|>\n{{content}}<|end|>\n",
    },
    "vicuna": {"user": "USER: {{content}} ASSISTANT:", "default_system": _VICUNA_SYSTEM},
    "yi": {"user": _CHATML_U, "assistant": _CHATML_A, "system": _CHATML_S},
    "zephyr": {
        "user": "<|user|>\n{{content}}{eos}<|assistant|>\n",
        "system": "<|system|>\n{{content}}{eos}",
        "default_system": "You are Zephyr, a helpful assistant.",
    },
}


def lf_render(spec: dict, case: Case, bos: str, eos: str) -> str:
    """Concatenate like LLaMA-Factory's Template._encode (strings instead of token ids)."""
    efficient = spec.get("efficient_eos", False)
    assistant = spec.get("assistant", "{{content}}" if efficient else "{{content}}{eos}")
    user = spec.get("user", "{{content}}")
    slots = {
        "user": user,
        "assistant": assistant,
        "observation": spec.get("observation", user),
        "function": spec.get("function", assistant),
    }
    fmt = get_tool_format(spec.get("tools", "default"))
    system = case.system or spec.get("default_system", "")
    tool_text = fmt.format_tools(case.tools) if case.tools else ""

    def fill(slot: str, content: str = "") -> str:
        return slot.replace("{bos}", bos).replace("{eos}", eos).replace("{{content}}", content, 1)

    out, fused = fill(spec.get("prefix", "")), ""
    if system or tool_text:
        block = fill(spec.get("system", "{{content}}"), system + tool_text)
        if spec.get("fused"):
            fused = block
        else:
            out += block
    for i, msg in enumerate(case.messages):
        content = fmt.format_calls(msg.content) if msg.role == "function" else msg.content
        if i == 0:
            content = fused + content
        if spec.get("reasoning") and msg.role in ("assistant", "function"):
            out += "<think>\n\n</think>\n\n"  # LF adds the empty thought to responses without one
        out += fill(slots[msg.role], content)
    return out + (eos if efficient else "")


PARITY_CASES = {
    **CASES,
    "default_system": Case(
        (
            Message("user", "Hi"),
            Message("assistant", "Hello!"),
            Message("user", "Bye"),
            Message("assistant", "Bye!"),
        )
    ),
}


def test_every_template_is_transcribed() -> None:
    assert set(LF) == set(TEMPLATES)


@pytest.mark.parametrize("case_name", sorted(PARITY_CASES))
@pytest.mark.parametrize("name", sorted(LF))
def test_matches_llamafactory(name: str, case_name: str) -> None:
    case = PARITY_CASES[case_name]
    template = golden_template(name)
    ours = "".join(
        t.prompt + t.response for t in template.render(list(case.messages), case.system, case.tools)
    )
    lf = lf_render(LF[name], case, template.bos_token or "", template.eos_token or "")
    eos = template.eos_token or ""
    if template.efficient_eos:  # LF: "...response<sep><eos>"; here the eos follows the response
        assert ours.endswith(eos)
        assert lf == ours[: -len(eos)] + template.separator + eos
    elif LF[name].get("efficient_eos"):  # gemma2: LF ends "<end_of_turn>\n<eos>"
        assert lf == ours + template.separator + eos
    else:
        assert lf == ours + template.separator
