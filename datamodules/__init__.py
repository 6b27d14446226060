"""LightningDataModules of metakd: multi-domain text classification (contracts: docs/ARCHITECTURE.md)."""

from datamodules.amazon import AmazonReviewsDataModule
from datamodules.augment import AUGMENTERS, UNKNOWN_LABEL, Augmenter, register_augmenter
from datamodules.base import MultiDomainDataModule
from datamodules.eda import EDA
from datamodules.errors import DataError
from datamodules.jsonl import JsonlDataModule
from datamodules.l2a_generator import L2AGenerator
from datamodules.metakd_transfer import MetaKDTransferSet  # registers the `metakd_transfer` transfer set
from datamodules.mnli import MNLIDataModule
from datamodules.tang_augment import TangAugmenter  # registers the `tang` augmenter
from datamodules.unlabeled import UnlabeledTexts  # registers the `unlabeled` transfer set

__all__ = [
    "AUGMENTERS",
    "UNKNOWN_LABEL",
    "AmazonReviewsDataModule",
    "Augmenter",
    "DataError",
    "EDA",
    "JsonlDataModule",
    "L2AGenerator",
    "MNLIDataModule",
    "MetaKDTransferSet",
    "MultiDomainDataModule",
    "TangAugmenter",
    "UnlabeledTexts",
    "register_augmenter",
]
