"""Tang et al. 2019's transfer-set augmentation ("Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", arXiv 1903.12136, section 3.2), as an augmenter of the shared mechanism
(:mod:`datamodules.augment`): new unlabelled texts that the teacher labels.

Per word of a text (whitespace-separated), one uniform draw u:

- **masking** (u < ``p_mask``): the word becomes ``[MASK]``;
- **same-class replacement** (``p_mask`` <= u < ``p_mask + p_replace``): the word becomes another word of the
  training split drawn from the unigram distribution of its class. Tang et al. use the word's
  part-of-speech tag; no POS tagger installs offline from PyPI or Debian with this project, so the class is a
  documented substitute: the word's last two letters (lower-cased; words of up to three letters form one
  class, mostly function words), a morphological proxy for the POS ("-ly", "-ed", "-ng", "-es", ...);
- otherwise the word is kept.

Then, with probability ``p_ngram``, the text is cut to a random n-gram of its words, n uniform in
1..``max_ngram``. The new texts carry no label (:data:`~datamodules.augment.UNKNOWN_LABEL`): the teacher's
outputs are the targets, as in the paper. ``per_example`` of the ``augment`` option is the paper's n_iter.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from datamodules.augment import AugmentContext, Augmenter, register_augmenter
from datamodules.errors import DataError

MASK = "[MASK]"


def word_class(word: str) -> str:
    """The replacement class of a word (the POS substitute of the module docstring)."""
    word = word.lower()
    return "<short>" if len(word) <= 3 else word[-2:]


@register_augmenter("tang")
class TangAugmenter(Augmenter):
    """Masking, same-class replacement and n-gram sampling (see the module docstring)."""

    keeps_label = False

    def __init__(
        self, p_mask: float = 0.1, p_replace: float = 0.1, p_ngram: float = 0.25, max_ngram: int = 5
    ) -> None:
        for name, value in (("p_mask", p_mask), ("p_replace", p_replace), ("p_ngram", p_ngram)):
            if not 0.0 <= value <= 1.0:
                raise DataError(f"augment tang: {name} must be in [0, 1], got {value}")
        if p_mask + p_replace > 1.0:
            raise DataError(f"augment tang: p_mask + p_replace must be <= 1, got {p_mask + p_replace}")
        if max_ngram < 1:
            raise DataError(f"augment tang: max_ngram must be >= 1, got {max_ngram}")
        self.p_mask, self.p_replace, self.p_ngram, self.max_ngram = p_mask, p_replace, p_ngram, max_ngram
        self.vocabulary: dict[str, tuple[list[str], list[int]]] = {}

    def prepare(self, context: AugmentContext) -> None:
        """Word counts per class over the loaded training texts (sorted: the same in every process)."""
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for position in context.loaded:
            record = context.train[position]
            for text in (record["text"], record.get("text_pair")):
                for word in (text or "").split():
                    counts[word_class(word)][word] += 1
        self.vocabulary = {
            cls: ([w for w, _ in sorted(c.items())], [n for _, n in sorted(c.items())])
            for cls, c in counts.items()
        }

    def fingerprint(self) -> dict[str, Any]:
        return {"word_class": "last two letters, <=3 letters: <short>"}

    def replace(self, word: str, rng: random.Random) -> str:
        words, weights = self.vocabulary.get(word_class(word), ([word], [1]))
        return rng.choices(words, weights)[0]

    def augment_text(self, text: str, rng: random.Random) -> str:
        words = []
        for word in text.split():
            draw = rng.random()
            if draw < self.p_mask:
                words.append(MASK)
            elif draw < self.p_mask + self.p_replace:
                words.append(self.replace(word, rng))
            else:
                words.append(word)
        if words and rng.random() < self.p_ngram:
            n = min(rng.randint(1, self.max_ngram), len(words))
            start = rng.randint(0, len(words) - n)
            words = words[start : start + n]
        return " ".join(words)
