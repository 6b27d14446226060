"""The loaders of :class:`~datamodules.base.MultiDomainDataModule`: batches padded to the longest sequence
in the batch, and a shuffle whose order depends only on seeds and the epoch (contracts:
``docs/ARCHITECTURE.md``, "Batches")."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "domain_ids", "example_ids")
"""The keys of every batch, in order."""


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

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PadCollator:
        """The collator that pads as ``tokenizer`` does (its pad ids and side)."""
        return cls(
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            pad_token_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0,
            padding_side=getattr(tokenizer, "padding_side", "right"),
        )

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


def make_loader(
    dataset: Any,
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    seed: int,
    num_workers: int = 0,
    shuffle_seed: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset``: in order, or shuffled by an :class:`EpochSeededRandomSampler` of
    ``shuffle_seed`` when it is given. Each iterator draws its worker base seed from a generator seeded
    by ``seed``, not from torch's global one, so creating a loader does not move the global RNG (dropout,
    domain-corruption draws): an epoch-end resume restores that RNG and continues with the same numbers."""
    sampler = None if shuffle_seed is None else EpochSeededRandomSampler(dataset, seed=shuffle_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(int(seed)),
    )


__all__ = ["BATCH_KEYS", "EpochSeededRandomSampler", "PadCollator", "make_loader"]
