"""The augmentation mechanism (datamodules/augment.py): augmented examples join the loaded training
split with their own example ids, source links, domains and labels; dev/test are untouched; the
fingerprint follows the config; caches; selection; and the student side (teacher cache, t_i, CE)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from helpers import tiny_encoder_config, tiny_student, tiny_trainer
from test_datamodules import col, toy_records, write_jsonl

from datamodules import Augmenter, DataError, JsonlDataModule, register_augmenter
from datamodules.augment import UNKNOWN_LABEL


@register_augmenter("test_reverse")
class ReverseWords(Augmenter):
    """Version k of a text: its words reversed, then ``k`` copies of ``!`` appended (label unknown)."""

    keeps_label = False

    def __init__(self, mark: str = "!") -> None:
        self.mark = mark

    def augment(self, record, num, rng):
        words = record["text"].split()[::-1]
        return [{"text": " ".join(words) + " " + self.mark * (k + 1)} for k in range(num)]


@register_augmenter("test_upper")
class Upper(Augmenter):
    """Upper case (label kept); a text that is already upper case is dropped as a duplicate."""

    def augment_text(self, text: str, rng: random.Random) -> str:
        return text.upper()


def corpus(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "corpus.jsonl", toy_records(10))


def make(tmp_path: Path, **kwargs) -> JsonlDataModule:
    dm = JsonlDataModule(
        train_file=corpus(tmp_path), max_length=24, batch_size=4, cache_dir=str(tmp_path / "cache"), **kwargs
    )
    dm.setup()
    return dm


def test_augmented_examples_join_the_training_split_only(tmp_path: Path) -> None:
    plain = make(tmp_path, target_domain="beta", train_fraction=0.5)
    spec = {"class_path": "test_reverse", "per_example": 2}
    dm = make(tmp_path, target_domain="beta", train_fraction=0.5, augment=spec)
    loaded = col(plain.train_dataset, "example_ids")
    n = dm.num_pooled_train
    assert dm.num_train_ids == n + 2 * len(loaded)
    # ids: the originals keep theirs, the new ones follow num_pooled_train in order; two per original
    ids = col(dm.train_dataset, "example_ids")
    assert ids == loaded + list(range(n, n + 2 * len(loaded)))
    assert dm.source_example_ids.tolist() == list(range(n)) + [i for i in loaded for _ in range(2)]
    raw = dm.raw_splits()["train"]
    for row in dm.augmented_train:
        source = raw[row["source_example_id"]]
        assert row["domain"] == source["domain"] == "beta" and row["augmented"] is True
        assert row["label"] == UNKNOWN_LABEL  # this augmenter leaves the label to the teacher
        assert row["text"].startswith(" ".join(source["text"].split()[::-1]) + " !")
    labels = col(dm.train_dataset, "labels")
    assert labels[: len(loaded)] == col(plain.train_dataset, "labels") and set(labels[len(loaded) :]) == {
        -100
    }
    domains = col(dm.train_dataset, "domain_ids")
    assert set(domains) == {dm.domain_names.index("beta")}
    # dev and test are the same examples and tokens as without augmentation
    for split in ("val_dataset", "test_dataset"):
        for column in ("example_ids", "input_ids", "labels"):
            assert col(getattr(dm, split), column) == col(getattr(plain, split), column)
    assert dm.split_fingerprint == plain.split_fingerprint and dm.data_fingerprint != plain.data_fingerprint
    assert plain.num_train_ids == plain.num_pooled_train and plain.augmented_train == []


def test_label_kept_duplicates_dropped_and_fingerprint_follows_the_config(tmp_path: Path) -> None:
    dm = make(tmp_path, target_domain="alpha", augment={"class_path": "test_upper", "per_example": 1})
    raw = dm.raw_splits()["train"]
    assert len(dm.augmented_train) == len(col(dm.train_dataset, "example_ids")) // 2
    for row in dm.augmented_train:
        assert row["label"] == raw[row["source_example_id"]]["label"]  # label-preserving augmenter
        assert row["text"] == raw[row["source_example_id"]]["text"].upper()

    def fingerprint(augment) -> str:
        other = JsonlDataModule(train_file=corpus(tmp_path), max_length=24, augment=augment,
                                cache_dir=str(tmp_path / "cache"))  # fmt: skip
        other.setup()
        return other.data_fingerprint

    base = {"class_path": "test_reverse", "per_example": 1}
    prints = {
        fingerprint(None),
        fingerprint(base),
        fingerprint({**base, "per_example": 2}),
        fingerprint({**base, "init_args": {"mark": "?"}}),
        fingerprint({**base, "class_path": "test_upper"}),
    }
    assert len(prints) == 5
    assert fingerprint(base) == fingerprint(dict(base))  # and it is stable


def test_augmented_records_are_cached_by_the_fingerprint(tmp_path: Path, monkeypatch) -> None:
    spec = {"class_path": "test_reverse", "per_example": 1}
    first = make(tmp_path, augment=spec)
    cached = tmp_path / "cache" / first.data_fingerprint / "augmented.jsonl"
    assert cached.is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("augmented again although the cache holds this config's examples")

    monkeypatch.setattr(ReverseWords, "generate", refuse)
    second = make(tmp_path, augment=spec)
    assert second.augmented_train == first.augmented_train
    with pytest.raises(AssertionError, match="augmented again"):
        make(tmp_path, augment={**spec, "per_example": 2})  # another config: not read from that cache


def test_select_augmented_serves_the_originals_and_the_chosen(tmp_path: Path) -> None:
    dm = make(tmp_path, target_domain="alpha", augment={"class_path": "test_reverse", "per_example": 2})
    originals = [i for i in col(dm.train_dataset, "example_ids") if i < dm.num_pooled_train]
    chosen = [dm.augmented_train[0]["example_id"], dm.augmented_train[3]["example_id"]]
    dm.select_augmented(chosen)
    served = sorted(int(i) for b in dm.train_dataloader() for i in b["example_ids"])
    assert served == sorted(originals + chosen)
    everything = sorted(int(i) for b in dm.train_eval_dataloader() for i in b["example_ids"])
    assert everything == sorted(originals + [r["example_id"] for r in dm.augmented_train])
    dm.select_augmented(None)
    assert len(dm.train_dataset) == len(everything)
    with pytest.raises(DataError, match=r"select_augmented: \[0\] are not ids of augmented"):
        dm.select_augmented([0])


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ("eda", r"augment must be a mapping"),
        ({"class_path": "test_reverse", "n": 2}, r"augment has unknown keys \['n'\]"),
        (
            {"class_path": "test_revrese"},
            r"augment.class_path: unknown augmenter 'test_revrese'.*did you mean",
        ),
        ({"class_path": "test_reverse", "per_example": -1}, r"per_example must be an integer >= 0, got -1"),
        ({"class_path": "test_reverse", "init_args": {"nope": 1}}, r"init_args: cannot build ReverseWords"),
    ],
)
def test_bad_augment_options(tmp_path: Path, augment, message: str) -> None:
    with pytest.raises(DataError, match=message):
        JsonlDataModule(train_file=corpus(tmp_path), augment=augment)


# ---------------------------------------------------------------------------------------- student side


def test_hard_ce_ignores_unknown_labels() -> None:
    from metakd.distill import HardCE, StepContext
    from metakd.students import StudentOutput

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    batch = {"labels": torch.tensor([0, UNKNOWN_LABEL, 1])}
    value = HardCE(1.0)(StepContext(batch, StudentOutput(logits=logits), None, {}))
    # -log softmax: row 0 log(1 + e^-2), row 1 unknown -> 0, row 2 log 2
    torch.testing.assert_close(value, torch.tensor([math.log(1 + math.exp(-2.0)), 0.0, math.log(2.0)]))


def test_domain_expertise_uses_the_teacher_prediction_for_unknown_labels() -> None:
    from metakd.distill.losses import domain_expertise

    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])  # p = (3/4, 1/4), (1/4, 3/4)
    sigma = domain_expertise(logits, torch.tensor([1, UNKNOWN_LABEL]))
    expected = [1 / (1 + math.exp((1 - 0.25) ** 2)), 1 / (1 + math.exp((1 - 0.75) ** 2))]
    torch.testing.assert_close(sigma, torch.tensor(expected))


def test_student_distils_on_augmented_data(tmp_path: Path) -> None:
    """A tiny meta-teacher, then a Meta-KD student on augmented data: the teacher-output cache covers
    every training id, augmented examples get their source's t_i, and fitting runs."""
    from helpers import tiny_teacher

    from metakd.distill import DISTILLERS

    teacher_data = make(tmp_path)
    trainer = tiny_trainer()
    trainer.fit(tiny_teacher(teacher_data), datamodule=teacher_data)
    ckpt = str(tmp_path / "teacher.ckpt")
    trainer.save_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)["state_dict"]["transferability"]

    data = make(tmp_path, target_domain="alpha", augment={"class_path": "test_reverse", "per_example": 1})
    student = tiny_student(ckpt, data, distillation="meta", stage="both", intermediate_epochs=1)
    assert isinstance(student.distiller, DISTILLERS.get("meta"))
    tiny_trainer(max_epochs=2, max_steps=-1, limit_train_batches=2).fit(student, datamodule=data)
    t = student.distiller.transferability
    assert t.shape == (data.num_train_ids,)
    torch.testing.assert_close(t[: data.num_pooled_train], stored.float())
    for row in data.augmented_train:
        assert t[row["example_id"]] == stored[row["source_example_id"]]
    cache = student.teacher_source.cache
    assert cache.logits.shape[0] == data.num_train_ids and bool(
        cache.filled[data.source_example_ids.shape[0] - 1]
    )


def test_meta_teacher_refuses_augmented_data(tmp_path: Path) -> None:
    from helpers import tiny_teacher

    data = make(tmp_path, augment={"class_path": "test_reverse", "per_example": 1})
    with pytest.raises(ValueError, match="augment .augmented examples. is for students"):
        tiny_trainer().fit(tiny_teacher(data, encoder_config=tiny_encoder_config()), datamodule=data)
