"""Constraints on a substitution of the word-substitution attack (TextFooler's, Jin et al. 2020): a
candidate the source offers is tried only if every constraint allows it.

- :class:`PartOfSpeech`: the substitute keeps the word's part of speech *in its sentence*: the Universal
  tag of the new word in the perturbed text equals the tag of the old word in the text before the
  substitution (:mod:`datamodules.pos`, spaCy's ``en_core_web_sm``; TextFooler and TextAttack compare
  the same tags). Unlike TextAttack's default we do not let a noun and a verb swap.
- :class:`WordSimilarity`: the cosine similarity of the two words' vectors is at least
  ``min_similarity``. A word's vector is the mean of its WordPiece input embeddings in the data's
  backbone (MiniLM: 30522 x 384), all offline. TextFooler thresholds counter-fitted word vectors at 0.5;
  in MiniLM's table WordNet synonyms of the right sense score about 0.2-0.8 (terrible/awful 0.68,
  movie/film 0.71, author/writer 0.47) and those of another sense about 0-0.15 (good/commodity 0.04,
  book/leger -0.02), hence the default 0.2.

The cap on the changed words is the attack's budget (:class:`metakd.robustness.attack.AttackBudget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

DEFAULT_MIN_WORD_SIMILARITY = 0.2


@dataclass(frozen=True)
class Substitution:
    """One candidate substitution: ``word`` at ``span`` of ``text`` becomes ``candidate`` at
    ``new_span`` of ``new_text``."""

    text: str
    span: tuple[int, int]
    word: str
    candidate: str
    new_text: str
    new_span: tuple[int, int]


class Constraint(Protocol):
    name: str

    def allows(self, substitutions: Sequence[Substitution]) -> list[bool]:
        """One verdict per substitution (all of one word of one text, in a batch)."""
        ...


class PartOfSpeech:
    """The substitute's Universal POS tag in the new text equals the word's in the old text."""

    name = "pos"

    def __init__(self, tagger: Any = None) -> None:
        if tagger is None:
            from datamodules.pos import default_tagger

            tagger = default_tagger()
        self.tagger = tagger
        self._tags: dict[tuple[str, tuple[int, int]], str] = {}

    def tag_of(self, text: str, span: tuple[int, int]) -> str:
        """The tag of ``text[span]`` in ``text`` (remembered: the attack asks for it once per candidate)."""
        if (text, span) not in self._tags:
            self._tags[(text, span)] = self.tagger.span_tags(text, [span])[0]
        return self._tags[(text, span)]

    def allows(self, substitutions: Sequence[Substitution]) -> list[bool]:
        from datamodules.pos import spans_tags

        if not substitutions:
            return []
        tagged = self.tagger.tag_many([s.new_text for s in substitutions])
        verdicts = []
        for substitution, tokens in zip(substitutions, tagged):
            before = self.tag_of(substitution.text, substitution.span)
            after = spans_tags(tokens, [substitution.new_span])[0]
            verdicts.append(before == after)
        return verdicts


class WordSimilarity:
    """Cosine similarity of the two words' vectors >= ``min_similarity`` (module docstring).

    Args:
        vector: word -> its vector, or None for a word without one (refused).
        min_similarity: the threshold.
    """

    name = "word_similarity"

    def __init__(self, vector: Any, min_similarity: float = DEFAULT_MIN_WORD_SIMILARITY) -> None:
        if not -1.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in [-1, 1], got {min_similarity}")
        self.vector, self.min_similarity = vector, min_similarity

    @classmethod
    def from_backbone(
        cls, backbone: str, min_similarity: float = DEFAULT_MIN_WORD_SIMILARITY
    ) -> WordSimilarity:
        """Word vectors: the mean WordPiece input embedding of ``backbone`` (e.g. ``minilm-l6``)."""
        from metakd.backbones import load_tokenizer, pretrained_word_embeddings

        tokenizer = load_tokenizer(backbone)
        table = pretrained_word_embeddings(backbone).float()
        cache: dict[str, torch.Tensor | None] = {}

        def vector(word: str) -> torch.Tensor | None:
            if word not in cache:
                ids = tokenizer(word, add_special_tokens=False)["input_ids"]
                cache[word] = table[ids].mean(0) if ids else None
            return cache[word]

        return cls(vector, min_similarity)

    def similarity(self, word: str, candidate: str) -> float | None:
        a, b = self.vector(word.lower()), self.vector(candidate.lower())
        if a is None or b is None:
            return None
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    def allows(self, substitutions: Sequence[Substitution]) -> list[bool]:
        verdicts = []
        for s in substitutions:
            value = self.similarity(s.word, s.candidate)
            verdicts.append(value is not None and value >= self.min_similarity)
        return verdicts


def filter_substitutions(
    constraints: Sequence[Constraint], substitutions: Sequence[Substitution]
) -> list[Substitution]:
    """The substitutions every constraint allows, in order (cheap constraints first is the caller's
    choice of order; each sees only what the previous ones allowed)."""
    kept = list(substitutions)
    for constraint in constraints:
        kept = [s for s, ok in zip(kept, constraint.allows(kept)) if ok]
    return kept


def make_constraints(
    backbone: str, pos: bool = True, min_word_similarity: float | None = DEFAULT_MIN_WORD_SIMILARITY
) -> list[Constraint]:
    """The attack's constraints: the word similarity (unless None) then the part of speech (unless
    ``pos`` is False); the cheaper check first."""
    out: list[Constraint] = []
    if min_word_similarity is not None:
        out.append(WordSimilarity.from_backbone(backbone, min_word_similarity))
    if pos:
        out.append(PartOfSpeech())
    return out


__all__ = [
    "DEFAULT_MIN_WORD_SIMILARITY",
    "Constraint",
    "PartOfSpeech",
    "Substitution",
    "WordSimilarity",
    "filter_substitutions",
    "make_constraints",
]
