"""Substitution candidates for the word-substitution attack, all offline.

- :class:`WordNetSynonyms`: the lemmas of a word's WordNet synsets (every part of speech, senses in
  WordNet's order), read straight from the WordNet 3.0 database files (``index.<pos>``,
  ``data.<pos>``), e.g. Debian's ``wordnet-base`` package in ``/usr/share/wordnet``. Kept: single,
  alphabetic, lower-case words other than the word itself, its WordNet antonyms and stop words.
- :class:`EmbeddingNeighbours`: the nearest whole words (cosine similarity >= ``min_similarity``) in a
  backbone's input-embedding table (e.g. MiniLM's 30522 x 384 WordPiece table). Neighbours in such a
  space include antonyms ("good" ~ "bad"), so WordNet antonyms are removed when WordNet is available.
- :class:`TableSynonyms`: a given mapping word -> candidates (tests, your own lists).

:func:`make_source` builds the source a command or the search names (``wordnet`` or ``embedding``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metakd.errors import MetakdError
from metakd.robustness.attack import STOPWORDS

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
POS_FILES = ("noun", "verb", "adj", "adv")
_SINGLE_WORD = re.compile(r"^[a-z]+$")


class WordNetError(MetakdError, FileNotFoundError):
    """The WordNet database is missing or unreadable."""


class WordNetSynonyms:
    """Synonyms from the WordNet 3.0 database files in ``directory`` (module docstring)."""

    name = "wordnet"

    def __init__(self, directory: str | Path = DEFAULT_WORDNET_DIR) -> None:
        self.directory = Path(directory)
        missing = [p for p in POS_FILES if not (self.directory / f"index.{p}").is_file()]
        if missing:
            raise WordNetError(
                f"WordNet database not found in {str(self.directory)!r} (no index.{missing[0]}); install it "
                "with `apt-get install wordnet-base` (scripts/setup.sh does), point --wordnet-dir at a "
                "WordNet 3.0 dict folder, or use --source embedding"
            )
        self._index: dict[str, list[tuple[str, int]]] | None = None
        self._cache: dict[str, list[str]] = {}

    def _load_index(self) -> dict[str, list[tuple[str, int]]]:
        """lemma -> [(pos file, synset offset)] in WordNet's sense order."""
        index: dict[str, list[tuple[str, int]]] = {}
        for pos in POS_FILES:
            with open(self.directory / f"index.{pos}", encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith(" "):  # licence header
                        continue
                    fields = line.split()
                    lemma, synsets = fields[0], int(fields[2])
                    pointer_count = int(fields[3])
                    offsets = fields[4 + pointer_count + 2 :][:synsets]
                    index.setdefault(lemma, []).extend((pos, int(o)) for o in offsets)
        return index

    def _synset(self, pos: str, offset: int) -> tuple[list[str], list[tuple[int, str, int]]]:
        """``(words, antonym pointers (source word number, pos, target offset, target word number))``."""
        with open(self.directory / f"data.{pos}", "rb") as handle:
            handle.seek(offset)
            fields = handle.readline().decode("utf-8").split(" | ")[0].split()
        count = int(fields[3], 16)
        words = [re.sub(r"\(.*\)$", "", w).lower() for w in fields[4 : 4 + 2 * count : 2]]
        at = 4 + 2 * count
        pointers = []
        for k in range(int(fields[at])):
            symbol, target, target_pos, link = fields[at + 1 + 4 * k : at + 5 + 4 * k]
            if symbol == "!":
                pointers.append((int(link[:2], 16), _pos_file(target_pos), int(target), int(link[2:], 16)))
        return words, pointers

    def antonyms(self, word: str) -> set[str]:
        """WordNet antonyms of ``word`` (lexical ``!`` pointers of its senses)."""
        if self._index is None:
            self._index = self._load_index()
        found: set[str] = set()
        for pos, offset in self._index.get(word, []):
            words, pointers = self._synset(pos, offset)
            number = words.index(word) + 1 if word in words else 0
            for source, target_pos, target, target_word in pointers:
                if source in (0, number):
                    target_words, _ = self._synset(target_pos, target)
                    chosen = target_words if target_word == 0 else [target_words[target_word - 1]]
                    found.update(chosen)
        return found

    def candidates(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        if self._index is None:
            self._index = self._load_index()
        banned = {word} | self.antonyms(word) | STOPWORDS
        out: list[str] = []
        for pos, offset in self._index.get(word, []):
            for lemma in self._synset(pos, offset)[0]:
                if _SINGLE_WORD.match(lemma) and lemma not in banned and lemma not in out:
                    out.append(lemma)
        self._cache[word] = out
        return out


def _pos_file(pos: str) -> str:
    return {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}[pos]


class EmbeddingNeighbours:
    """Nearest whole-word neighbours in an input-embedding table (module docstring).

    Args:
        vocabulary: the tokenizer's tokens by id.
        embeddings: (vocab, dim) input-embedding table.
        min_similarity: cosine similarity a neighbour needs.
        top_k: neighbours returned at most.
        antonyms: a WordNet source whose antonyms are removed (None: no antonym filter).
    """

    name = "embedding"

    def __init__(
        self,
        vocabulary: list[str],
        embeddings: object,
        min_similarity: float = 0.5,
        top_k: int = 8,
        antonyms: WordNetSynonyms | None = None,
    ) -> None:
        import torch

        table = torch.as_tensor(embeddings, dtype=torch.float32)
        keep = [i for i, token in enumerate(vocabulary) if len(token) >= 3 and _SINGLE_WORD.match(token)]
        keep = [i for i in keep if vocabulary[i] not in STOPWORDS]
        self.words = [vocabulary[i] for i in keep]
        self.position = {w: k for k, w in enumerate(self.words)}
        self.vectors = torch.nn.functional.normalize(table[keep], dim=-1)
        self.min_similarity, self.top_k, self.antonym_source = min_similarity, top_k, antonyms
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_backbone(cls, backbone: str, **kwargs: object) -> EmbeddingNeighbours:
        """The neighbours of a backbone's WordPiece table (e.g. ``minilm-l6``)."""
        from metakd.backbones import load_tokenizer, pretrained_word_embeddings

        tokenizer = load_tokenizer(backbone)
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        return cls(vocabulary, pretrained_word_embeddings(backbone), **kwargs)

    def candidates(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        out: list[str] = []
        if word in self.position:
            similarity = self.vectors @ self.vectors[self.position[word]]
            similarity[self.position[word]] = -1.0
            banned = self.antonym_source.antonyms(word) if self.antonym_source is not None else set()
            values, indices = similarity.topk(min(len(self.words), self.top_k + len(banned) + 1))
            for value, index in zip(values.tolist(), indices.tolist()):
                candidate = self.words[index]
                if value >= self.min_similarity and candidate not in banned and len(out) < self.top_k:
                    out.append(candidate)
        self._cache[word] = out
        return out


class TableSynonyms:
    """Candidates from a mapping word -> [substitutes]."""

    name = "table"

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = {k.lower(): [c.lower() for c in v] for k, v in table.items()}

    def candidates(self, word: str) -> list[str]:
        return list(self.table.get(word, []))


def make_source(name: str, backbone: str, wordnet_dir: str, min_similarity: float, top_k: int) -> Any:
    """The substitution source ``wordnet`` or ``embedding`` (:mod:`metakd.robustness.synonyms`)."""
    if name == "wordnet":
        return WordNetSynonyms(wordnet_dir)
    try:
        antonyms = WordNetSynonyms(wordnet_dir)
    except WordNetError:
        antonyms = None
    return EmbeddingNeighbours.from_backbone(
        backbone, min_similarity=min_similarity, top_k=top_k, antonyms=antonyms
    )
