"""Every template encodes like LLaMA-Factory 0.9.5 itself: same token ids, same trained spans.

`golden_lf/` holds what LLaMA-Factory's own `Template.encode_multiturn` (its SFT path) and, for
reasoning templates, `encode_oneturn` (its preference / KTO path) and `encode_multiturn` with
`discarding_history_cot` (its SFT path with `mask_history`) give for the conversations of
`cases.lf_records`, on a tiny tokenizer that this test rebuilds. It is written by
`python -m tests.unit.templates.regen_lf`, which needs LLaMA-Factory in a second virtualenv; this
test does not.

tuneforge's side is what training encodes: `template.render` cut into (prompt, response) text
pieces, each tokenized as `data/encode.py` does (`Tokenize`). The two must agree token for token,
turn by turn, after the deliberate differences in `DIFFERENCES`, each of which is asserted, never
skipped: a difference that no longer shows fails the test as surely as a new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import pytest

from tuneforge.data.encode import Tokenize
from tuneforge.data.example import Message
from tuneforge.errors import DataError
from tuneforge.models.tiny import build_tiny_tokenizer
from tuneforge.templates import TEMPLATES, TOOL_FORMATS, Template, TurnText, get_template

from .cases import WEATHER_TOOLS, lf_records
from .regen_lf import GOLDEN_DIR, TOOL_FORMAT_CALLS, vocab_fingerprint

REGEN = "rewrite the goldens: python -m tests.unit.templates.regen_lf (and review the diff)"
META = json.loads((GOLDEN_DIR / "_meta.json").read_text(encoding="utf-8"))
Record = dict[str, Any]
Turns = list[TurnText]


@cache
def golden(name: str) -> dict[str, Any]:
    path = GOLDEN_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"records": []}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = build_tiny_tokenizer(**META["tokenizer"])
    assert vocab_fingerprint(tok) == META["vocab_fingerprint"], f"tokenizer changed; {REGEN}"
    return tok


def bound(name: str, record: Record, tokenizer: Any, **overrides: Any) -> Template:
    settings = {
        "enable_thinking": record["enable_thinking"],
        "preserve_thinking": record["preserve_thinking"],
        **overrides,
    }
    return get_template(name, tokenizer, **settings)  # type: ignore[return-value]


def messages_of(record: Record) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in record["messages"]]


def render(template: Template, record: Record) -> Turns:
    return template.render(messages_of(record), record["system"], record["tools"])


# ---- the deliberate differences ---------------------------------------------------------------


def _history_keeps_no_thought(template: Template, record: Record) -> bool:
    """Whether some history response gets an empty thought block from tuneforge."""
    responses = [m for m in messages_of(record) if m.role in ("assistant", "function")][:-1]
    keep = record["enable_thinking"] and record["preserve_thinking"]
    return template.reasoning and any(
        not template.has_thought(m.content if keep else template.strip_thought(m.content))
        for m in responses
    )


def _history_has_thought(template: Template, record: Record) -> bool:
    responses = [m for m in messages_of(record) if m.role in ("assistant", "function")][:-1]
    return any(template.has_thought(m.content) for m in responses)


def _replace_first(turns: Turns, old: str, new: str) -> Turns:
    first = turns[0]
    return [replace(first, prompt=first.prompt.replace(old, new, 1)), *turns[1:]]


def _undo_llama3_date(template: Template, record: Record, turns: Turns) -> Turns:
    head = "Cutting Knowledge Date: December 2023\n"
    return _replace_first(turns, head, head + f"Today Date: {META['llama3_tool_date']}\n")


def _undo_tool_newlines(template: Template, record: Record, turns: Turns) -> Turns:
    text = template.tool_format.format_tools(record["tools"])
    return _replace_first(turns, text.lstrip("\n"), text)


def _undo_history_thoughts(template: Template, record: Record, turns: Turns) -> Turns:
    return render(replace(template, preserve_thinking=True), record)


def _undo_history_blocks(template: Template, record: Record, turns: Turns) -> Turns:
    block = template.empty_thought
    out = []
    for turn in turns[:-1]:
        if turn.response.startswith(block):
            turn = replace(turn, response=turn.response[len(block) :])
        elif turn.prompt.endswith(block):
            turn = replace(turn, prompt=turn.prompt[: -len(block)])
        out.append(turn)
    return [*out, turns[-1]]


def _undo_granite4_header(template: Template, record: Record, turns: Turns) -> Turns:
    roles = [m["role"] for m in record["messages"]][0::2]
    header = template.assistant_header
    return [
        replace(t, prompt=t.prompt.removesuffix(header) + "<|start_of_role|>assistant\n")
        if role == "observation"
        else t
        for t, role in zip(turns, roles)
    ]


def _undo_phi_small_prefix(template: Template, record: Record, turns: Turns) -> Turns:
    return [replace(turns[0], prompt=turns[0].prompt.removeprefix("<|endoftext|>")), *turns[1:]]


@dataclass(frozen=True)
class Difference:
    """One deliberate difference from LLaMA-Factory and how the test accounts for it.

    Attributes:
        reason: Why tuneforge differs (README and design-notes list the same).
        applies: (template, record, golden) -> whether it shows in this record.
        paths: The LLaMA-Factory paths it concerns ("multiturn", "oneturn", "mask_history").
        undo: Turns tuneforge's rendering into what LLaMA-Factory renders; it must change the
            rendering wherever the difference applies. None: handled by `lf_turns` below, or
            by the record's own assertion.
    """

    reason: str
    applies: Callable[[Template, Record, dict[str, Any]], bool]
    paths: tuple[str, ...] = ("multiturn", "oneturn", "mask_history")
    undo: Callable[[Template, Record, Turns], Turns] | None = None


def _always(template: Template, record: Record, golden: dict[str, Any]) -> bool:
    return True


# Conversations where a tuneforge piece boundary (the untrained separator, the empty thought in
# front of a response) falls between characters that LLaMA-Factory tokenizes in one piece, so
# that the tokenizer merges them differently. The text is the same; the ids differ at that point.
# (template, case, variant) -> what merges.
BOUNDARY: dict[tuple[str, str, str], str] = {
    (name, case, "default"): "the response's final punctuation and the newline separator after it"
    for name in ("falcon", "fewshot")  # no end marker between the response and the separator
    for case in ("single", "tools", "tools_no_system", "parallel_calls", "wrapped_call")
}

DIFFERENCES: dict[str, Difference] = {
    "separator": Difference(
        "The untrained separator after a response (ChatML's newline after <|im_end|>) opens the "
        "next prompt and is not rendered after the last response; LLaMA-Factory writes it at "
        "the end of the response slot, so it trains it.",
        _always,
    ),
    "efficient_eos": Difference(
        "efficient_eos templates (falcon, glm4, ...): the eos follows the last response directly "
        "(...answer<eos>); LLaMA-Factory's processor appends it after the separator "
        "(...answer\\n<eos>).",
        lambda t, r, g: g["efficient_eos"] and t.efficient_eos,
    ),
    "gemma2_eos": Difference(
        "gemma2 has no efficient_eos: a response ends with <end_of_turn>, as in gemma and "
        "gemma3; LLaMA-Factory appends the eos after the last <end_of_turn>\\n.",
        lambda t, r, g: g["efficient_eos"] and not t.efficient_eos,
    ),
    "llama3_tool_date": Difference(
        "The llama3 tool prompt has no 'Today Date' line: a rendering never depends on the day.",
        lambda t, r, g: bool(r["tools"]) and t.tool_format_name == "llama3",
        undo=_undo_llama3_date,
    ),
    "tools_without_system": Difference(
        "Without a system prompt the tool text's leading newlines are dropped, as the official "
        "Qwen templates do; LLaMA-Factory keeps them (<|im_start|>system\\n\\n\\n# Tools...).",
        lambda t, r, g: (
            bool(r["tools"])
            and not (r["system"] or t.default_system)
            and t.tools_slot is None
            and t.tool_format.format_tools(r["tools"]).startswith("\n")
        ),
        undo=_undo_tool_newlines,
    ),
    "history_thoughts": Difference(
        "Reasoning templates strip the thoughts of history turns unless preserve_thinking is "
        "set, as LLaMA-Factory's one-turn path and Qwen3's own template do; LLaMA-Factory's "
        "multi-turn SFT path keeps them whatever preserve_thinking says.",
        lambda t, r, g: (
            t.reasoning
            and r["enable_thinking"]
            and not r["preserve_thinking"]
            and _history_has_thought(t, r)
        ),
        paths=("multiturn",),
        undo=_undo_history_thoughts,
    ),
    "history_empty_thought": Difference(
        "History responses without a thought keep the empty thought block they are trained "
        "with, so that each turn's prompt is render_prompt of the conversation so far; "
        "LLaMA-Factory's one-turn path (preference, KTO) and its mask_history SFT path render "
        "them with no block.",
        lambda t, r, g: _history_keeps_no_thought(t, r),
        paths=("oneturn", "mask_history"),
        undo=_undo_history_blocks,
    ),
    "granite4_observation": Difference(
        "granite4: a tool result is followed by the assistant header "
        "<|start_of_role|>assistant<|end_of_role|>, as in Granite 4's template; LLaMA-Factory's "
        "observation slot ends with <|start_of_role|>assistant\\n.",
        lambda t, r, g: (
            t.name == "granite4" and any(m["role"] == "observation" for m in r["messages"])
        ),
        undo=_undo_granite4_header,
    ),
    "phi_small_prefix": Difference(
        "phi_small opens with <|endoftext|> (Phi-3-small's bos); LLaMA-Factory's prefix slot "
        'is the set {"<|endoftext|>"}, which its encoder skips.',
        lambda t, r, g: t.name == "phi_small",
        undo=_undo_phi_small_prefix,
    ),
    "tool_call_words": Difference(
        "A function message that wraps its JSON in tool-call words with text around it renders "
        "in every template; LLaMA-Factory's Llama2Template family (llama2, mistral, gemma...) "
        "does not look for those words and rejects the message as invalid JSON.",
        lambda t, r, g: r["case"] == "wrapped_call" and g["lf_class"] == "Llama2Template",
    ),
    "boundary": Difference(
        "Pieces are tokenized one by one (prompt, response); where a piece boundary that "
        "LLaMA-Factory does not have falls between characters a tokenizer merges, the ids differ "
        "at that point while the text is the same (cases in BOUNDARY).",
        lambda t, r, g: (t.name, r["case"], r["variant"]) in BOUNDARY,
    ),
}


def applicable(template: Template, record: Record, path: str) -> list[str]:
    gold = golden(template.name)
    return [
        key
        for key, diff in DIFFERENCES.items()
        if path in diff.paths and diff.applies(template, record, gold)
    ]


# ---- comparing -------------------------------------------------------------------------------


def ids_of(tokenizer: Any, turns: Turns) -> list[tuple[list[int], list[int]]]:
    pieces = Tokenize(tokenizer)([text for t in turns for text in (t.prompt, t.response)])
    return list(zip(pieces[0::2], pieces[1::2]))


def lf_turns(
    tokenizer: Any, template: Template, pairs: list[list[list[int]]], diffs: list[str]
) -> list[tuple[list[int], list[int]]] | None:
    """LLaMA-Factory's turns in tuneforge's shape: each response's trailing separator moved to
    the next prompt (dropped after the last), and the processor's efficient_eos eos appended to
    the last response ("separator", "efficient_eos"; dropped for "gemma2_eos"). None when a
    response does not end with the separator's own tokens (a "boundary" merge)."""
    sep = Tokenize(tokenizer)([template.separator])[0] if template.separator else []
    out = []
    for index, (prompt, response) in enumerate(pairs):
        if sep:
            if response[-len(sep) :] != sep:
                return None
            response = response[: -len(sep)]
        out.append(((sep if index else []) + prompt, response))
    if "efficient_eos" in diffs:
        out[-1] = (out[-1][0], [*out[-1][1], golden(template.name)["eos_token_id"]])
    return out


def undone(template: Template, record: Record, turns: Turns, diffs: list[str]) -> Turns:
    for key in diffs:
        undo = DIFFERENCES[key].undo
        if undo is not None:
            before, turns = turns, undo(template, record, turns)
            assert turns != before, f"difference {key!r} applies but does not show"
    return turns


def check_boundary(
    tokenizer: Any, template: Template, turns: Turns, lf: list[list[list[int]]]
) -> None:
    """Same text, LLaMA-Factory's pieces against tuneforge's (the "boundary" difference)."""
    text = tokenizer.decode
    sep = template.separator
    for index, ((prompt, response), turn) in enumerate(zip(lf, turns)):
        want_prompt = turn.prompt.removeprefix(sep) if index else turn.prompt
        want_response = turn.response
        if index == len(turns) - 1 and template.efficient_eos:
            want_response = want_response.removesuffix(template.eos_token or "")
        assert text(prompt) == want_prompt
        assert text(response) == want_response + sep


def records() -> list[tuple[str, int]]:
    return [(name, i) for name in sorted(TEMPLATES) for i in range(len(golden(name)["records"]))]


def record_id(item: tuple[str, int]) -> str:
    record = golden(item[0])["records"][item[1]]
    return f"{item[0]}/{record['case']}/{record['variant']}"


RECORDS = records()


def _path_items(path: str) -> list[tuple[str, int]]:
    return [item for item in RECORDS if path in golden(item[0])["records"][item[1]]]


@pytest.mark.parametrize("item", RECORDS, ids=[record_id(item) for item in RECORDS])
def test_multiturn_is_llamafactorys(item: tuple[str, int], tokenizer: Any) -> None:
    check_pairs(item, tokenizer, "multiturn")


@pytest.mark.parametrize("item", _path_items("mask_history"), ids=record_id)
def test_mask_history_is_llamafactorys(item: tuple[str, int], tokenizer: Any) -> None:
    """Reasoning templates, SFT with mask_history: LLaMA-Factory strips history thoughts, and
    only the last turn is trained (by data/encode.py, not the template)."""
    check_pairs(item, tokenizer, "mask_history")


def check_pairs(item: tuple[str, int], tokenizer: Any, path: str) -> None:
    """tuneforge's turns against LLaMA-Factory's (prompt, response) pairs of `path`."""
    name, index = item
    record = golden(name)["records"][index]
    template = bound(name, record, tokenizer)
    diffs = applicable(template, record, path)
    if "error" in record:  # LLaMA-Factory refused the conversation
        if "tool_call_words" in diffs:
            render(template, record)  # tuneforge renders it
            return
        with pytest.raises(DataError):
            render(template, record)
        return
    assert "tool_call_words" not in diffs, "LLaMA-Factory now accepts the wrapped call"
    turns = undone(template, record, render(template, record), diffs)
    ours = ids_of(tokenizer, turns)
    lf = lf_turns(tokenizer, template, record[path], diffs)
    if "boundary" in diffs:
        assert ours != lf, "the boundary difference no longer shows: remove it from BOUNDARY"
        check_boundary(tokenizer, template, turns, record[path])
        return
    assert lf is not None, "LF's response does not end with the separator's tokens"
    assert ours == lf


@pytest.mark.parametrize("item", _path_items("oneturn"), ids=record_id)
def test_oneturn_is_llamafactorys(item: tuple[str, int], tokenizer: Any) -> None:
    """Reasoning templates: the preference / KTO encoding (the prompt is every turn before the
    last response)."""
    name, index = item
    record = golden(name)["records"][index]
    template = bound(name, record, tokenizer)
    diffs = applicable(template, record, "oneturn")
    turns = undone(template, record, render(template, record), diffs)
    ours = ids_of(tokenizer, turns)
    prompt = [i for p, r in ours[:-1] for i in p + r] + ours[-1][0]
    lf_prompt, lf_response = record["oneturn"]
    shaped = lf_turns(tokenizer, template, [[[], lf_response]], diffs)
    same = shaped is not None and (prompt, ours[-1][1]) == (lf_prompt, shaped[0][1])
    if "boundary" in diffs:
        assert not same, "the boundary difference no longer shows: remove it from BOUNDARY"
        assert tokenizer.decode(prompt) == tokenizer.decode(lf_prompt)
        return
    assert shaped is not None, "LF's response does not end with the separator's tokens"
    assert prompt == lf_prompt
    assert ours[-1][1] == shaped[0][1]


# ---- completeness and the tool formats ------------------------------------------------------


def test_every_template_has_llamafactory_goldens() -> None:
    for name in TEMPLATES:
        stored = [(r["case"], r["variant"], r["messages"]) for r in golden(name)["records"]]
        wanted = [(r["case"], r["variant"], r["messages"]) for r in lf_records(name)]
        assert stored == wanted, f"{name}: goldens missing or stale; {REGEN}"


def test_golden_tokenizer_holds_every_marker() -> None:
    from tuneforge.templates import all_special_tokens

    stored = set(META["tokenizer"]["extra_special_tokens"])
    assert set(all_special_tokens()) <= stored, f"new markers; {REGEN}"


def test_differences_all_show() -> None:
    """Each deliberate difference applies to some golden record (none is dead)."""
    seen = set()
    for name, index in RECORDS:
        record = golden(name)["records"][index]
        template = TEMPLATES[name]
        for path in ("multiturn", "oneturn", "mask_history"):
            seen.update(applicable(template, record, path))
    assert seen == set(DIFFERENCES) - ({"boundary"} if not BOUNDARY else set())


TOOL_GOLDEN = json.loads((GOLDEN_DIR / "_tool_formats.json").read_text(encoding="utf-8"))


def test_every_tool_format_has_goldens() -> None:
    assert set(TOOL_GOLDEN) == set(TOOL_FORMATS), REGEN


@pytest.mark.parametrize("kind", ["bare", "wrapped"])
@pytest.mark.parametrize("fmt", sorted(TOOL_FORMATS))
def test_tool_prompt_is_llamafactorys(fmt: str, kind: str) -> None:
    tools = WEATHER_TOOLS
    if kind == "wrapped":
        tools = json.dumps([{"type": "function", "function": t} for t in json.loads(tools)])
    ours = TOOL_FORMATS[fmt].format_tools(tools)
    lf = TOOL_GOLDEN[fmt]["tools"][kind]
    if fmt == "llama3":  # the "llama3_tool_date" difference
        head = "Cutting Knowledge Date: December 2023\n"
        assert head in ours and "Today Date" not in ours
        ours = ours.replace(head, head + f"Today Date: {META['llama3_tool_date']}\n")
    assert ours == lf


@pytest.mark.parametrize("kind", sorted(TOOL_FORMAT_CALLS))
@pytest.mark.parametrize("fmt", sorted(TOOL_FORMATS))
def test_tool_calls_are_llamafactorys(fmt: str, kind: str) -> None:
    calls = TOOL_FORMAT_CALLS[kind]
    lf = TOOL_GOLDEN[fmt]["calls"][kind]
    if "error" in lf:  # LLaMA-Factory refuses (glm4: one call per message): so does tuneforge
        with pytest.raises(DataError):
            TOOL_FORMATS[fmt].format_calls(json.dumps(calls))
        return
    text = TOOL_FORMATS[fmt].format_calls(json.dumps(calls))
    assert text == lf["text"]
    assert TOOL_FORMATS[fmt].parse_calls(text) == calls  # tuneforge reads its (LF's) text back
