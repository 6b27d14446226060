"""EDA, easy data augmentation (Wei & Zou, EMNLP 2019): four label-preserving edits of a text.

- **synonym replacement (SR)**: n distinct non-stop words, taken in random order, are each replaced (at
  every occurrence) by a random WordNet synonym (words without synonyms are passed over);
- **random insertion (RI)**: n times, a random synonym of a random word (one with synonyms, at most 10
  tries) is inserted at a random position;
- **random swap (RS)**: n times, two random positions are swapped (at most 3 tries to draw a second,
  different position);
- **random deletion (RD)**: each word is deleted with probability p = alpha; a text of one word is kept,
  and when every word was deleted one random word is kept;

with n = max(1, int(alpha * number of words)). As in the paper's code, ``per_example`` new texts are
made by drawing ``per_example // 4 + 1`` texts with each operation, shuffling them and keeping the
first ``per_example``. Words are whitespace tokens. A token's leading and trailing punctuation is kept
around its replacement, and the synonym look-up uses its lower-case letters. Differences from the
paper's code: it lower-cases the text and strips all punctuation first, and it draws from Python sets,
whose order changes between processes. Here the text stays as it is, and every draw comes from the
example's seeded generator, so a run is reproducible.

Synonyms come from WordNet 3.0 (:mod:`datamodules.wordnet`, Debian's ``wordnet-base``). Without the
database EDA stops with an error that says how to install it. ``without_wordnet: swap_delete`` is the
documented fallback: it runs RS and RD only, and the data fingerprint records the change.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from datamodules.augment import Augmenter, register_augmenter
from datamodules.errors import DataError
from datamodules.wordnet import WordNet, WordNetMissing

OPERATIONS = ("sr", "ri", "rs", "rd")
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
    hers herself it its itself they them their theirs themselves what which who whom this that these those
    am is are was were be been being have has had having do does did doing a an the and but if or because
    as until while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why how all
    any both each few more most other some such no nor not only own same so than too very s t can will
    just don should now""".split()
)
"""English function words EDA never replaces (the usual NLTK-style list)."""

_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.UNICODE)

SynonymSource = Callable[[str], Sequence[str]]
"""``word -> synonyms`` (sorted, without the word itself)."""


def core(token: str) -> str:
    """The look-up form of a token: lower case, leading/trailing punctuation removed."""
    return _TOKEN.match(token).group(2).lower()


def replace_core(token: str, word: str) -> str:
    """``token`` with its core replaced by ``word`` (punctuation around it kept)."""
    lead, _, trail = _TOKEN.match(token).groups()
    return f"{lead}{word}{trail}"


def synonym_replacement(words: list[str], n: int, synonyms: SynonymSource, rng: random.Random) -> list[str]:
    """SR: replace up to ``n`` distinct non-stop words (every occurrence) by a random synonym each."""
    candidates = list(dict.fromkeys(core(w) for w in words if core(w) and core(w) not in STOP_WORDS))
    rng.shuffle(candidates)
    out, replaced = list(words), 0
    for word in candidates:
        options = synonyms(word)
        if not options:
            continue
        synonym = rng.choice(list(options))
        out = [replace_core(w, synonym) if core(w) == word else w for w in out]
        replaced += 1
        if replaced >= n:
            break
    return out


def random_insertion(words: list[str], n: int, synonyms: SynonymSource, rng: random.Random) -> list[str]:
    """RI: ``n`` times insert a random synonym of a random word at a random position."""
    out = list(words)
    for _ in range(n):
        options: Sequence[str] = ()
        for _try in range(10):
            options = synonyms(core(out[rng.randint(0, len(out) - 1)])) if out else ()
            if options:
                break
        if not options:
            return out
        out.insert(rng.randint(0, len(out) - 1), rng.choice(list(options)))
    return out


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """RS: ``n`` times swap the words at two random positions."""
    out = list(words)
    for _ in range(n):
        first = rng.randint(0, len(out) - 1)
        second, tries = first, 0
        while second == first:
            second = rng.randint(0, len(out) - 1)
            tries += 1
            if tries > 3:
                return out
        out[first], out[second] = out[second], out[first]
    return out


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """RD: delete each word with probability ``p`` (one word is always left)."""
    if len(words) <= 1:
        return list(words)
    out = [w for w in words if rng.uniform(0, 1) > p]
    return out if out else [words[rng.randint(0, len(words) - 1)]]


@register_augmenter("eda")
class EDA(Augmenter):
    """EDA (see the module docstring). Labels are kept (the paper's label-preserving assumption).

    Args:
        alpha: the share of words each operation changes (n = max(1, int(alpha * words)); RD's p).
        operations: which of ``sr``, ``ri``, ``rs``, ``rd`` to use (default all four).
        wordnet_dir: the WordNet database directory (default ``$WNSEARCHDIR`` or ``/usr/share/wordnet``).
        without_wordnet: ``error`` (default): no database is an error; ``swap_delete``: then use only the
            operations that need no synonyms (RS, RD).
    """

    keeps_label = True

    def __init__(
        self,
        alpha: float = 0.1,
        operations: Sequence[str] = OPERATIONS,
        wordnet_dir: str | None = None,
        without_wordnet: Literal["error", "swap_delete"] = "error",
    ) -> None:
        if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) <= 1.0:
            raise DataError(f"eda: alpha must be in (0, 1], got {alpha!r}")
        unknown = sorted(set(operations) - set(OPERATIONS))
        if unknown or not operations:
            raise DataError(
                f"eda: operations must be a non-empty subset of {list(OPERATIONS)}, got {operations!r}"
            )
        if without_wordnet not in ("error", "swap_delete"):
            raise DataError(f"eda: without_wordnet must be 'error' or 'swap_delete', got {without_wordnet!r}")
        self.alpha = float(alpha)
        self.operations = [op for op in OPERATIONS if op in set(operations)]
        self.wordnet: WordNet | None = None
        if {"sr", "ri"} & set(self.operations):
            try:
                self.wordnet = WordNet(wordnet_dir)
            except WordNetMissing as err:
                if without_wordnet == "error":
                    raise DataError(
                        f"eda: {err}. Or set without_wordnet: swap_delete to augment with random swap and "
                        "deletion only"
                    ) from None
                self.operations = [op for op in self.operations if op in ("rs", "rd")]
                if not self.operations:
                    raise DataError(
                        f"eda: {err}; and operations {list(operations)} all need synonyms"
                    ) from None

    def fingerprint(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "wordnet": None if self.wordnet is None else self.wordnet.fingerprint(),
        }

    def synonyms(self, word: str) -> Sequence[str]:
        return self.wordnet.synonyms(word) if self.wordnet is not None else ()

    def edit(self, operation: str, words: list[str], rng: random.Random) -> list[str]:
        """One operation on a list of words."""
        if not words:
            return words
        n = max(1, int(self.alpha * len(words)))
        if operation == "sr":
            return synonym_replacement(words, n, self.synonyms, rng)
        if operation == "ri":
            return random_insertion(words, n, self.synonyms, rng)
        if operation == "rs":
            return random_swap(words, n, rng)
        return random_deletion(words, self.alpha, rng)

    def augment(self, record: dict[str, Any], num: int, rng: random.Random) -> list[dict[str, str]]:
        """``num`` edited versions: ``num // 4 + 1`` per operation (per the paper's code; with fewer
        operations proportionally more each), shuffled, the first ``num`` kept. Pairs: both sides. Each
        version names its ``operation`` (``sr``, ``ri``, ``rs`` or ``rd``; L2A's edit type)."""
        if num == 0:
            return []
        per_operation = num // len(self.operations) + 1
        versions = []
        for operation in self.operations:
            for _ in range(per_operation):
                edited = self.edit(operation, record["text"].split(), rng)
                new = {"text": " ".join(edited), "operation": operation}
                if record.get("text_pair") is not None:
                    new["text_pair"] = " ".join(self.edit(operation, record["text_pair"].split(), rng))
                versions.append(new)
        rng.shuffle(versions)
        return versions[:num]
