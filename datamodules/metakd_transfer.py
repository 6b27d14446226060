"""The Meta-KD transfer set (``augment: {class_path: metakd_transfer}``): the other domains' training
examples, added to a target-domain student's training split, each weighted by its transferability to the
target domain as the meta-teacher measures it.

Meta-KD's teacher scores how transferable an instance is with domain prototypes (:mod:`metakd.prototypes`):
h_i is the mean of the last-layer token states of the *pre-trained* encoder (the teacher's backbone and
pooling, at the teacher's data ``max_length``), and p_k the mean h over domain k's training instances (per
class with ``prototype_granularity: domain_class``), stored in the teacher checkpoint (``prototypes``).
For a student of target domain T, a training example i of another domain gets

    tau_i = cos(h_i, p_T)                       (domain prototypes; p_{T, y_i} with class prototypes)
    K     = the per_example * loaded examples with the highest tau_i > 0
    w_i   = tau_i / mean_{j in K} tau_j         for i in K (``weight_scale: mean1``, the default)

``tau_i`` is the target's term of the teacher's t_i = 1/2 cos(h_i, p_{d_i}) + 1/2 cos(h_i, mean_{k != d_i}
p_k), with the target in place of the other domains' mean: the teacher's t_i scores an example against its
own domain and all others, this one against the student's domain alone. ``w_i`` is Meta-KD's use of a
prototype score as an instance weight (the score itself, negatives dropped), divided by its mean over the
set so that the set's total weight is its size: :func:`metakd.prototypes.rescale_transferability` with
``mean1``, the teacher's ``transferability_scale`` option. ``weight_scale: temperature:<T>`` gives
``n softmax(tau / T)`` instead. On Amazon (pre-trained MiniLM-L6, max_length 64) tau_i of the other domains'
examples spans about -0.19..0.69 per target domain (median 0.13-0.15; 5% below about 0; 95% below
0.31-0.42), against a median of 0.40-0.49 for the target's own examples; a softmax at T = 0.1 would put a
weight of 50-90 on the single closest example, ``mean1`` keeps the weights within a few times the mean.

``per_example: n`` keeps at most ``n * loaded`` examples (Amazon's three other domains hold about
3 x 1620, so ``per_example: 3`` keeps every example with tau_i > 0, about 95% of them). Each kept example
keeps its gold label (sentiment is shared across the domains), its domain and its text; the teacher labels
it as any training example (``source_example_ids`` link it to itself in the pooled split, so a Meta-KD
method reads its stored t_i). Its ``features``: ``closeness`` (tau_i) and ``weight`` (w_i, the loss weight
the ``Student`` applies: the datamodule's ``train_example_weights``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.augment import (
    WEIGHT_FEATURE,
    AugmentContext,
    AugmentedExample,
    Augmenter,
    register_augmenter,
)
from datamodules.errors import DataError

logger = logging.getLogger("metakd.data")


def target_closeness(h: Tensor, prototypes: Tensor, target: int, labels: Tensor | None = None) -> Tensor:
    """tau_i = cos(h_i, p_target): ``h`` (N, H); ``prototypes`` (K, H), or (K, C, H) compared within
    each example's class (``labels`` (N,) required)."""
    if prototypes.dim() == 3:
        if labels is None:
            raise ValueError("class prototypes (K, C, H) need the examples' labels")
        p = prototypes[target][labels]
    else:
        p = prototypes[target].expand_as(h)
    return F.cosine_similarity(h, p, dim=-1)


def transfer_weights(closeness: Tensor, scale: str = "mean1") -> Tensor:
    """w_i of the kept examples' tau_i (:func:`metakd.prototypes.rescale_transferability`): ``mean1``,
    max(tau_i, 0) / mean_j max(tau_j, 0), or ``temperature:<T>``, n softmax(tau / T); mean 1 either way."""
    from metakd.prototypes import rescale_transferability

    return rescale_transferability(closeness.float(), scale)


def pretrained_states(
    texts: list[list[str | None]], checkpoint: dict[str, Any], max_length: int, cache_dir: Path | None
) -> Tensor:
    """h_i of ``[text, text_pair]`` rows: the teacher's pre-trained backbone, pooled as the teacher pools;
    cached by texts, backbone, pooling and ``max_length``."""
    from metakd.backbones import load_tokenizer
    from metakd.prototypes import pool
    from metakd.teacher import build_encoder
    from metakd.utils import atomic_torch_save

    hp = checkpoint["hyper_parameters"]
    pooling = hp.get("prototype_pooling", "masked_mean")
    key = [texts, hp["backbone"], pooling, max_length]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    path = Path(cache_dir or ".") / "metakd_transfer" / f"h-{digest}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    from metakd.progress import WithProgress

    tokenizer = load_tokenizer(hp["backbone"])
    encoder = build_encoder(hp["backbone"], None, None).eval()
    padding = "max_length" if pooling == "padded_mean_skip_cls" else True
    chunks = []
    with torch.no_grad():
        for start in WithProgress(range(0, len(texts), 64), "Meta-KD transfer set: h_i"):
            batch = texts[start : start + 64]
            pairs = [t[1] for t in batch] if batch[0][1] is not None else None
            inputs = tokenizer([t[0] for t in batch], pairs, truncation=True, max_length=max_length,
                               padding=padding, return_tensors="pt")  # fmt: skip
            chunks.append(
                pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"], pooling).float()
            )
    h = torch.cat(chunks)
    atomic_torch_save(h, path)
    return h


@register_augmenter("metakd_transfer")
class MetaKDTransferSet(Augmenter):
    """The other domains' training examples weighted by transferability to the target (module docstring).

    Args:
        teacher_ckpt: the meta-teacher checkpoint whose stored prototypes measure transferability (a
            MetaTeacher with ``weighting: prototype``; in a pipeline: ``"@teacher_ckpt"``).
        weight_scale: ``mean1`` (default) or ``temperature:<T>`` (module docstring).
        max_length: tokens of a text when h_i is computed; default the teacher's data ``max_length`` (what
            its prototypes were computed at).
    """

    keeps_label = True

    def __init__(self, teacher_ckpt: str, weight_scale: str = "mean1", max_length: int | None = None) -> None:
        from metakd.prototypes import parse_transferability_scale

        if not teacher_ckpt or not Path(teacher_ckpt).is_file():
            raise DataError(
                f"metakd_transfer: teacher_ckpt {teacher_ckpt!r} is not a file (a MetaTeacher .ckpt)"
            )
        try:
            kind, _ = parse_transferability_scale(weight_scale)
        except ValueError as err:
            raise DataError(f"metakd_transfer: weight_scale: {err}") from None
        if kind == "none":
            raise DataError("metakd_transfer: weight_scale must be 'mean1' or 'temperature:<T>', got 'none'")
        self.teacher_ckpt, self.weight_scale, self.max_length = teacher_ckpt, weight_scale, max_length

    def fingerprint(self) -> dict[str, Any]:
        from metakd.utils import file_fingerprint

        return {"teacher": file_fingerprint(self.teacher_ckpt)}

    def _checkpoint(self) -> dict[str, Any]:
        checkpoint = torch.load(self.teacher_ckpt, map_location="cpu", weights_only=True)
        if "hyper_parameters" not in checkpoint or "domain_names" not in checkpoint["hyper_parameters"]:
            raise DataError(f"metakd_transfer: {self.teacher_ckpt} is not a MetaTeacher checkpoint")
        prototypes = checkpoint["state_dict"].get("prototypes")
        if prototypes is None or prototypes.numel() == 0:
            raise DataError(
                f"metakd_transfer: the teacher {self.teacher_ckpt} stores no prototypes (trained with "
                "weighting 'none' or 'meta'): use a meta-teacher trained with weighting 'prototype'"
            )
        if checkpoint["hyper_parameters"].get("encoder_config") is not None:
            raise DataError(
                f"metakd_transfer: the teacher {self.teacher_ckpt} was built from a fresh random encoder "
                "(encoder_config), whose initial weights are gone: its prototypes cannot be compared with "
                "new h_i; use a teacher of a pre-trained backbone"
            )
        return checkpoint

    def closeness(self, context: AugmentContext, positions: list[int]) -> Tensor:
        """tau_i of the pooled training examples at ``positions`` to the target domain."""
        checkpoint = self._checkpoint()
        teacher_domains = list(checkpoint["hyper_parameters"]["domain_names"])
        if context.target_domain not in teacher_domains:
            raise DataError(
                f"metakd_transfer: the teacher {self.teacher_ckpt} does not know the target domain "
                f"{context.target_domain!r} (its domains: {teacher_domains})"
            )
        max_length = self.max_length or (checkpoint.get("datamodule_hyper_parameters") or {}).get(
            "max_length", 128
        )
        # h_i of the whole pooled training split, cached once per backbone: every target domain's (and
        # every teacher's) transfer set reads its rows
        texts = [[record["text"], record.get("text_pair")] for record in context.train]
        h = pretrained_states(texts, checkpoint, int(max_length), context.cache_dir)[positions]
        labels = torch.tensor([int(context.train[i]["label"]) for i in positions], dtype=torch.long)
        prototypes = checkpoint["state_dict"]["prototypes"].float()
        return target_closeness(h, prototypes, teacher_domains.index(context.target_domain), labels)

    def generate(self, context: AugmentContext, per_example: int) -> list[AugmentedExample]:
        target = context.target_domain
        if target is None:
            raise DataError(
                "metakd_transfer: a transfer set to a target domain needs data.init_args.target_domain"
            )
        pool = [i for i, r in enumerate(context.train) if r["domain"] != target]
        if not pool or per_example == 0:
            if not pool:
                logger.warning(
                    "metakd_transfer: no other domain has training examples: an empty transfer set"
                )
            return []
        tau = self.closeness(context, pool)
        positive = [k for k in range(len(pool)) if float(tau[k]) > 0]
        order = sorted(positive, key=lambda k: (-float(tau[k]), pool[k]))[: per_example * len(context.loaded)]
        if not order:
            logger.warning("metakd_transfer: no other-domain example is closer than 90 degrees to the target")
            return []
        order.sort()  # the kept examples in pooled order
        kept = tau[order]
        weights = transfer_weights(kept, self.weight_scale)
        logger.info(
            "metakd_transfer: %d of %d other-domain examples, tau %.3f..%.3f, weights %.3f..%.3f",
            len(order), len(pool), kept.min(), kept.max(), weights.min(), weights.max(),
        )  # fmt: skip
        out = []
        for k, w, t in zip(order, weights.tolist(), kept.tolist()):
            record = context.train[pool[k]]
            features = {"closeness": t, WEIGHT_FEATURE: w}
            example = AugmentedExample(
                record["text"], pool[k], record.get("text_pair"), kind="metakd", features=features
            )
            out.append(example)
        return out


__all__ = ["MetaKDTransferSet", "pretrained_states", "target_closeness", "transfer_weights"]
