"""Tang et al. 2019's transfer-set augmentation ("Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", arXiv 1903.12136, section 3.2), as an augmenter of the shared mechanism
(:mod:`datamodules.augment`): new unlabelled texts that the teacher labels.

Per word of a text (whitespace-separated), one uniform draw u:

- **masking** (u < ``p_mask``): the word becomes ``[MASK]``;
- **POS-guided replacement** (``p_mask`` <= u < ``p_mask + p_replace``): the word becomes another word of the
  loaded training texts with the same part-of-speech tag, drawn from the unigram distribution of the words
  seen with that tag (the paper's "unigram word distribution re-normalized by the part-of-speech tag");
- otherwise the word is kept.

Then, with probability ``p_ngram``, the text is cut to a random n-gram of its words, n uniform in
1..``max_ngram``. The new texts carry no label (:data:`~datamodules.augment.UNKNOWN_LABEL`): the teacher's
outputs are the targets, as in the paper. ``per_example`` of the ``augment`` option is the paper's n_iter
(20 in the paper: ``per_example: 20``); the paper's p_mask = p_pos = 0.1 and p_ng = 0.25 are the defaults.

The tags (``word_classes``) come from a real tagger, spaCy's English pipeline (:mod:`datamodules.pos`),
tagging each text in context: ``penn`` (default) are the fine-grained Penn Treebank tags (NN, NNS, VBD,
JJ, ...), so a replacement keeps number and tense as well; ``universal`` the coarse UD tags (NOUN, VERB,
ADJ, ...). A whitespace word takes the tag of its first spaCy token with a letter or digit ("don't" ->
"do" -> VBP; :func:`word_tags`). The vocabulary and the replacement work on a word's core (lower case,
punctuation around it kept: "book," -> "story,"; a capitalised word gets a capitalised replacement).
``suffix`` is the tagger-free substitute of the first version: a word's class is its last two letters
(words of up to three letters form one class), and whole whitespace words are replaced.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from datamodules.augment import AugmentContext, Augmenter, register_augmenter
from datamodules.eda import core, replace_core
from datamodules.errors import DataError

MASK = "[MASK]"
WORD_CLASSES = ("penn", "universal", "suffix")
_WORD = re.compile(r"\S+")


def capitalised(word: str) -> bool:
    """Whether the first letter or digit of ``word`` is upper case."""
    return next((c for c in word if c.isalnum()), "").isupper()


def word_class(word: str) -> str:
    """The ``suffix`` class of a word (see the module docstring)."""
    word = word.lower()
    return "<short>" if len(word) <= 3 else word[-2:]


def word_tags(text: str, tokens: Sequence[Any], tagset: str = "penn") -> list[str]:
    """The tag of each whitespace word of ``text``: that of its first tagger token with a letter or digit,
    else of its first token (``tokens``: :class:`datamodules.pos.TaggedToken` in text order; "X" for a word
    no token overlaps). "(really)!" -> "really" -> RB; "don't" -> "do" -> VBP."""
    field = "tag" if tagset == "penn" else "pos"
    tags, k = [], 0
    for match in _WORD.finditer(text):
        while k < len(tokens) and tokens[k].end <= match.start():
            k += 1
        inside = []
        j = k
        while j < len(tokens) and tokens[j].start < match.end():
            inside.append(tokens[j])
            j += 1
        chosen = next((t for t in inside if any(c.isalnum() for c in t.text)), inside[0] if inside else None)
        tags.append(getattr(chosen, field) if chosen is not None else "X")
    return tags


@register_augmenter("tang")
class TangAugmenter(Augmenter):
    """Masking, POS-guided replacement and n-gram sampling (see the module docstring).

    Args:
        p_mask, p_replace, p_ngram: the paper's p_mask, p_pos and p_ng.
        max_ngram: the longest n-gram sampled.
        word_classes: ``penn`` or ``universal`` tags of the spaCy tagger, or the tagger-free ``suffix``.
        tagger_model: a spaCy pipeline name (default: :data:`datamodules.pos.DEFAULT_MODELS`, first found).
    """

    keeps_label = False
    version = 2  # 2: POS tags from a tagger (1: the suffix classes only)

    def __init__(
        self,
        p_mask: float = 0.1,
        p_replace: float = 0.1,
        p_ngram: float = 0.25,
        max_ngram: int = 5,
        word_classes: str = "penn",
        tagger_model: str | None = None,
    ) -> None:
        for name, value in (("p_mask", p_mask), ("p_replace", p_replace), ("p_ngram", p_ngram)):
            if not 0.0 <= value <= 1.0:
                raise DataError(f"augment tang: {name} must be in [0, 1], got {value}")
        if p_mask + p_replace > 1.0:
            raise DataError(f"augment tang: p_mask + p_replace must be <= 1, got {p_mask + p_replace}")
        if max_ngram < 1:
            raise DataError(f"augment tang: max_ngram must be >= 1, got {max_ngram}")
        if word_classes not in WORD_CLASSES:
            raise DataError(
                f"augment tang: word_classes must be one of {list(WORD_CLASSES)}, got {word_classes!r}"
            )
        self.p_mask, self.p_replace, self.p_ngram, self.max_ngram = p_mask, p_replace, p_ngram, max_ngram
        self.word_classes = word_classes
        self.tagger: Any = None
        if word_classes != "suffix" and p_replace > 0:
            from datamodules.pos import PosTagger

            self.tagger = PosTagger(tagger_model)
        self.vocabulary: dict[str, tuple[list[str], list[int]]] = {}
        self._classes: dict[str, list[str]] = {}

    def fingerprint(self) -> dict[str, Any]:
        if self.tagger is None:
            return {"word_class": "last two letters, <=3 letters: <short>"}
        import spacy

        meta = self.tagger.nlp.meta
        return {
            "tagger": [self.tagger.model, meta.get("version"), spacy.__version__],
            "tags": self.word_classes,
        }

    def classes(self, texts: Sequence[str]) -> list[list[str]]:
        """The class of every whitespace word of each text (tags in context, or suffix classes)."""
        if self.tagger is None:
            return [[word_class(w) for w in text.split()] for text in texts]
        tagged = self.tagger.tag_many(texts)
        return [word_tags(text, tokens, self.word_classes) for text, tokens in zip(texts, tagged)]

    def _key(self, word: str) -> str:
        return word if self.tagger is None else core(word)

    def prepare(self, context: AugmentContext) -> None:
        """Tag the loaded training texts once; count the words of each class (sorted, as in any process)."""
        texts = []
        for position in context.loaded:
            record = context.train[position]
            texts += [t for t in (record["text"], record.get("text_pair")) if t]
        unique = list(dict.fromkeys(texts)) if self.p_replace > 0 else []
        self._classes = dict(zip(unique, self.classes(unique)))
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for text in texts if self.p_replace > 0 else []:
            for word, cls in zip(text.split(), self._classes[text]):
                if self._key(word):
                    counts[cls][self._key(word)] += 1
        self.vocabulary = {
            cls: ([w for w, _ in sorted(c.items())], [n for _, n in sorted(c.items())])
            for cls, c in counts.items()
        }

    def replace(self, word: str, cls: str, rng: random.Random) -> str:
        """A word of class ``cls`` drawn by its training count (the word itself when the class is unseen)."""
        key = self._key(word)
        if not key:
            return word  # punctuation only: nothing to replace
        words, weights = self.vocabulary.get(cls, ([key], [1]))
        new = rng.choices(words, weights)[0]
        if self.tagger is None:
            return new
        return replace_core(word, new.capitalize() if capitalised(word) else new)

    def augment_text(self, text: str, rng: random.Random) -> str:
        classes = self._classes.get(text) if self.p_replace > 0 else None
        if classes is None and self.p_replace > 0:
            classes = self._classes[text] = self.classes([text])[0]
        words = []
        for i, word in enumerate(text.split()):
            draw = rng.random()
            if draw < self.p_mask:
                words.append(MASK)
            elif draw < self.p_mask + self.p_replace:
                words.append(self.replace(word, classes[i], rng))
            else:
                words.append(word)
        if words and rng.random() < self.p_ngram:
            n = min(rng.randint(1, self.max_ngram), len(words))
            start = rng.randint(0, len(words) - n)
            words = words[start : start + n]
        return " ".join(words)
