"""The splitting part of :class:`~datamodules.base.MultiDomainDataModule`: the pooled records of the three
splits, checked in plain Python, fingerprinted, and the positions in them that a datamodule loads.

Pure functions of records; the datamodule reads the corpus and composes them:

* :func:`stratified_split`, :func:`stratified_subset`: the seeded split rules the corpora use;
* :func:`check_records`: every record has a text (and a text pair iff the others do) and a label index,
  every domain has training examples, every split has examples (a :class:`DataError` naming the example);
* :func:`split_fingerprint`: the hash of the pooled splits (text, pair, label, domain, split rule);
* :func:`selected_positions`: the positions loaded (``target_domain``, then ``train_fraction`` on train);
* :func:`domain_counts`: examples per domain.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from datamodules.errors import DataError

SPLITS = ("train", "val", "test")

Record = dict[str, Any]
"""A plain example: ``{"text": str, "text_pair": str (optional), "label": int, "domain": str}``."""


def stratified_split(
    labels: list[int], test_fraction: float, seed: int, what: str
) -> tuple[list[int], list[int]]:
    """Seeded stratified shuffle split of positions ``0..n-1`` into (rest, test), ``ceil(fraction*n)`` test.

    This is ``datasets.Dataset.train_test_split(test_size=..., seed=..., stratify_by_column="label")``
    (the numpy ``default_rng(seed)`` port of scikit-learn's ``StratifiedShuffleSplit``); both returned
    lists come in the split's shuffled order. ``what`` names the data in error messages.
    """
    from datasets import ClassLabel, Dataset, Features, Value

    n = len(labels)
    counts = Counter(labels)
    n_test = math.ceil(test_fraction * n)
    if min(counts.values(), default=0) < 2 or n_test < len(counts) or n - n_test < len(counts):
        raise DataError(
            f"{what}: cannot split off a stratified {test_fraction:.0%}: it has {n} examples with label "
            f"counts {dict(sorted(counts.items()))}; every label needs at least 2 examples and each side "
            f"at least one example per label. Give the splits explicitly instead."
        )
    num_classes = max(counts) + 1
    table = Dataset.from_dict(
        {"position": list(range(n)), "label": list(labels)},
        features=Features({"position": Value("int64"), "label": ClassLabel(num_classes=num_classes)}),
    )
    parts = table.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
    return list(parts["train"]["position"]), list(parts["test"]["position"])


def stratified_subset(labels: list[int], fraction: float, seed: int) -> list[int]:
    """A seeded subset of positions with ``round(fraction * count)`` (at least 1) of every label.

    Returned in increasing order. ``fraction == 1`` returns everything.
    """
    if fraction >= 1.0:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(label, []).append(position)
    keep: list[int] = []
    for label in sorted(by_label):
        positions = np.asarray(by_label[label])
        k = max(1, int(round(fraction * len(positions))))
        keep.extend(rng.permutation(positions)[:k].tolist())
    return sorted(keep)


def chosen_domains(
    corpus_name: str,
    corpus_domains: Sequence[str],
    domains: Sequence[str] | str | None,
    target_domain: str | None,
) -> list[str]:
    """The domains a datamodule uses: ``domains`` (default all) in the corpus's order; a
    :class:`DataError` for an unknown or empty choice, or a ``target_domain`` outside it."""
    corpus_domains = list(corpus_domains)
    if domains is None:
        chosen = corpus_domains
    else:
        if isinstance(domains, str):
            domains = [domains]
        unknown = [d for d in domains if d not in corpus_domains]
        if unknown:
            raise DataError(
                f"{corpus_name}: no examples for domain(s) {unknown}; "
                f"the corpus's domains are {corpus_domains}"
            )
        if not domains:
            raise DataError(f"{corpus_name}: domains must not be empty")
        chosen = [d for d in corpus_domains if d in set(domains)]
    if target_domain is not None and target_domain not in chosen:
        extra = " (it is in the corpus but not in `domains`)" if target_domain in corpus_domains else ""
        raise DataError(
            f"{corpus_name}: unknown target_domain {target_domain!r}{extra}; known domains: {chosen}"
        )
    return chosen


def check_records(
    pooled: Mapping[str, Sequence[Record]],
    corpus_name: str,
    label_names: Sequence[str],
    domain_names: Sequence[str],
) -> None:
    """Refuse records a datamodule cannot use, naming ``<corpus> <split> example <i>`` and what is wrong."""
    pair = None
    for split in SPLITS:
        for i, record in enumerate(pooled[split]):
            where = f"{corpus_name} {split} example {i}"
            if not isinstance(record.get("text"), str):
                raise DataError(f"{where}: 'text' must be a string, got {record.get('text')!r}")
            if not record["text"].strip():
                raise DataError(f"{where}: 'text' is empty ({record['text']!r})")
            has_pair = record.get("text_pair") is not None
            if pair is None:
                pair = has_pair
            elif has_pair != pair:
                raise DataError(f"{where}: some examples have a 'text_pair' and some do not")
            if has_pair and not isinstance(record["text_pair"], str):
                raise DataError(f"{where}: 'text_pair' must be a string, got {record['text_pair']!r}")
            if has_pair and not record["text_pair"].strip():
                raise DataError(f"{where}: 'text_pair' is empty ({record['text_pair']!r})")
            label = record.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(label_names):
                raise DataError(
                    f"{where}: label {label!r} is not an index into the label names {list(label_names)}"
                )
    for domain in domain_names:
        if not any(r["domain"] == domain for r in pooled["train"]):
            raise DataError(f"{corpus_name}: domain {domain!r} has no training examples")
    for split in SPLITS:
        if not pooled[split]:
            raise DataError(f"{corpus_name}: the {split} split has no examples")


def split_fingerprint(pooled: Mapping[str, Sequence[Record]], header: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of ``header`` (corpus, split rule, domains, labels) and, per split in
    order, every record's ``[text, text_pair, label, domain]``."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(header), sort_keys=True).encode("utf-8"))
    for split in SPLITS:
        h.update(f"\x00split={split}\x00".encode())
        for r in pooled[split]:
            row = [r["text"], r.get("text_pair"), r["label"], r["domain"]]
            h.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()[:16]


def selected_positions(
    records: Sequence[Record],
    target_domain: str | None,
    train_fraction: float | None = None,
    seed: int = 0,
) -> list[int]:
    """Positions of ``records`` that are loaded: those of ``target_domain`` (all without one), then, with
    ``train_fraction`` (give it for the training split only), a seeded label-stratified subset of them."""
    positions = [i for i, r in enumerate(records) if target_domain is None or r["domain"] == target_domain]
    if train_fraction is not None:
        keep = stratified_subset([records[i]["label"] for i in positions], train_fraction, seed)
        positions = [positions[k] for k in keep]
    return positions


def domain_counts(records: Sequence[Record], domain_names: Sequence[str]) -> dict[str, int]:
    """domain -> number of ``records`` of it, for every domain of ``domain_names`` (0 when none)."""
    counts = Counter(r["domain"] for r in records)
    return {d: counts.get(d, 0) for d in domain_names}


__all__ = [
    "SPLITS",
    "Record",
    "check_records",
    "chosen_domains",
    "domain_counts",
    "selected_positions",
    "split_fingerprint",
    "stratified_split",
    "stratified_subset",
]
