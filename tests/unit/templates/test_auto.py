"""`template: auto` on a tiny tokenizer built here (no hub access)."""

from __future__ import annotations

import pytest

from tuneforge.data.example import Message
from tuneforge.errors import ConfigError
from tuneforge.templates import TEMPLATES, get_template
from tuneforge.templates.registry import all_special_tokens

from .cases import CASES

M = Message
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Like Qwen3's official template: past assistant turns lose their reasoning, the last keeps it.
HISTORY_REWRITING_JINJA = (
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and not loop.last %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LINES = [
    "What is 2+2? 4. And 3+3? 6.",
    "You are a terse assistant. What's the weather in Paris? It is sunny.",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def make_tokenizer():
    """Build a byte-level BPE tokenizer with every template marker as a single token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", *all_special_tokens()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(LINES, trainer)

    def make(chat_template: str | None, eos: str = "<|im_end|>") -> PreTrainedTokenizerFast:
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token=eos)
        tok.chat_template = chat_template
        return tok

    return make


CONV = [M("user", "What is 2+2?"), M("assistant", "4"), M("user", "And 3+3?"), M("assistant", "6")]


def test_chatml_spans(make_tokenizer) -> None:
    auto = get_template("auto", make_tokenizer(CHATML_JINJA))
    turns = auto.render(CONV, system="Be terse.")
    assert [(t.prompt, t.response) for t in turns] == [
        (
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n",
            "4<|im_end|>",
        ),
        ("\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", "6<|im_end|>"),
    ]
    assert turns == get_template("chatml").render(CONV, system="Be terse.")
    assert auto.stop_words == ("<|im_end|>",)
    assert auto.replace_eos is False
    assert auto.chat_template == CHATML_JINJA


def test_render_prompt_and_markers_are_single_tokens(make_tokenizer) -> None:
    tok = make_tokenizer(CHATML_JINJA)
    auto = get_template("auto", tok)
    prompt = auto.render_prompt(CONV[:3])
    assert prompt == tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CONV[:3]],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok.encode("<|im_start|>assistant\n4<|im_end|>", add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_end_marker_other_than_eos_becomes_a_stop_word(make_tokenizer) -> None:
    auto = get_template("auto", make_tokenizer(CHATML_JINJA, eos="<|endoftext|>"))
    assert auto.stop_words == ("<|endoftext|>", "<|im_end|>")
    assert auto.render(CONV)[1].response == "6<|im_end|>"


def test_tool_turns_map_to_hf_roles(make_tokenizer) -> None:
    jinja = (
        "{% for message in messages %}{{ message['role'] + ':' }}"
        "{% if message['tool_calls'] is defined %}"
        "{{ message['tool_calls'][0]['function']['name'] }}"
        "{% else %}{{ message['content'] }}{% endif %}{{ '</s>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )
    auto = get_template("auto", make_tokenizer(jinja, eos="</s>"))
    case = CASES["tools"]
    turns = auto.render(list(case.messages), case.system, case.tools)
    assert [t.response for t in turns] == ["get_weather</s>", "It is sunny and 18 °C in Paris.</s>"]
    assert turns[1].prompt == "tool:" + case.messages[2].content + "</s>assistant:"


def test_history_rewriting_template_is_rejected(make_tokenizer) -> None:
    auto = get_template("auto", make_tokenizer(HISTORY_REWRITING_JINJA))
    thoughtful = [
        M("user", "q"),
        M("assistant", "<think>\nx\n</think>\n\na"),
        M("user", "q2"),
        M("assistant", "b"),
    ]
    with pytest.raises(ConfigError, match=r"not prefix-stable.*named template"):
        auto.render(thoughtful)
    assert len(auto.render(CONV)) == 2  # without thoughts there is nothing to rewrite


def test_needs_a_tokenizer_with_a_chat_template(make_tokenizer) -> None:
    with pytest.raises(ConfigError, match="pass the tokenizer"):
        get_template("auto")
    with pytest.raises(ConfigError, match="needs a tokenizer with a chat_template"):
        get_template("auto", make_tokenizer(None))


def test_failing_chat_template_is_a_config_error(make_tokenizer) -> None:
    tok = make_tokenizer("{{ raise_exception('system message required') }}")
    with pytest.raises(ConfigError, match="system message required"):
        get_template("auto", tok)


@pytest.mark.parametrize("name", sorted(n for n, t in TEMPLATES.items() if not t.efficient_eos))
def test_auto_over_generated_jinja_matches_the_template(make_tokenizer, name: str) -> None:
    # Our chat_template run through transformers' apply_chat_template and cut by `auto` gives
    # back the same spans as the declarative template.
    tok = make_tokenizer(None, eos="</s>")
    template = get_template(name, tok)
    tok.chat_template = template.chat_template
    auto = get_template("auto", tok)
    for case in ("multiturn",):
        c = CASES[case]
        assert auto.render(list(c.messages), c.system) == template.render(
            list(c.messages), c.system
        )
    assert auto.render_prompt(CONV[:3]) == template.render_prompt(CONV[:3])
    assert auto.stop_words[0] == "</s>"


@pytest.mark.parametrize("name", sorted(n for n, t in TEMPLATES.items() if t.efficient_eos))
def test_auto_rejects_final_eos_templates(make_tokenizer, name: str) -> None:
    # efficient_eos puts the eos after the last response only, so history text changes.
    tok = make_tokenizer(None, eos="</s>")
    tok.chat_template = get_template(name, tok).chat_template
    with pytest.raises(ConfigError, match="not prefix-stable"):
        get_template("auto", tok).render(CONV)


def test_auto_parses_calls_in_the_tool_format_asked_for(make_tokenizer) -> None:
    tokenizer = make_tokenizer(CHATML_JINJA)
    assert get_template("auto", tokenizer).tool_format.name == "default"
    assert get_template("auto", tokenizer, tool_format="qwen").tool_format.name == "qwen"
    with pytest.raises(ConfigError, match="tool"):
        get_template("auto", tokenizer, tool_format="no_such_format")


def test_auto_refuses_preserve_thinking(make_tokenizer) -> None:
    """The tokenizer's own template decides what past turns keep: the key cannot be honoured."""
    tokenizer = make_tokenizer(CHATML_JINJA)
    with pytest.raises(ConfigError, match="`preserve_thinking` needs a named template"):
        get_template("auto", tokenizer, preserve_thinking=True)
    assert get_template("auto", tokenizer, preserve_thinking=False).name == "auto"
