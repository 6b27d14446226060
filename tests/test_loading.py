"""The loaders' part of the datamodules (datamodules/loading.py): padding on either side, an order that
depends only on seeds and the epoch, and loaders that leave torch's global RNG alone."""

from __future__ import annotations

import torch

from datamodules.loading import BATCH_KEYS, EpochSeededRandomSampler, PadCollator, make_loader


def example(ids: list[int], example_id: int) -> dict:
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids),
            "labels": 1, "domain_ids": 0, "example_ids": example_id}  # fmt: skip


def test_padding_on_the_tokenizer_side() -> None:
    rows = [example([5, 6, 7], 0), example([8], 1)]
    right = PadCollator(pad_token_id=9, pad_token_type_id=2)(rows)
    assert tuple(right) == BATCH_KEYS
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["token_type_ids"].tolist() == [[0, 0, 0], [0, 2, 2]]
    left = PadCollator(pad_token_id=9, padding_side="left")(rows)
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]] and left["example_ids"].tolist() == [0, 1]


def test_the_order_is_a_function_of_the_seed_and_the_epoch() -> None:
    data = list(range(50))
    first, twin = EpochSeededRandomSampler(data, seed=(1, 2)), EpochSeededRandomSampler(data, seed=(1, 2))
    epoch0 = list(first)
    assert sorted(epoch0) == data and epoch0 != data
    epoch1 = list(first)  # without set_epoch, each pass is the next epoch
    assert epoch1 != epoch0
    twin.set_epoch(1)
    assert list(twin) == epoch1
    fresh = EpochSeededRandomSampler(data, seed=(1, 2))
    fresh.set_epoch(0)
    assert list(fresh) == epoch0 and list(fresh) == epoch0  # a given epoch repeats
    other = EpochSeededRandomSampler(data, seed=(1, 3))
    other.set_epoch(0)
    assert list(other) != epoch0


def test_a_loader_does_not_move_the_global_rng() -> None:
    rows = [example([i + 5], i) for i in range(10)]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loader = make_loader(rows, 4, PadCollator(0), seed=7, shuffle_seed=(7, 0, 0))
    shuffled = [i for batch in loader for i in batch["example_ids"].tolist()]
    assert torch.equal(torch.rand(3), expected)
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    ordered = make_loader(rows, 4, PadCollator(0), seed=7)
    assert [i for batch in ordered for i in batch["example_ids"].tolist()] == list(range(10))
