"""Generation metrics for `sft` predictions (BLEU-4, ROUGE-1/2/L) and token accuracy.

The scores reproduce LLaMA-Factory's `ComputeSimilarity` so that numbers can be compared across
the two tools:

- ROUGE is computed on jieba words (Chinese is word-segmented; English words, digits and
  punctuation come out as tokens too; whitespace is dropped). ROUGE-N counts *distinct* n-grams
  and ROUGE-L is the plain LCS F1, both as the `rouge_chinese` package that LLaMA-Factory uses
  defines them, including its 1e-8 in the F1 denominator.
- BLEU-4 is sentence BLEU with NIST geometric smoothing (nltk's `SmoothingFunction().method3`),
  computed over the *characters* of the raw strings, spaces included, as LLaMA-Factory does.
- Each per-example score is scaled by 100 and rounded to 4 decimals, then averaged.

One deliberate difference: rouge_chinese re-splits the space-joined words into sentences, and a
blank line, or a newline right after 。！？?, leaves a whitespace-only "sentence" that it counts
as an empty-string word. We score the words only, so on multi-paragraph texts our ROUGE can
differ from LLaMA-Factory's by a point or two; texts without such breaks match exactly.

Nothing heavy is imported at module import: jieba is loaded (and its dictionary built, about a
second) on the first call to `segment`.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, NamedTuple

from tuneforge.errors import NotAvailableError

METRICS_EXTRA_HINT = "pip install 'tuneforge[metrics]'"

# rouge_chinese adds this to every F1 denominator; kept so that scores match to the last digit.
_F1_EPS = 1e-8


class Score(NamedTuple):
    """Precision, recall and F1 of one (hypothesis, reference) pair, each in [0, 1]."""

    precision: float
    recall: float
    f: float


@functools.cache
def _jieba_cut() -> Callable[[str], Any]:
    """Import jieba once, silence its start-up logging, build its dictionary; return `cut`."""
    try:
        with warnings.catch_warnings():
            # jieba 0.42 imports pkg_resources, which warns on recent setuptools.
            warnings.filterwarnings("ignore", message=".*pkg_resources", category=UserWarning)
            import jieba
    except ImportError as err:
        raise NotAvailableError(
            f"Generation metrics (BLEU/ROUGE) need the `jieba` word segmenter: {METRICS_EXTRA_HINT}"
        ) from err
    # jieba logs "Building prefix dict ..." at DEBUG on its own stderr handler.
    logging.getLogger("jieba").setLevel(logging.WARNING)
    jieba.initialize()
    return jieba.cut


def segment(text: str) -> list[str]:
    """Split text into jieba words, dropping whitespace tokens.

    Args:
        text: Any text; Chinese is segmented into words, other scripts into jieba's tokens
            (runs of letters/digits, single punctuation marks).

    Returns:
        The tokens in order, without the whitespace tokens jieba emits between words.

    Raises:
        NotAvailableError: If jieba is not installed.
    """
    return [token for token in _jieba_cut()(text) if not token.isspace()]


def _ngrams(tokens: Sequence[Hashable], n: int) -> Iterator[tuple[Hashable, ...]]:
    # zip of shifted slices: about twice as fast as slicing a tuple per position
    return zip(*(tokens[i:] for i in range(n)))


def _f1(precision: float, recall: float) -> float:
    return 2.0 * ((precision * recall) / (precision + recall + _F1_EPS))


def rouge_n(hypothesis: Sequence[str], reference: Sequence[str], n: int) -> Score:
    """ROUGE-N over distinct n-grams, as `rouge_chinese` (LLaMA-Factory's scorer) defines it.

    Precision = |H ∩ R| / |H| and recall = |H ∩ R| / |R|, where H and R are the *sets* of
    n-grams of each side (repeated n-grams count once); a side without n-grams scores 0.

    Args:
        hypothesis: Predicted tokens.
        reference: Reference tokens.
        n: N-gram order (1 for ROUGE-1, 2 for ROUGE-2).

    Returns:
        Precision, recall and F1.
    """
    hyp, ref = set(_ngrams(hypothesis, n)), set(_ngrams(reference, n))
    overlap = len(hyp & ref)
    precision = overlap / len(hyp) if hyp else 0.0
    recall = overlap / len(ref) if ref else 0.0
    return Score(precision, recall, _f1(precision, recall))


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Hyyrö 2004): one big-int update per token of `b` instead of len(a) Python
    steps, so long generations cost about as little as short ones.

    Args:
        a: First sequence.
        b: Second sequence.

    Returns:
        The LCS length.
    """
    positions: dict[Hashable, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & positions.get(token, 0)
        v = ((v + u) | (v - u)) & full
    # Each zero bit left in v marks one matched position of `a`.
    return len(a) - v.bit_count()


def rouge_l(hypothesis: Sequence[str], reference: Sequence[str]) -> Score:
    """ROUGE-L: F1 of the longest common subsequence, as `rouge_chinese` defines it.

    Precision = LCS / len(hypothesis), recall = LCS / len(reference), F = 2PR / (P + R), i.e.
    beta = 1 (the LCS is taken over the whole token lists, not per sentence).

    Args:
        hypothesis: Predicted tokens (non-empty).
        reference: Reference tokens (non-empty).

    Returns:
        Precision, recall and F1.
    """
    lcs = lcs_length(reference, hypothesis)
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return Score(precision, recall, _f1(precision, recall))


def bleu4(hypothesis: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """Sentence BLEU-4 with one reference and NIST geometric smoothing.

    Equals nltk's `sentence_bleu([reference], hypothesis,
    smoothing_function=SmoothingFunction().method3)`: uniform weights over clipped 1..4-gram
    precisions; the k-th order with no match scores 1 / (2**k * hypothesis n-gram count); the
    brevity penalty is exp(1 - len(reference) / len(hypothesis)) for a shorter hypothesis; and
    0 when no unigram matches.

    Args:
        hypothesis: Predicted tokens (LLaMA-Factory passes characters).
        reference: Reference tokens.

    Returns:
        BLEU in [0, 1].
    """
    matches, totals = [], []
    for n in range(1, 5):
        hyp_counts = Counter(_ngrams(hypothesis, n))
        ref_counts = Counter(_ngrams(reference, n))
        # Counter & keeps min(hyp, ref) per n-gram: the clipped match count
        matches.append(sum((hyp_counts & ref_counts).values()))
        totals.append(max(1, sum(hyp_counts.values())))
    if matches[0] == 0:
        return 0.0
    log_precisions, k = [], 1
    for match, total in zip(matches, totals):
        if match == 0:
            precision = 1 / (2**k * total)
            k += 1
        else:
            precision = match / total
        log_precisions.append(0.25 * math.log(precision))
    hyp_len, ref_len = len(hypothesis), len(reference)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(math.fsum(log_precisions))


def similarity_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """BLEU-4 and ROUGE-1/2/L of generated texts against references, as LLaMA-Factory reports.

    Per pair: ROUGE F1 on jieba words (0 when either side has no word), BLEU-4 on characters;
    each ×100 and rounded to 4 decimals; then the mean over pairs.

    Args:
        predictions: Generated texts (decoded, special tokens removed).
        references: Reference texts, one per prediction.

    Returns:
        `{"bleu-4": ..., "rouge-1": ..., "rouge-2": ..., "rouge-l": ...}`, each in [0, 100].

    Raises:
        ValueError: If the lists differ in length or are empty.
        NotAvailableError: If jieba is not installed.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"similarity_scores: {len(predictions)} predictions but {len(references)} references"
        )
    if not predictions:
        raise ValueError("similarity_scores: no predictions to score")
    scores: dict[str, list[float]] = {"bleu-4": [], "rouge-1": [], "rouge-2": [], "rouge-l": []}
    for prediction, reference in zip(predictions, references):
        hyp, ref = segment(prediction), segment(reference)
        if hyp and ref:
            rouge = (rouge_n(hyp, ref, 1).f, rouge_n(hyp, ref, 2).f, rouge_l(hyp, ref).f)
        else:
            rouge = (0.0, 0.0, 0.0)
        for key, value in zip(("rouge-1", "rouge-2", "rouge-l"), rouge):
            scores[key].append(round(value * 100, 4))
        scores["bleu-4"].append(round(bleu4(list(prediction), list(reference)) * 100, 4))
    return {key: math.fsum(values) / len(values) for key, values in scores.items()}


def token_accuracy(
    predicted_ids: Any, target_ids: Any, ignore_index: int = -100
) -> tuple[int, int]:
    """Count the positions where the predicted token equals the target token.

    The inputs must already be aligned: `predicted_ids[..., i]` is the prediction for
    `target_ids[..., i]` (for a causal LM, argmax of logits[:, :-1] against labels[:, 1:]).

    Args:
        predicted_ids: Token ids, any shape: a torch tensor, numpy array or (nested) list.
        target_ids: Token ids of the same shape.
        ignore_index: Targets equal to this are not counted (prompt and padding positions).

    Returns:
        `(correct, counted)`; accuracy is `correct / counted` (summed over batches first, for
        a token-weighted average).

    Raises:
        ValueError: If the shapes differ.
    """
    if not (hasattr(predicted_ids, "shape") and hasattr(target_ids, "shape")):
        import numpy as np

        predicted_ids, target_ids = np.asarray(predicted_ids), np.asarray(target_ids)
    if tuple(predicted_ids.shape) != tuple(target_ids.shape):
        raise ValueError(
            f"token_accuracy: predictions of shape {tuple(predicted_ids.shape)} but targets of "
            f"shape {tuple(target_ids.shape)}"
        )
    # Array ops keep a GPU tensor on its device; only the two counts cross to the host.
    counted = target_ids != ignore_index
    correct = (predicted_ids == target_ids) & counted
    return int(correct.sum()), int(counted.sum())
