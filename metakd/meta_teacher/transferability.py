"""The transferability t_i as instance weights of teacher training (``weighting: prototype``).

t_i (:mod:`metakd.prototypes`) is computed once at the start of ``fit`` from the *pre-trained* encoder
(the initial weights, before any step) over ``datamodule.train_eval_dataloader()``, cached on disk and
kept in the teacher's buffers ``transferability`` (indexed by ``example_ids``) and ``prototypes``; a
teacher restored from a checkpoint on the same split reuses them when they cover every example it loads
(:func:`metakd.score_coverage.missing_scores`: another ``train_fraction`` or ``target_domain`` loads
others), and otherwise, like one restored for another split or fit a second time on other data,
recomputes them from the pre-trained backbone (its own weights are fine-tuned).

As weights, t_i is first rescaled over the training split (``transferability_scale``: ``none``,
``mean1`` or ``temperature:<T>``, :func:`metakd.prototypes.rescale_transferability`), then negative
values are clamped to 0: a negative weight would be gradient *ascent* on that instance. The buffer keeps
the raw scores.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.meta_teacher.network import build_encoder
from metakd.progress import WithProgress
from metakd.prototypes import (
    load_or_compute_transferability,
    parse_transferability_scale,
    rescale_transferability,
)
from metakd.score_coverage import coverage_note


def fit_datamodule(trainer: Any) -> Any:
    """The trainer's datamodule, checked to follow the contract t_i needs (docs/ARCHITECTURE.md) and to
    hold the pooled training split without augmented examples."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "split_fingerprint"):
        raise ConfigError(
            "MetaTeacher needs a LightningDataModule following docs/ARCHITECTURE.md (split_fingerprint, "
            "num_pooled_train, train_eval_dataloader); pass it with trainer.fit(model, datamodule=...)"
        )
    if getattr(datamodule, "num_train_ids", None) not in (None, int(datamodule.num_pooled_train)):
        raise ConfigError(
            "data.init_args.augment: MetaTeacher trains on the pooled training split; "
            "data.init_args.augment (augmented examples) is for students: remove it from the teacher's "
            "data config"
        )
    return datamodule


class TransferabilityWeights:
    """t_i for a teacher: computed at fit start, rescaled and clamped per batch (module docstring).

    Args:
        enabled: whether the weighting uses t_i (else t_i = 1 and no prototypes).
        granularity: prototypes per ``domain`` or per ``domain_class``.
        pooling: h_i for the prototypes (``masked_mean`` or ``padded_mean_skip_cls``).
        scale: ``transferability_scale``.
        use_cache: read and write t_i in the disk cache.
    """

    def __init__(self, enabled: bool, granularity: str, pooling: str, scale: str, use_cache: bool) -> None:
        parse_transferability_scale(scale)
        self.enabled, self.granularity, self.pooling = enabled, granularity, pooling
        self.scale, self.use_cache = scale, use_cache
        self._scaled: tuple[Tensor, Tensor] | None = None  # (the scores it was made from, weights)

    def options(self) -> dict[str, Any]:
        """What the scores depend on besides the split (stored with them in a checkpoint)."""
        if not self.enabled:
            return {"prototypes": False}
        return {"prototypes": True, "granularity": self.granularity, "pooling": self.pooling}

    def compute(
        self,
        datamodule: Any,
        encoder: nn.Module | None,
        hparams: Any,
        stored_split: str | None,
        device: torch.device,
        missing: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(t, prototypes)`` on the datamodule's pooled training split, from ``encoder`` (its weights
        before any step), or from the pre-trained ``hparams.backbone`` when ``encoder`` is None (a
        fine-tuned teacher whose stored scores are of split ``stored_split`` or, same split, lack
        ``missing = (missing, total)`` of the data's training examples: :func:`.missing_scores`)."""
        num_examples = int(datamodule.num_pooled_train)
        if not self.enabled:
            return torch.ones(num_examples, device=device), torch.zeros(0, device=device)
        if encoder is None:
            if hparams.encoder_config is not None:
                reason = (
                    coverage_note(*missing)
                    if missing is not None
                    else f"its stored scores are for split_fingerprint {stored_split!r}, not "
                    f"{datamodule.split_fingerprint!r}"
                )
                raise ConfigError(
                    "cannot compute transferability scores for this data: the checkpoint's encoder was a "
                    "fresh random initialisation (encoder_config), whose initial weights are gone, and "
                    + reason
                )
            encoder = build_encoder(hparams.backbone, None, None).to(device)
        t, prototypes, from_cache = load_or_compute_transferability(
            encoder,
            WithProgress(datamodule.train_eval_dataloader(), "Transferability t_i (pre-trained encoder)"),
            split_fingerprint=datamodule.split_fingerprint,
            backbone=hparams.backbone,
            max_length=getattr(datamodule, "max_length", None),
            num_examples=num_examples,
            num_domains=hparams.num_domains,
            num_labels=hparams.num_labels,
            by_class=self.granularity == "domain_class",
            pooling=self.pooling,
            use_cache=self.use_cache,
            device=device,
        )
        rank_zero_info(
            f"MetaTeacher: transferability scores {'read from cache' if from_cache else 'computed'}"
        )
        return t, prototypes

    def weights(self, scores: Tensor, example_ids: Tensor, split_fingerprint: str | None) -> Tensor:
        """max(rescaled t_i, 0) of the batch's examples; refuses ids without a score."""
        if scores.numel() == 0:
            raise RuntimeError("transferability scores are missing: they are computed in on_fit_start")
        if int(example_ids.max()) >= scores.numel():
            raise IndexError(
                f"example_ids up to {int(example_ids.max())} but transferability has {scores.numel()} "
                "entries: the batch does not come from the split the scores were computed on"
            )
        t = scores[example_ids]
        if not torch.isfinite(t).all():
            bad = example_ids[~torch.isfinite(t)].tolist()
            raise RuntimeError(
                f"no transferability score for example_ids {bad}: they were not in the train_eval_dataloader "
                f"the scores were computed on (split_fingerprint {split_fingerprint!r})"
            )
        return self.rescaled(scores)[example_ids].clamp_min(0.0)

    def rescaled(self, scores: Tensor) -> Tensor:
        """The scores of the whole training split rescaled by ``scale`` (made once per scores tensor)."""
        if self.scale == "none":
            return scores
        if self._scaled is None or self._scaled[0] is not scores:
            self._scaled = (scores, rescale_transferability(scores, self.scale))
        return self._scaled[1]


def transferability_summary(scores: Tensor, datamodule: Any, domain_names: list[str]) -> dict[str, float]:
    """mean/min/max of t per domain over the datamodule's training examples.

    Keys ``transferability/<domain>_mean`` (``_min``, ``_max``).
    """
    domains, ids = [], []
    for batch in datamodule.train_eval_dataloader():
        domains.append(batch["domain_ids"])
        ids.append(batch["example_ids"])
    domain_ids, example_ids = torch.cat(domains), torch.cat(ids)
    t = scores.detach().cpu()[example_ids]
    summary = {}
    for k, name in enumerate(domain_names):
        values = t[(domain_ids == k) & torch.isfinite(t)]
        if values.numel():
            summary[f"transferability/{name}_mean"] = float(values.mean())
            summary[f"transferability/{name}_min"] = float(values.min())
            summary[f"transferability/{name}_max"] = float(values.max())
    return summary


def log_transferability(scores: Tensor, datamodule: Any, domain_names: list[str], loggers: list[Any]) -> None:
    """The per-domain summary to every logger (and a histogram to TensorBoard), a line to the console."""
    t = scores.detach().cpu()
    finite = t[torch.isfinite(t)]
    summary = transferability_summary(scores, datamodule, domain_names)
    for logger in loggers:
        logger.log_metrics(summary, step=0)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_histogram") and finite.numel():  # TensorBoard
            experiment.add_histogram("transferability", finite, 0)
    if finite.numel():
        per_domain = ", ".join(
            f"{key.split('/')[1][: -len('_mean')]} {value:.4f}"
            for key, value in summary.items()
            if key.endswith("_mean")
        )
        rank_zero_info(
            f"MetaTeacher: t over {finite.numel()} training examples: mean {finite.mean():.4f}, "
            f"min {finite.min():.4f}, max {finite.max():.4f}; per-domain means: {per_domain}"
        )
