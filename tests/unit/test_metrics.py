"""Generation metrics: ROUGE/BLEU against hand-computed values and nltk, token accuracy."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

from tuneforge.errors import NotAvailableError
from tuneforge.evaluation import metrics
from tuneforge.evaluation.metrics import (
    bleu4,
    lcs_length,
    rouge_l,
    rouge_n,
    segment,
    similarity_scores,
    token_accuracy,
)

# Pure functions over token lists: no optional dependency needed.

CAT = ["the", "cat", "sat", "on", "the", "mat"]
CAT_REF = ["the", "cat", "is", "on", "the", "mat"]


def test_rouge_on_english_tokens_by_hand():
    # distinct unigrams: hyp {the,cat,sat,on,mat} = 5, ref {the,cat,is,on,mat} = 5, shared 4
    #   P = R = 4/5 -> F = 0.8
    assert rouge_n(CAT, CAT_REF, 1) == pytest.approx((0.8, 0.8, 0.8), abs=1e-7)
    # distinct bigrams: hyp {the cat, cat sat, sat on, on the, the mat} = 5,
    #   ref {the cat, cat is, is on, on the, the mat} = 5, shared {the cat, on the, the mat} = 3
    #   P = R = 3/5 -> F = 0.6
    assert rouge_n(CAT, CAT_REF, 2) == pytest.approx((0.6, 0.6, 0.6), abs=1e-7)
    # LCS = "the cat on the mat" = 5 of 6 tokens on each side -> P = R = F = 5/6
    assert rouge_l(CAT, CAT_REF) == pytest.approx((5 / 6, 5 / 6, 5 / 6), abs=1e-7)


def test_rouge_n_counts_distinct_ngrams_like_rouge_chinese():
    # hyp unigrams as a set: {the}; ref {the, cat}; shared 1 -> P = 1/1, R = 1/2, F = 2/3
    # (clipped-count ROUGE would give P = 1/3: rouge_chinese's default counts each n-gram once)
    assert rouge_n(["the"] * 3, ["the", "cat"], 1) == pytest.approx((1, 0.5, 2 / 3), abs=1e-7)
    # LCS = 1: P = 1/3, R = 1/2, F = 2 * (1/6) / (5/6) = 0.4
    assert rouge_l(["the"] * 3, ["the", "cat"]) == pytest.approx((1 / 3, 0.5, 0.4), abs=1e-7)


def test_rouge_l_is_plain_f1_of_lcs():
    # LCS("a b c d", "a c e") = "a c" = 2: P = 2/4, R = 2/3, F = 2PR / (P + R) = (2/3) / (7/6) = 4/7
    # (a beta = P/R weighting, as some ROUGE ports use, would give 0.5494 instead)
    assert rouge_l(list("abcd"), list("ace")) == pytest.approx((0.5, 2 / 3, 4 / 7), abs=1e-7)


def test_rouge_n_without_ngrams_scores_zero():
    # one token has no bigram: precision 0 by convention, F = 0
    assert rouge_n(["a"], ["a", "b"], 2) == (0.0, 0.0, 0.0)


def _lcs_dp(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = random.Random(0)
    for _ in range(500):
        a = rng.choices("abcd", k=rng.randint(0, 30))
        b = rng.choices("abcde", k=rng.randint(0, 30))
        assert lcs_length(a, b) == _lcs_dp(a, b) == lcs_length(b, a)
    long_a = rng.choices("abcdefgh", k=700)  # wider than a machine word
    long_b = rng.choices("abcdefgh", k=500)
    assert lcs_length(long_a, long_b) == _lcs_dp(long_a, long_b)


def test_bleu4_by_hand_on_characters():
    # hyp 我爱北京天安门 (7 chars), ref 我爱上海 (4 chars)
    # 1-grams 2/7 (我, 爱); 2-grams 1/6 (我爱); 3-grams 0/5 -> 1/(2*5); 4-grams 0/4 -> 1/(4*4)
    # hyp longer than ref -> brevity penalty 1; BLEU = (2/7 * 1/6 * 1/10 * 1/16) ** (1/4)
    expected = (2 / 7 * 1 / 6 * 1 / 10 * 1 / 16) ** 0.25
    assert bleu4(list("我爱北京天安门"), list("我爱上海")) == pytest.approx(expected, rel=1e-12)
    # no shared unigram -> 0 (nltk returns 0 before smoothing)
    assert bleu4(list("abc"), list("xyz")) == 0.0
    assert bleu4([], list("xyz")) == 0.0


# nltk's sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3), nltk 3.10.4;
# characters as LLaMA-Factory passes them, and whitespace words.
NLTK_BLEU = [
    ("the cat sat on the mat", "the cat is on the mat", 0.7839204411491599, 0.37991784282579627),
    ("hello", "hello world, how are you", 0.0223707718561656, 0.00647555622999399),
    ("a b", "a b c d e f", 0.05842838505271014, 0.08047084086794415),
    (
        "It is a guide to action which ensures that the military always obeys the commands of "
        "the party.",
        "It is a guide to action that ensures that the military will forever heed Party commands.",
        0.6696613581925771,
        0.40210746908120054,
    ),
    ("abc xyz", "xyz abc", 0.4272870063962341, 0.3535533905932738),
]


@pytest.mark.parametrize(("hyp", "ref", "chars", "words"), NLTK_BLEU)
def test_bleu4_equals_nltk_method3(hyp, ref, chars, words):
    assert bleu4(list(hyp), list(ref)) == pytest.approx(chars, rel=1e-12)
    assert bleu4(hyp.split(), ref.split()) == pytest.approx(words, rel=1e-12)


def test_bleu4_equals_live_nltk_on_random_texts():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    smooth = bleu_score.SmoothingFunction().method3
    rng = random.Random(1)
    for _ in range(200):
        hyp = rng.choices("abcde ", k=rng.randint(0, 40))
        ref = rng.choices("abcdef ", k=rng.randint(0, 40))
        expected = bleu_score.sentence_bleu([ref], hyp, smoothing_function=smooth)
        assert bleu4(hyp, ref) == pytest.approx(expected, rel=1e-12, abs=0)


# Token accuracy.


def test_token_accuracy_on_tensors_skips_ignored_targets():
    predicted = torch.tensor([[1, 2, 3, 4], [-100, 6, 7, 8]])
    targets = torch.tensor([[1, 9, 3, -100], [-100, 6, -100, 0]])
    # counted: (0,0) (0,1) (0,2) (1,1) (1,3) = 5; correct: 1=1, 3=3, 6=6 = 3
    # (1,0) predicts -100 for a -100 target: ignored, not a hit
    assert token_accuracy(predicted, targets) == (3, 5)
    assert token_accuracy(predicted.tolist(), targets.tolist()) == (3, 5)
    assert token_accuracy(predicted, targets, ignore_index=0) == (4, 7)


def test_token_accuracy_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        token_accuracy([1, 2, 3], [1, 2])


# Text-level scores: need jieba (the `metrics` extra).


@pytest.fixture
def jieba():
    return pytest.importorskip("jieba")


def test_segment_drops_whitespace(jieba):
    assert segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert segment(" the cat\n\nsat ") == ["the", "cat", "sat"]
    assert segment(" \n\t") == []


def test_similarity_scores_chinese_by_hand(jieba):
    # words: hyp 我/爱/北京/天安门, ref 我/爱/上海
    #   ROUGE-1: shared {我, 爱}: P = 2/4, R = 2/3, F = 4/7 = 57.1429
    #   ROUGE-2: hyp {我爱, 爱北京, 北京天安门}, ref {我爱, 爱上海}, shared 1: P = 1/3, R = 1/2,
    #            F = 2 * (1/6) / (5/6) = 0.4 = 40.0
    #   ROUGE-L: LCS 我爱 = 2 -> same as ROUGE-1, 57.1429
    #   BLEU-4 on characters: (2/7 * 1/6 * 1/10 * 1/16) ** (1/4) = 13.1345 (see test above)
    scores = similarity_scores(["我爱北京天安门"], ["我爱上海"])
    assert scores == {"bleu-4": 13.1345, "rouge-1": 57.1429, "rouge-2": 40.0, "rouge-l": 57.1429}


def test_similarity_scores_english_and_mean(jieba):
    # ROUGE as in test_rouge_on_english_tokens_by_hand (jieba keeps English words whole);
    # BLEU from NLTK_BLEU; the second pair is identical (100 everywhere), so means are halfway.
    scores = similarity_scores(
        ["the cat sat on the mat", "a long enough sentence"],
        ["the cat is on the mat", "a long enough sentence"],
    )
    assert scores == pytest.approx(
        {
            "bleu-4": (78.3920 + 100) / 2,
            "rouge-1": (80.0 + 100) / 2,
            "rouge-2": (60.0 + 100) / 2,
            "rouge-l": (83.3333 + 100) / 2,
        },
        abs=1e-9,
    )


def test_identical_texts_score_100(jieba):
    texts = ["今天天气很好，我们去公园散步吧。", "The quick brown fox jumps over the lazy dog."]
    assert similarity_scores(texts, texts) == dict.fromkeys(
        ("bleu-4", "rouge-1", "rouge-2", "rouge-l"), 100.0
    )


def test_disjoint_texts_score_zero(jieba):
    # no shared word -> ROUGE 0; BLEU is on characters, so shared letters (a, space) leave a
    # smoothed, small value; no shared character at all -> exactly 0
    scores = similarity_scores(["the cat sat"], ["dog runs far"])
    assert scores["rouge-1"] == scores["rouge-2"] == scores["rouge-l"] == 0.0
    assert 0 < scores["bleu-4"] < 5
    assert set(similarity_scores(["apple banana"], ["我爱上海"]).values()) == {0.0}


def test_empty_side_scores_zero(jieba):
    # LLaMA-Factory scores ROUGE 0 when either side has no word; BLEU of an empty string is 0
    assert set(similarity_scores([""], ["我爱上海"]).values()) == {0.0}
    assert set(similarity_scores(["我爱上海"], [" \n"]).values()) == {0.0}


def test_length_mismatch_and_empty_input_raise():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        similarity_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        similarity_scores([], [])


def test_missing_jieba_names_the_extra(monkeypatch):
    metrics._jieba_cut.cache_clear()
    monkeypatch.setitem(sys.modules, "jieba", None)  # makes `import jieba` raise ImportError
    try:
        with pytest.raises(NotAvailableError, match=r"tuneforge\[metrics\]"):
            segment("text")
    finally:
        metrics._jieba_cut.cache_clear()


def test_import_is_light_and_first_use_is_quiet(jieba):
    # a fresh interpreter: importing the module loads neither torch nor jieba, and jieba's
    # one-time dictionary build does not print "Building prefix dict ..." to stderr
    code = (
        "import sys\n"
        "from tuneforge.evaluation.metrics import segment\n"
        "assert 'torch' not in sys.modules and 'jieba' not in sys.modules\n"
        "assert segment('我爱北京') == ['我', '爱', '北京']\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
