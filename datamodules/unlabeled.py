"""Unlabelled texts of a domain as a transfer set (``augment: {class_path: unlabeled}``): reviews no one
labelled, added to the training split for the teacher to label (label -100, :data:`UNKNOWN_LABEL`).

Default: Amazon's unlabelled reviews shipped with the package,
``datamodules/data/amazon_extra/<domain>.unlabeled.jsonl.gz`` (3030 to 4029 a domain; provenance and
cleaning: ``datamodules/data/README.md``, section 3). A user's own: ``files`` is a path (JSONL or CSV,
optionally .gz), with ``{domain}`` where the domain's name goes (one file a domain), or without it (one
file whose records name their domain in ``domain_field``). Each record needs ``text_field``; a record's
domain field, where present, must name the file's domain. Errors name the file and line.

The set holds the texts of the target domain (of every domain of the data without a ``target_domain``),
in file order, without exact duplicates and without texts equal to a training text;
``max_examples`` keeps a seeded random subset of that many a domain. An unlabelled text comes from no
training example (``source_example_id`` -1). Only single texts: a corpus of sentence pairs is refused.
Whether the texts overlap the corpus's dev or test split the augmenter cannot see: shipped files are
cleaned against them (README), a user's own must be.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from datamodules.augment import AugmentContext, AugmentedExample, Augmenter, register_augmenter
from datamodules.errors import DataError
from datamodules.readers import iter_records, require_text

DEFAULT_FILES = str(Path(__file__).parent / "data" / "amazon_extra" / "{domain}.unlabeled.jsonl.gz")
"""Amazon's unlabelled reviews, one file a domain."""


def read_unlabeled(
    path: str | Path,
    domain: str,
    text_field: str = "text",
    domain_field: str = "domain",
    per_domain_file: bool = True,
) -> list[str]:
    """The texts of ``domain`` in an unlabelled file, in file order.

    ``per_domain_file``: the file holds one domain, and a record's ``domain_field`` (optional) must name
    it; else the file holds several, every record names its domain, and those of ``domain`` are kept. A
    :class:`DataError` names file and line for a missing or empty text, a domain of another file, a record
    without a domain, and a malformed line (:func:`datamodules.readers.iter_records`).
    """
    texts = []
    for lineno, record in iter_records(path):
        text = require_text(record, text_field, path, lineno)
        named = record.get(domain_field)
        if per_domain_file:
            if named is not None and str(named) != domain:
                raise DataError(f"{path}:{lineno}: {domain_field} {named!r} in the file of {domain!r}")
        elif named is None:
            raise DataError(
                f"{path}:{lineno}: missing field {domain_field!r} (the file holds several domains)"
            )
        elif str(named) != domain:
            continue
        texts.append(text)
    return texts


@register_augmenter("unlabeled")
class UnlabeledTexts(Augmenter):
    """The domain's unlabelled texts (see the module docstring).

    Args:
        files: a path with ``{domain}`` (one file a domain) or without (one file, records name their
            domain); default Amazon's shipped files (:data:`DEFAULT_FILES`).
        text_field, domain_field: the records' fields.
        max_examples: at most this many texts a domain (a seeded random subset; None: all).
    """

    keeps_label = False

    def __init__(
        self,
        files: str = DEFAULT_FILES,
        text_field: str = "text",
        domain_field: str = "domain",
        max_examples: int | None = None,
    ) -> None:
        if not isinstance(files, str) or not files:
            raise DataError(
                f"augment unlabeled: files must be a path (with {{domain}} or not), got {files!r}"
            )
        if max_examples is not None and (
            isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
        ):
            raise DataError(
                f"augment unlabeled: max_examples must be an integer >= 1 or null, got {max_examples!r}"
            )
        self.files, self.text_field, self.domain_field, self.max_examples = (
            files,
            text_field,
            domain_field,
            max_examples,
        )

    def paths(self) -> list[Path]:
        """The files the set may read (for the fingerprint): every match of the ``{domain}`` pattern."""
        if "{domain}" not in self.files:
            return [Path(self.files)]
        pattern = Path(self.files.replace("{domain}", "*"))
        return sorted(pattern.parent.glob(pattern.name))

    def fingerprint(self) -> dict[str, Any]:
        from metakd.utils import file_fingerprint

        return {"files": {str(p.name): file_fingerprint(p) for p in self.paths() if p.is_file()}}

    def generate(self, context: AugmentContext, per_example: int) -> list[AugmentedExample]:
        if per_example != 1:
            raise DataError(
                "augment unlabeled: per_example has no meaning for unlabelled texts (leave it out); "
                "init_args.max_examples limits the set"
            )
        if context.train and context.train[0].get("text_pair") is not None:
            raise DataError(
                "augment unlabeled: the unlabelled texts are single texts, but this corpus has text pairs"
            )
        domains = [context.target_domain] if context.target_domain is not None else list(context.domain_names)
        seen = {r["text"] for r in context.train}
        out = []
        for domain in domains:
            per_domain = "{domain}" in self.files
            path = self.files.format(domain=domain) if per_domain else self.files
            texts = []
            for text in read_unlabeled(path, domain, self.text_field, self.domain_field, per_domain):
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
            if self.max_examples is not None and len(texts) > self.max_examples:
                rng = random.Random(f"{context.seed}:unlabeled:{domain}")
                texts = [texts[i] for i in sorted(rng.sample(range(len(texts)), self.max_examples))]
            out += [AugmentedExample(text, None, domain=domain, kind="unlabeled") for text in texts]
        return out


__all__ = ["DEFAULT_FILES", "UnlabeledTexts", "read_unlabeled"]
