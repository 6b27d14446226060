"""MultiNLI by genre: fiction, government, slate, telephone, travel (sentence pairs, 3 labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.base import MultiDomainDataModule
from datamodules.errors import DataError
from datamodules.readers import iter_records, label_index, require_field, require_text
from datamodules.splitting import Record, stratified_split

MNLI_GENRES = ["fiction", "government", "slate", "telephone", "travel"]
MNLI_LABELS = ["entailment", "neutral", "contradiction"]
DATA_DIR = Path(__file__).parent / "data" / "mnli"


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: no {stem}.jsonl or {stem}.jsonl.gz found")


class MNLIDataModule(MultiDomainDataModule):
    """MNLI with the five training genres as domains; labels entailment/neutral/contradiction (0/1/2).

    Split (METAKD.md "Data protocol"): per genre, a seeded stratified (on label) 90/10 split of that
    genre's train rows gives train/dev (:func:`datamodules.splitting.stratified_split`, ``seed``); test is
    that genre's ``dev_matched`` rows in file order. The pooled splits list the genres in the order
    above. The shipped copy (``datamodules/data/mnli``) is a 20,000/5,000-pair subset (see its README):
    numbers on it are not comparable with published MNLI numbers. ``data_dir`` points at a full copy.
    """

    corpus_name = "mnli"

    def __init__(
        self,
        data_dir: str | None = None,
        **kwargs: Any,
    ):
        """The shared arguments (``backbone``, ``max_length``, ``batch_size``, ``domains``,
        ``target_domain``, ``train_fraction``, ``seed``, ...) are :class:`MultiDomainDataModule`'s, passed
        through ``**kwargs`` (LightningCLI and ``--print_config`` list them).

        Args:
            data_dir: directory with ``train.jsonl(.gz)`` and ``dev_matched.jsonl(.gz)`` (fields premise,
                hypothesis, label (index or name), genre), e.g. a full MNLI copy; default: the shipped
                subset.
        """
        self.data_dir = data_dir
        super().__init__(**kwargs)

    def _corpus_domains(self) -> list[str]:
        return list(MNLI_GENRES)

    def _corpus_label_names(self) -> list[str]:
        return list(MNLI_LABELS)

    def _split_rule(self) -> str:
        return f"per genre stratified 90/10 train/dev of train; test = dev_matched; seed={self.seed}"

    def _read(self, path: Path) -> dict[str, list[Record]]:
        by_genre: dict[str, list[Record]] = {g: [] for g in MNLI_GENRES}
        for lineno, rec in iter_records(path):
            premise = require_text(rec, "premise", path, lineno)
            hypothesis = require_text(rec, "hypothesis", path, lineno)
            label = label_index(require_field(rec, "label", path, lineno), MNLI_LABELS, path, lineno)
            genre = require_field(rec, "genre", path, lineno)
            if genre not in by_genre:
                raise DataError(f"{path}:{lineno}: unknown genre {genre!r}; known genres: {MNLI_GENRES}")
            by_genre[genre].append(
                {"text": premise, "text_pair": hypothesis, "label": label, "domain": genre}
            )
        return by_genre

    def _read_splits(self) -> dict[str, list[Record]]:
        directory = Path(self.data_dir).expanduser() if self.data_dir else DATA_DIR
        train_path, test_path = _find(directory, "train"), _find(directory, "dev_matched")
        train_rows = self._read(train_path)
        test_rows = self._read(test_path)
        splits: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
        for genre in MNLI_GENRES:
            rows = train_rows[genre]
            if not rows:
                if genre in self.domain_names:
                    raise DataError(f"{train_path}: genre {genre!r} has no examples")
                continue
            train, val = stratified_split([r["label"] for r in rows], 0.1, self.seed, f"{train_path} {genre}")
            splits["train"].extend(rows[i] for i in train)
            splits["val"].extend(rows[i] for i in val)
            splits["test"].extend(test_rows[genre])
        return splits
