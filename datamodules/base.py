"""``MultiDomainDataModule``: the shared machinery of the multi-domain text-classification datamodules.

A subclass only reads its corpus into pooled train/val/test lists of plain records
``{"text": str, "text_pair": str (optional), "label": int, "domain": str}`` (see
:meth:`MultiDomainDataModule._read_splits`). This class then

* checks the records in plain Python (so that bad data never surfaces as a trace from ``datasets``),
* keeps the domains asked for (``domains``), computes ``split_fingerprint``,
* selects the examples that are loaded (``target_domain``, ``train_fraction``),
* tokenises them with HF ``datasets`` (``Dataset.map(batched=True)``) into an Arrow cache under
  ``cache_dir/<data_fingerprint>/`` that a second run loads instead of tokenising again,
* and serves batches padded to the longest sequence in the batch (contracts: ``docs/ARCHITECTURE.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, RandomSampler

from datamodules.augment import AugmentContext, augmented_records, parse_augment
from datamodules.errors import DataError
from metakd.backbones import DEFAULT_BACKBONE, backbone_position_limit, load_tokenizer
from metakd.validation import check_max_length_fits

logger = logging.getLogger("metakd.data")

SPLITS = ("train", "val", "test")
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "domain_ids", "example_ids")
_CACHE_FORMAT_VERSION = "1"  # bump when the cached columns or the encoding change

Record = dict[str, Any]


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


class EpochSeededRandomSampler(RandomSampler):
    """A ``RandomSampler`` whose permutation depends only on ``seed`` and the epoch.

    Lightning calls ``set_epoch`` before each training epoch; without it (a loop outside Lightning) each
    ``iter()`` moves to the next epoch. Being a ``RandomSampler``, Lightning still sees the loader as
    shuffled (and swaps in a ``DistributedSampler`` under DDP, which is seeded by epoch as well).
    """

    def __init__(self, data_source: Any, seed: Any) -> None:
        super().__init__(data_source)
        self.seed = int(hashlib.sha256(repr(seed).encode()).hexdigest()[:15], 16)
        self.epoch = 0
        self._epoch_given = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_given = True

    def __iter__(self):
        epoch = self.epoch
        if not self._epoch_given:
            self.epoch += 1
        generator = torch.Generator().manual_seed(self.seed + epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class PadCollator:
    """Pads a list of tokenised examples to the longest in the batch; returns exactly ``BATCH_KEYS``.

    ``token_type_ids`` are zeros when the tokenizer gives none. All values are LongTensors.
    """

    def __init__(self, pad_token_id: int, pad_token_type_id: int = 0, padding_side: str = "right"):
        self.pad_token_id = int(pad_token_id)
        self.pad_token_type_id = int(pad_token_type_id)
        self.padding_side = padding_side

    def _pad(self, rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            n = row.shape[0]
            if self.padding_side == "left":
                out[i, width - n :] = row
            else:
                out[i, :n] = row
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        width = max(row.shape[0] for row in input_ids)
        attention = [torch.as_tensor(f["attention_mask"], dtype=torch.long) for f in features]
        if "token_type_ids" in features[0]:
            token_types = [torch.as_tensor(f["token_type_ids"], dtype=torch.long) for f in features]
        else:
            token_types = [torch.zeros_like(row) for row in input_ids]
        return {
            "input_ids": self._pad(input_ids, width, self.pad_token_id),
            "attention_mask": self._pad(attention, width, 0),
            "token_type_ids": self._pad(token_types, width, self.pad_token_type_id),
            "labels": torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long),
            "domain_ids": torch.as_tensor([int(f["domain_ids"]) for f in features], dtype=torch.long),
            "example_ids": torch.as_tensor([int(f["example_ids"]) for f in features], dtype=torch.long),
        }


class MultiDomainDataModule(LightningDataModule):
    """Base class of the multi-domain text-classification datamodules.

    ``domain_names``, ``num_domains``, ``label_names``, ``num_labels`` (and ``backbone``,
    ``max_length``, ``target_domain``, ``train_fraction``) are set in ``__init__``; ``setup()`` adds
    ``split_fingerprint``, ``data_fingerprint``, ``num_pooled_train``, ``num_train_ids``,
    ``source_example_ids``, ``augmented_train`` and the three datasets.

    Subclasses set their own attributes, then call ``super().__init__(...)``, and implement
    :meth:`_corpus_domains`, :meth:`_corpus_label_names`, :meth:`_read_splits` and :meth:`_split_rule`.
    """

    corpus_name: str = "corpus"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        domains: list[str] | None = None,
        target_domain: str | None = None,
        train_fraction: float | None = None,
        seed: int = 11111,
        cache_dir: str | None = None,
        augment: dict[str, Any] | None = None,
        test_set: str = "test",
    ):
        """
        Args:
            backbone: tokenizer source: an alias of ``metakd.backbones`` (default ``minilm-l6``), a hub
                model id or a local model directory.
            max_length: longest tokenised input; longer inputs are truncated (pairs: longest first).
            batch_size: training batch size.
            eval_batch_size: batch size of the val/test/train-eval loaders (default: ``batch_size``).
            num_workers: DataLoader worker processes.
            domains: the corpus domains to use (default all), kept in the corpus's order; they make up
                ``domain_names``. Splits are made on the whole corpus first, so a domain's examples
                fall in the same split whatever subset is chosen.
            target_domain: load only this domain's examples into train/val/test (a student's setting);
                ``domain_ids`` stay indices into ``domain_names``.
            train_fraction: keep this fraction, in (0, 1], of the loaded training examples (of the target
                domain when there is one): a seeded subset stratified by label (data-scarcity study).
            seed: seed of the corpus split rule and of the ``train_fraction`` subset.
            cache_dir: directory of the tokenisation cache (default ``$METAKD_CACHE/datasets`` or
                ``~/.cache/metakd/datasets``).
            augment: add augmented examples to the loaded training split:
                ``{class_path: <augmenter>, init_args: {...}, per_example: n}`` (``datamodules.augment``;
                e.g. ``eda``). Dev and test are never augmented.
            test_set: what ``test_dataloader()`` serves: ``test`` (the corpus's test split) or another
                labelled evaluation set the corpus offers (:meth:`evaluation_sets`; Amazon:
                ``test_large``, about 1900 further reviews per domain). ``target_domain`` applies to it;
                its ``example_ids`` index that set (restricted to ``domains``).
        """
        super().__init__()
        self.save_hyperparameters()
        if not isinstance(max_length, int) or max_length < 4:
            raise DataError(f"max_length must be an integer >= 4, got {max_length!r}")
        limit = backbone_position_limit(backbone)
        check_max_length_fits("max_length", max_length, limit, f"backbone {backbone!r}", DataError)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise DataError(f"eval_batch_size must be a positive integer or None, got {eval_batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if train_fraction is not None and not (
            isinstance(train_fraction, (int, float)) and 0.0 < float(train_fraction) <= 1.0
        ):
            raise DataError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
        self.backbone = backbone
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_fraction = None if train_fraction is None else float(train_fraction)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.augment = parse_augment(augment)
        self.test_set = test_set

        corpus_domains = list(self._corpus_domains())
        self.label_names: list[str] = list(self._corpus_label_names())
        self.num_labels = len(self.label_names)
        if domains is None:
            self.domain_names: list[str] = corpus_domains
        else:
            if isinstance(domains, str):
                domains = [domains]
            unknown = [d for d in domains if d not in corpus_domains]
            if unknown:
                raise DataError(
                    f"{self.corpus_name}: no examples for domain(s) {unknown}; "
                    f"the corpus's domains are {corpus_domains}"
                )
            if not domains:
                raise DataError(f"{self.corpus_name}: domains must not be empty")
            self.domain_names = [d for d in corpus_domains if d in set(domains)]
        self.num_domains = len(self.domain_names)
        if target_domain is not None and target_domain not in self.domain_names:
            extra = " (it is in the corpus but not in `domains`)" if target_domain in corpus_domains else ""
            raise DataError(
                f"{self.corpus_name}: unknown target_domain {target_domain!r}{extra}; "
                f"known domains: {self.domain_names}"
            )
        self.target_domain = target_domain
        if test_set not in self.evaluation_sets():
            raise DataError(
                f"{self.corpus_name}: test_set {test_set!r} is not an evaluation set of this corpus; "
                f"choose from {self.evaluation_sets()}"
            )

        self._extra_test: list[Record] | None = None
        self._raw: dict[str, list[Record]] | None = None
        self._tokenizer: Any = None
        self._setup_done = False
        self._sizes: dict[str, dict[str, int]] = {}
        self.split_fingerprint: str | None = None
        self.data_fingerprint: str | None = None
        self.num_pooled_train: int | None = None
        self.num_train_ids: int | None = None
        self.source_example_ids: torch.Tensor | None = None
        self.augmented_train: list[Record] = []
        self._full_train_dataset = None
        self.train_dataset = None
        self.val_dataset = None
        self.test_dataset = None

    # ------------------------------------------------------------------ subclass hooks
    def _corpus_domains(self) -> list[str]:
        """All domains of the corpus, in their canonical order (cheap: known without reading the data)."""
        raise NotImplementedError

    def _corpus_label_names(self) -> list[str]:
        """The label names; a record's ``label`` is an index into this list."""
        raise NotImplementedError

    def _read_splits(self) -> dict[str, list[Record]]:
        """The pooled ``{"train": [...], "val": [...], "test": [...]}`` records of ALL corpus domains.

        Each record: ``{"text": str, "label": int, "domain": str}`` plus ``"text_pair": str`` for
        sentence-pair corpora. Subclasses validate as they read (errors naming file and line).
        """
        raise NotImplementedError

    def _split_rule(self) -> str:
        """A description of how the splits were made (part of ``split_fingerprint``)."""
        raise NotImplementedError

    def _extra_test_sets(self) -> list[str]:
        """Names of the labelled evaluation sets besides ``test`` that :meth:`_read_test_set` reads."""
        return []

    def _read_test_set(self, name: str) -> list[Record]:
        """The records of the evaluation set ``name`` (one of :meth:`_extra_test_sets`), all domains.

        They are never part of train/val/test nor of ``split_fingerprint``; the subclass guarantees that
        they do not overlap the corpus's splits."""
        raise NotImplementedError

    def evaluation_sets(self) -> list[str]:
        """The values ``test_set`` accepts: ``test`` and the corpus's further labelled sets."""
        return ["test", *self._extra_test_sets()]

    # ------------------------------------------------------------------ raw (untokenised) splits
    def raw_splits(self) -> dict[str, list[Record]]:
        """The pooled splits restricted to ``domain_names``, before ``target_domain``/``train_fraction``.

        ``example_ids`` index these lists. Cheap (no tokenizer); also sets ``split_fingerprint`` and
        ``num_pooled_train``.
        """
        if self._raw is None:
            raw = self._read_splits()
            keep = set(self.domain_names)
            pooled = {split: [r for r in raw[split] if r["domain"] in keep] for split in SPLITS}
            self._check_records(pooled)
            self._raw = pooled
            self.num_pooled_train = len(pooled["train"])
            self.split_fingerprint = self._compute_split_fingerprint(pooled)
        return self._raw

    def _check_records(self, pooled: dict[str, list[Record]]) -> None:
        pair = None
        for split in SPLITS:
            for i, record in enumerate(pooled[split]):
                where = f"{self.corpus_name} {split} example {i}"
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
                if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < self.num_labels:
                    raise DataError(
                        f"{where}: label {label!r} is not an index into the label names {self.label_names}"
                    )
        for domain in self.domain_names:
            if not any(r["domain"] == domain for r in pooled["train"]):
                raise DataError(f"{self.corpus_name}: domain {domain!r} has no training examples")
        for split in SPLITS:
            if not pooled[split]:
                raise DataError(f"{self.corpus_name}: the {split} split has no examples")

    def _compute_split_fingerprint(self, pooled: dict[str, list[Record]]) -> str:
        h = hashlib.sha256()
        header = {
            "corpus": self.corpus_name,
            "rule": self._split_rule(),
            "domains": self.domain_names,
            "labels": self.label_names,
        }
        h.update(json.dumps(header, sort_keys=True).encode("utf-8"))
        for split in SPLITS:
            h.update(f"\x00split={split}\x00".encode())
            for r in pooled[split]:
                row = [r["text"], r.get("text_pair"), r["label"], r["domain"]]
                h.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
                h.update(b"\n")
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ selection and sizes
    def split_records(self, split: str) -> list[Record]:
        """The pooled records of ``split`` as loaded: for ``test``, the set ``test_set`` names (restricted
        to ``domain_names``); ``example_ids`` index these lists."""
        if split != "test" or self.test_set == "test":
            return self.raw_splits()[split]
        if self._extra_test is None:
            keep = set(self.domain_names)
            records = [r for r in self._read_test_set(self.test_set) if r["domain"] in keep]
            self._check_records({"train": self.raw_splits()["train"], "val": records, "test": records})
            self._extra_test = records
        return self._extra_test

    def _selected_positions(self, split: str) -> list[int]:
        """Positions in the pooled split that are loaded (``target_domain``, then ``train_fraction``)."""
        records = self.split_records(split)
        positions = [
            i
            for i, r in enumerate(records)
            if self.target_domain is None or r["domain"] == self.target_domain
        ]
        if split == "train" and self.train_fraction is not None:
            keep = stratified_subset([records[i]["label"] for i in positions], self.train_fraction, self.seed)
            positions = [positions[k] for k in keep]
        return positions

    def with_backbone(self, backbone: str) -> MultiDomainDataModule:
        """The same examples (same splits, selection, augmentation and ``example_ids``) tokenised by
        another backbone's tokenizer, set up: a teacher's view of a student's data when the student reads
        other ids (a pQRNN featurizer). Itself when ``backbone`` is its own."""
        if backbone == self.backbone:
            return self
        view = type(self)(**{**dict(self.hparams), "backbone": backbone})
        view.setup()
        return view

    def loaded_records(self, split: str) -> list[Record]:
        """The records of ``split`` this datamodule loads (after ``target_domain`` and ``train_fraction``,
        without augmented examples), each with its ``example_id``: for a model trained outside Lightning
        on the same examples (e.g. ``benchmarks/model2vec_peer.py``)."""
        raw = self.raw_splits()[split]
        return [{**raw[i], "example_id": i} for i in self._selected_positions(split)]

    def _count(self, records: list[Record]) -> dict[str, int]:
        counts = Counter(r["domain"] for r in records)
        return {d: counts.get(d, 0) for d in self.domain_names}

    def pooled_split_sizes(self) -> dict[str, dict[str, int]]:
        """split -> domain -> number of examples in the pooled splits (before target/fraction filtering;
        ``test``: the set ``test_set`` names)."""
        return {split: self._count(self.split_records(split)) for split in SPLITS}

    def split_sizes(self) -> dict[str, dict[str, int]]:
        """split -> domain -> number of examples loaded (after ``target_domain``/``train_fraction``)."""
        if not self._sizes:
            self._sizes = {
                split: self._count([self.split_records(split)[i] for i in self._selected_positions(split)])
                for split in SPLITS
            }
        return {split: dict(sizes) for split, sizes in self._sizes.items()}

    # ------------------------------------------------------------------ tokenizer and fingerprints
    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer (loaded on first use; a ``BackboneError`` names the known aliases)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
        return self._tokenizer

    def _compute_data_fingerprint(self, tokenizer_hash: str) -> str:
        payload = {
            "split": self.split_fingerprint,
            "tokenizer": tokenizer_hash,
            "max_length": self.max_length,
            "target_domain": self.target_domain,
            "train_fraction": self.train_fraction,
            "seed": self.seed if self.train_fraction is not None else None,
            "format": _CACHE_FORMAT_VERSION,
        }
        if self.augment is not None:  # absent otherwise: fingerprints without augmentation are unchanged
            payload["augment"] = self.augment.fingerprint()
            payload["augment_seed"] = self.seed
        return _sha(payload)[:16]

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Read, check, select and tokenise all three splits (once; later calls return at once)."""
        if self._setup_done:
            return
        raw = self.raw_splits()
        tokenizer = self.tokenizer  # fails here, with a BackboneError, before any datasets work
        self.data_fingerprint = self._compute_data_fingerprint(tokenizer_fingerprint(tokenizer))
        sizes = self.split_sizes()
        pooled = self.pooled_split_sizes()
        for split in SPLITS:
            detail = ", ".join(f"{d} {n}" for d, n in sizes[split].items())
            note = "" if sizes[split] == pooled[split] else f" (pooled {sum(pooled[split].values())})"
            logger.info(
                "%s %s: %d examples%s [%s]", self.corpus_name, split, sum(sizes[split].values()), note, detail
            )
        datasets = {}
        for split in SPLITS:
            positions = self._selected_positions(split)
            records = [self.split_records(split)[i] for i in positions]
            if split == "train":
                self.augmented_train = self._augmented_train(raw["train"], positions)
                records = records + self.augmented_train
                positions = positions + [r["example_id"] for r in self.augmented_train]
            name = self.test_set if split == "test" else split  # its own cache file
            datasets[split] = self._tokenize(name, records, positions)
        self.train_dataset, self.val_dataset, self.test_dataset = (datasets[s] for s in SPLITS)
        self._full_train_dataset = self.train_dataset
        self.num_train_ids = self.num_pooled_train + len(self.augmented_train)
        source = list(range(self.num_pooled_train)) + [r["source_example_id"] for r in self.augmented_train]
        self.source_example_ids = torch.tensor(source, dtype=torch.long)
        self._collator = PadCollator(
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            pad_token_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0,
            padding_side=getattr(tokenizer, "padding_side", "right"),
        )
        self._setup_done = True
        logger.info(
            "%s: split_fingerprint %s, data_fingerprint %s, cache %s",
            self.corpus_name,
            self.split_fingerprint,
            self.data_fingerprint,
            self.cache_dir / self.data_fingerprint,
        )

    def _augmented_train(self, train: list[Record], positions: list[int]) -> list[Record]:
        """The augmented training records (``datamodules.augment``), cached beside the tokenised data."""
        if self.augment is None:
            return []
        context = AugmentContext(
            train=train,
            loaded=positions,
            domain_names=self.domain_names,
            label_names=self.label_names,
            target_domain=self.target_domain,
            seed=self.seed,
            cache_dir=self.cache_dir,
        )
        cache_file = self.cache_dir / str(self.data_fingerprint) / "augmented.jsonl"
        rows = augmented_records(self.augment, context, self.num_pooled_train, cache_file)
        kinds = Counter(r["kind"] for r in rows)
        logger.info(
            "%s train: %d augmented examples (%s) from %d loaded, augmenter %s",
            self.corpus_name,
            len(rows),
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none",
            len(positions),
            self.augment.class_path,
        )
        return rows

    def select_augmented(self, example_ids: list[int] | None) -> None:
        """Serve only these augmented examples (with every loaded original) from ``train_dataloader``
        until the next call; None: all of them. For a selection between epochs (with
        ``trainer.reload_dataloaders_every_n_epochs=1``); L2A's selector chooses within each batch instead."""
        if self._full_train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before select_augmented()")
        if example_ids is None:
            self.train_dataset = self._full_train_dataset
            return
        wanted = {int(i) for i in example_ids}
        known = {r["example_id"] for r in self.augmented_train}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(f"select_augmented: {unknown[:5]} are not ids of augmented training examples")
        n_original = len(self._full_train_dataset) - len(self.augmented_train)
        rows = list(range(n_original)) + [
            n_original + k for k, r in enumerate(self.augmented_train) if r["example_id"] in wanted
        ]
        self.train_dataset = self._full_train_dataset.select(rows)

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        pair = batch.get("text_pair")
        return self.tokenizer(
            batch["text"], pair, truncation=True, max_length=self.max_length, return_attention_mask=True
        )

    def _tokenize(self, split: str, records: list[Record], positions: list[int]):
        from datasets import Dataset, Features, Sequence, Value

        has_pair = bool(records) and records[0].get("text_pair") is not None
        columns: dict[str, list] = {
            "text": [r["text"] for r in records],
            "labels": [r["label"] for r in records],
            "domain_ids": [self.domain_names.index(r["domain"]) for r in records],
            "example_ids": list(positions),
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
            directory = self.cache_dir / str(self.data_fingerprint)
            directory.mkdir(parents=True, exist_ok=True)
            ds = ds.map(
                self._encode,
                batched=True,
                batch_size=1000,
                remove_columns=text_columns,
                cache_file_name=str(directory / f"{split}.arrow"),
                load_from_cache_file=True,
                new_fingerprint=f"{self.data_fingerprint}-{split}",
                desc=f"Tokenizing {self.corpus_name} {split}",
            )
        ds.set_format("torch", columns=[c for c in BATCH_KEYS if c in ds.column_names])
        return ds

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        sampler = None
        if shuffle:
            # The order is a function of (seed, global seed, loader index, epoch), not of the global RNG's
            # position: a run resumed from an epoch-end checkpoint sees the same batches.
            calls = getattr(self, "_shuffled_loaders", 0)
            self._shuffled_loaders = calls + 1
            sampler = EpochSeededRandomSampler(dataset, seed=(int(self.seed), torch.initial_seed(), calls))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._collator,
            persistent_workers=self.num_workers > 0,
            # Each iterator draws its worker base seed from this generator, not from torch's global one,
            # so creating a loader does not move the global RNG (dropout, domain-corruption draws): an
            # epoch-end resume restores that RNG and continues with the same numbers.
            generator=torch.Generator().manual_seed(int(self.seed)),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def train_eval_dataloader(self) -> DataLoader:
        """The whole training split (augmented examples included, whatever ``select_augmented`` chose) in
        order, no shuffling, no dropped batch (prototypes, output caches)."""
        return self._loader(self._full_train_dataset, self.eval_batch_size, shuffle=False)
