"""Amazon multi-domain sentiment (Blitzer et al. 2007): books, dvd, electronics, kitchen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.base import MultiDomainDataModule
from datamodules.errors import DataError
from datamodules.readers import iter_records, label_index, require_field, require_text
from datamodules.splitting import Record, stratified_split

AMAZON_DOMAINS = ["books", "dvd", "electronics", "kitchen"]
AMAZON_LABELS = ["negative", "positive"]
DATA_DIR = Path(__file__).parent / "data" / "amazon"
EXTRA_DIR = Path(__file__).parent / "data" / "amazon_extra"
"""Per domain: ``<domain>.test_large.jsonl.gz`` (labelled, not among the 2000) and
``<domain>.unlabeled.jsonl.gz`` (transfer sets); provenance in ``data/README.md``, section 3."""


class AmazonReviewsDataModule(MultiDomainDataModule):
    """The 8000 labelled Amazon reviews (2000 per domain, 1000 positive / 1000 negative).

    Split (METAKD.md "Data protocol"): the reviews are pooled in the order books, dvd, electronics,
    kitchen (each file in its own order: positives, then negatives), then a seeded (``seed``, 11111)
    stratified-on-sentiment shuffle split takes 10% as test, and the same rule takes 10% of the rest as
    dev: 6480 / 720 / 800. The split is ``datasets.Dataset.train_test_split(test_size=0.1,
    seed=seed, stratify_by_column="label")`` twice (see :func:`datamodules.splitting.stratified_split`).

    The totals match the protocol. The per-domain counts that a follow-up work lists (books
    1631/170/199, dvd 1621/194/185, electronics 1615/172/213, kitchen 1613/184/203) could not be
    reproduced. Tried: this split and scikit-learn's ``train_test_split(stratify=..., random_state=11111)``
    (emulated: the same algorithm driven by ``numpy.random.RandomState(11111)``), stratified or plain,
    with the second split on a fresh or on the continued generator, without or after a seeded
    pre-shuffle (Python ``random``, numpy ``RandomState`` or ``default_rng``), for all 24 pooling
    orders of the domains and both label orders; none gives them. With seed 11111 this split gives
    (train/dev/test):
    books 1614/192/194, dvd 1620/175/205, electronics 1624/170/206, kitchen 1622/183/195.
    """

    corpus_name = "amazon"

    def __init__(
        self,
        use_title: bool = True,
        **kwargs: Any,
    ):
        """The shared arguments (``backbone``, ``max_length``, ``batch_size``, ``domains``,
        ``target_domain``, ``train_fraction``, ``seed``, ...) are :class:`MultiDomainDataModule`'s, passed
        through ``**kwargs`` (LightningCLI and ``--print_config`` list them).

        Args:
            use_title: input text = ``title + ". " + review`` (True) or the review text only (False).
        """
        self.use_title = use_title
        super().__init__(**kwargs)

    def _corpus_domains(self) -> list[str]:
        return list(AMAZON_DOMAINS)

    def _corpus_label_names(self) -> list[str]:
        return list(AMAZON_LABELS)

    def _split_rule(self) -> str:
        return f"pool books,dvd,electronics,kitchen; stratified 10% test, then 10% dev; seed={self.seed}"

    def _extra_test_sets(self) -> list[str]:
        return ["test_large"]

    def _read_test_set(self, name: str) -> list[Record]:
        """``test_large``: per domain about 1900 labelled reviews from FDU-MTL that are not among the 2000
        (near-duplicates of them removed), lowercased and tokenised as FDU-MTL ships them; no titles. In
        the order books, dvd, electronics, kitchen, each file in its own order."""
        records: list[Record] = []
        for domain in AMAZON_DOMAINS:
            path = EXTRA_DIR / f"{domain}.{name}.jsonl.gz"
            for lineno, rec in iter_records(path):
                text = require_text(rec, "text", path, lineno)
                label = label_index(require_field(rec, "label", path, lineno), AMAZON_LABELS, path, lineno)
                if rec.get("domain", domain) != domain:
                    raise DataError(
                        f"{path}:{lineno}: domain {rec.get('domain')!r} in the file of {domain!r}"
                    )
                records.append({"text": text, "label": label, "domain": domain})
        return records

    def _compose(self, title: str, text: str) -> str:
        title = title.strip()
        if not self.use_title or not title:
            return text
        return f"{title} {text}" if title[-1] in ".!?" else f"{title}. {text}"

    def read_pool(self) -> list[Record]:
        """All 8000 reviews in pooling order (the input of the split)."""
        pool: list[Record] = []
        for domain in AMAZON_DOMAINS:
            path = DATA_DIR / f"{domain}.jsonl.gz"
            for lineno, rec in iter_records(path):
                text = require_text(rec, "text", path, lineno)
                title = rec.get("title") or ""
                label = label_index(require_field(rec, "label", path, lineno), AMAZON_LABELS, path, lineno)
                if rec.get("domain", domain) != domain:
                    raise DataError(
                        f"{path}:{lineno}: domain {rec.get('domain')!r} in the file of {domain!r}"
                    )
                pool.append(
                    {
                        "text": self._compose(str(title), text),
                        "label": label,
                        "domain": domain,
                        "id": rec.get("id"),
                    }
                )
        return pool

    def _read_splits(self) -> dict[str, list[Record]]:
        pool = self.read_pool()
        rest, test = stratified_split([r["label"] for r in pool], 0.1, self.seed, "amazon pool")
        rest_records = [pool[i] for i in rest]
        train, val = stratified_split([r["label"] for r in rest_records], 0.1, self.seed, "amazon train+dev")
        return {
            "train": [rest_records[i] for i in train],
            "val": [rest_records[i] for i in val],
            "test": [pool[i] for i in test],
        }
