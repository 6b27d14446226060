"""The augmentation hooks of the datamodules (datamodules/training_augmentation.py): ids after the pooled
split, source links, the cached records, and the selection of augmented examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

from datamodules.augment import (
    WEIGHT_FEATURE,
    AugmentContext,
    AugmentedExample,
    Augmenter,
    parse_augment,
    register_augmenter,
)
from datamodules.errors import DataError
from datamodules.training_augmentation import TrainingAugmentation

TRAIN = [{"text": f"text {i}", "label": i % 2, "domain": "a" if i < 3 else "b"} for i in range(6)]


@register_augmenter("test_hooks_twice")
class Twice(Augmenter):
    def augment_text(self, text: str, rng) -> str:
        return f"{text} {text}"


def context(loaded: list[int]) -> AugmentContext:
    return AugmentContext(TRAIN, loaded, ["a", "b"], ["neg", "pos"], "b", seed=1)


def test_without_augmentation_every_id_is_its_own_source(tmp_path: Path) -> None:
    part = TrainingAugmentation(None)
    assert part.fingerprint() is None
    assert part.build(context([3, 4]), 6, tmp_path / "augmented.jsonl", "toy") == []
    assert part.source_example_ids(6).tolist() == list(range(6))
    assert not (tmp_path / "augmented.jsonl").exists()


def test_augmented_records_follow_the_pooled_ids_and_are_cached(tmp_path: Path) -> None:
    part = TrainingAugmentation(parse_augment({"class_path": "test_hooks_twice", "per_example": 2}))
    cache = tmp_path / "augmented.jsonl"
    rows = part.build(context([3, 5]), 6, cache, "toy")
    assert [(r["example_id"], r["source_example_id"], r["text"]) for r in rows] == [
        (6, 3, "text 3 text 3"), (7, 3, "text 3 text 3"), (8, 5, "text 5 text 5"), (9, 5, "text 5 text 5"),
    ]  # fmt: skip
    assert part.source_example_ids(6).tolist() == [0, 1, 2, 3, 4, 5, 3, 3, 5, 5]
    assert cache.is_file() and part.fingerprint()["per_example"] == 2
    again = TrainingAugmentation(part.spec)
    assert again.build(context([4]), 6, cache, "toy") == rows  # read back, not generated for [4]


def test_select_serves_the_originals_and_the_chosen(tmp_path: Path) -> None:
    part = TrainingAugmentation(parse_augment({"class_path": "test_hooks_twice", "per_example": 1}))
    rows = part.build(context([3, 4, 5]), 6, tmp_path / "augmented.jsonl", "toy")
    full = Dataset.from_dict({"example_ids": [3, 4, 5] + [r["example_id"] for r in rows]})
    assert full["example_ids"] == [3, 4, 5, 6, 7, 8]
    assert part.select(full, [8, 6])["example_ids"] == [3, 4, 5, 6, 8]
    assert part.select(full, [])["example_ids"] == [3, 4, 5]
    with pytest.raises(DataError, match=r"select_augmented: \[4, 99\] are not ids of augmented"):
        part.select(full, [4, 99])


@register_augmenter("test_hooks_weighted")
class Weighted(Augmenter):
    """A copy of each loaded example weighted by its position / 10, and one example without a source."""

    def generate(self, context, per_example):
        out = [AugmentedExample(f"copy {i}", i, features={WEIGHT_FEATURE: i / 10}) for i in context.loaded]
        return out + [AugmentedExample("from nowhere", None, domain="b")]


def test_loss_weights_by_example_id(tmp_path: Path) -> None:
    part = TrainingAugmentation(parse_augment({"class_path": "test_hooks_weighted"}))
    rows = part.build(context([3, 5]), 6, tmp_path / "augmented.jsonl", "toy")
    assert [(r["source_example_id"], r["label"]) for r in rows] == [(3, 1), (5, 1), (-1, -100)]
    # originals 1, the copies 0.3 and 0.5, the example without a weight 1
    assert part.example_weights(6).tolist() == pytest.approx([1, 1, 1, 1, 1, 1, 0.3, 0.5, 1])
    assert part.source_example_ids(6).tolist() == [0, 1, 2, 3, 4, 5, 3, 5, -1]
    assert TrainingAugmentation(parse_augment({"class_path": "test_hooks_twice"})).example_weights(6) is None
