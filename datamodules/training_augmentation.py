"""The augmentation hooks of :class:`~datamodules.base.MultiDomainDataModule`: the augmented examples of
the loaded training split (an ``augment`` option, :mod:`datamodules.augment`: data augmentation or a
transfer set), their ``example_ids``, source links and loss weights, and which of them the training loader
serves (``select_augmented``)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.augment import WEIGHT_FEATURE, AugmentContext, AugmentSpec, augmented_records
from datamodules.errors import DataError
from datamodules.splitting import Record

logger = logging.getLogger("metakd.data")


class TrainingAugmentation:
    """The augmented training records of one datamodule (none without an ``augment`` option).

    Args:
        spec: the parsed ``augment`` option (:func:`datamodules.augment.parse_augment`), or None.
    """

    def __init__(self, spec: AugmentSpec | None) -> None:
        self.spec = spec
        self.records: list[Record] = []

    def fingerprint(self) -> dict[str, Any] | None:
        """The augmentation's part of the data fingerprint (None without augmentation)."""
        return None if self.spec is None else self.spec.fingerprint()

    def build(
        self, context: AugmentContext, first_id: int, cache_file: Path, corpus_name: str
    ) -> list[Record]:
        """Generate (or read from ``cache_file``) the augmented records, ids from ``first_id`` on."""
        if self.spec is None:
            self.records = []
            return self.records
        self.records = augmented_records(self.spec, context, first_id, cache_file)
        kinds = Counter(r["kind"] for r in self.records)
        logger.info(
            "%s train: %d augmented examples (%s) from %d loaded, augmenter %s",
            corpus_name,
            len(self.records),
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none",
            len(context.loaded),
            self.spec.class_path,
        )
        return self.records

    def source_example_ids(self, num_pooled_train: int) -> torch.Tensor:
        """(num_pooled_train + augmented,) the pooled training example each training id comes from
        (:data:`~datamodules.augment.NO_SOURCE`, -1, for an augmented example that comes from none)."""
        source = list(range(num_pooled_train)) + [r["source_example_id"] for r in self.records]
        return torch.tensor(source, dtype=torch.long)

    def example_weights(self, num_pooled_train: int) -> torch.Tensor | None:
        """(num_pooled_train + augmented,) loss weights by ``example_ids``: the augmented examples'
        ``weight`` feature (:data:`~datamodules.augment.WEIGHT_FEATURE`), 1 for the rest; None when no
        augmented example has a weight (every weight 1)."""
        if not any(WEIGHT_FEATURE in r["features"] for r in self.records):
            return None
        weights = torch.ones(num_pooled_train + len(self.records))
        for r in self.records:
            weights[r["example_id"]] = float(r["features"].get(WEIGHT_FEATURE, 1.0))
        return weights

    def select(self, full_dataset: Any, example_ids: Sequence[int]) -> Any:
        """The rows of ``full_dataset`` (the loaded originals, then the augmented records in order) that
        are the originals and the augmented examples with these ids."""
        wanted = {int(i) for i in example_ids}
        known = {r["example_id"] for r in self.records}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(f"select_augmented: {unknown[:5]} are not ids of augmented training examples")
        n_original = len(full_dataset) - len(self.records)
        rows = list(range(n_original)) + [
            n_original + k for k, r in enumerate(self.records) if r["example_id"] in wanted
        ]
        return full_dataset.select(rows)


__all__ = ["TrainingAugmentation"]
