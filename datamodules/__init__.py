"""LightningDataModules of metakd: multi-domain text classification (contracts: docs/ARCHITECTURE.md)."""

from datamodules.amazon import AmazonReviewsDataModule
from datamodules.base import MultiDomainDataModule
from datamodules.errors import DataError
from datamodules.jsonl import JsonlDataModule
from datamodules.mnli import MNLIDataModule

__all__ = [
    "AmazonReviewsDataModule",
    "DataError",
    "JsonlDataModule",
    "MNLIDataModule",
    "MultiDomainDataModule",
]
