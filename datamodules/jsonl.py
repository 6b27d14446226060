"""A user's multi-domain corpus from JSONL or CSV files (optionally gzip-compressed)."""

from __future__ import annotations

from typing import Any

from datamodules.base import MultiDomainDataModule
from datamodules.errors import DataError
from datamodules.readers import iter_records, label_index, require_field, require_text
from datamodules.splitting import Record, stratified_split


def _int_like(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


class JsonlDataModule(MultiDomainDataModule):
    """Text classification over domains from the user's files.

    Files: JSON Lines (``.jsonl``, ``.json``, ``.ndjson``) or CSV with a header row (``.csv``), each
    optionally ``.gz``; the format follows the extension. Field names are configurable. Labels may be
    given as names or as indices into ``label_names``. The files are read and checked in ``__init__``
    (domains and labels must be known before ``setup()``).

    Splits: the files given are used as they are; a split without a file is carved from the train file
    with the Amazon rule: a seeded stratified (on label) 10% test, then 10% of the rest as dev.
    """

    corpus_name = "jsonl"

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        domain_field: str = "domain",
        label_names: list[str] | None = None,
        extra_test_files: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        """The shared arguments (``backbone``, ``max_length``, ``batch_size``, ``domains``,
        ``target_domain``, ``train_fraction``, ``seed``, ...) are :class:`MultiDomainDataModule`'s, passed
        through ``**kwargs`` (LightningCLI and ``--print_config`` list them).

        Args:
            train_file: training records (JSONL or CSV, optionally .gz).
            val_file: dev records; default: 10% of the train file's (after the test part), stratified.
            test_file: test records; default: 10% of the train file's, stratified.
            text_field: field with the input text.
            text_pair_field: field with the second text of a sentence pair (None: single texts).
            label_field: field with the label (a name in ``label_names`` or its index).
            domain_field: field with the domain name.
            label_names: the labels in index order. Default: inferred from the train file: the sorted
                names, or ``"0".."max"`` when all labels are integers.
            extra_test_files: further labelled evaluation sets by name, e.g. ``{large: big_test.jsonl}``
                (same fields): ``test_set: large`` tests on it (a pipeline's ``test_sets``). They must
                not overlap the other files; their domains outside the corpus's are left out.
        """
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.text_field = text_field
        self.text_pair_field = text_pair_field
        self.label_field = label_field
        self.domain_field = domain_field
        self._given_label_names = list(label_names) if label_names is not None else None
        self.extra_test_files = dict(extra_test_files or {})
        bad = [n for n in self.extra_test_files if not isinstance(n, str) or not n or n == "test"]
        if bad:
            raise DataError(f"extra_test_files: names must be non-empty and not 'test', got {bad}")
        self._scan()
        super().__init__(**kwargs)
        # The hparams carry the label set actually used, so they agree with the model's linked
        # label_names when a logger merges both (Lightning refuses differing values of one key).
        self.hparams["label_names"] = list(self._label_names)

    # ------------------------------------------------------------------ reading
    def _read_file(self, path: str) -> list[tuple[int, str, str | None, Any, str]]:
        rows = []
        for lineno, rec in iter_records(path):
            text = require_text(rec, self.text_field, path, lineno)
            pair = require_text(rec, self.text_pair_field, path, lineno) if self.text_pair_field else None
            label = require_field(rec, self.label_field, path, lineno)
            domain = require_field(rec, self.domain_field, path, lineno)
            if isinstance(domain, bool) or not isinstance(domain, (str, int)) or not str(domain).strip():
                raise DataError(
                    f"{path}:{lineno}: field {self.domain_field!r} must be a non-empty string, got {domain!r}"
                )
            rows.append((lineno, text, pair, label, str(domain).strip()))
        return rows

    def _infer_label_names(self, rows: list[tuple]) -> list[str]:
        path = self.train_file
        values = [(lineno, label) for lineno, _, _, label, _ in rows]
        ints = [_int_like(v) for _, v in values]
        if all(i is not None for i in ints):
            negative = [(ln, v) for (ln, v), i in zip(values, ints) if i < 0]
            if negative:
                ln, v = negative[0]
                raise DataError(f"{path}:{ln}: label {v!r} is negative; integer labels must be 0, 1, ...")
            return [str(i) for i in range(max(ints) + 1)]
        if any(i is not None for i in ints):
            ln, v = next((ln, v) for (ln, v), i in zip(values, ints) if i is not None)
            raise DataError(
                f"{path}:{ln}: label {v!r} is an index but other labels are names; give label_names "
                f"to say which name each index stands for"
            )
        for ln, v in values:
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{path}:{ln}: label {v!r} is neither a name nor an index")
        return sorted({v.strip() for _, v in values})

    def _scan(self) -> None:
        files = {"train": self.train_file, "val": self.val_file, "test": self.test_file}
        files.update({f"extra:{name}": path for name, path in self.extra_test_files.items()})
        rows = {split: self._read_file(path) for split, path in files.items() if path is not None}
        if self._given_label_names is not None:
            if not self._given_label_names or len(set(self._given_label_names)) != len(
                self._given_label_names
            ):
                raise DataError(f"label_names must be non-empty and distinct, got {self._given_label_names}")
            self._label_names = [str(n) for n in self._given_label_names]
        else:
            self._label_names = self._infer_label_names(rows["train"])
        self._records: dict[str, list[Record]] = {}
        for split, split_rows in rows.items():
            path = files[split]
            records = []
            for lineno, text, pair, label, domain in split_rows:
                index = label_index(
                    label, self._label_names, path, lineno, field=f"label ({self.label_field!r})"
                )
                record: Record = {"text": text, "label": index, "domain": domain}
                if pair is not None:
                    record["text_pair"] = pair
                records.append(record)
            self._records[split] = records
        self._domains = sorted(
            {r["domain"] for split, records in self._records.items() if ":" not in split for r in records}
        )

    # ------------------------------------------------------------------ hooks
    def _corpus_domains(self) -> list[str]:
        return list(self._domains)

    def _corpus_label_names(self) -> list[str]:
        return list(self._label_names)

    def _extra_test_sets(self) -> list[str]:
        return list(self.extra_test_files)

    def _read_test_set(self, name: str) -> list[Record]:
        return list(self._records[f"extra:{name}"])

    def _split_rule(self) -> str:
        carved = [s for s, f in (("val", self.val_file), ("test", self.test_file)) if f is None]
        if not carved:
            return "explicit files"
        return f"explicit files; carved from train (stratified 10%/10%): {carved}; seed={self.seed}"

    def _read_splits(self) -> dict[str, list[Record]]:
        train = list(self._records["train"])
        splits: dict[str, list[Record]] = {}
        if self.test_file is None:
            rest, test = stratified_split([r["label"] for r in train], 0.1, self.seed, f"{self.train_file}")
            splits["test"] = [train[i] for i in test]
            train = [train[i] for i in rest]
        else:
            splits["test"] = list(self._records["test"])
        if self.val_file is None:
            rest, val = stratified_split([r["label"] for r in train], 0.1, self.seed, f"{self.train_file}")
            splits["val"] = [train[i] for i in val]
            train = [train[i] for i in rest]
        else:
            splits["val"] = list(self._records["val"])
        splits["train"] = train
        return splits
