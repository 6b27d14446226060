"""L2A's candidate generator (learning to augment, Feng et al. AAAI 2021), for multi-domain distillation.

L2A has two halves: this generator, a training-set augmenter (``augment: {class_path: l2a}``), and the
reinforced selector that picks among its candidates while the student trains (a Lightning callback,
:mod:`metakd.l2a_selector`). The generator mixes source- and target-domain text. A candidate's ``kind``
is its edit type:

- ``sr``, ``ri``, ``rs``, ``rd``: an EDA edit of a loaded target example (:class:`datamodules.eda.EDA`,
  ``per_example`` of them per example, label kept);
- ``substitute``: a source-domain TRAINING example moved toward the target (``source_per_example`` per
  loaded target example). The source examples closest to the target are taken, with closeness
  ``cos(h_i, p_target)``; h_i is the masked-mean state of the meta-teacher's pre-trained backbone, and
  p_target the meta-teacher's stored prototype of the target domain (of the example's class with
  ``domain_class`` prototypes): the same h and prototypes that give Meta-KD's t_i. Then each source
  example's domain words are replaced by target-domain words. The ``salient_words`` most
  target-specific words (smoothed log ratio of a word's frequency in a domain's training text to its
  frequency in all of it) are mapped from each source domain to the target. Each source word goes to
  the target word nearest to it by the cosine of the meta-teacher's word embeddings, when that cosine
  is at least ``min_similarity`` (e.g. dvd "movie" -> books "book"). The source keeps its domain;
- ``mix``: a loaded target example with a contiguous span of ``mix_fraction`` of its words replaced by a
  span of a same-class source example (``mix_per_example`` per target example). The partner is drawn
  from the ``mix_partners`` source examples of that class closest to the target, its domain words
  first replaced as above. The mix keeps the target example's domain and label.

Labels are kept throughout: a domain-word swap or a same-class splice is assumed label-preserving, as
EDA's edits are. Each candidate carries the numbers the selector reads (``features``):
``source_share`` (the share of its words that come from source-domain text: 0 for an EDA edit, 1 for a
substituted source example, the spliced share for a mix), ``closeness`` (cos(h, p_target) of the
candidate's own text; 0 without a teacher) and ``length`` (its words; both sides of a pair). Only the
pooled training split reaches an augmenter, so no dev or test text can become a candidate
(tests/test_l2a.py).

Beyond the paper (whose generator the text here does not reproduce in detail): the edit operations
are EDA's, the domain-word substitution and the span splice; see docs/METAKD.md, "Other methods".
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.augment import AugmentContext, AugmentedExample, Augmenter, example_rng, register_augmenter
from datamodules.eda import EDA, STOP_WORDS, core, replace_core
from datamodules.errors import DataError

_WORD = re.compile(r"^[a-z]{3,}$")

EDIT_KINDS = ("sr", "ri", "rs", "rd", "substitute", "mix")
"""A candidate's ``kind``: its edit type (the module docstring)."""


def salient_words(
    texts_by_domain: dict[str, list[str]], top: int, min_count: int = 5
) -> dict[str, list[str]]:
    """The ``top`` most domain-specific words of each domain: highest ``log((c_d(w) + 1) / (N_d + V)) -
    log((c(w) + 1) / (N + V))`` among non-stop alphabetic words seen at least ``min_count`` times there
    (ties broken alphabetically)."""
    counts = {
        d: Counter(core(w) for text in texts for w in text.split()) for d, texts in texts_by_domain.items()
    }
    total: Counter[str] = Counter()
    for counter in counts.values():
        total.update(counter)
    vocabulary, n_all = len(total), sum(total.values())
    out = {}
    for domain, counter in counts.items():
        n_domain = sum(counter.values())
        scored = [
            (math.log((c + 1) / (n_domain + vocabulary)) - math.log((total[w] + 1) / (n_all + vocabulary)), w)
            for w, c in counter.items()
            if c >= min_count and _WORD.match(w) and w not in STOP_WORDS
        ]
        out[domain] = [w for _, w in sorted(scored, key=lambda item: (-item[0], item[1]))[:top]]
    return out


def splice(
    target: list[str], source: list[str], fraction: float, rng: random.Random
) -> tuple[list[str], int]:
    """``target`` with a random contiguous span of ``max(1, round(fraction * len(target)))`` words replaced
    by a random contiguous span of as many words of ``source`` (all of it when shorter); returns the new
    words and how many of them come from ``source``."""
    if not target or not source:
        return list(target), 0
    width = min(len(target), max(1, round(fraction * len(target))))
    taken = min(width, len(source))
    start = rng.randrange(len(target) - width + 1)
    origin = rng.randrange(len(source) - taken + 1)
    return target[:start] + source[origin : origin + taken] + target[start + width :], taken


def substitute(text: str, mapping: dict[str, str]) -> tuple[str, int]:
    """``text`` with every token whose core is a key of ``mapping`` replaced, and how many were."""
    out, n = [], 0
    for token in text.split():
        word = mapping.get(core(token))
        out.append(token if word is None else replace_core(token, word))
        n += word is not None
    return " ".join(out), n


@register_augmenter("l2a")
class L2AGenerator(Augmenter):
    """L2A's candidate generator (see the module docstring); the data config of an L2A student::

        augment: {class_path: l2a, per_example: 4,
                  init_args: {teacher_ckpt: <meta-teacher .ckpt>, source_per_example: 2, mix_per_example: 2}}

    Args:
        teacher_ckpt: the meta-teacher checkpoint whose prototypes and word embeddings measure closeness
            (needed for ``substitute`` and ``mix`` candidates).
        source_per_example: ``substitute`` candidates per loaded target example (0: none; the ablation
            without source-domain candidates). ``per_example: 0`` leaves out the EDA edits.
        mix_per_example: ``mix`` candidates per loaded target example (0: none).
        mix_fraction: the share of a target example's words a mix replaces.
        mix_partners: a mix's source partner is drawn from this many closest source examples of its class.
        alpha: EDA's alpha for the target edits.
        salient_words: domain words per domain considered for substitution.
        min_similarity: the least embedding cosine of a source word and its target replacement.
        max_length: tokens of a text when h is computed.
        wordnet_dir, without_wordnet: EDA's (:class:`datamodules.eda.EDA`).
    """

    keeps_label = True
    version = 2  # 1: target/source candidates only, features of the example they came from

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        source_per_example: int = 2,
        mix_per_example: int = 2,
        mix_fraction: float = 0.3,
        mix_partners: int = 20,
        alpha: float = 0.1,
        salient_words: int = 50,
        min_similarity: float = 0.3,
        max_length: int = 64,
        wordnet_dir: str | None = None,
        without_wordnet: str = "error",
    ) -> None:
        for name, value in (("source_per_example", source_per_example), ("mix_per_example", mix_per_example)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DataError(f"l2a: {name} must be an integer >= 0, got {value!r}")
        if not 0.0 < mix_fraction <= 1.0:
            raise DataError(f"l2a: mix_fraction must be in (0, 1], got {mix_fraction!r}")
        if not isinstance(mix_partners, int) or mix_partners < 1:
            raise DataError(f"l2a: mix_partners must be an integer >= 1, got {mix_partners!r}")
        if (source_per_example > 0 or mix_per_example > 0) and not teacher_ckpt:
            raise DataError(
                "l2a: source candidates (source_per_example > 0) and mixes (mix_per_example > 0) need "
                "init_args.teacher_ckpt, the meta-teacher whose prototypes and word embeddings measure "
                "closeness to the target"
            )
        if teacher_ckpt and not Path(teacher_ckpt).is_file():
            raise DataError(f"l2a: teacher_ckpt {teacher_ckpt!r} is not a file (a MetaTeacher .ckpt)")
        self.teacher_ckpt = teacher_ckpt
        self.source_per_example, self.mix_per_example = source_per_example, mix_per_example
        self.mix_fraction, self.mix_partners = mix_fraction, mix_partners
        self.top_words, self.min_similarity, self.max_length = salient_words, min_similarity, max_length
        self.eda = EDA(alpha=alpha, wordnet_dir=wordnet_dir, without_wordnet=without_wordnet)  # type: ignore[arg-type]
        self.substitution_map: dict[str, dict[str, str]] = {}

    def fingerprint(self) -> dict[str, Any]:
        from metakd.utils import file_fingerprint

        return {
            "eda": self.eda.fingerprint(),
            "teacher": file_fingerprint(self.teacher_ckpt) if self.teacher_ckpt else None,
        }

    # ------------------------------------------------------------------ generation
    def generate(self, context: AugmentContext, per_example: int) -> list[AugmentedExample]:
        target = context.target_domain
        if target is None:
            raise DataError("l2a: augmentation for a target domain needs data.init_args.target_domain")
        sources = [d for d in context.domain_names if d != target]
        uses_sources = self.source_per_example > 0 or self.mix_per_example > 0
        if uses_sources and not sources:
            raise DataError(
                "l2a: source candidates and mixes need source domains, but the data's domains are only "
                f"{list(context.domain_names)}; add domains or set source_per_example: 0 and "
                "mix_per_example: 0"
            )
        out = self.target_edits(context, per_example)
        if uses_sources:
            pool = [i for i, r in enumerate(context.train) if r["domain"] in sources]
            closeness = self.closeness(context, [self._item(context.train[i]) for i in pool])
            ranked = [i for _, i in sorted(zip([-c for c in closeness], pool))]
            texts = {d: [r["text"] for r in context.train if r["domain"] == d] for d in context.domain_names}
            words = salient_words(texts, self.top_words)
            self.substitution_map = {d: self.word_map(words[d], words[target]) for d in sources}
            out += self.source_candidates(context, ranked[: self.source_per_example * len(context.loaded)])
            out += self.mixes(context, ranked)
        items = [(e.text, e.text_pair, context.train[e.source]["label"]) for e in out]
        for example, value in zip(out, self.closeness(context, items)):
            words = len(example.text.split()) + len((example.text_pair or "").split())
            example.features = {**example.features, "closeness": value, "length": float(words)}
        return out

    def target_edits(self, context: AugmentContext, per_example: int) -> list[AugmentedExample]:
        """EDA's edits of the loaded target examples (the draws of ``augment: eda``), kind = operation."""
        out = []
        for position in context.loaded:
            record = context.train[position]
            for new in self.eda.augment(record, per_example, example_rng(context.seed, position, EDA.name)):
                if new["text"] == record["text"] and new.get("text_pair") == record.get("text_pair"):
                    continue
                out.append(
                    AugmentedExample(
                        new["text"], position, new.get("text_pair"), kind=new["operation"],
                        features={"source_share": 0.0},
                    )
                )  # fmt: skip
        return out

    def source_candidates(self, context: AugmentContext, positions: list[int]) -> list[AugmentedExample]:
        """These source-domain training examples with their domain words replaced by target words."""
        out = []
        for position in positions:
            record = context.train[position]
            mapping = self.substitution_map[record["domain"]]
            pair = record.get("text_pair")
            out.append(
                AugmentedExample(
                    substitute(record["text"], mapping)[0], position,
                    None if pair is None else substitute(pair, mapping)[0],
                    kind="substitute", features={"source_share": 1.0},
                )
            )  # fmt: skip
        return out

    def mixes(self, context: AugmentContext, ranked: list[int]) -> list[AugmentedExample]:
        """``mix_per_example`` splices of each loaded target example with a same-class source example drawn
        from the ``mix_partners`` closest to the target (domain words replaced first)."""
        if self.mix_per_example == 0:
            return []
        partners: dict[Any, list[int]] = {}
        for position in ranked:
            same_class = partners.setdefault(context.train[position]["label"], [])
            if len(same_class) < self.mix_partners:
                same_class.append(position)
        out = []
        for position in context.loaded:
            record = context.train[position]
            rng = example_rng(context.seed, position, "l2a-mix")
            for _ in range(self.mix_per_example if partners.get(record["label"]) else 0):
                partner = context.train[rng.choice(partners[record["label"]])]
                out.append(self.mix(record, partner, position, rng))
        return out

    def mix(self, record: Any, partner: Any, position: int, rng: random.Random) -> AugmentedExample:
        """One splice of ``record`` (at ``position``) with ``partner``, whose domain words are replaced first;
        a pair is spliced on both sides."""
        mapping = self.substitution_map[partner["domain"]]
        sides = ["text"] if record.get("text_pair") is None else ["text", "text_pair"]
        new, taken, total = {}, 0, 0
        for side in sides:
            words, n = splice(
                record[side].split(), substitute(partner[side], mapping)[0].split(), self.mix_fraction, rng
            )
            new[side], taken, total = " ".join(words), taken + n, total + len(words)
        share = taken / total if total else 0.0
        return AugmentedExample(
            new["text"], position, new.get("text_pair"), kind="mix", features={"source_share": share}
        )

    # ------------------------------------------------------------------ the meta-teacher's measures
    @staticmethod
    def _item(record: Any) -> tuple[str, str | None, int]:
        return record["text"], record.get("text_pair"), record["label"]

    def _teacher(self) -> dict[str, Any]:
        if not hasattr(self, "_checkpoint"):
            import torch

            self._checkpoint = torch.load(self.teacher_ckpt, map_location="cpu", weights_only=True)
        return self._checkpoint

    def word_map(self, source_words: list[str], target_words: list[str]) -> dict[str, str]:
        """Each source word -> the nearest target word by the teacher's word-embedding cosine (whole-word
        vocabulary entries only; at least ``min_similarity``)."""
        import torch

        from metakd.backbones import load_tokenizer

        checkpoint = self._teacher()
        vocab = load_tokenizer(checkpoint["hyper_parameters"]["backbone"]).get_vocab()
        [key] = [k for k in checkpoint["state_dict"] if k.endswith("word_embeddings.weight")]
        table = torch.nn.functional.normalize(checkpoint["state_dict"][key].float(), dim=-1)
        targets = [w for w in target_words if w in vocab]
        if not targets:
            return {}
        target_vectors = table[[vocab[w] for w in targets]]
        mapping = {}
        for word in source_words:
            if word not in vocab or word in target_words:
                continue
            similarity = target_vectors @ table[vocab[word]]
            best = int(similarity.argmax())
            if float(similarity[best]) >= self.min_similarity:
                mapping[word] = targets[best]
        return mapping

    def closeness(self, context: AugmentContext, items: list[tuple[str, str | None, int]]) -> list[float]:
        """``cos(h, p_target)`` of each ``(text, text_pair, label)``: h of the pre-trained backbone, p the
        teacher's target prototype (of the label, for class prototypes); zeros without a teacher."""
        if not self.teacher_ckpt or not items:
            return [0.0] * len(items)
        import torch

        checkpoint = self._teacher()
        state, hp = checkpoint["state_dict"], checkpoint["hyper_parameters"]
        teacher_domains = list(hp["domain_names"])
        if context.target_domain not in teacher_domains:
            raise DataError(
                f"l2a: the teacher {self.teacher_ckpt} does not know the target domain "
                f"{context.target_domain!r}"
            )
        prototypes = state["prototypes"].float()
        if prototypes.numel() == 0:
            raise DataError(
                f"l2a: the teacher {self.teacher_ckpt} stores no prototypes (weighting without 'prototype')"
            )
        target = prototypes[teacher_domains.index(context.target_domain)]
        h = self.representations(context, [item[:2] for item in items], hp)
        p = target if target.dim() == 1 else target[torch.tensor([item[2] for item in items])]
        return torch.nn.functional.cosine_similarity(h, p.expand_as(h), dim=-1).tolist()

    def representations(
        self, context: AugmentContext, texts: list[tuple[str, str | None]], hp: dict[str, Any]
    ) -> Any:
        """h of the pre-trained backbone (the teacher's pooling), cached by the texts and the backbone."""
        import torch

        from metakd.backbones import load_tokenizer
        from metakd.prototypes import pool
        from metakd.teacher import build_encoder
        from metakd.utils import atomic_torch_save

        pooling = hp.get("prototype_pooling", "masked_mean")
        key = hashlib.sha256(
            json.dumps([texts, hp["backbone"], hp.get("encoder_config"), pooling, self.max_length]).encode()
        ).hexdigest()[:16]
        path = Path(context.cache_dir or ".") / "l2a" / f"h-{key}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        tokenizer = load_tokenizer(hp["backbone"])
        torch.manual_seed(0)  # a fresh encoder_config (tests) is a seeded random encoder
        encoder = build_encoder(hp["backbone"], hp.get("encoder_config"), None).eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                batch = texts[start : start + 64]
                pairs = [t[1] for t in batch] if batch[0][1] is not None else None
                padding = "max_length" if pooling == "padded_mean_skip_cls" else True
                inputs = tokenizer(
                    [t[0] for t in batch], pairs, truncation=True, max_length=self.max_length,
                    padding=padding, return_tensors="pt",
                )  # fmt: skip
                hidden = encoder(**inputs).last_hidden_state
                chunks.append(pool(hidden, inputs["attention_mask"], pooling).float())
        h = torch.cat(chunks)
        atomic_torch_save(h, path)
        return h


__all__ = ["EDIT_KINDS", "L2AGenerator", "salient_words", "splice", "substitute"]
