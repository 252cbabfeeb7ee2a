"""Every named template, as data.

Names, slot texts, default system prompts, stop words and tool formats are LLaMA-Factory's
(`src/llamafactory/data/template.py`). LLaMA-Factory writes a user slot with the assistant header
at its end and an assistant slot with the trailing separator; here those are split into
`user` + `assistant_header` and `assistant` + `separator`, which renders the same text but leaves
the separator untrained. Deliberate differences, each noted at its template:

- gemma2: LLaMA-Factory lists `<eos>` first and appends an extra eos after the last
  `<end_of_turn>\\n`; here `<end_of_turn>` (what the model emits to end a turn) comes first and
  the response ends there, as in gemma and gemma3.
- deepseekcoder, granite3: the literal end marker that closes every response (`<|EOT|>`,
  `<|end_of_text|>`) is listed as the first stop word; LLaMA-Factory lists none and relies on the
  tokenizer's eos being that marker.
- falcon, glm4 (`efficient_eos`): LLaMA-Factory appends the eos after the last response's
  separator ("...answer\n<eos>"); here it follows the response ("...answer<eos>"), and it is
  `stop_words[0]` once bound (it is what the model learns to end with).

`bos_token` / `eos_token` are the family tokenizer's, used when no tokenizer is passed to
`get_template`; None where the template is generic and only a tokenizer can tell.
"""

from __future__ import annotations

from dataclasses import replace

from tuneforge.templates.base import Template

# ---- ChatML family ---------------------------------------------------------------------------

_IM = ("<|im_start|>", "<|im_end|>")
_CHATML_TOOL = "<|im_start|>tool\n{content}<|im_end|>\n"
_QWEN_TOOL = "<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"


def _chatml(name: str, **fields: object) -> Template:
    slots: dict[str, object] = {
        "system": "<|im_start|>system\n{content}<|im_end|>\n",
        "user": "<|im_start|>user\n{content}<|im_end|>\n",
        "assistant_header": "<|im_start|>assistant\n",
        "assistant": "{content}<|im_end|>",
        "separator": "\n",
        "markers": _IM,
    }
    return Template(name, **{**slots, **fields})  # type: ignore[arg-type]


CHATML = _chatml(
    "chatml",
    observation=_CHATML_TOOL,
    stop_words=("<|im_end|>", "<|im_start|>"),
    replace_eos=True,
)
QWEN = _chatml(
    "qwen",
    observation=_QWEN_TOOL,
    tool_format_name="qwen",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    markers=(*_IM, "<tool_response>", "</tool_response>"),
)
QWEN3 = replace(QWEN, name="qwen3", default_system="", reasoning=True)
QWEN3_NOTHINK = replace(QWEN, name="qwen3_nothink", default_system="")
YI = _chatml("yi", stop_words=("<|im_end|>",))
SMOLLM = _chatml("smollm", stop_words=("<|im_end|>",))
SMOLLM2 = replace(
    SMOLLM,
    name="smollm2",
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
)
CHATML_DE = replace(
    CHATML,
    name="chatml_de",
    default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
)
OPENCODER = _chatml(
    "opencoder",
    observation=_CHATML_TOOL,
    default_system="You are OpenCoder, created by OpenCoder Team.",
    stop_words=("<|im_end|>",),
)
INTERN2 = _chatml(
    "intern2",
    prefix="{bos_token}",
    default_system=(
        "You are an AI assistant whose name is InternLM (书生·浦语).\n"
        "- InternLM (书生·浦语) is a conversational language model that is developed by "
        "Shanghai AI Laboratory (上海人工智能实验室). "
        "It is designed to be helpful, honest, and harmless.\n"
        "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by "
        "the user such as English and 中文."
    ),
    stop_words=("<|im_end|>",),
    bos_token="<s>",
    eos_token="</s>",
)
PHI4 = Template(
    "phi4",
    system="<|im_start|>system<|im_sep|>{content}<|im_end|>",
    user="<|im_start|>user<|im_sep|>{content}<|im_end|>",
    assistant_header="<|im_start|>assistant<|im_sep|>",
    assistant="{content}<|im_end|>",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    markers=("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
)
MOONLIGHT = Template(
    "moonlight",
    system="<|im_system|>system<|im_middle|>{content}<|im_end|>",
    user="<|im_user|>user<|im_middle|>{content}<|im_end|>",
    assistant_header="<|im_assistant|>assistant<|im_middle|>",
    assistant="{content}<|im_end|>",
    default_system="You are a helpful assistant provided by Moonshot-AI.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    markers=("<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>", "<|im_end|>"),
)

# ---- plain-text templates (end marker is the tokenizer's eos) ---------------------------------

DEFAULT = Template(
    "default",
    system="System: {content}{eos_token}\n",
    user="Human: {content}{eos_token}\n",
    assistant_header="Assistant:",
    separator="\n",
)
EMPTY = Template("empty", assistant="{content}")
ALPACA = Template(
    "alpaca",
    user="### Instruction:\n{content}\n\n",
    assistant_header="### Response:\n",
    separator="\n\n",
    default_system=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
    ),
)
VICUNA = Template(
    "vicuna",
    user="USER: {content} ",
    assistant_header="ASSISTANT:",
    default_system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
)
FALCON = Template(
    "falcon",
    user="User: {content}\n",
    assistant_header="Falcon:",
    assistant="{content}",
    separator="\n",
    efficient_eos=True,
    eos_token="<|endoftext|>",
)
OPENCHAT = Template(
    "openchat",
    prefix="{bos_token}",
    user="GPT4 Correct User: {content}{eos_token}",
    assistant_header="GPT4 Correct Assistant:",
    bos_token="<s>",
    eos_token="<|end_of_turn|>",
)
ZEPHYR = Template(
    "zephyr",
    system="<|system|>\n{content}{eos_token}",
    user="<|user|>\n{content}{eos_token}",
    assistant_header="<|assistant|>\n",
    default_system="You are Zephyr, a helpful assistant.",
    markers=("<|system|>", "<|user|>", "<|assistant|>"),
    bos_token="<s>",
    eos_token="</s>",
)
OLMO = Template(
    "olmo",
    prefix="{eos_token}",
    user="<|user|>\n{content}",
    assistant_header="<|assistant|>\n",
    markers=("<|user|>", "<|assistant|>"),
    eos_token="<|endoftext|>",
)

# ---- Llama / Mistral -------------------------------------------------------------------------

LLAMA2 = Template(
    "llama2",
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    system_in_user=True,
    user="{bos_token}[INST] {content} [/INST]",
    bos_token="<s>",
    eos_token="</s>",
)
LLAMA2_ZH = replace(
    LLAMA2, name="llama2_zh", default_system="You are a helpful assistant. 你是一个乐于助人的助手。"
)
LLAMA3 = Template(
    "llama3",
    prefix="{bos_token}",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    assistant="{content}<|eot_id|>",
    tool_format_name="llama3",
    stop_words=("<|eot_id|>", "<|eom_id|>"),
    replace_eos=True,
    markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    bos_token="<|begin_of_text|>",
)
LLAMA4 = Template(
    "llama4",
    prefix="{bos_token}",
    system="<|header_start|>system<|header_end|>\n\n{content}<|eot|>",
    user="<|header_start|>user<|header_end|>\n\n{content}<|eot|>",
    observation="<|header_start|>ipython<|header_end|>\n\n{content}<|eot|>",
    assistant_header="<|header_start|>assistant<|header_end|>\n\n",
    assistant="{content}<|eot|>",
    tool_format_name="llama3",
    stop_words=("<|eot|>", "<|eom|>"),
    replace_eos=True,
    markers=("<|header_start|>", "<|header_end|>", "<|eot|>"),
    bos_token="<|begin_of_text|>",
)
_MISTRAL_MARKERS = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]")
MISTRAL = Template(  # mistral tokenizer v3
    "mistral",
    prefix="{bos_token}",
    system="{content}\n\n",
    system_in_user=True,
    user="[INST] {content}[/INST]",
    observation='[TOOL_RESULTS] {"content": {content}}[/TOOL_RESULTS]',
    assistant=" {content}{eos_token}",
    function="[TOOL_CALLS] {content}{eos_token}",
    tool_format_name="mistral",
    markers=_MISTRAL_MARKERS,
    bos_token="<s>",
    eos_token="</s>",
)
MINISTRAL = Template(  # mistral tokenizer v3 tekken
    "ministral",
    prefix="{bos_token}",
    system="{content}\n\n",
    system_in_user=True,
    user="[INST]{content}[/INST]",
    observation='[TOOL_RESULTS]{"content": {content}}[/TOOL_RESULTS]',
    function="[TOOL_CALLS]{content}{eos_token}",
    tool_format_name="mistral",
    markers=_MISTRAL_MARKERS,
    bos_token="<s>",
    eos_token="</s>",
)
MISTRAL_SMALL = replace(  # mistral tokenizer v7 tekken: the system prompt has its own turn
    MINISTRAL,
    name="mistral_small",
    system="[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]",
    system_in_user=False,
    markers=(*_MISTRAL_MARKERS, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
)

# ---- Gemma (system prompt fused into the first user turn) -------------------------------------

GEMMA = Template(
    "gemma",
    prefix="{bos_token}",
    system="{content}\n\n",
    system_in_user=True,
    user="<start_of_turn>user\n{content}<end_of_turn>\n",
    observation="<start_of_turn>tool\n{content}<end_of_turn>\n",
    assistant_header="<start_of_turn>model\n",
    assistant="{content}<end_of_turn>",
    separator="\n",
    stop_words=("<end_of_turn>",),
    replace_eos=True,
    markers=("<start_of_turn>", "<end_of_turn>"),
    bos_token="<bos>",
    eos_token="<eos>",
)
# LLaMA-Factory: stop_words=["<eos>", "<end_of_turn>"], efficient_eos; see the module docstring.
GEMMA2 = replace(GEMMA, name="gemma2", stop_words=("<end_of_turn>", "<eos>"), replace_eos=False)
GEMMA3 = replace(GEMMA, name="gemma3")

# ---- Phi, GLM, Granite, Cohere ----------------------------------------------------------------

PHI = Template(
    "phi",
    system="<|system|>\n{content}<|end|>\n",
    user="<|user|>\n{content}<|end|>\n",
    assistant_header="<|assistant|>\n",
    assistant="{content}<|end|>",
    separator="\n",
    stop_words=("<|end|>",),
    replace_eos=True,
    markers=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
)
STARCHAT = Template(
    "starchat",
    system="<|system|>\n{content}<|end|>\n",
    user="<|user|>\n{content}<|end|>\n",
    assistant_header="<|assistant|>",
    assistant="{content}<|end|>",
    separator="\n",
    stop_words=("<|end|>",),
    markers=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
)
GLM4 = Template(
    "glm4",
    prefix="[gMASK]<sop>",
    system="<|system|>\n{content}",
    user="<|user|>\n{content}",
    observation="<|observation|>\n{content}",
    assistant_header="<|assistant|>",
    assistant="\n{content}",
    function="{content}",
    tool_format_name="glm4",
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
    markers=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    eos_token="<|endoftext|>",
)
GRANITE3 = Template(
    "granite3",
    system="<|start_of_role|>system<|end_of_role|>{content}<|end_of_text|>\n",
    user="<|start_of_role|>user<|end_of_role|>{content}<|end_of_text|>\n",
    assistant_header="<|start_of_role|>assistant<|end_of_role|>",
    assistant="{content}<|end_of_text|>",
    separator="\n",
    stop_words=("<|end_of_text|>",),  # not in LLaMA-Factory, which relies on the tokenizer's eos
    markers=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
    eos_token="<|end_of_text|>",
)
COHERE = Template(
    "cohere",
    prefix="{bos_token}",
    system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
    user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
    assistant_header="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    markers=(
        "<|START_OF_TURN_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|SYSTEM_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
    ),
    bos_token="<BOS_TOKEN>",
    eos_token="<|END_OF_TURN_TOKEN|>",
)

# ---- DeepSeek --------------------------------------------------------------------------------

_DS_BOS, _DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
DEEPSEEK = Template(
    "deepseek",
    prefix="{bos_token}",
    system="{content}\n\n",
    user="User: {content}\n\n",
    assistant_header="Assistant:",
    bos_token=_DS_BOS,
    eos_token=_DS_EOS,
)
DEEPSEEK3 = Template(
    "deepseek3",
    prefix="{bos_token}",
    user="<｜User｜>{content}",
    assistant_header="<｜Assistant｜>",
    markers=("<｜User｜>", "<｜Assistant｜>"),
    bos_token=_DS_BOS,
    eos_token=_DS_EOS,
)
DEEPSEEKR1 = replace(DEEPSEEK3, name="deepseekr1", reasoning=True)
DEEPSEEKCODER = Template(
    "deepseekcoder",
    prefix="{bos_token}",
    user="### Instruction:\n{content}\n",
    assistant_header="### Response:",
    assistant="\n{content}\n<|EOT|>",
    separator="\n",
    default_system=(
        "You are an AI programming assistant, utilizing the DeepSeek Coder model, developed by "
        "DeepSeek Company, and you only answer questions related to computer science. For "
        "politically sensitive questions, security and privacy issues, and other non-computer "
        "science questions, you will refuse to answer.\n"
    ),
    stop_words=("<|EOT|>",),  # not in LLaMA-Factory, which relies on the tokenizer's eos
    markers=("<|EOT|>",),
    bos_token=_DS_BOS,
    eos_token="<|EOT|>",
)

ALL: tuple[Template, ...] = (
    ALPACA, CHATML, CHATML_DE, COHERE, DEEPSEEK, DEEPSEEK3, DEEPSEEKCODER, DEEPSEEKR1, DEFAULT,
    EMPTY, FALCON, GEMMA, GEMMA2, GEMMA3, GLM4, GRANITE3, INTERN2, LLAMA2, LLAMA2_ZH, LLAMA3,
    LLAMA4, MINISTRAL, MISTRAL, MISTRAL_SMALL, MOONLIGHT, OLMO, OPENCHAT, OPENCODER, PHI, PHI4,
    QWEN, QWEN3, QWEN3_NOTHINK, SMOLLM, SMOLLM2, STARCHAT, VICUNA, YI, ZEPHYR,
)  # fmt: skip
"""Every named template; `registry.TEMPLATES` indexes them by name."""
