"""Golden (characterization) runs of the datamodules: what the refactor of ``MultiDomainDataModule`` into
parts (issue 24 item 3) must not change.

Each case builds a datamodule (Amazon, or a JSONL corpus written here from fixed records), runs
``setup()`` and records the cache keys (``split_fingerprint``, ``data_fingerprint``: the tokenisation
cache, the augmented records and the teacher-output caches are keyed by them), the sizes, a checksum of
every dataset's columns, and the ``example_ids`` of the first shuffled training batches of two epochs.
``python tests/golden/data_golden.py`` rewrites ``data_golden.json`` from the current code; the test
``tests/test_data_golden.py`` compares a fresh run with the committed file. The file was generated
before the refactor (from commit ed222ee plus the POS tagger) and must not be regenerated to make a
refactor pass.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GOLDEN_FILE = HERE / "data_golden.json"

EDA_SWAP_DELETE = {"class_path": "eda", "init_args": {"operations": ["rs", "rd"]}, "per_example": 2}

# (case name, corpus, datamodule arguments); corpus "amazon" or a JSONL layout written by _jsonl_files
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("amazon/all", "amazon", {"max_length": 64}),
    (
        "amazon/books_half_test_large",
        "amazon",
        {
            "max_length": 64,
            "target_domain": "books",
            "train_fraction": 0.5,
            "seed": 7,
            "test_set": "test_large",
        },
    ),
    ("amazon/dvd_eda", "amazon", {"max_length": 32, "target_domain": "dvd", "augment": EDA_SWAP_DELETE}),
    ("amazon/no_title_two_domains", "amazon", {"use_title": False, "domains": ["kitchen", "dvd"]}),
    ("jsonl/carved", "carved", {"max_length": 24}),
    ("jsonl/explicit_extra", "explicit", {"max_length": 24, "target_domain": "beta", "test_set": "large"}),
    ("jsonl/pairs_fraction", "pairs", {"max_length": 24, "train_fraction": 0.5, "seed": 3}),
]


def _records(n: int, domains: tuple[str, ...], offset: int, pair: bool = False) -> list[dict[str, Any]]:
    out = []
    for d in domains:
        for label in ("neg", "pos"):
            for i in range(n):
                words = " ".join(["word"] * (1 + (i + offset) % 7))
                record = {"text": f"{d} {label} {i + offset} {words}", "label": label, "domain": d}
                if pair:
                    record["text_pair"] = f"because {label} {i + offset}"
                out.append(record)
    return out


def _write(path: Path, records: list[dict[str, Any]]) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return str(path)


def _jsonl_files(layout: str, directory: Path) -> dict[str, Any]:
    if layout == "carved":
        return {"train_file": _write(directory / "train.jsonl", _records(12, ("alpha", "beta", "gamma"), 0))}
    if layout == "explicit":
        return {
            "train_file": _write(directory / "train.jsonl.gz", _records(10, ("alpha", "beta"), 0)),
            "val_file": _write(directory / "val.jsonl", _records(3, ("alpha", "beta"), 100)),
            "test_file": _write(directory / "test.jsonl", _records(4, ("alpha", "beta"), 200)),
            "extra_test_files": {
                "large": _write(directory / "large.jsonl", _records(6, ("beta", "delta"), 300))
            },
        }
    if layout == "pairs":
        return {
            "train_file": _write(directory / "pairs.jsonl", _records(12, ("alpha", "beta"), 0, pair=True)),
            "text_pair_field": "text_pair",
        }
    raise ValueError(layout)


def _digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _dataset_summary(dataset: Any) -> dict[str, Any]:
    plain = dataset.with_format(None)
    return {
        "rows": len(plain),
        **{column: _digest(list(plain[column])) for column in sorted(plain.column_names)},
    }


def run_one(corpus: str, arguments: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Set one datamodule up; return its keys, sizes, dataset checksums and first shuffled batches."""
    import torch

    from datamodules import AmazonReviewsDataModule, JsonlDataModule

    cache = str(directory / "cache")
    if corpus == "amazon":
        dm = AmazonReviewsDataModule(cache_dir=cache, batch_size=8, **arguments)
    else:
        files = _jsonl_files(corpus, directory)
        dm = JsonlDataModule(cache_dir=cache, batch_size=4, **files, **arguments)
    dm.setup()
    torch.manual_seed(5)  # the shuffled order depends on the seed and torch's initial seed
    epochs = []
    for epoch in range(2):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batches = iter(loader)
        epochs.append([next(batches)["example_ids"].tolist() for _ in range(2)])
    first_test = next(iter(dm.test_dataloader()))
    return {
        "split_fingerprint": dm.split_fingerprint,
        "data_fingerprint": dm.data_fingerprint,
        "num_pooled_train": dm.num_pooled_train,
        "num_train_ids": dm.num_train_ids,
        "split_sizes": dm.split_sizes(),
        "pooled_split_sizes": dm.pooled_split_sizes(),
        "source_example_ids": _digest(dm.source_example_ids.tolist()),
        "augmented_train": _digest(dm.augmented_train),
        "train": _dataset_summary(dm.train_dataset),
        "val": _dataset_summary(dm.val_dataset),
        "test": _dataset_summary(dm.test_dataset),
        "shuffled_batches": epochs,
        "first_test_batch": {k: _digest(v.tolist()) for k, v in sorted(first_test.items())},
        "train_eval_rows": sum(len(b["example_ids"]) for b in dm.train_eval_dataloader()),
    }


def run_all(names: list[str] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for k, (name, corpus, arguments) in enumerate(CASES):
            if names is None or name in names:
                directory = Path(tmp) / str(k)
                directory.mkdir()
                out[name] = run_one(corpus, arguments, directory)
        return out


if __name__ == "__main__":
    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.getLogger("datasets").setLevel(logging.ERROR)
    results = run_all()
    GOLDEN_FILE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN_FILE} ({len(results)} cases)")
