"""``MultiDomainDataModule``: the shared machinery of the multi-domain text-classification datamodules.

A subclass only reads its corpus into pooled train/val/test lists of plain records
``{"text": str, "text_pair": str (optional), "label": int, "domain": str}`` (see
:meth:`MultiDomainDataModule._read_splits`). This class composes the parts that do the rest:

* :mod:`datamodules.splitting`: checks the records in plain Python (so that bad data never surfaces as a
  trace from ``datasets``), keeps the domains asked for (``domains``), computes ``split_fingerprint`` and
  selects the examples that are loaded (``target_domain``, ``train_fraction``);
* :mod:`datamodules.training_augmentation`: the augmented training examples of an ``augment`` option;
* :mod:`datamodules.tokenized_cache`: tokenises with HF ``datasets`` (``Dataset.map(batched=True)``)
  into an Arrow cache under ``cache_dir/<data_fingerprint>/`` that a second run loads instead of
  tokenising again;
* :mod:`datamodules.loading`: serves batches padded to the longest sequence in the batch (contracts:
  ``docs/ARCHITECTURE.md``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.augment import AugmentContext, parse_augment
from datamodules.errors import DataError
from datamodules.loading import PadCollator, make_loader
from datamodules.splitting import (
    SPLITS,
    Record,
    check_records,
    chosen_domains,
    domain_counts,
    selected_positions,
    split_fingerprint,
)
from datamodules.tokenized_cache import (
    data_fingerprint,
    default_cache_dir,
    tokenize_records,
    tokenizer_fingerprint,
)
from datamodules.training_augmentation import TrainingAugmentation
from metakd.backbones import DEFAULT_BACKBONE, backbone_position_limit, load_tokenizer
from metakd.validation import check_max_length_fits

logger = logging.getLogger("metakd.data")


def check_options(
    backbone: str,
    max_length: Any,
    batch_size: Any,
    eval_batch_size: Any,
    num_workers: Any,
    train_fraction: Any,
) -> None:
    """A :class:`DataError` naming the first of the datamodule's numeric options out of its range
    (``max_length`` also beyond the backbone's position embeddings)."""
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


class MultiDomainDataModule(LightningDataModule):
    """Base class of the multi-domain text-classification datamodules.

    ``domain_names``, ``num_domains``, ``label_names``, ``num_labels`` (and ``backbone``,
    ``max_length``, ``target_domain``, ``train_fraction``) are set in ``__init__``; ``setup()`` adds
    ``split_fingerprint``, ``data_fingerprint``, ``num_pooled_train``, ``num_train_ids``,
    ``source_example_ids``, ``train_example_weights``, ``augmented_train`` and the three datasets.

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
        check_options(backbone, max_length, batch_size, eval_batch_size, num_workers, train_fraction)
        self.backbone = backbone
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_fraction = None if train_fraction is None else float(train_fraction)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._augmentation = TrainingAugmentation(parse_augment(augment))
        self.augment = self._augmentation.spec
        self.test_set = test_set

        corpus_domains = list(self._corpus_domains())
        self.label_names: list[str] = list(self._corpus_label_names())
        self.num_labels = len(self.label_names)
        self.domain_names: list[str] = chosen_domains(
            self.corpus_name, corpus_domains, domains, target_domain
        )
        self.num_domains = len(self.domain_names)
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
        self.train_example_weights: torch.Tensor | None = None
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
            check_records(pooled, self.corpus_name, self.label_names, self.domain_names)
            self._raw = pooled
            self.num_pooled_train = len(pooled["train"])
            header = {
                "corpus": self.corpus_name,
                "rule": self._split_rule(),
                "domains": self.domain_names,
                "labels": self.label_names,
            }
            self.split_fingerprint = split_fingerprint(pooled, header)
        return self._raw

    def split_records(self, split: str) -> list[Record]:
        """The pooled records of ``split`` as loaded: for ``test``, the set ``test_set`` names (restricted
        to ``domain_names``); ``example_ids`` index these lists."""
        if split != "test" or self.test_set == "test":
            return self.raw_splits()[split]
        if self._extra_test is None:
            keep = set(self.domain_names)
            records = [r for r in self._read_test_set(self.test_set) if r["domain"] in keep]
            train = self.raw_splits()["train"]
            check_records({"train": train, "val": records, "test": records}, self.corpus_name,
                          self.label_names, self.domain_names)  # fmt: skip
            self._extra_test = records
        return self._extra_test

    def _selected_positions(self, split: str) -> list[int]:
        """Positions in the pooled split that are loaded (``target_domain``, then ``train_fraction``)."""
        fraction = self.train_fraction if split == "train" else None
        return selected_positions(self.split_records(split), self.target_domain, fraction, self.seed)

    def loaded_records(self, split: str) -> list[Record]:
        """The records of ``split`` this datamodule loads (after ``target_domain`` and ``train_fraction``,
        without augmented examples; ``test``: of the set ``test_set`` names), each with its ``example_id``
        (as in the test predictions): for a model trained outside Lightning on the same examples (e.g.
        ``benchmarks/model2vec_peer.py``)."""
        raw = self.split_records(split)
        return [{**raw[i], "example_id": i} for i in self._selected_positions(split)]

    def pooled_split_sizes(self) -> dict[str, dict[str, int]]:
        """split -> domain -> number of examples in the pooled splits (before target/fraction filtering;
        ``test``: the set ``test_set`` names)."""
        return {split: domain_counts(self.split_records(split), self.domain_names) for split in SPLITS}

    def split_sizes(self) -> dict[str, dict[str, int]]:
        """split -> domain -> number of examples loaded (after ``target_domain``/``train_fraction``)."""
        if not self._sizes:
            for split in SPLITS:
                records = self.split_records(split)
                loaded = [records[i] for i in self._selected_positions(split)]
                self._sizes[split] = domain_counts(loaded, self.domain_names)
        return {split: dict(sizes) for split, sizes in self._sizes.items()}

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer (loaded on first use; a ``BackboneError`` names the known aliases)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
        return self._tokenizer

    def with_backbone(self, backbone: str) -> MultiDomainDataModule:
        """The same examples (same splits, selection, augmentation and ``example_ids``) tokenised by
        another backbone's tokenizer, set up: a teacher's view of a student's data when the student reads
        other ids (a pQRNN featurizer). Itself when ``backbone`` is its own."""
        if backbone == self.backbone:
            return self
        # LightningCLI adds its own keys (``_class_path``, ``_instantiator``) to the saved hyperparameters
        arguments = {k: v for k, v in dict(self.hparams).items() if not k.startswith("_")}
        view = type(self)(**{**arguments, "backbone": backbone})
        view.setup()
        return view

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        pair = batch.get("text_pair")
        return self.tokenizer(
            batch["text"], pair, truncation=True, max_length=self.max_length, return_attention_mask=True
        )

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Read, check, select and tokenise all three splits (once; later calls return at once)."""
        if self._setup_done:
            return
        raw = self.raw_splits()
        tokenizer = self.tokenizer  # fails here, with a BackboneError, before any datasets work
        self.data_fingerprint = data_fingerprint(
            self.split_fingerprint, tokenizer_fingerprint(tokenizer), self.max_length, self.target_domain,
            self.train_fraction, self.seed, self._augmentation.fingerprint(),
        )  # fmt: skip
        self._log_sizes()
        directory = self.cache_dir / str(self.data_fingerprint)
        datasets = {}
        for split in SPLITS:
            positions = self._selected_positions(split)
            records = [self.split_records(split)[i] for i in positions]
            if split == "train":
                context = AugmentContext(
                    train=raw["train"], loaded=positions, domain_names=self.domain_names,
                    label_names=self.label_names, target_domain=self.target_domain, seed=self.seed,
                    cache_dir=self.cache_dir,
                )  # fmt: skip
                self.augmented_train = self._augmentation.build(
                    context, self.num_pooled_train, directory / "augmented.jsonl", self.corpus_name
                )
                records = records + self.augmented_train
                positions = positions + [r["example_id"] for r in self.augmented_train]
            name = self.test_set if split == "test" else split  # its own cache file
            description = f"Tokenizing {self.corpus_name} {name}"
            datasets[split] = tokenize_records(
                records, positions, self.domain_names, self._encode, directory, name, description
            )
        self.train_dataset, self.val_dataset, self.test_dataset = (datasets[s] for s in SPLITS)
        self._full_train_dataset = self.train_dataset
        self.num_train_ids = self.num_pooled_train + len(self.augmented_train)
        self.source_example_ids = self._augmentation.source_example_ids(self.num_pooled_train)
        self.train_example_weights = self._augmentation.example_weights(self.num_pooled_train)
        self._collator = PadCollator.for_tokenizer(tokenizer)
        self._setup_done = True
        logger.info(
            "%s: split_fingerprint %s, data_fingerprint %s, cache %s",
            self.corpus_name,
            self.split_fingerprint,
            self.data_fingerprint,
            directory,
        )

    def _log_sizes(self) -> None:
        sizes, pooled = self.split_sizes(), self.pooled_split_sizes()
        for split in SPLITS:
            detail = ", ".join(f"{d} {n}" for d, n in sizes[split].items())
            note = "" if sizes[split] == pooled[split] else f" (pooled {sum(pooled[split].values())})"
            logger.info(
                "%s %s: %d examples%s [%s]", self.corpus_name, split, sum(sizes[split].values()), note, detail
            )

    def select_augmented(self, example_ids: list[int] | None) -> None:
        """Serve only these augmented examples (with every loaded original) from ``train_dataloader``
        until the next call; None: all of them. For a selection between epochs (with
        ``trainer.reload_dataloaders_every_n_epochs=1``); L2A's selector chooses within each batch instead."""
        if self._full_train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before select_augmented()")
        if example_ids is None:
            self.train_dataset = self._full_train_dataset
            return
        self.train_dataset = self._augmentation.select(self._full_train_dataset, example_ids)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        shuffle_seed = None
        if shuffle:
            # The order is a function of (seed, global seed, loader index, epoch), not of the global RNG's
            # position: a run resumed from an epoch-end checkpoint sees the same batches.
            calls = getattr(self, "_shuffled_loaders", 0)
            self._shuffled_loaders = calls + 1
            shuffle_seed = (int(self.seed), torch.initial_seed(), calls)
        return make_loader(dataset, batch_size, self._collator, self.seed, self.num_workers, shuffle_seed)

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
