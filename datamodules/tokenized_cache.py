"""The caching part of :class:`~datamodules.base.MultiDomainDataModule`: the tokenisation cache.

Records are tokenised with HF ``datasets`` (``Dataset.map(batched=True)``) into Arrow files under
``cache_dir/<data_fingerprint>/<name>.arrow``; a second run with the same key loads them instead of
tokenising again. :func:`data_fingerprint` is that key: the pooled split, what the tokenizer does
(:func:`tokenizer_fingerprint`, not where it was loaded from), ``max_length``, the selection and, when
set, the augmentation. The augmented records and the teacher-output caches on disk use the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datamodules.loading import BATCH_KEYS
from datamodules.splitting import Record

CACHE_FORMAT_VERSION = "1"  # bump when the cached columns or the encoding change


def default_cache_dir() -> Path:
    """``$METAKD_CACHE/datasets`` when ``METAKD_CACHE`` is set, else ``~/.cache/metakd/datasets``."""
    root = os.environ.get("METAKD_CACHE") or os.path.join("~", ".cache", "metakd")
    return Path(root).expanduser() / "datasets"


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A content hash of a tokenizer: what it does to text, not where it was loaded from (a pQRNN
    featurizer, ``metakd.text_features``, hashes its settings)."""
    from metakd.text_features import TextFeaturizer

    if isinstance(tokenizer, TextFeaturizer):
        return tokenizer.fingerprint()
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # runtime state that encoding calls change
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
        h.update(repr(tokenizer.init_kwargs.get("do_lower_case")).encode())
    specials = {k: getattr(tokenizer, k, None) for k in ("cls_token_id", "sep_token_id", "pad_token_id")}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def data_fingerprint(
    split_fingerprint: str | None,
    tokenizer_hash: str,
    max_length: int,
    target_domain: str | None,
    train_fraction: float | None,
    seed: int,
    augment: dict[str, Any] | None = None,
) -> str:
    """16 hex digits keying everything derived from the loaded data. ``seed`` counts only where it
    changes the data (a ``train_fraction`` subset, augmentation); ``augment`` (the augmentation's own
    fingerprint) is left out of the payload when None, so data without augmentation keeps the key it had
    before augmentation existed."""
    payload = {
        "split": split_fingerprint,
        "tokenizer": tokenizer_hash,
        "max_length": max_length,
        "target_domain": target_domain,
        "train_fraction": train_fraction,
        "seed": seed if train_fraction is not None else None,
        "format": CACHE_FORMAT_VERSION,
    }
    if augment is not None:
        payload["augment"] = augment
        payload["augment_seed"] = seed
    return _sha(payload)[:16]


def tokenize_records(
    records: Sequence[Record],
    example_ids: Sequence[int],
    domain_names: Sequence[str],
    encode: Callable[[dict[str, list]], Any],
    directory: Path,
    name: str,
    description: str,
):
    """The records as a torch-format ``datasets.Dataset`` with exactly the columns of ``BATCH_KEYS``
    present (``token_type_ids`` when the tokenizer gives them), tokenised by ``encode`` (a batched map
    function of ``text``/``text_pair`` columns) into ``directory/<name>.arrow``, or read from it when it
    exists. ``directory`` must be keyed by the data fingerprint; its name is part of the map's
    fingerprint."""
    from datasets import Dataset, Features, Sequence, Value

    has_pair = bool(records) and records[0].get("text_pair") is not None
    columns: dict[str, list] = {
        "text": [r["text"] for r in records],
        "labels": [r["label"] for r in records],
        "domain_ids": [domain_names.index(r["domain"]) for r in records],
        "example_ids": list(example_ids),
    }
    features = {
        "text": Value("string"),
        "labels": Value("int64"),
        "domain_ids": Value("int64"),
        "example_ids": Value("int64"),
    }
    if has_pair:
        columns["text_pair"] = [r["text_pair"] for r in records]
        features["text_pair"] = Value("string")
    text_columns = ["text", "text_pair"] if has_pair else ["text"]
    ds = Dataset.from_dict(columns, features=Features(features))
    if len(ds) == 0:  # map() returns an empty dataset unchanged: build the final columns directly
        ds = Dataset.from_dict(
            {
                "input_ids": [],
                "attention_mask": [],
                "token_type_ids": [],
                **{k: [] for k in BATCH_KEYS[3:]},
            },
            features=Features(
                {
                    **{k: Sequence(Value("int64")) for k in BATCH_KEYS[:3]},
                    **{k: Value("int64") for k in BATCH_KEYS[3:]},
                }
            ),
        )
    else:
        directory.mkdir(parents=True, exist_ok=True)
        ds = ds.map(
            encode,
            batched=True,
            batch_size=1000,
            remove_columns=text_columns,
            cache_file_name=str(directory / f"{name}.arrow"),
            load_from_cache_file=True,
            new_fingerprint=f"{directory.name}-{name}",
            desc=description,
        )
    ds.set_format("torch", columns=[c for c in BATCH_KEYS if c in ds.column_names])
    return ds


__all__ = [
    "CACHE_FORMAT_VERSION",
    "data_fingerprint",
    "default_cache_dir",
    "tokenize_records",
    "tokenizer_fingerprint",
]
