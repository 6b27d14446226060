"""The text featurizer of the pQRNN student (Kaliamoorthi et al. 2021): raw text -> per-word ids of
hashed word and character n-gram strings, in the shape of a tokenizer's output, so that the datamodule,
the export and ``python -m metakd classify`` use it where they would use a tokenizer.

Why a tokenizer-shaped featurizer: pQRNN's projection reads strings, not a vocabulary, but every part of
metakd feeds a student ``(input_ids, attention_mask, token_type_ids)`` LongTensors from the data's
tokenizer. Hashing the strings here (in Python, once per example, cached with the tokenised data) and
computing the ternary projection of the hashes inside the model keeps the model an ONNX graph of integer
and float ops with no vocabulary table, and makes the featurizer the one thing saved beside an export
(``metakd_featurizer.json``): ``classify`` maps raw text exactly as training did. A teacher cannot read
these ids; it reads its own tokenization of the same examples (``metakd.teachers.FrozenTeacher``, by
``example_ids``).

Features of a word ``w`` (after NFKC normalisation and, by default, lower-casing; words are runs of letters
and digits, and each other non-space character is a word of its own): the word itself and the character
n-grams of ``<w>`` (boundary marks as in fastText) for every size in ``ngram_sizes``. Each feature string
``s`` of kind ``k`` is mapped to ``1 + (BLAKE2b-64("k:s") mod (M - 1))`` with ``M = 2^31 - 1`` (the model's
hash modulus): a stable id, the same in every process and on every machine (no Python ``hash()``). A word
takes ``features_per_word`` consecutive slots: its word id, then up to ``features_per_word - 1`` n-gram ids
(evenly spaced over the word, the first and last kept, when it has more), then 0s (no feature). So
``input_ids`` has ``features_per_word`` entries per word, and ``attention_mask`` marks all slots of a real
word. ``max_length`` counts words. A sentence pair is ``a``'s words, a separator word, ``b``'s words
(``token_type_ids`` 1 from the separator on).

Presets (``backbone:`` of a datamodule, ``tokenizer_name`` of a student): ``pqrnn-features`` (the word
and its character trigrams, 8 slots a word) and ``pqrnn-words`` (the word alone, one slot: the
projection of seq_flow_lite's ``sequence_string_projection``, which hashes whole words). A saved
featurizer directory works too.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from metakd.errors import StudentConfigError

HASH_PRIME = 2**31 - 1
"""The modulus ``M`` of pQRNN's hashes (products of two values below it fit in int64)."""
FEATURIZER_FILE = "metakd_featurizer.json"
WORD_PATTERN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
SEPARATOR = "[SEP]"


@dataclass(frozen=True)
class FeaturizerConfig:
    """What the featurizer does to text (all of it is saved with an export)."""

    ngram_sizes: tuple[int, ...] = (3,)
    features_per_word: int = 8
    lowercase: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ngram_sizes", tuple(int(n) for n in self.ngram_sizes))
        if self.features_per_word < 1 or any(n < 1 for n in self.ngram_sizes):
            raise StudentConfigError(
                f"pQRNN featurizer: features_per_word and every n-gram size must be >= 1, got "
                f"{self.features_per_word}, {list(self.ngram_sizes)}"
            )


FEATURIZER_PRESETS: dict[str, FeaturizerConfig] = {
    "pqrnn-features": FeaturizerConfig(ngram_sizes=(3,), features_per_word=8),
    "pqrnn-words": FeaturizerConfig(ngram_sizes=(), features_per_word=1),
}


def stable_id(kind: str, text: str) -> int:
    """``1 + (BLAKE2b-64("kind:text") mod (M - 1))``: a feature id in [1, M - 1], 0 being "no feature"."""
    digest = hashlib.blake2b(f"{kind}:{text}".encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (HASH_PRIME - 1)


def spread(items: list[int], count: int) -> list[int]:
    """``count`` of ``items`` evenly spaced, the first and the last kept (all of them when they fit)."""
    if len(items) <= count:
        return items
    if count == 1:
        return items[:1]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


class TextFeaturizer:
    """Raw text -> pQRNN feature ids in a tokenizer's output format (see the module docstring).

    Callable like an HF tokenizer on a text or a list of texts (and pairs): ``truncation`` and
    ``max_length`` (in words), ``padding`` (``True`` / ``"longest"``), ``return_tensors="pt"``.
    """

    pad_token_id = 0
    pad_token_type_id = 0
    padding_side = "right"

    def __init__(self, config: FeaturizerConfig, name_or_path: str = "pqrnn-features") -> None:
        self.config = config
        self.name_or_path = name_or_path

    # ------------------------------------------------------------------ identity and persistence
    def __len__(self) -> int:
        return HASH_PRIME  # the id space (there is no vocabulary)

    def fingerprint(self) -> str:
        """A content hash of what the featurizer does to text."""
        payload = json.dumps({"featurizer": "pqrnn", **asdict(self.config)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"featurizer": "pqrnn", **asdict(self.config)}
        (directory / FEATURIZER_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_directory(cls, directory: str | Path) -> TextFeaturizer:
        path = Path(directory) / FEATURIZER_FILE
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            payload.pop("featurizer")
            return cls(FeaturizerConfig(**payload), str(directory))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StudentConfigError(
                f"{path}: not a pQRNN featurizer file ({type(err).__name__}: {err})"
            ) from None

    # ------------------------------------------------------------------ features
    def words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text)
        return WORD_PATTERN.findall(text.lower() if self.config.lowercase else text)

    def word_features(self, word: str) -> list[int]:
        """The ``features_per_word`` slots of one word: its id, its n-gram ids, then 0s."""
        slots = self.config.features_per_word
        marked = f"<{word}>"
        ngrams = [stable_id(f"c{n}", marked[i : i + n]) for n in self.config.ngram_sizes
                  for i in range(max(1, len(marked) - n + 1))]  # fmt: skip
        features = [stable_id("w", word)] + spread(ngrams, slots - 1)
        return features + [0] * (slots - len(features))

    def encode_one(self, text: str, pair: str | None, max_words: int | None) -> dict[str, list[int]]:
        first, second = self.words(text), self.words(pair) if pair is not None else None
        if max_words is not None:
            budget = max_words - (1 if second is not None else 0)
            if second is None:
                first = first[: max(budget, 0)]
            else:  # longest first, as the tokenizers' "longest_first"
                while len(first) + len(second) > max(budget, 0) and (first or second):
                    (first if len(first) >= len(second) else second).pop()
        words = first + ([SEPARATOR] + second if second is not None else [])
        types = [0] * len(first) + [1] * (len(words) - len(first))
        slots = self.config.features_per_word
        ids: list[int] = []
        for word in words:
            ids += (
                [stable_id("s", word)] + [0] * (slots - 1) if word == SEPARATOR else self.word_features(word)
            )
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "token_type_ids": [t for t in types for _ in range(slots)],
        }

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        truncation: bool | str = False,
        max_length: int | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = [text_pair] if single or text_pair is None else list(text_pair)
        if text_pair is None:
            pairs = [None] * len(texts)
        max_words = max_length if truncation and max_length is not None else None
        rows = [self.encode_one(t, p, max_words) for t, p in zip(texts, pairs)]
        batch = {key: [row[key] for row in rows] for key in ("input_ids", "attention_mask", "token_type_ids")}
        if padding in (True, "longest", "max_length") or return_tensors is not None:
            width = max((len(ids) for ids in batch["input_ids"]), default=0)
            if padding == "max_length" and max_length is not None:
                width = max(width, max_length * self.config.features_per_word)
            batch = {key: [row + [0] * (width - len(row)) for row in values] for key, values in batch.items()}
        if return_tensors == "pt":
            return {key: torch.tensor(values, dtype=torch.long) for key, values in batch.items()}
        if single:
            return {key: values[0] for key, values in batch.items()}
        return batch


def featurizer_for(name: str) -> TextFeaturizer | None:
    """The featurizer a backbone name stands for (a preset or a saved directory), else None."""
    if name in FEATURIZER_PRESETS:
        return TextFeaturizer(FEATURIZER_PRESETS[name], name)
    if (Path(name) / FEATURIZER_FILE).is_file():
        return TextFeaturizer.from_directory(name)
    return None
