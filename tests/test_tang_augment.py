"""Tang et al.'s transfer-set augmentation (``tang`` augmenter): each operation on fixed seeds, the
POS-guided replacement with the real tagger, determinism by seed, and the unlabelled examples a student
distils from."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import tiny_corpus_records, tiny_student, tiny_trainer, write_jsonl

from datamodules import DataError, JsonlDataModule
from datamodules.augment import UNKNOWN_LABEL, AugmentContext
from datamodules.pos import default_tagger
from datamodules.tang_augment import MASK, TangAugmenter, word_class, word_tags

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


def test_suffix_replacement_draws_a_training_word_of_the_same_class() -> None:
    augmenter = prepared(p_mask=0.0, p_replace=1.0, p_ngram=0.0, word_classes="suffix")
    for seed in range(5):
        out = augmenter.augment_text("slowly the novel ended", random.Random(seed)).split()
        assert out[0] in {"badly", "slowly", "lovely", "quickly"}  # the "-ly" words of the training split
        assert word_class(out[1]) == "<short>" and out[1] in {"the", "was", "and", "a"}
        assert out[2] == "novel"  # a class the training split lacks: the word stays
        assert out[3] in {"printed", "delivered"}  # the "-ed" words
    draws = {augmenter.augment_text("slowly", random.Random(s)) for s in range(40)}
    assert draws == {"badly", "slowly", "lovely", "quickly"}


POS_TRAIN = [
    {"text": "The old cat slept on a warm mat.", "label": 0, "domain": "d"},
    {"text": "A small dog barked at the loud mailman!", "label": 1, "domain": "d"},
    {"text": "My brother reads thick books slowly.", "label": 1, "domain": "d"},
]


def test_words_take_the_tag_of_their_first_word_token() -> None:
    tagger = default_tagger()
    text = "don't watch it, (really)!"
    assert word_tags(text, tagger.tag(text)) == ["VBP", "VB", "PRP", "RB"]
    assert word_tags(text, tagger.tag(text), "universal") == ["AUX", "VERB", "PRON", "ADV"]
    assert word_tags("Books  were read. --", tagger.tag("Books  were read. --")) == ["NNS", "VBD", "VBN", ":"]


def test_pos_guided_replacement_keeps_the_part_of_speech() -> None:
    augmenter = TangAugmenter(p_mask=0.0, p_replace=1.0, p_ngram=0.0)  # Penn tags of the real tagger
    augmenter.prepare(AugmentContext(POS_TRAIN, [0, 1, 2], ["d"], ["neg", "pos"], None, seed=0))
    # the tagger's reading of the training texts, by hand: each tag's words and their counts
    assert augmenter.vocabulary["NN"] == (["brother", "cat", "dog", "mailman", "mat"], [1] * 5)
    assert augmenter.vocabulary["JJ"] == (["loud", "old", "small", "thick", "warm"], [1] * 5)
    assert augmenter.vocabulary["DT"] == (["a", "the"], [2, 2])
    assert augmenter.vocabulary["NNS"] == (["books"], [1]) and augmenter.vocabulary["VBD"] == (["slept"], [1])
    text = "The young bird sang on a green branch."
    tags = [t.tag for t in default_tagger().tag(text)]
    assert tags == ["DT", "JJ", "NN", "VBD", "IN", "DT", "JJ", "NN", "."]
    outputs = set()
    for seed in range(8):
        out = augmenter.augment_text(text, random.Random(seed))
        words = out.split()
        assert words[0] in {"The", "A"} and words[5] in {"the", "a"}  # case kept
        assert {words[1], words[6]} <= set(augmenter.vocabulary["JJ"][0])
        assert (
            words[2] in augmenter.vocabulary["NN"][0]
            and words[7].rstrip(".") in augmenter.vocabulary["NN"][0]
        )
        assert words[3] == "slept" and words[7].endswith(".")  # the only VBD; punctuation kept
        assert [t.tag for t in default_tagger().tag(out)] == tags  # re-tagged: the same parts of speech
        outputs.add(out)
    assert len(outputs) > 4


def test_tang_transfer_set_is_a_function_of_the_seed(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", tiny_corpus_records(per_domain=12))
    augment = {"class_path": "tang", "per_example": 3}  # the paper's p_mask, p_pos, p_ng; n_iter 3

    def augmented(seed: int, cache: str) -> list[dict]:
        data = JsonlDataModule(train_file=str(corpus), max_length=24, cache_dir=str(tmp_path / cache),
                               target_domain="books", seed=seed, augment=augment)  # fmt: skip
        data.setup()
        return data.augmented_train

    first = augmented(1, "one")
    assert first and augmented(1, "two") == first  # generated again, in another cache: the same texts
    other = augmented(2, "three")
    assert [r["text"] for r in other] != [r["text"] for r in first]


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
