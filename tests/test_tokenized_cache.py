"""The caching part of the datamodules (datamodules/tokenized_cache.py): the data fingerprint's inputs,
the tokenizer's content hash, and the Arrow cache round trip of tokenised records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.loading import BATCH_KEYS
from datamodules.tokenized_cache import data_fingerprint, tokenize_records, tokenizer_fingerprint

RECORDS = [
    {"text": "a good book", "label": 1, "domain": "b"},
    {"text": "not a good movie !", "label": 0, "domain": "a"},
]


def test_the_data_fingerprint_counts_what_changes_the_data() -> None:
    base = data_fingerprint("split", "tok", 64, None, None, seed=1)
    assert len(base) == 16 and base == data_fingerprint("split", "tok", 64, None, None, seed=1)
    assert data_fingerprint("split", "tok", 64, None, None, seed=2) == base  # the seed changes nothing here
    others = [
        data_fingerprint("split2", "tok", 64, None, None, 1),
        data_fingerprint("split", "tok2", 64, None, None, 1),
        data_fingerprint("split", "tok", 32, None, None, 1),
        data_fingerprint("split", "tok", 64, "a", None, 1),
        data_fingerprint("split", "tok", 64, None, 0.5, 1),
        data_fingerprint("split", "tok", 64, None, 0.5, 2),  # a fraction's subset follows the seed
        data_fingerprint("split", "tok", 64, None, None, 1, augment={"class_path": "eda"}),
        data_fingerprint("split", "tok", 64, None, None, 2, augment={"class_path": "eda"}),
    ]
    assert len(set(others)) == len(others) and base not in others


def test_the_tokenizer_hash_is_its_content_not_its_place(tmp_path: Path, tiny_tokenizer_dir: str) -> None:
    from transformers import AutoTokenizer

    copy = tmp_path / "copy"
    shutil.copytree(tiny_tokenizer_dir, copy)
    first = tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(copy))) == first
    grown = AutoTokenizer.from_pretrained(str(copy))
    grown.add_tokens(["bookish"])
    assert tokenizer_fingerprint(grown) != first


def test_tokenised_records_round_trip_through_the_cache(tmp_path: Path, tiny_tokenizer_dir: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    calls: list[int] = []

    def encode(batch: dict[str, list]) -> dict[str, list]:
        calls.append(len(batch["text"]))
        return tokenizer(batch["text"], truncation=True, max_length=8)

    directory = tmp_path / "fp0123"
    ds = tokenize_records(RECORDS, [7, 3], ["a", "b"], encode, directory, "train", "Tokenizing toy train")
    assert calls == [2] and (directory / "train.arrow").is_file()
    assert [c for c in BATCH_KEYS if c in ds.column_names] == list(BATCH_KEYS)
    row = ds[1]
    assert row["input_ids"].tolist() == tokenizer("not a good movie !")["input_ids"]
    assert (row["labels"].item(), row["domain_ids"].item(), row["example_ids"].item()) == (0, 0, 3)

    def refuse(batch: dict[str, list]) -> dict[str, list]:
        raise AssertionError("tokenised again")

    again = tokenize_records(RECORDS, [7, 3], ["a", "b"], refuse, directory, "train", "again")
    assert again["input_ids"][0].tolist() == ds["input_ids"][0].tolist()
    with pytest.raises(AssertionError, match="tokenised again"):  # another name is another cache file
        tokenize_records(RECORDS, [7, 3], ["a", "b"], refuse, directory, "val", "val")


def test_no_records_give_the_batch_columns() -> None:
    ds = tokenize_records([], [], ["a"], lambda batch: {}, Path("/nonexistent"), "test", "empty")
    assert len(ds) == 0 and sorted(ds.column_names) == sorted(BATCH_KEYS)
