"""Tang et al.'s transfer-set augmentation (``tang`` augmenter): each operation on fixed seeds, and the
unlabelled examples a student distils from."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import tiny_corpus_records, tiny_student, tiny_trainer, write_jsonl

from datamodules import DataError, JsonlDataModule
from datamodules.augment import UNKNOWN_LABEL, AugmentContext
from datamodules.tang_augment import MASK, TangAugmenter, word_class

TEXT = "the reader quickly opened a wonderfully printed book"
TRAIN = [
    {"text": "the book was badly printed and slowly delivered", "label": 0, "domain": "books"},
    {"text": "a lovely story quickly told", "label": 1, "domain": "books"},
]


def prepared(**options) -> TangAugmenter:
    augmenter = TangAugmenter(**options)
    augmenter.prepare(AugmentContext(TRAIN, [0, 1], ["books"], ["neg", "pos"], None, seed=0))
    return augmenter


def test_masking_replaces_words_by_the_mask_token() -> None:
    everything = prepared(p_mask=1.0, p_replace=0.0, p_ngram=0.0)
    assert everything.augment_text(TEXT, random.Random(3)) == " ".join([MASK] * 8)
    some = prepared(p_mask=0.5, p_replace=0.0, p_ngram=0.0)
    out = some.augment_text(TEXT, random.Random(3)).split()
    # the words masked are those whose uniform draw (one per word, in order) fell below 0.5
    rng = random.Random(3)
    expected = [MASK if rng.random() < 0.5 else word for word in TEXT.split()]
    assert out == expected and MASK in out and out != [MASK] * 8


def test_replacement_draws_a_training_word_of_the_same_class() -> None:
    augmenter = prepared(p_mask=0.0, p_replace=1.0, p_ngram=0.0)
    for seed in range(5):
        out = augmenter.augment_text("slowly the novel ended", random.Random(seed)).split()
        assert out[0] in {"badly", "slowly", "lovely", "quickly"}  # the "-ly" words of the training split
        assert word_class(out[1]) == "<short>" and out[1] in {"the", "was", "and", "a"}
        assert out[2] == "novel"  # a class the training split lacks: the word stays
        assert out[3] in {"printed", "delivered"}  # the "-ed" words
    draws = {augmenter.augment_text("slowly", random.Random(s)) for s in range(40)}
    assert draws == {"badly", "slowly", "lovely", "quickly"}


def test_ngram_sampling_keeps_a_contiguous_span_of_at_most_max_ngram_words() -> None:
    augmenter = prepared(p_mask=0.0, p_replace=0.0, p_ngram=1.0, max_ngram=3)
    words = TEXT.split()
    spans = set()
    for seed in range(40):
        out = augmenter.augment_text(TEXT, random.Random(seed)).split()
        assert 1 <= len(out) <= 3
        start = words.index(out[0])
        assert words[start : start + len(out)] == out
        spans.add(len(out))
    assert spans == {1, 2, 3}
    never = prepared(p_mask=0.0, p_replace=0.0, p_ngram=0.0)
    assert never.augment_text(TEXT, random.Random(0)) == TEXT
    # the same seed, the same new text
    mixed = prepared()
    assert mixed.augment_text(TEXT, random.Random(7)) == mixed.augment_text(TEXT, random.Random(7))
    with pytest.raises(DataError, match="p_mask \\+ p_replace must be <= 1"):
        TangAugmenter(p_mask=0.6, p_replace=0.6)


def test_unlabelled_transfer_set_distilled_by_a_small_student(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", tiny_corpus_records(per_domain=20))
    options = {"train_file": str(corpus), "backbone": "minilm-l6", "max_length": 24, "batch_size": 8,
               "cache_dir": str(tmp_path / "cache"), "target_domain": "books"}  # fmt: skip
    augment = {"class_path": "tang", "init_args": {"p_mask": 0.3, "p_replace": 0.3}, "per_example": 3}
    data = JsonlDataModule(**options, augment=augment)
    data.setup("fit")
    added = data.augmented_train
    assert added and all(row["label"] == UNKNOWN_LABEL for row in added)
    assert {row["example_id"] for row in added} == set(range(data.num_pooled_train, data.num_train_ids))
    from helpers import train_tiny_teacher

    teacher = train_tiny_teacher(str(tmp_path / "teacher.ckpt"), JsonlDataModule(**options))
    spec = {
        "class_path": "textcnn",
        "init_args": {"embedding_init": "random", "embedding_dim": 8, "filters": 4},
    }
    student = tiny_student(teacher, data, distillation="tang", student_config=None, student_model=spec)
    trainer = tiny_trainer(max_steps=4)
    trainer.fit(student, datamodule=data)
    assert float(trainer.callback_metrics["train/loss_mse"]) > 0
