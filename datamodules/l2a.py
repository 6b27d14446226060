"""L2A's candidate generator (learning to augment, Feng et al. AAAI 2021), for multi-domain distillation.

Candidates for the target domain come from two places:

- **target candidates** (``kind: target``): ``per_example`` EDA edits of every loaded target example
  (:class:`datamodules.eda.EDA`, label kept);
- **source candidates** (``kind: source``): source-domain TRAINING examples moved toward the target.
  The ``source_per_example * loaded`` source examples closest to the target are taken, with closeness
  ``cos(h_i, p_target)``. Here h_i is the masked-mean state of the meta-teacher's pre-trained backbone,
  and p_target is the meta-teacher's stored prototype of the target domain (of the example's class with
  ``domain_class`` prototypes): the same h and prototypes that give Meta-KD's t_i. Then each source
  example's domain words are replaced by target-domain words. The ``salient_words`` most
  target-specific words (smoothed log ratio of a word's frequency in a domain's training text to its
  frequency in all of it) are mapped from each source domain to the target. Each source word goes to
  the target word nearest to it by the cosine of the meta-teacher's word embeddings, when that
  cosine is at least ``min_similarity`` (e.g. dvd "movie" -> books "book"). The source label is kept:
  a domain-word swap is assumed label-preserving, as EDA's edits are.

The source example keeps its domain (its ``domain_ids`` are the source's, which the meta-teacher
knows). Each candidate carries the ``features`` the selector (:mod:`metakd.l2a`) reads:
``closeness`` (cosine to the target prototype), ``transferability`` (the meta-teacher's t_i of the
example it came from), ``substitutions`` (domain words replaced) and ``source`` (1 for a source
candidate). Only the pooled training split reaches an augmenter, so no dev or test text can become a
candidate (tests/test_l2a.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.augment import AugmentContext, AugmentedExample, Augmenter, register_augmenter
from datamodules.eda import EDA, STOP_WORDS, core, replace_core
from datamodules.errors import DataError

_WORD = re.compile(r"^[a-z]{3,}$")


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


@register_augmenter("l2a")
class L2ACandidates(Augmenter):
    """L2A's candidates (see the module docstring); the data config of an L2A student::

        augment: {class_path: l2a, per_example: 4,
                  init_args: {teacher_ckpt: <meta-teacher .ckpt>, source_per_example: 2}}

    Args:
        teacher_ckpt: the meta-teacher checkpoint whose prototypes, t_i and word embeddings measure
            closeness (needed for source candidates).
        source_per_example: source candidates per loaded target example (0: none; the ablation without
            source-domain candidates). ``per_example: 0`` is the ablation without target candidates.
        alpha: EDA's alpha for the target candidates.
        salient_words: domain words per domain considered for substitution.
        min_similarity: the least embedding cosine of a source word and its target replacement.
        max_length: tokens of a text when h_i is computed.
        wordnet_dir, without_wordnet: EDA's (:class:`datamodules.eda.EDA`).
    """

    keeps_label = True

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        source_per_example: int = 2,
        alpha: float = 0.1,
        salient_words: int = 50,
        min_similarity: float = 0.3,
        max_length: int = 64,
        wordnet_dir: str | None = None,
        without_wordnet: str = "error",
    ) -> None:
        if not isinstance(source_per_example, int) or source_per_example < 0:
            raise DataError(f"l2a: source_per_example must be an integer >= 0, got {source_per_example!r}")
        if source_per_example > 0 and not teacher_ckpt:
            raise DataError(
                "l2a: source candidates (source_per_example > 0) need init_args.teacher_ckpt, the "
                "meta-teacher "
                "whose prototypes and word embeddings measure closeness to the target"
            )
        if teacher_ckpt and not Path(teacher_ckpt).is_file():
            raise DataError(f"l2a: teacher_ckpt {teacher_ckpt!r} is not a file (a MetaTeacher .ckpt)")
        self.teacher_ckpt = teacher_ckpt
        self.source_per_example = source_per_example
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
        if self.source_per_example > 0 and not sources:
            raise DataError(
                "l2a: source candidates need source domains, but the data's domains are only "
                f"{list(context.domain_names)}; "
                "add domains or set source_per_example: 0"
            )
        out: list[AugmentedExample] = []
        if per_example > 0:
            for example in self.eda.generate(context, per_example):
                example.kind = "target"
                out.append(example)
        if self.source_per_example > 0:
            out += self.source_candidates(context, sources, self.source_per_example * len(context.loaded))
        if not out:
            return out
        stats = self.example_statistics(context, sorted({e.source for e in out}))
        for example in out:
            example.features.update(stats[example.source])
            example.features["source"] = float(example.kind == "source")
            example.features.setdefault("substitutions", 0.0)
        return out

    def source_candidates(
        self, context: AugmentContext, sources: list[str], count: int
    ) -> list[AugmentedExample]:
        """The ``count`` source-domain training examples closest to the target prototype, their domain words
        replaced by target words."""
        target = context.target_domain
        pool = [i for i, r in enumerate(context.train) if r["domain"] in sources]
        stats = self.example_statistics(context, pool)
        ranked = sorted(pool, key=lambda i: (-stats[i]["closeness"], i))[:count]
        texts = {d: [r["text"] for r in context.train if r["domain"] == d] for d in context.domain_names}
        words = salient_words(texts, self.top_words)
        self.substitution_map = {d: self.word_map(words[d], words[target]) for d in sources}
        out = []
        for position in ranked:
            record = context.train[position]
            mapping = self.substitution_map[record["domain"]]
            new_text, n = self.substitute(record["text"], mapping)
            new_pair = None
            if record.get("text_pair") is not None:
                new_pair, m = self.substitute(record["text_pair"], mapping)
                n += m
            out.append(
                AugmentedExample(
                    new_text, position, new_pair, kind="source", features={"substitutions": float(n)}
                )
            )
        return out

    @staticmethod
    def substitute(text: str, mapping: dict[str, str]) -> tuple[str, int]:
        """``text`` with every token whose core is a key of ``mapping`` replaced, and how many were."""
        out, n = [], 0
        for token in text.split():
            word = mapping.get(core(token))
            out.append(token if word is None else replace_core(token, word))
            n += word is not None
        return " ".join(out), n

    # ------------------------------------------------------------------ the meta-teacher's measures
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

    def example_statistics(
        self, context: AugmentContext, positions: list[int]
    ) -> dict[int, dict[str, float]]:
        """``closeness`` (cos(h_i, p_target)) and ``transferability`` (stored t_i) of pooled training
        examples;
        zeros without a teacher. h_i are cached under ``context.cache_dir``."""
        if not self.teacher_ckpt:
            return {i: {"closeness": 0.0, "transferability": 0.0} for i in positions}
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
        stored = state.get("transferability")
        same_split = stored is not None and stored.shape[0] == len(context.train)
        h = self.representations(context, positions, hp)
        target = teacher_domains.index(context.target_domain)
        out = {}
        for row, position in enumerate(positions):
            p = (
                prototypes[target]
                if prototypes.dim() == 2
                else prototypes[target, context.train[position]["label"]]
            )
            closeness = float(torch.nn.functional.cosine_similarity(h[row], p, dim=0))
            t = float(stored[position]) if same_split and not math.isnan(float(stored[position])) else 0.0
            out[position] = {"closeness": closeness, "transferability": t}
        return out

    def representations(self, context: AugmentContext, positions: list[int], hp: dict[str, Any]):
        """h_i of the pre-trained backbone (the teacher's pooling), cached by the texts and the backbone."""
        import torch

        from metakd.backbones import load_tokenizer
        from metakd.prototypes import pool
        from metakd.teacher import build_encoder
        from metakd.utils import atomic_torch_save

        texts = [[context.train[i]["text"], context.train[i].get("text_pair")] for i in positions]
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


__all__ = ["L2ACandidates", "salient_words"]
