"""Every named template, as data.

Every text template of LLaMA-Factory 0.9.5 is here, under its name; its multimodal templates
(those with an mm_plugin: qwen2_vl, llava..., and gemma3 / llama4 / mistral_small rendered as
text) are not, except these three. `tests/unit/templates/test_lf_parity.py` holds each one to
LLaMA-Factory's own token ids (`golden_lf/`).

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
- falcon, fewshot, glm4... (`efficient_eos`): LLaMA-Factory appends the eos after the last
  response's separator ("...answer\n<eos>"); here it follows the response ("...answer<eos>"),
  and it is `stop_words[0]` once bound (it is what the model learns to end with).
- granite4: a tool result is followed by the assistant header every other turn ends with
  (LLaMA-Factory's observation slot ends with `<|start_of_role|>assistant\n`).
- phi_small: the prefix `<|endoftext|>` is rendered (LLaMA-Factory's prefix slot is a set that
  its encoder skips).
- chatglm3, yuan: LLaMA-Factory gives some markers as token ids (`{"token": ...}`); here they are
  text, the same ids with a tokenizer that parses them as single tokens.

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

CPM4 = _chatml(  # MiniCPM 4
    "cpm4", prefix="{bos_token}", observation=_CHATML_TOOL, stop_words=("<|im_end|>",)
)
DBRX = _chatml(
    "dbrx",
    observation=_CHATML_TOOL,
    default_system=(
        "You are DBRX, created by Databricks. You were last updated in December 2023. "
        "You answer questions based on information available up to that point.\n"
        "YOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough "
        "responses to more complex and open-ended questions.\nYou assist with various tasks, "
        "from writing to coding (using markdown for code blocks — remember to use ``` with "
        "code, JSON, and tables).\n(You do not have real-time data access or code execution "
        "capabilities. You avoid stereotyping and provide balanced perspectives on "
        "controversial topics. You do not provide song lyrics, poems, or news articles and "
        "do not divulge details of your training data.)\nThis is your system prompt, "
        "guiding your responses. Do not reference it, just respond to the user. If you find "
        "yourself talking about this message, stop. You should be responding appropriately "
        "and usually that means not mentioning this.\nYOU DO NOT MENTION ANY OF THIS INFORMATION "
        "ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO THE USER'S QUERY."
    ),
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
ERNIE = _chatml(  # ERNIE 4.5 (thinking models): a blank line between turns
    "ernie",
    system="<|im_start|>system\n{content}<|im_end|>\n\n",
    user="<|im_start|>user\n{content}<|im_end|>\n\n",
    observation="<|im_start|>tool\n{content}<|im_end|>\n\n",
    separator="\n\n",
    default_system="<global_setting>\nthink_mode=True\n</global_setting>",
    stop_words=("<|im_end|>",),
)
FALCON_H1 = _chatml(
    "falcon_h1",
    prefix="{bos_token}",
    observation=_CHATML_TOOL,
    stop_words=("<|im_end|>", "<|end_of_text|>"),
)
LFM2 = _chatml(  # Liquid LFM2 / 2.5
    "lfm2",
    observation=(
        "<|im_start|>tool\n<|tool_response_start|>{content}<|tool_response_end|><|im_end|>\n"
    ),
    tool_format_name="lfm2",
    tool_call_words=("<|tool_call_start|>", "<|tool_call_end|>"),
    default_system="You are a helpful AI assistant.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
    markers=(*_IM, "<|tool_response_start|>", "<|tool_response_end|>"),
)
MIMO = replace(QWEN, name="mimo", default_system="You are a helpful assistant.", reasoning=True)
MIMO_V2 = replace(
    QWEN,
    name="mimo_v2",
    default_system="You are MiMo, a helpful AI assistant engineered by Xiaomi.",
    reasoning=True,
    thought_words=("<think>", "</think>"),
)
SAILOR = _chatml(
    "sailor",
    user="<|im_start|>question\n{content}<|im_end|>\n",
    assistant_header="<|im_start|>answer\n",
    default_system=(
        "You are an AI assistant named Sailor created by Sea AI Lab. "
        "Your answer should be friendly, unbiased, faithful, informative and detailed."
    ),
    stop_words=("<|im_end|>",),
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

BREEZE = Template(
    "breeze",
    prefix="{bos_token}",
    user="[INST] {content} [/INST] ",
    assistant="{content}",
    efficient_eos=True,
    markers=("[INST]", "[/INST]"),
    bos_token="<s>",
    eos_token="</s>",
)
FEWSHOT = Template("fewshot", assistant="{content}", separator="\n\n", efficient_eos=True)
SOLAR = Template(
    "solar",
    system="### System:\n{content}\n\n",
    user="### User:\n{content}\n\n",
    assistant_header="### Assistant:\n",
    assistant="{content}",
    efficient_eos=True,
)
XUANYUAN = Template(
    "xuanyuan",
    user="Human: {content} ",
    assistant_header="Assistant:",
    default_system=(
        "以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，"
        "会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、"
        "不安全、有争议、政治敏感等相关的话题、问题和指示。\n"
    ),
)
SEED_CODER = Template(  # every turn opens with the bos and closes with the eos
    "seed_coder",
    system="{bos_token}system\n{content}{eos_token}",
    user="{bos_token}user\n{content}{eos_token}",
    assistant_header="{bos_token}assistant\n",
    default_system=(
        "You are an AI programming assistant, utilizing the Seed-Coder model, developed by "
        "ByteDance Seed, and you only answer questions related to computer science. For "
        "politically sensitive questions, security and privacy issues, and other non-computer "
        "science questions, you will refuse to answer.\n\n"
    ),
)
SEED_OSS = replace(
    SEED_CODER,
    name="seed_oss",
    function="{bos_token}\n{content}{eos_token}",
    default_system="",
    tool_format_name="seed_oss",
    reasoning=True,
    thought_words=("<seed:think>", "</seed:think>"),
)
EXAONE = Template(
    "exaone",
    system="[|system|]{content}[|endofturn|]\n",
    user="[|user|]{content}\n",
    assistant_header="[|assistant|]",
    separator="\n",
    markers=("[|system|]", "[|endofturn|]", "[|user|]", "[|assistant|]"),
    eos_token="[|endofturn|]",
)
INDEX = Template(  # Index-1.9B: its reserved tokens mark the turns
    "index",
    system="<unk>{content}",
    user="reserved_0{content}",
    assistant_header="reserved_1",
    assistant="{content}",
    efficient_eos=True,
    markers=("<unk>", "reserved_0", "reserved_1"),
)
TELECHAT2 = Template(
    "telechat2",
    system="<_system>{content}",
    user="<_user>{content}",
    assistant_header="<_bot>",
    default_system=(
        "你是中国电信星辰语义大模型，英文名是TeleChat，你是由中电信人工智能科技有限公司和中国电信"
        "人工智能研究院（TeleAI）研发的人工智能助手。"
    ),
    markers=("<_system>", "<_user>", "<_bot>"),
)
YUAN = Template(
    "yuan",
    user="{content}",
    assistant_header="<sep>",
    assistant="{content}<eod>",
    separator="\n",
    stop_words=("<eod>",),
    markers=("<sep>", "<eod>"),
)
BAILING = Template(  # Ling 1
    "bailing",
    system="<role>SYSTEM</role>{content}",
    user="<role>HUMAN</role>{content}",
    observation="<role>OBSERVATION</role>{content}",
    assistant_header="<role>ASSISTANT</role>",
    assistant="{content}",
    stop_words=("<|endoftext|>",),
    efficient_eos=True,
    markers=("<role>", "</role>"),
    eos_token="<|endoftext|>",
)
BAILING_V2 = replace(  # Ling 2
    BAILING,
    name="bailing_v2",
    system="<role>SYSTEM</role>{content}<|role_end|>",
    user="<role>HUMAN</role>{content}<|role_end|>",
    observation=(
        "<role>OBSERVATION</role>\n<tool_response>\n{content}\n</tool_response><|role_end|>"
    ),
    assistant="{content}<|role_end|>",
    tool_format_name="ling",
    markers=("<role>", "</role>", "<|role_end|>", "<tool_response>", "</tool_response>"),
)
HUNYUAN = Template(
    "hunyuan",
    prefix="<|startoftext|>",
    system="{content}<|extra_4|>",
    assistant_header="<|extra_0|>",
    assistant="{content}<|eos|>",
    stop_words=("<|eos|>",),
    markers=("<|startoftext|>", "<|extra_4|>", "<|extra_0|>", "<|eos|>"),
)
_HY_BOS, _HY_EOS = "<｜hy_begin▁of▁sentence｜>", "<｜hy_place▁holder▁no▁2｜>"
HUNYUAN_SMALL = Template(
    "hunyuan_small",
    prefix=_HY_BOS,
    system="{content}<｜hy_place▁holder▁no▁3｜>",
    user="<｜hy_User｜>{content}",
    assistant_header="<｜hy_place▁holder▁no▁8｜>",
    assistant="{content}" + _HY_EOS,
    stop_words=(_HY_EOS,),
    markers=(_HY_BOS, "<｜hy_place▁holder▁no▁3｜>", "<｜hy_User｜>", "<｜hy_place▁holder▁no▁8｜>"),
)
HY3 = Template(  # Hunyuan 3 (reasoning)
    "hy3",
    prefix="{bos_token}",
    user="<｜hy_User｜>{content}",
    assistant_header="<｜hy_Assistant｜>",
    assistant="{content}<｜hy_eos｜>",
    stop_words=("<｜hy_eos｜>",),
    replace_eos=True,
    reasoning=True,
    thought_words=("<think>", "</think>"),
    markers=("<｜hy_User｜>", "<｜hy_Assistant｜>"),
)
ERNIE_NOTHINK = Template(
    "ernie_nothink",
    prefix="<|begin_of_sentence|>",
    system="{content}\n",
    user="User: {content}\n",
    assistant_header="Assistant: ",
    assistant="{content}<|end_of_sentence|>",
    stop_words=("<|end_of_sentence|>",),
    markers=("<|begin_of_sentence|>",),
)
MINIMAX1 = Template(
    "minimax1",
    system="<beginning_of_sentence>system ai_setting=assistant\n{content}<end_of_sentence>\n",
    user="<beginning_of_sentence>user name=user\n{content}<end_of_sentence>\n",
    observation="<beginning_of_sentence>tool name=tools\n{content}<end_of_sentence>\n",
    assistant_header="<beginning_of_sentence>ai name=assistant\n",
    assistant="{content}<end_of_sentence>",
    separator="\n",
    tool_format_name="minimax1",
    default_system="You are a helpful assistant.",
    stop_words=("<end_of_sentence>",),
    markers=("<beginning_of_sentence>", "<end_of_sentence>"),
)
MINIMAX2 = Template(
    "minimax2",
    system="]~!b[]~b]system\n{content}[e~[\n",
    user="]~b]user\n{content}[e~[\n",
    observation="]~b]tool\n<response>{content}</response>[e~[\n",
    assistant_header="]~b]ai\n",
    assistant="{content}[e~[",
    separator="\n",
    tool_format_name="minimax2",
    default_system=(
        "You are a helpful assistant. Your name is MiniMax-M2.1 and is built by MiniMax."
    ),
    stop_words=("[e~[",),
    reasoning=True,
    markers=("]~!b[", "]~b]", "[e~["),
)
YOUTU = Template(  # Youtu-LLM (reasoning); a tool call has no end marker
    "youtu",
    prefix="{bos_token}",
    user="<|User|>{content}",
    observation="<tool_response>\n{content}\n</tool_response>",
    assistant_header="<|Assistant|>",
    assistant="{content}<|end_of_text|>",
    function="{content}",
    stop_words=("<|end_of_text|>",),
    replace_eos=True,
    reasoning=True,
    markers=("<|User|>", "<|Assistant|>", "<tool_response>", "</tool_response>"),
)
GPT_OSS = Template(  # the harmony format; the thought is the analysis channel
    "gpt_oss",
    system="<|start|>system<|message|>{content}<|end|>",
    user="<|start|>user<|message|>{content}<|end|>",
    assistant_header="<|start|>assistant",
    assistant="{content}",
    default_system="You are ChatGPT, a large language model trained by OpenAI.",
    efficient_eos=True,
    reasoning=True,
    thought_words=(
        "<|channel|>analysis<|message|>",
        "<|end|><|start|>assistant<|channel|>final<|message|>",
    ),
    markers=("<|start|>", "<|message|>", "<|end|>", "<|channel|>"),
    bos_token="<|startoftext|>",
    eos_token="<|return|>",
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
OPENCHAT_36 = Template(  # OpenChat 3.6, on Llama 3
    "openchat-3.6",
    prefix="{bos_token}",
    user="<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_header="<|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n",
    stop_words=("<|eot_id|>",),
    markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
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
# LLaMA-Factory's prefix slot is the set {"<|endoftext|>"}, which its encoder skips (it reads only
# the bos/eos sets): it renders phi_small as phi. Here the prefix is rendered: Phi-3-small's own
# chat template opens with its bos, <|endoftext|>.
PHI_SMALL = replace(
    PHI, name="phi_small", prefix="<|endoftext|>", markers=(*PHI.markers, "<|endoftext|>")
)
PHI4_MINI = Template(  # the tool list goes into the system turn as given, between <|tool|> tags
    "phi4_mini",
    system="<|system|>{content}<|end|>",
    user="<|user|>{content}<|end|>",
    assistant_header="<|assistant|>",
    assistant="{content}<|end|>",
    tools_slot="<|tool|>{content}<|/tool|>",
    stop_words=("<|end|>",),
    replace_eos=True,
    markers=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>"),
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
# ChatGLM3: LLaMA-Factory gives its markers as token ids ({"token": ...}); here they are text, which
# gives the same ids with a tokenizer that parses them as single tokens (`sop` included).
CHATGLM3 = replace(
    GLM4,
    name="chatglm3",
    prefix="[gMASK]sop",
    markers=("[gMASK]", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    eos_token=None,
)
GLM4_MOE = replace(GLM4, name="glm4_moe", tool_format_name="glm4_moe", reasoning=True)  # GLM-4.5
GLMZ1 = replace(GLM4, name="glmz1", reasoning=True)
GLM4_7 = replace(  # an empty thought is the closing tag alone
    GLM4_MOE, name="glm4_7", thought_words=("<think>", "</think>"), empty_thought_text="</think>"
)
AEVA = replace(
    GLM4_7,
    name="aeva",
    default_system=(
        "You are an AI assistant named Aeva created by Zongzhi Lou. "
        "Your answer should be friendly, unbiased, faithful, informative and detailed."
    ),
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
# LLaMA-Factory's observation slot ends with "<|start_of_role|>assistant\n", not with the assistant
# header every other turn ends with; here a tool result is followed by that header, as in Granite
# 4's own chat template.
GRANITE4 = replace(
    GRANITE3,
    name="granite4",
    observation="<|start_of_role|>tool<|end_of_role|>{content}<|end_of_text|>\n",
    default_system="You are Granite, developed by IBM. You are a helpful AI assistant.",
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
    AEVA, ALPACA, BAILING, BAILING_V2, BREEZE, CHATGLM3, CHATML, CHATML_DE, COHERE, CPM4, DBRX,
    DEEPSEEK, DEEPSEEK3, DEEPSEEKCODER, DEEPSEEKR1, DEFAULT, EMPTY, ERNIE, ERNIE_NOTHINK, EXAONE,
    FALCON, FALCON_H1, FEWSHOT, GEMMA, GEMMA2, GEMMA3, GLM4, GLM4_7, GLM4_MOE, GLMZ1, GPT_OSS,
    GRANITE3, GRANITE4, HUNYUAN, HUNYUAN_SMALL, HY3, INDEX, INTERN2, LFM2, LLAMA2, LLAMA2_ZH,
    LLAMA3, LLAMA4, MIMO, MIMO_V2, MINIMAX1, MINIMAX2, MINISTRAL, MISTRAL, MISTRAL_SMALL, MOONLIGHT,
    OLMO, OPENCHAT, OPENCHAT_36, OPENCODER, PHI, PHI4, PHI4_MINI, PHI_SMALL, QWEN, QWEN3,
    QWEN3_NOTHINK, SAILOR, SEED_CODER, SEED_OSS, SMOLLM, SMOLLM2, SOLAR, STARCHAT, TELECHAT2,
    VICUNA, XUANYUAN, YI, YOUTU, YUAN, ZEPHYR,
)  # fmt: skip
"""Every named template; `registry.TEMPLATES` indexes them by name."""
