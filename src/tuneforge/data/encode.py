"""Turning examples into token ids and labels.

Every example is rendered by the chat template into (prompt, response) text pieces, one pair
per response turn; the pieces of a whole batch of examples are tokenized in one call of the
(fast) tokenizer, and each example is then assembled from its pieces. Tokenizing piece by piece
gives the same ids as LLaMA-Factory, so losses can be compared with it.

Truncation to `cutoff_len` differs from LLaMA-Factory's on purpose: a prompt that is too long
is cut in its middle, keeping its beginning (template prefix, system prompt, start of the
question) and its end (the assistant header the model answers after); a response keeps its
beginning. An example whose prompt cannot fit with at least one response token is dropped
and counted.

Templates with `efficient_eos` (glm4, falcon...) write no end marker after a response; the eos
ends only the last one. As in LLaMA-Factory, every other response is closed by training the eos
at the first token of the next prompt: that token's label is the eos, not the token itself, so
the model learns to stop after each reply (a tool call, say) without an eos in the input. Here
that token counts as the end of the response it closes: it is kept, cut or trained with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneforge.data.example import PROMPT_ROLES, RESPONSE_ROLES, Example, Message

IGNORE_INDEX = -100
Kind = Literal["pretrain", "supervised", "pairwise", "feedback", "unsupervised"]
KINDS: tuple[Kind, ...] = ("pretrain", "supervised", "pairwise", "feedback", "unsupervised")

# Columns each kind produces (lists of ints, except kto_tag).
COLUMNS: dict[Kind, tuple[str, ...]] = {
    "pretrain": ("input_ids",),
    "supervised": ("input_ids", "labels"),
    "pairwise": ("prompt_ids", "chosen_ids", "rejected_ids"),
    "feedback": ("prompt_ids", "response_ids", "kto_tag"),
    "unsupervised": ("input_ids", "label_ids"),
}


@dataclass(frozen=True)
class EncodeOptions:
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    enable_thinking: bool | None = None


DROPPED_TOO_LONG = "longer than cutoff_len"


@dataclass
class EncodeReport:
    """What happened to the examples of one encoding run, for logs and previews.

    `truncated` counts the examples cut to cutoff_len (for pretraining: the documents split
    into chunks, which lose no token), `tokens_cut` the tokens they lost in all and
    `largest_cut` the most that one example lost; `longest_dropped` is the length of the
    longest example dropped because even cut it could not fit.
    """

    encoded: int = 0
    truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    tokens_cut: int = 0
    largest_cut: int = 0
    longest_dropped: int = 0

    def cut(self, before: int, after: int) -> None:
        """Counts one example cut from `before` to `after` tokens."""
        self.truncated += 1
        self.tokens_cut += before - after
        self.largest_cut = max(self.largest_cut, before - after)

    def drop(self, length: int, reason: str = DROPPED_TOO_LONG) -> None:
        """Counts one example of `length` tokens dropped for `reason`."""
        self.dropped[reason] += 1
        self.longest_dropped = max(self.longest_dropped, length)

    def merge(self, other: EncodeReport) -> None:
        self.encoded += other.encoded
        self.truncated += other.truncated
        self.dropped.update(other.dropped)
        self.tokens_cut += other.tokens_cut
        self.largest_cut = max(self.largest_cut, other.largest_cut)
        self.longest_dropped = max(self.longest_dropped, other.longest_dropped)


class Tokenize:
    """Batched tokenization of text pieces, without special tokens added."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        # verbose=False: the "longer than model_max_length" warning does not apply, we truncate
        return self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def unusable_reason(example: Example, kind: Kind) -> str | None:
    """Why `example` cannot be used for `kind`, or None when it can."""
    messages = example.messages
    if kind == "pretrain":
        return None if messages and messages[0].content.strip() else "empty document"
    if kind == "unsupervised":
        return None if any(m.role in PROMPT_ROLES for m in messages) else "no prompt"
    if len(messages) < 2 or messages[-1].role not in RESPONSE_ROLES:
        return "no response to train on (the last turn must be the assistant's)"
    if kind == "pairwise" and example.rejected is None:
        return "no rejected response (a preference pair needs chosen and rejected)"
    if kind == "feedback" and example.kto_tag is None:
        return "no kto_tag (a KTO example needs a true/false label)"
    return None


def encode_batch(
    examples: Sequence[Example],
    kind: Kind,
    template: Any,
    tokenize: Tokenize,
    options: EncodeOptions,
) -> tuple[dict[str, list[Any]], EncodeReport]:
    """Encodes a batch of examples of one kind; returns columns and what happened."""
    encoder: Callable[..., tuple[dict[str, list[Any]], EncodeReport]] = _ENCODERS[kind]
    return encoder(examples, template, tokenize, options)


# --- supervised ---------------------------------------------------------------------------


def _render_pieces(example: Example, template: Any, options: EncodeOptions) -> list[str]:
    turns = template.render(
        example.messages, example.system, example.tools, enable_thinking=options.enable_thinking
    )
    return [text for turn in turns for text in (turn.prompt, turn.response)]


def _encode_supervised(examples, template, tokenize, options):
    report = EncodeReport()
    pieces = [_render_pieces(example, template, options) for example in examples]
    columns: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    eos_id = _efficient_eos_id(template, tokenize)
    for example, texts, ids in zip(examples, pieces, _tokenize_nested(pieces, tokenize)):
        turns = list(zip(ids[0::2], ids[1::2]))
        original = _length(turns)
        if options.mask_history and len(turns) > 1 and _length(turns) > options.cutoff_len:
            example, texts, turns = _drop_leading_turns(example, template, tokenize, options)
        turns, targets = _close_responses(turns, eos_id)
        fits = _length(turns) <= options.cutoff_len  # the common case: no tail needed
        tail = 0 if fits else _prompt_tail(texts[0], example.messages[0].content, tokenize)
        fitted = fit_turns(turns, options.cutoff_len, tail)
        if fitted is None:
            report.drop(original)
            continue
        if _length(fitted) < original:
            report.cut(original, _length(fitted))
        input_ids, labels = [], []
        for index, (prompt, response) in enumerate(fitted):
            trained = not options.mask_history or index == len(fitted) - 1
            input_ids += prompt + response
            labels += prompt if options.train_on_prompt else [IGNORE_INDEX] * len(prompt)
            # a fitted response is a prefix of its turn's, so its targets are too
            labels += targets[index][: len(response)] if trained else [IGNORE_INDEX] * len(response)
        columns["input_ids"].append(input_ids)
        columns["labels"].append(labels)
        report.encoded += 1
    return columns, report


def _efficient_eos_id(template: Any, tokenize: Tokenize) -> int | None:
    """The eos that closes every response of an `efficient_eos` template, else None."""
    # getattr: AutoTemplate (the tokenizer's own chat_template) has no such flag
    if not getattr(template, "efficient_eos", False):
        return None
    return tokenize.tokenizer.eos_token_id  # as in LLaMA-Factory


def _close_responses(
    turns: list[tuple[list[int], list[int]]], eos_id: int | None
) -> tuple[list[tuple[list[int], list[int]]], list[list[int]]]:
    """The turns and, per response, the labels it trains (its own ids by default).

    With `eos_id`, each response but the last takes the first token of the next prompt,
    labelled `eos_id`: the input ids stay as they are, and the end of each response is trained,
    kept and truncated with that response (see the module docstring).
    """
    targets = [list(response) for _, response in turns]
    if eos_id is None:
        return turns, targets
    closed: list[tuple[list[int], list[int]]] = []
    moved = False  # whether the previous response took this prompt's first token
    for index, (prompt, response) in enumerate(turns):
        if moved:
            prompt = prompt[1:]
        following = turns[index + 1][0] if index + 1 < len(turns) else []
        moved = bool(following)
        if moved:
            response = [*response, following[0]]
            targets[index].append(eos_id)
        closed.append((prompt, response))
    return closed, targets


def _length(turns: Sequence[tuple[list[int], list[int]]]) -> int:
    return sum(len(prompt) + len(response) for prompt, response in turns)


def _drop_leading_turns(example, template, tokenize, options):
    """With mask_history only the last turn is trained: drop whole leading turns (and render
    again, so that the system prompt and template prefix stay) until the rest fits."""
    messages = example.messages
    for start in range(2, len(messages), 2):
        shorter = Example(messages[start:], example.system, example.tools, origin=example.origin)
        texts = _render_pieces(shorter, template, options)
        ids = tokenize(texts)
        turns = list(zip(ids[0::2], ids[1::2]))
        if _length(turns) <= options.cutoff_len:
            break
    return shorter, texts, turns


def _prompt_tail(prompt: str, content: str, tokenize: Tokenize) -> int:
    """How many tokens end `prompt` after the user's last words `content` (the assistant
    header): truncation must keep them, or the model would learn to answer mid-question."""
    position = prompt.rfind(content) if content else -1
    if position < 0:
        return 0
    tail = prompt[position + len(content) :]
    return len(tokenize([tail])[0]) if tail else 0


def _cut_middle(ids: list[int], length: int, tail: int) -> list[int]:
    """The first `length - tail` and the last `tail` tokens of `ids`."""
    return ids[: length - tail] + (ids[len(ids) - tail :] if tail else [])


def fit_turns(
    turns: list[tuple[list[int], list[int]]], cutoff_len: int, prompt_tail: int
) -> list[tuple[list[int], list[int]]] | None:
    """Fits (prompt, response) turns into `cutoff_len` tokens, or None if impossible.

    Whole turns are kept from the start while they fit; the next turn is kept with its
    response cut short if its prompt fits with at least one response token. When even the
    first turn does not fit, its prompt and response share the budget (see `share_budget`).
    """
    if _length(turns) <= cutoff_len:
        return turns
    kept: list[tuple[list[int], list[int]]] = []
    budget = cutoff_len
    for prompt, response in turns:
        if len(prompt) + len(response) <= budget:
            kept.append((prompt, response))
            budget -= len(prompt) + len(response)
        elif kept:
            if len(prompt) < budget:
                kept.append((prompt, response[: budget - len(prompt)]))
            break
        else:
            first = _truncate_first_turn(prompt, response, budget, prompt_tail)
            return [first] if first else None
    return kept


def share_budget(prompt_len: int, response_len: int, budget: int) -> tuple[int, int]:
    """Splits `budget` between a prompt and a response that do not fit together: a side that
    fits in half the budget is kept whole and the other gets the rest; two long sides get
    half each. (LLaMA-Factory splits long sides in proportion, which can leave a prompt of a
    few tokens.)"""
    prompt_budget = min(prompt_len, max(budget - response_len, budget // 2))
    return prompt_budget, min(response_len, budget - prompt_budget)


def _truncate_first_turn(
    prompt: list[int], response: list[int], budget: int, prompt_tail: int
) -> tuple[list[int], list[int]] | None:
    prompt_len, response_len = share_budget(len(prompt), len(response), budget)
    if response_len < 1 or prompt_len <= prompt_tail:
        return None
    return _cut_middle(prompt, prompt_len, prompt_tail), response[:response_len]


# --- pairwise, feedback -------------------------------------------------------------------


def _prompt_and_responses(examples, template, tokenize, options, responses_of):
    """Tokenizes each example's prompt and its response(s), with the budget of cutoff_len
    shared between the prompt and the longest response."""
    pieces = []
    for example in examples:
        head = example.messages[:-1]
        texts = []
        for response in responses_of(example):
            turns = template.render(
                (*head, response),
                example.system,
                example.tools,
                enable_thinking=options.enable_thinking,
            )
            prompt = "".join(turn.prompt + turn.response for turn in turns[:-1]) + turns[-1].prompt
            texts += [prompt, turns[-1].response]
        pieces.append(texts)
    results, report = [], EncodeReport()
    for example, texts, ids in zip(examples, pieces, _tokenize_nested(pieces, tokenize)):
        prompt, responses = ids[0], ids[1::2]
        longest = max(len(response) for response in responses)
        if len(prompt) + longest > options.cutoff_len:
            before = len(prompt) + sum(len(response) for response in responses)
            prompt_len, response_len = share_budget(len(prompt), longest, options.cutoff_len)
            tail = _prompt_tail(texts[0], example.messages[-2].content, tokenize)
            if response_len < 1 or prompt_len <= tail:
                report.drop(len(prompt) + longest)
                continue
            prompt = _cut_middle(prompt, prompt_len, tail)
            responses = [response[:response_len] for response in responses]
            report.cut(before, len(prompt) + sum(len(response) for response in responses))
        results.append((example, prompt, responses))
        report.encoded += 1
    return results, report


def _encode_pairwise(examples, template, tokenize, options):
    results, report = _prompt_and_responses(
        examples, template, tokenize, options, lambda ex: (ex.chosen, ex.rejected)
    )
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS["pairwise"]}
    for _, prompt, (chosen, rejected) in results:
        columns["prompt_ids"].append(prompt)
        columns["chosen_ids"].append(chosen)
        columns["rejected_ids"].append(rejected)
    return columns, report


def _encode_feedback(examples, template, tokenize, options):
    results, report = _prompt_and_responses(
        examples, template, tokenize, options, lambda ex: (ex.messages[-1],)
    )
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS["feedback"]}
    for example, prompt, (response,) in results:
        columns["prompt_ids"].append(prompt)
        columns["response_ids"].append(response)
        columns["kto_tag"].append(example.kto_tag)
    return columns, report


# --- pretraining, unsupervised ------------------------------------------------------------


def _encode_pretrain(examples, template, tokenize, options):
    """Documents as the tokenizer encodes them by default (with its BOS, if it adds one),
    each ending with EOS; a document longer than cutoff_len becomes several chunks."""
    tokenizer = tokenize.tokenizer
    documents = [example.messages[0].content for example in examples]
    encoded = tokenizer(documents, add_special_tokens=True, verbose=False)["input_ids"]
    columns: dict[str, list[Any]] = {"input_ids": []}
    report = EncodeReport()
    for ids in encoded:
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        chunks = [ids[i : i + options.cutoff_len] for i in range(0, len(ids), options.cutoff_len)]
        columns["input_ids"] += chunks
        report.truncated += len(chunks) > 1
        report.encoded += 1
    return columns, report


def _encode_unsupervised(examples, template, tokenize, options):
    prompts, labels = [], []
    for example in examples:
        messages = example.messages
        label = ""
        if messages[-1].role in RESPONSE_ROLES:
            messages, label = messages[:-1], messages[-1].content
        prompts.append(
            template.render_prompt(
                messages, example.system, example.tools, enable_thinking=options.enable_thinking
            )
        )
        labels.append(label)
    prompt_ids, label_ids = tokenize(prompts), tokenize(labels)
    columns: dict[str, list[Any]] = {"input_ids": [], "label_ids": []}
    report = EncodeReport()
    for example, text, prompt, label in zip(examples, prompts, prompt_ids, label_ids):
        if len(prompt) > options.cutoff_len:
            last_prompt = [m for m in example.messages if m.role in PROMPT_ROLES][-1]
            tail = _prompt_tail(text, last_prompt.content, tokenize)
            if options.cutoff_len <= tail:
                report.drop(len(prompt))
                continue
            report.cut(len(prompt), options.cutoff_len)
            prompt = _cut_middle(prompt, options.cutoff_len, tail)
        columns["input_ids"].append(prompt)
        columns["label_ids"].append(label)
        report.encoded += 1
    return columns, report


def _tokenize_nested(pieces: list[list[str]], tokenize: Tokenize) -> list[list[list[int]]]:
    """Tokenizes a list of lists of texts in one batched call."""
    flat = tokenize([text for texts in pieces for text in texts])
    nested, start = [], 0
    for texts in pieces:
        nested.append(flat[start : start + len(texts)])
        start += len(texts)
    return nested


_ENCODERS = {
    "pretrain": _encode_pretrain,
    "supervised": _encode_supervised,
    "pairwise": _encode_pairwise,
    "feedback": _encode_feedback,
    "unsupervised": _encode_unsupervised,
}

__all__ = [
    "COLUMNS",
    "DROPPED_TOO_LONG",
    "IGNORE_INDEX",
    "KINDS",
    "EncodeOptions",
    "EncodeReport",
    "Message",
]
