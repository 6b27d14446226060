"""Synonyms from the Princeton WordNet 3.0 database files (the ``index.*`` / ``data.*`` / ``*.exc`` files of
Debian's ``wordnet-base`` package, in ``/usr/share/wordnet``), read without any Python dependency.

Why not nltk or ``wn``: nltk's ``WordNetCorpusReader`` also needs a ``lexnames`` file, which Debian's
package does not ship, and nltk 3.10 refuses to read from directories outside its own data paths. The
``wn`` package reads WN-LMF XML, not this format. The format is small and documented in wndb(5WN),
which ``wordnet-base`` installs:

- ``index.<pos>``: ``lemma pos synset_cnt p_cnt [ptr_symbol ...] sense_cnt tagsense_cnt offset ...``;
  lines starting with two spaces are the licence;
- ``data.<pos>``: the synset at byte ``offset``: ``offset lex_filenum ss_type w_cnt (word lex_id)* ...``,
  with ``w_cnt`` in hexadecimal;
- ``<pos>.exc``: irregular forms, ``inflected base [base ...]``.

Lemmas are lower case with ``_`` for spaces. A word is first reduced to its base forms, WordNet's morphy
(morphy(7WN)): the exception lists, then its detachment rules (e.g. ``books`` -> ``book``).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

DEFAULT_WORDNET_DIRS = ("/usr/share/wordnet",)
"""Where Debian's ``wordnet-base`` puts the database; ``$WNSEARCHDIR`` (WordNet's own variable) first."""
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
DETACHMENT_RULES = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
          ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}  # fmt: skip
"""morphy(7WN)'s suffix rules per part of speech."""


class WordNetMissing(FileNotFoundError):
    """The WordNet database files are not where they were looked for."""


def find_wordnet(directory: str | os.PathLike[str] | None = None) -> Path:
    """The WordNet database directory: ``directory``, else ``$WNSEARCHDIR``, else ``/usr/share/wordnet``.

    Raises :class:`WordNetMissing` naming the places tried and how to install the database.
    """
    candidates = [directory] if directory else [os.environ.get("WNSEARCHDIR"), *DEFAULT_WORDNET_DIRS]
    tried = []
    for candidate in filter(None, candidates):
        path = Path(candidate).expanduser()
        tried.append(str(path))
        if all(
            (path / f"index.{name}").is_file() and (path / f"data.{name}").is_file()
            for name in POS_FILES.values()
        ):
            return path
    raise WordNetMissing(
        f"no WordNet 3.0 database (index.noun, data.noun, ... for noun/verb/adj/adv) in {tried}; install "
        "Debian's `wordnet-base` (apt-get install wordnet-base; scripts/setup.sh does when apt is "
        "available), or point `wordnet_dir` / $WNSEARCHDIR at a copy of the database files"
    )


class WordNet:
    """Synonym look-up in a WordNet database directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = find_wordnet(directory)
        self.index: dict[str, dict[str, list[int]]] = {pos: {} for pos in POS_FILES}
        self.exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in POS_FILES}
        for pos, name in POS_FILES.items():
            with open(self.directory / f"index.{name}", encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith("  "):
                        continue
                    fields = line.split()
                    pointer_count = int(fields[3])
                    synset_count = int(fields[2])
                    offsets = fields[6 + pointer_count : 6 + pointer_count + synset_count]
                    self.index[pos][fields[0]] = [int(offset) for offset in offsets]
            exceptions = self.directory / f"{name}.exc"
            if exceptions.is_file():
                with open(exceptions, encoding="utf-8") as handle:
                    for line in handle:
                        fields = line.split()
                        if len(fields) >= 2:
                            self.exceptions[pos][fields[0]] = fields[1:]
        self._data = {pos: open(self.directory / f"data.{name}", "rb") for pos, name in POS_FILES.items()}  # noqa: SIM115
        self._synonyms = lru_cache(maxsize=65536)(self._lookup)

    def fingerprint(self) -> str:
        """A hash of the index files (which database this is)."""
        digest = hashlib.sha256()
        for name in POS_FILES.values():
            digest.update((self.directory / f"index.{name}").read_bytes())
        return digest.hexdigest()[:16]

    def base_forms(self, word: str, pos: str) -> list[str]:
        """morphy: ``word`` itself, its exception-list bases and its detached forms, those in the index."""
        forms = [word, *self.exceptions[pos].get(word, [])]
        forms += [word[: -len(old)] + new for old, new in DETACHMENT_RULES[pos] if word.endswith(old)]
        return [form for form in dict.fromkeys(forms) if form in self.index[pos]]

    def synset_words(self, pos: str, offset: int) -> list[str]:
        """The lemmas of one synset (``data.<pos>`` at byte ``offset``), adjective markers removed."""
        handle = self._data[pos]
        handle.seek(offset)
        fields = handle.readline().decode("utf-8").split()
        count = int(fields[3], 16)
        return [fields[4 + 2 * k].split("(")[0] for k in range(count)]

    def synonyms(self, word: str) -> list[str]:
        """Sorted lemmas sharing a synset with ``word`` (any part of speech, after morphy), ``_`` and ``-``
        as spaces, only letters and spaces kept, ``word`` itself left out (EDA's rule)."""
        return list(self._synonyms(word.lower()))

    def _lookup(self, word: str) -> tuple[str, ...]:
        found: set[str] = set()
        for pos in POS_FILES:
            for form in self.base_forms(word, pos):
                for offset in self.index[pos][form]:
                    for lemma in self.synset_words(pos, offset):
                        text = lemma.replace("_", " ").replace("-", " ").lower()
                        text = "".join(c for c in text if c == " " or "a" <= c <= "z")
                        if text.strip():
                            found.add(" ".join(text.split()))
        found.discard(word)
        return tuple(sorted(found))

    def close(self) -> None:
        for handle in self._data.values():
            handle.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
