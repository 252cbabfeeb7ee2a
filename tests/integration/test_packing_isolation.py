"""Padding-free rows isolate their examples: each example's loss is the same alone and packed
with others, for every attention implementation; packing bins behave the same way."""

from __future__ import annotations

import itertools

import pytest
import torch

from tuneforge.data.encode import IGNORE_INDEX
from tuneforge.models.attention import register_varlen_attention
from tuneforge.training.collate import PaddingFreeCollator, pack
from tuneforge.training.loss import token_losses

IMPLEMENTATIONS = ["eager", "sdpa", register_varlen_attention()]


def examples(seed: int = 0) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    result = []
    for length in (7, 19, 12, 3):
        ids = torch.randint(10, 4000, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 3) + ids[length // 3 :]
        result.append({"input_ids": ids, "labels": labels})
    return result


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def model(request, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=request.param)
    return model.eval()


def per_example_losses(model, features):
    batch = PaddingFreeCollator()(features)
    with torch.no_grad():
        losses, keep = token_losses(model, batch)
    bounds = batch.cu_seq_lens.tolist()
    return [losses[(keep >= start) & (keep < end)] for start, end in itertools.pairwise(bounds)]


def test_loss_of_an_example_is_the_same_alone_and_packed(model):
    features = examples()
    packed = per_example_losses(model, features)
    for feature, in_pack in zip(features, packed):
        (alone,) = per_example_losses(model, [feature])
        torch.testing.assert_close(in_pack, alone, rtol=1e-5, atol=1e-5)


def test_padding_free_matches_a_padded_batch(tiny_model_dir):
    """The reference: transformers' own padded forward with an attention mask."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    features = examples(1)
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.tensor([f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features])
    mask = torch.tensor(
        [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
    )
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = []
    for row, feature in enumerate(features):
        labels = torch.tensor(feature["labels"][1:])
        trained = labels != IGNORE_INDEX
        row_logits = logits[row, : len(feature["labels"]) - 1][trained]
        expected.append(
            torch.nn.functional.cross_entropy(row_logits, labels[trained], reduction="none")
        )
    for got, want in zip(per_example_losses(model, features), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_targets_never_cross_example_boundaries():
    batch = PaddingFreeCollator()([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.targets.tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert batch.cu_seq_lens.tolist() == [0, 3, 5]


def test_a_packed_row_collates_like_its_examples():
    features = examples()
    row = {
        "input_ids": [t for f in features for t in f["input_ids"]],
        "labels": [t for f in features for t in f["labels"]],
        "lengths": [len(f["input_ids"]) for f in features],
    }
    packed, separate = PaddingFreeCollator()([row]), PaddingFreeCollator()(features)
    for key in ("input_ids", "position_ids", "targets", "cu_seq_lens"):
        assert torch.equal(getattr(packed, key), getattr(separate, key))


def test_pack_fills_bins_without_overflow():
    lengths = [500, 20, 300, 200, 480, 12, 250]
    bins = pack(lengths, 512)
    assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 512 for members in bins)
    assert len(bins) == 4  # first-fit decreasing: 500+12, 480+20, 300+200, 250
