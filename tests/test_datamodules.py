"""Datamodules: protocol splits, batch contract, target/fraction selection, caching, fingerprints."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules import AmazonReviewsDataModule, JsonlDataModule, MNLIDataModule
from datamodules.errors import DataError
from datamodules.loading import BATCH_KEYS, PadCollator

AMAZON_DOMAINS = ["books", "dvd", "electronics", "kitchen"]
# The protocol output of AmazonReviewsDataModule (seed 11111): split -> domain -> count.
AMAZON_SIZES = {
    "train": {"books": 1614, "dvd": 1620, "electronics": 1624, "kitchen": 1622},
    "val": {"books": 192, "dvd": 175, "electronics": 170, "kitchen": 183},
    "test": {"books": 194, "dvd": 205, "electronics": 206, "kitchen": 195},
}
MNLI_GENRES = ["fiction", "government", "slate", "telephone", "travel"]
# Rows per genre in the shipped subset (datamodules/data/README.md).
MNLI_TRAIN_ROWS = {"fiction": 3836, "government": 3883, "slate": 4026, "telephone": 4270, "travel": 3985}
MNLI_DEV_MATCHED_ROWS = {"fiction": 995, "government": 1016, "slate": 1002, "telephone": 1005, "travel": 982}


def write_jsonl(path: Path, records: list[dict]) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_csv(path: Path, records: list[dict]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return str(path)


def col(dataset, name: str) -> list:
    """A column of a datasets.Dataset as plain Python values."""
    return list(dataset.with_format(None)[name])


def toy_records(n_per_cell: int = 10, domains=("alpha", "beta"), labels=("neg", "pos"), offset: int = 0):
    """Deterministic single-text records; text lengths vary so that padding is visible."""
    out = []
    for d in domains:
        for lab in labels:
            for i in range(n_per_cell):
                words = " ".join(["word"] * (1 + (i + offset) % 7))
                out.append({"text": f"{d} {lab} {i + offset} {words}", "label": lab, "domain": d})
    return out


@pytest.fixture(scope="module")
def amazon_raw():
    return AmazonReviewsDataModule()


# ---------------------------------------------------------------------------------------------- Amazon
def test_amazon_attributes_known_at_init():
    dm = AmazonReviewsDataModule(target_domain="dvd", train_fraction=0.5)
    assert dm.domain_names == AMAZON_DOMAINS and dm.num_domains == 4
    assert dm.label_names == ["negative", "positive"] and dm.num_labels == 2
    assert (dm.backbone, dm.max_length, dm.target_domain, dm.train_fraction) == ("minilm-l6", 128, "dvd", 0.5)
    assert dm.hparams["use_title"] is True and dm.hparams["target_domain"] == "dvd"
    assert dm._raw is None  # nothing read yet


def test_amazon_protocol_split(amazon_raw):
    raw = amazon_raw.raw_splits()
    assert {s: len(v) for s, v in raw.items()} == {"train": 6480, "val": 720, "test": 800}
    assert amazon_raw.pooled_split_sizes() == AMAZON_SIZES
    assert amazon_raw.num_pooled_train == 6480
    # stratified on sentiment: exact halves
    assert Counter(r["label"] for r in raw["test"]) == {0: 400, 1: 400}
    assert Counter(r["label"] for r in raw["val"]) == {0: 360, 1: 360}
    # disjoint, and together the whole pool
    ids = [{r["id"] for r in raw[s]} for s in ("train", "val", "test")]
    assert sum(len(i) for i in ids) == 8000 and len(set().union(*ids)) == 8000
    # deterministic
    again = AmazonReviewsDataModule()
    assert [r["id"] for r in again.raw_splits()["train"]] == [r["id"] for r in raw["train"]]
    assert again.split_fingerprint == amazon_raw.split_fingerprint


def test_amazon_use_title_and_domain_subset(amazon_raw):
    no_title = AmazonReviewsDataModule(use_title=False, domains=["kitchen", "books"])
    assert no_title.domain_names == ["books", "kitchen"]  # corpus order
    raw = no_title.raw_splits()
    assert {s: len(v) for s, v in raw.items()} == {
        s: AMAZON_SIZES[s]["books"] + AMAZON_SIZES[s]["kitchen"] for s in AMAZON_SIZES
    }
    full_books = [r for r in amazon_raw.raw_splits()["test"] if r["domain"] == "books"]
    sub_books = [r for r in raw["test"] if r["domain"] == "books"]
    assert [r["id"] for r in sub_books] == [r["id"] for r in full_books]  # same split whatever the subset
    assert all(
        a["text"].endswith(b["text"]) and a["text"] != b["text"] for a, b in zip(full_books, sub_books)
    )
    assert no_title.split_fingerprint != amazon_raw.split_fingerprint


def test_amazon_target_domain_and_fraction(tmp_path, amazon_raw):
    dm = AmazonReviewsDataModule(
        target_domain="kitchen", train_fraction=0.1, max_length=16, batch_size=8, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    pooled = amazon_raw.raw_splits()
    assert dm.split_fingerprint == amazon_raw.split_fingerprint  # independent of target/fraction
    assert dm.num_pooled_train == 6480
    kitchen_train = [r for r in pooled["train"] if r["domain"] == "kitchen"]
    expected = {lab: round(0.1 * n) for lab, n in Counter(r["label"] for r in kitchen_train).items()}
    train = dm.train_dataset
    assert Counter(col(train, "labels")) == expected
    assert set(col(train, "domain_ids")) == {3}  # global index of kitchen
    for eid, label in zip(col(train, "example_ids"), col(train, "labels")):
        assert pooled["train"][eid]["domain"] == "kitchen" and pooled["train"][eid]["label"] == label
    assert len(dm.val_dataset) == AMAZON_SIZES["val"]["kitchen"]
    assert len(dm.test_dataset) == AMAZON_SIZES["test"]["kitchen"]
    for eid in col(dm.test_dataset, "example_ids"):
        assert pooled["test"][eid]["domain"] == "kitchen"
    sizes = dm.split_sizes()
    assert sizes["train"] == {"books": 0, "dvd": 0, "electronics": 0, "kitchen": sum(expected.values())}
    assert sizes["test"]["kitchen"] == 195
    batch = next(iter(dm.train_dataloader()))
    assert list(batch) == list(BATCH_KEYS)
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 16


# ---------------------------------------------------------------------------------------------- MNLI
def test_mnli_genres_and_splits(tmp_path):
    dm = MNLIDataModule(target_domain="travel", train_fraction=0.05, max_length=32, cache_dir=str(tmp_path))
    assert dm.domain_names == MNLI_GENRES
    assert dm.label_names == ["entailment", "neutral", "contradiction"]
    sizes = dm.pooled_split_sizes()
    for genre in MNLI_GENRES:
        n = MNLI_TRAIN_ROWS[genre]
        assert sizes["val"][genre] == -(-n // 10)  # ceil(10%)
        assert sizes["train"][genre] + sizes["val"][genre] == n
        assert sizes["test"][genre] == MNLI_DEV_MATCHED_ROWS[genre]
    raw = dm.raw_splits()
    assert all(isinstance(r["text_pair"], str) for r in raw["train"][:50])
    dm.setup("fit")
    assert set(col(dm.train_dataset, "domain_ids")) == {4}
    assert len(dm.test_dataset) == 982
    batch = next(iter(dm.val_dataloader()))
    assert (batch["token_type_ids"] == 1).any()  # the hypothesis segment
    assert set(batch["labels"].tolist()) <= {0, 1, 2}


def test_mnli_data_dir_with_label_names(tmp_path):
    rows = []
    for genre in MNLI_GENRES:
        for i, lab in enumerate(["entailment", "neutral", "contradiction"] * 10):
            rows.append(
                {"premise": f"{genre} premise {i}", "hypothesis": f"hyp {i}", "label": lab, "genre": genre}
            )
    write_jsonl(tmp_path / "train.jsonl.gz", rows)
    write_jsonl(tmp_path / "dev_matched.jsonl", [dict(r, label=i % 3) for i, r in enumerate(rows)])
    dm = MNLIDataModule(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    sizes = dm.pooled_split_sizes()
    assert sizes["train"] == dict.fromkeys(MNLI_GENRES, 27)
    assert sizes["val"] == dict.fromkeys(MNLI_GENRES, 3)
    assert sizes["test"] == dict.fromkeys(MNLI_GENRES, 30)
    raw = dm.raw_splits()
    assert Counter(r["label"] for r in raw["val"] if r["domain"] == "slate") == {0: 1, 1: 1, 2: 1}
    assert Counter(r["label"] for r in raw["train"] if r["domain"] == "slate") == {0: 9, 1: 9, 2: 9}
    assert [r["label"] for r in raw["test"][:6]] == [0, 1, 2, 0, 1, 2]  # dev_matched file order


# ---------------------------------------------------------------------------------------------- JSONL
def test_jsonl_auto_split_label_names(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl.gz", toy_records(20))
    dm = JsonlDataModule(train_file=path, max_length=32, cache_dir=str(tmp_path / "c"))
    assert dm.domain_names == ["alpha", "beta"] and dm.label_names == ["neg", "pos"]
    raw = dm.raw_splits()
    assert {s: len(v) for s, v in raw.items()} == {"train": 64, "val": 8, "test": 8}  # ceil(10%) twice
    assert Counter(r["label"] for r in raw["test"]) == {0: 4, 1: 4}
    dm.setup()
    assert len(dm.train_dataset) == 64
    texts = {r["text"] for s in raw.values() for r in s}
    assert len(texts) == 80
    # labels round trip: each loaded label is the name in the text
    for eid, label in zip(col(dm.train_dataset, "example_ids"), col(dm.train_dataset, "labels")):
        assert raw["train"][eid]["text"].split()[1] == dm.label_names[label]


def test_jsonl_csv_explicit_splits_int_labels(tmp_path):
    def rows(offset):
        return [dict(r, label=["neg", "pos"].index(r["label"])) for r in toy_records(3, offset=offset)]

    train = write_csv(tmp_path / "train.csv", rows(0))
    val = write_csv(tmp_path / "val.csv", rows(100))
    test = write_jsonl(tmp_path / "test.jsonl", rows(200))
    dm = JsonlDataModule(
        train_file=train, val_file=val, test_file=test, max_length=32, cache_dir=str(tmp_path / "c")
    )
    assert dm.label_names == ["0", "1"]  # inferred from integer labels
    assert {s: len(v) for s, v in dm.raw_splits().items()} == {"train": 12, "val": 12, "test": 12}
    assert [r["text"] for r in dm.raw_splits()["train"]] == [r["text"] for r in rows(0)]  # file order
    named = JsonlDataModule(train_file=train, val_file=val, test_file=test, label_names=["bad", "good"])
    assert named.label_names == ["bad", "good"]
    assert [r["label"] for r in named.raw_splits()["val"]] == [r["label"] for r in rows(100)]
    dm.setup()
    assert col(dm.test_dataset, "example_ids") == list(range(12))


def test_jsonl_pairs_and_custom_fields(tmp_path):
    recs = [
        {
            "q": f"question {i}",
            "a": f"answer {i} is long " * (i % 3 + 1),
            "y": i % 2,
            "src": "x" if i < 8 else "y",
        }
        for i in range(16)
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", recs)
    dm = JsonlDataModule(
        train_file=path,
        val_file=path,
        test_file=path,
        text_field="q",
        text_pair_field="a",
        label_field="y",
        domain_field="src",
        label_names=["no", "yes"],
        max_length=32,
        cache_dir=str(tmp_path / "c"),
    )
    assert dm.domain_names == ["x", "y"]
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert (batch["token_type_ids"] == 1).any()
    assert batch["labels"].tolist() == [i % 2 for i in range(16)]
    assert batch["domain_ids"].tolist() == [0] * 8 + [1] * 8


# ---------------------------------------------------------------------------------------------- batches
def test_dynamic_padding(tmp_path, minilm_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", toy_records(20))
    dm = JsonlDataModule(train_file=path, batch_size=5, max_length=32, cache_dir=str(tmp_path / "c"))
    dm.setup()
    lengths = {}
    for eid, r in enumerate(dm.raw_splits()["train"]):
        lengths[eid] = len(minilm_tokenizer(r["text"], truncation=True, max_length=32)["input_ids"])
    widths = set()
    for batch in dm.train_eval_dataloader():
        longest = max(lengths[e] for e in batch["example_ids"].tolist())
        assert batch["input_ids"].shape[1] == longest
        assert batch["attention_mask"].sum(1).tolist() == [lengths[e] for e in batch["example_ids"].tolist()]
        pad = batch["attention_mask"] == 0
        assert (batch["input_ids"][pad] == minilm_tokenizer.pad_token_id).all()
        widths.add(longest)
    assert len(widths) > 1  # the data has different lengths, so batches have different widths


def test_train_eval_loader_is_ordered_and_complete(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", toy_records(20))
    dm = JsonlDataModule(
        train_file=path, batch_size=7, eval_batch_size=16, max_length=16, cache_dir=str(tmp_path)
    )
    dm.setup()
    ids = torch.cat([b["example_ids"] for b in dm.train_eval_dataloader()]).tolist()
    assert ids == col(dm.train_dataset, "example_ids") == list(range(dm.num_pooled_train))
    assert [len(b["labels"]) for b in dm.train_eval_dataloader()][0] == 16
    shuffled = torch.cat([b["example_ids"] for b in dm.train_dataloader()]).tolist()
    assert sorted(shuffled) == ids


def test_collator_without_token_type_ids():
    collate = PadCollator(pad_token_id=9)
    out = collate(
        [
            {"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.tensor([1, 1, 1]), "labels": 1,
             "domain_ids": 0, "example_ids": 5},
            {"input_ids": torch.tensor([4]), "attention_mask": torch.tensor([1]), "labels": 0,
             "domain_ids": 1, "example_ids": 2},
        ]
    )  # fmt: skip
    assert list(out) == list(BATCH_KEYS)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert out["example_ids"].tolist() == [5, 2]


# ---------------------------------------------------------------------------------------------- selection
def test_train_fraction_stratified_and_deterministic(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", toy_records(20, labels=("a", "b", "c")))
    held = write_jsonl(tmp_path / "held.jsonl", toy_records(2, labels=("a", "b", "c")))

    def make(**kw):
        dm = JsonlDataModule(
            train_file=train, val_file=held, test_file=held, max_length=16, cache_dir=str(tmp_path), **kw
        )
        dm.setup()
        return dm

    first = make(target_domain="beta", train_fraction=0.25, seed=1)
    ids = col(first.train_dataset, "example_ids")
    assert Counter(col(first.train_dataset, "labels")) == {0: 5, 1: 5, 2: 5}
    assert set(col(first.train_dataset, "domain_ids")) == {1}
    assert ids == sorted(ids) and min(ids) >= 60  # beta rows come after alpha's 60
    assert col(make(target_domain="beta", train_fraction=0.25, seed=1).train_dataset, "example_ids") == ids
    other = make(target_domain="beta", train_fraction=0.25, seed=2)
    assert col(other.train_dataset, "example_ids") != ids
    assert other.split_fingerprint == first.split_fingerprint  # explicit splits do not depend on the seed
    everything = make(train_fraction=1.0)
    assert len(everything.train_dataset) == 120
    no_target = make(train_fraction=0.1)
    assert Counter(col(no_target.train_dataset, "labels")) == {0: 4, 1: 4, 2: 4}


def test_setup_is_idempotent_and_logs_sizes(tmp_path, caplog):
    path = write_jsonl(tmp_path / "c.jsonl", toy_records(10))
    dm = JsonlDataModule(train_file=path, max_length=16, cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="metakd.data"):
        dm.setup("fit")
    sizes = dm.split_sizes()
    raw = dm.raw_splits()
    assert sizes == {s: {d: sum(r["domain"] == d for r in raw[s]) for d in ("alpha", "beta")} for s in raw}
    assert [sum(sizes[s].values()) for s in ("train", "val", "test")] == [32, 4, 4]
    a, b = sizes["train"]["alpha"], sizes["train"]["beta"]
    assert f"jsonl train: 32 examples [alpha {a}, beta {b}]" in caplog.text
    train, test, fp = dm.train_dataset, dm.test_dataset, dm.data_fingerprint
    dm.setup("test")
    assert dm.train_dataset is train and dm.test_dataset is test and dm.data_fingerprint == fp


# ---------------------------------------------------------------------------------------------- cache
def test_tokenisation_cache_is_reused(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "c.jsonl", toy_records(10))
    kwargs = dict(train_file=path, max_length=16, cache_dir=str(tmp_path / "cache"))
    first = JsonlDataModule(**kwargs)
    first.setup()
    cache_file = Path(first.train_dataset.cache_files[0]["filename"])
    assert cache_file.parent == tmp_path / "cache" / first.data_fingerprint and cache_file.is_file()
    mtime = cache_file.stat().st_mtime_ns

    second = JsonlDataModule(**kwargs)

    def no_tokenising(batch):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(second, "_encode", no_tokenising)
    second.setup()
    assert second.data_fingerprint == first.data_fingerprint
    assert Path(second.train_dataset.cache_files[0]["filename"]) == cache_file
    assert cache_file.stat().st_mtime_ns == mtime
    assert col(second.train_dataset, "input_ids")[0] == col(first.train_dataset, "input_ids")[0]

    # a different max_length is a different cache entry, so it does tokenise
    third = JsonlDataModule(**dict(kwargs, max_length=8))
    monkeypatch.setattr(third, "_encode", no_tokenising)
    with pytest.raises(AssertionError, match="tokenised again"):
        third.setup()


# ---------------------------------------------------------------------------------------------- fingerprints
def test_fingerprints(tmp_path, tiny_tokenizer_dir):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, toy_records(10))

    def fps(**kw):
        dm = JsonlDataModule(
            train_file=str(path), max_length=kw.pop("max_length", 16), cache_dir=str(tmp_path), **kw
        )
        dm.setup()
        return dm.split_fingerprint, dm.data_fingerprint

    base = fps()
    assert fps() == base
    longer = fps(max_length=24)
    assert longer[0] == base[0] and longer[1] != base[1]
    target = fps(target_domain="alpha")
    assert target[0] == base[0] and target[1] != base[1]
    fraction = fps(train_fraction=0.5)
    assert fraction[0] == base[0] and fraction[1] != base[1]
    other_backbone = fps(backbone=tiny_tokenizer_dir)
    assert other_backbone[0] == base[0] and other_backbone[1] != base[1]
    records = toy_records(10)
    records[0]["text"] += " changed"
    write_jsonl(path, records)
    changed = fps()
    assert changed[0] != base[0] and changed[1] != base[1]


def test_amazon_test_large_is_a_second_test_set(tmp_path):
    """``test_set: test_large`` serves the ~1900 further labelled reviews per domain (shipped with the
    package, none among the 2000); the training data and every fingerprint stay as they are."""
    paper = AmazonReviewsDataModule(max_length=32, cache_dir=str(tmp_path))
    large = AmazonReviewsDataModule(max_length=32, cache_dir=str(tmp_path), test_set="test_large")
    assert large.evaluation_sets() == ["test", "test_large"]
    assert large.pooled_split_sizes()["test"] == {
        "books": 1930,
        "dvd": 1837,
        "electronics": 1896,
        "kitchen": 1960,
    }
    assert large.pooled_split_sizes()["train"] == paper.pooled_split_sizes()["train"]
    texts = {r["text"] for r in paper.raw_splits()["train"] + paper.raw_splits()["test"]}
    records = large.split_records("test")
    assert not texts & {r["text"] for r in records}
    assert sum(r["label"] for r in records if r["domain"] == "books") == 996  # positives (README)
    one = AmazonReviewsDataModule(max_length=32, cache_dir=str(tmp_path), test_set="test_large",
                                  target_domain="kitchen")  # fmt: skip
    one.setup("test")
    ids = [int(i) for i in one.test_dataset["example_ids"]]
    assert len(ids) == 1960 and ids == list(range(1930 + 1837 + 1896, 1930 + 1837 + 1896 + 1960))
    assert [int(y) for y in one.test_dataset["labels"]] == [r["label"] for r in records[ids[0] :]]
    loaded = one.loaded_records("test")  # what a model trained outside Lightning scores (model2vec peer)
    assert [r["example_id"] for r in loaded] == ids and loaded[0]["text"] == records[ids[0]]["text"]
    assert one.split_fingerprint == paper.split_fingerprint
    with pytest.raises(
        DataError, match=r"test_set 'large' is not an evaluation set of this corpus; choose from"
    ):
        AmazonReviewsDataModule(test_set="large")


def test_jsonl_extra_test_files(tmp_path):
    rows = [{"text": f"t{i} {d}", "label": i % 2, "domain": d} for d in ("a", "b") for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "big.jsonl", [{"text": "x y", "label": 1, "domain": "b"}] * 3 + [
        {"text": "z", "label": 0, "domain": "zzz"}])  # fmt: skip
    extra = {"big": str(tmp_path / "big.jsonl")}
    dm = JsonlDataModule(train_file=str(tmp_path / "train.jsonl"), extra_test_files=extra, test_set="big",
                         max_length=16, cache_dir=str(tmp_path / "c"))  # fmt: skip
    assert dm.domain_names == ["a", "b"]  # a domain only in an extra test file is not a corpus domain
    assert dm.pooled_split_sizes()["test"] == {"a": 0, "b": 3}
    with pytest.raises(DataError, match="extra_test_files: names must be non-empty and not 'test'"):
        JsonlDataModule(train_file=str(tmp_path / "train.jsonl"), extra_test_files={"test": "x"})
