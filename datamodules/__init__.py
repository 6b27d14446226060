"""LightningDataModules of metakd: multi-domain text classification (contracts: docs/ARCHITECTURE.md)."""

from datamodules.amazon import AmazonReviewsDataModule
from datamodules.augment import AUGMENTERS, UNKNOWN_LABEL, Augmenter, register_augmenter
from datamodules.base import MultiDomainDataModule
from datamodules.errors import DataError
from datamodules.jsonl import JsonlDataModule
from datamodules.mnli import MNLIDataModule

__all__ = [
    "AUGMENTERS",
    "UNKNOWN_LABEL",
    "AmazonReviewsDataModule",
    "Augmenter",
    "DataError",
    "JsonlDataModule",
    "MNLIDataModule",
    "MultiDomainDataModule",
    "register_augmenter",
]
