"""Training-set augmentation: a registry of augmenters that turn training records into new texts.

An :class:`Augmenter` is a data-side component, so it works with every student and method. It is
an option of :class:`~datamodules.base.MultiDomainDataModule`::

    data:
      init_args:
        augment:
          class_path: eda              # a name of AUGMENTERS, or a dotted class path
          init_args: {alpha: 0.1}      # the augmenter's own arguments
          per_example: 4               # new texts per loaded training example

``setup()`` appends the new examples to the loaded training split (never to dev or test). Each one
keeps the domain of the example it came from and gets its own ``example_ids`` from
``num_pooled_train`` on, so the teacher-output cache and per-instance tensors can index it. The
datamodule's ``source_example_ids`` links each id to the pooled training example it came from
(docs/ARCHITECTURE.md). The label is the source's label when the augmenter ``keeps_label`` (EDA's
label-preserving assumption), else :data:`UNKNOWN_LABEL` (-100): a transfer set that only the
teacher labels. The loss terms that read gold labels ignore it. The augmented records are cached by
the data fingerprint, and that fingerprint includes the augmentation config.

Write an augmenter (one file, e.g. ``datamodules/eda.py``)::

    @AUGMENTERS.register("shout")
    class Shout(Augmenter):
        keeps_label = True

        def augment_text(self, text: str, rng: random.Random) -> str:
            return text.upper()

``augment_text`` edits one text; pairs (MNLI) are edited on both sides. An augmenter that needs
corpus statistics (a vocabulary, n-grams) overrides :meth:`Augmenter.prepare`. One that builds
examples from other domains' training data overrides :meth:`Augmenter.generate`. Every draw comes from
the ``random.Random`` it is handed, which is seeded by (data seed, example id). An example's new texts
therefore depend only on the example and the seed, not on which other examples are loaded.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from datamodules.errors import DataError
from metakd.utils import Registry, atomic_write_bytes

UNKNOWN_LABEL = -100
"""The label of an augmented example whose class only the teacher knows (PyTorch's ``ignore_index``)."""

NO_SOURCE = -1
"""The ``source_example_id`` of an augmented example that comes from no training example."""

WEIGHT_FEATURE = "weight"
"""The feature of an augmented example that is its loss weight (see ``train_example_weights``)."""

AUGMENT_KEYS = ("class_path", "init_args", "per_example")
AUGMENT_FORMAT_VERSION = 1  # bump when the cached augmented records change meaning


@dataclass
class AugmentContext:
    """What an augmenter may draw from: the pooled TRAINING split of every domain (dev and test never
    reach an augmenter), the positions in it that are loaded, and the data's domains and labels."""

    train: Sequence[Mapping[str, Any]]
    loaded: Sequence[int]
    domain_names: Sequence[str]
    label_names: Sequence[str]
    target_domain: str | None
    seed: int
    cache_dir: Path | None = None


@dataclass
class AugmentedExample:
    """One new training example (before it is given an ``example_ids`` value).

    ``source`` is the position, in the pooled training split, of the example it came from, or None for
    an example that comes from no training example (an unlabelled review; its ``source_example_id`` is
    :data:`NO_SOURCE`, and it must name its ``domain``); ``domain`` and ``label`` default to the source's
    (``label`` is :data:`UNKNOWN_LABEL` when the augmenter does not keep labels or there is no source);
    ``features`` are numbers a selector may read (e.g. distance to a prototype). The feature
    :data:`WEIGHT_FEATURE` is the example's loss weight (1 when absent): the ``Student`` multiplies every
    loss term of the example by it (``train_example_weights`` of the datamodule).
    """

    text: str
    source: int | None
    text_pair: str | None = None
    domain: str | None = None
    label: int | None = None
    kind: str = "target"
    features: dict[str, float] = field(default_factory=dict)


class Augmenter:
    """Turns training records into new texts (see the module docstring).

    Class attributes:
        keeps_label: True: a new text has its source's label; False: its label is unknown (-100) and
            only the teacher labels it.
        version: part of the data fingerprint; bump it when the same arguments give other texts.
    """

    name: ClassVar[str] = ""
    keeps_label: ClassVar[bool] = True
    version: ClassVar[int] = 1

    def fingerprint(self) -> dict[str, Any]:
        """What the new texts depend on besides the arguments (e.g. a word list's hash); hashed into the
        data fingerprint."""
        return {}

    def prepare(self, context: AugmentContext) -> None:
        """Called once before :meth:`generate` (corpus statistics, word lists)."""

    def augment_text(self, text: str, rng: random.Random) -> str:  # pragma: no cover - abstract
        """One new version of ``text``."""
        raise NotImplementedError

    def augment(self, record: Mapping[str, Any], num: int, rng: random.Random) -> list[dict[str, str]]:
        """``num`` new versions of a record: ``{"text"}`` (and ``"text_pair"`` for pairs, edited too)."""
        out = []
        for _ in range(num):
            new = {"text": self.augment_text(record["text"], rng)}
            if record.get("text_pair") is not None:
                new["text_pair"] = self.augment_text(record["text_pair"], rng)
            out.append(new)
        return out

    def generate(self, context: AugmentContext, per_example: int) -> list[AugmentedExample]:
        """All new examples: by default ``per_example`` versions of every loaded training example, each
        drawn from ``example_rng(context.seed, position)``. Versions equal to their source are dropped."""
        out: list[AugmentedExample] = []
        for position in context.loaded:
            record = context.train[position]
            rng = example_rng(context.seed, position, self.name)
            for new in self.augment(record, per_example, rng):
                if new["text"] == record["text"] and new.get("text_pair") == record.get("text_pair"):
                    continue
                out.append(AugmentedExample(new["text"], position, new.get("text_pair")))
        return out


AUGMENTERS: Registry[type[Augmenter]] = Registry("augmenter")
"""Augmenters by name (``datamodules/eda.py`` registers ``eda``)."""


def register_augmenter(name: str) -> Any:
    """Class decorator: register an :class:`Augmenter` under ``name`` (also its ``name``, which salts
    its random draws)."""
    return lambda cls: AUGMENTERS.register(name)(type.__setattr__(cls, "name", name) or cls)


def example_rng(seed: int, position: int, salt: str = "") -> random.Random:
    """The generator of one example's augmentations: a function of (seed, example, augmenter) only."""
    return random.Random(f"{seed}:{position}:{salt}")


@dataclass
class AugmentSpec:
    """A parsed ``augment`` option: the augmenter and how many new texts per loaded example."""

    augmenter: Augmenter
    class_path: str
    init_args: dict[str, Any]
    per_example: int

    def fingerprint(self) -> dict[str, Any]:
        return {
            "class_path": self.class_path,
            "class": f"{type(self.augmenter).__module__}.{type(self.augmenter).__qualname__}",
            "init_args": self.init_args,
            "per_example": self.per_example,
            "version": type(self.augmenter).version,
            "extra": self.augmenter.fingerprint(),
            "format": AUGMENT_FORMAT_VERSION,
        }


def parse_augment(
    spec: Mapping[str, Any] | None, where: str = "data.init_args.augment"
) -> AugmentSpec | None:
    """Build the augmenter of an ``augment`` option (None: no augmentation), with errors naming the key."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise DataError(
            f"{where} must be a mapping {{class_path, init_args, per_example}}, got {type(spec).__name__}"
        )
    unknown = sorted(set(spec) - set(AUGMENT_KEYS))
    if unknown:
        raise DataError(f"{where} has unknown keys {unknown}; known: {list(AUGMENT_KEYS)}")
    class_path = spec.get("class_path")
    if not isinstance(class_path, str) or not class_path:
        raise DataError(f"{where}.class_path must name an augmenter; {AUGMENTERS.choices_hint('')}")
    try:
        cls = AUGMENTERS.get(class_path)
    except KeyError as err:
        raise DataError(f"{where}.class_path: {err.args[0]}") from None
    if not (inspect.isclass(cls) and issubclass(cls, Augmenter)):
        raise DataError(f"{where}.class_path {class_path!r} is {cls!r}, not a datamodules.augment.Augmenter")
    per_example = spec.get("per_example", 1)
    if not isinstance(per_example, int) or isinstance(per_example, bool) or per_example < 0:
        raise DataError(f"{where}.per_example must be an integer >= 0, got {per_example!r}")
    init_args = dict(spec.get("init_args") or {})
    try:
        augmenter = cls(**init_args)
    except TypeError as err:
        raise DataError(f"{where}.init_args: cannot build {cls.__name__}: {err}") from err
    return AugmentSpec(augmenter, class_path, init_args, per_example)


def augmented_records(
    spec: AugmentSpec, context: AugmentContext, first_id: int, cache_file: Path | None = None
) -> list[dict[str, Any]]:
    """The augmented training records, ids ``first_id, first_id + 1, ...``, read from ``cache_file`` when it
    exists (it is keyed by the data fingerprint, which includes the augmentation config), else generated
    and written there.

    Each record: ``text`` (``text_pair``), ``label`` (the source's, or -100), ``domain``, ``example_id``,
    ``source_example_id``, ``augmented`` (True), ``kind`` and ``features``.
    """
    if cache_file is not None and cache_file.is_file():
        rows = [json.loads(line) for line in cache_file.read_text(encoding="utf-8").splitlines() if line]
        if all(isinstance(r, dict) and "example_id" in r for r in rows):
            return rows
    spec.augmenter.prepare(context)
    rows = []
    pairs = bool(context.train) and context.train[0].get("text_pair") is not None
    for offset, example in enumerate(spec.augmenter.generate(context, spec.per_example)):
        if example.source is not None and not 0 <= example.source < len(context.train):
            raise DataError(
                f"augmenter {spec.class_path!r} returned source {example.source}, not a position of the "
                f"training split (0..{len(context.train) - 1})"
            )
        if example.source is None and example.domain is None:
            raise DataError(
                f"augmenter {spec.class_path!r}: an example without a source must name its domain"
            )
        source = context.train[example.source] if example.source is not None else {}
        if example.label is not None:
            label = example.label
        else:
            label = source["label"] if spec.augmenter.keeps_label and source else UNKNOWN_LABEL
        row = {
            "text": example.text,
            "label": int(label),
            "domain": example.domain or source["domain"],
            "example_id": first_id + offset,
            "source_example_id": example.source if example.source is not None else NO_SOURCE,
            "augmented": True,
            "kind": example.kind,
            "features": {k: float(v) for k, v in example.features.items()},
        }
        if (example.text_pair is None) == pairs:
            raise DataError(
                f"augmenter {spec.class_path!r}: a new example must have a text_pair iff the training "
                f"examples have one ({'they do' if pairs else 'they do not'})"
            )
        if example.text_pair is not None:
            row["text_pair"] = example.text_pair
        if row["domain"] not in context.domain_names:
            raise DataError(f"augmenter {spec.class_path!r} returned unknown domain {row['domain']!r}")
        rows.append(row)
    if cache_file is not None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_bytes(cache_file, text.encode("utf-8"))
    return rows


__all__ = [
    "AUGMENTERS",
    "AugmentContext",
    "AugmentSpec",
    "AugmentedExample",
    "Augmenter",
    "NO_SOURCE",
    "UNKNOWN_LABEL",
    "WEIGHT_FEATURE",
    "augmented_records",
    "example_rng",
    "parse_augment",
    "register_augmenter",
]
