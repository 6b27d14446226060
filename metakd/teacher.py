"""The Meta-KD meta-teacher (teacher training): one encoder trained on all domains mixed.

:class:`MetaTeacher` wires parts, each in its own file under ``metakd/meta_teacher/``:

- ``network``: the encoder and the Meta-KD heads (classifier, domain embedding E, ``corrupt_dense``,
  domain classifier), the plain module the meta look-ahead differentiates through;
- ``domain_loss``: the domain-adversarial part (``domain_loss``: ``corruption``, ``reversal`` or
  ``none``) and the loss L_T = (1/B) sum_i w_i [CE(logits_i, y_i) + lambda_d CE(domain_logits_i, d~_i)];
- the instance weights w_i (``weighting``): ``prototype`` is the transferability t_i
  (``transferability``: computed at fit start from the pre-trained encoder, rescaled by
  ``transferability_scale``, negative values clamped to 0), ``meta`` learning-to-reweight weights
  (``meta_weights``, with the engines and parameter scopes of :mod:`metakd.weighting`),
  ``prototype+meta`` their product w_i = t_i * m_i (using t_i inside the look-ahead instead gives the
  same normalised weights for t_i > 0, since the meta-gradient is linear in each instance's loss), and
  ``none`` ones (the mixed-domain baseline, with ``domain_loss: none``);
- ``nonfinite``: a NaN or infinite loss stops the run naming the step and the examples;
- ``evaluation``: dev/test/predict steps, accuracy over all domains and per domain;
- ``checkpoint``: the entries a checkpoint records and the check that it fits the model.

Optimisation is manual (AdamW, linear warm-up then decay, gradient clipping by norm) so the meta
look-ahead can run inside ``training_step``; Trainer's ``gradient_clip_val`` and
``accumulate_grad_batches`` do not apply (use ``gradient_clip_norm``).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from metakd.backbones import DEFAULT_BACKBONE
from metakd.errors import ConfigError
from metakd.meta_teacher.checkpoint import (
    CLASS_KEY,
    CheckpointMismatchError,
    read_entries,
    resize_buffers,
    save_entries,
)
from metakd.meta_teacher.domain_loss import DomainAdversary, DomainLoss
from metakd.meta_teacher.evaluation import TeacherEvaluation
from metakd.meta_teacher.meta_weights import MetaWeighter
from metakd.meta_teacher.network import TeacherNetwork, TeacherOutput, attn_implementation, build_encoder
from metakd.meta_teacher.nonfinite import NonFiniteLossError, check_finite
from metakd.meta_teacher.transferability import (
    TransferabilityWeights,
    fit_datamodule,
    log_transferability,
    transferability_summary,
)
from metakd.prototypes import PrototypePooling, parse_transferability_scale
from metakd.score_coverage import missing_scores
from metakd.utils import adamw_param_groups
from metakd.validation import check_teacher_options
from metakd.weighting import HeldoutRule, MetaEngine, MetaWeights
from metakd.weighting.scopes import MetaParams

__all__ = [  # what a user of the teacher imports from here (the rest from its part)
    "CLASS_KEY",
    "CheckpointMismatchError",
    "MetaTeacher",
    "NonFiniteLossError",
    "TeacherOutput",
    "build_encoder",
]


Weighting = Literal["prototype", "meta", "prototype+meta", "none"]
PrototypeGranularity = Literal["domain", "domain_class"]


class MetaTeacher(TeacherEvaluation, pl.LightningModule):
    """Meta-KD meta-teacher (and, by configuration, the single- and mixed-domain teacher baselines).

    Args:
        backbone: encoder name: an alias of :mod:`metakd.backbones`, a hub id or a local path.
        num_labels: C (linked from the datamodule).
        num_domains: K (linked from the datamodule).
        domain_names: the datamodule's domain list (linked); names the per-domain metrics.
        label_names: the datamodule's label list (linked).
        weighting: instance weights: ``prototype`` (t_i), ``meta`` (learning to reweight),
            ``prototype+meta`` (their product) or ``none``.
        prototype_granularity: prototypes per ``domain`` or per ``domain_class`` (compared within
            the instance's class).
        prototype_pooling: h_i for the prototypes: ``masked_mean`` (padding masked) or
            ``padded_mean_skip_cls`` (the original scripts: after [CLS], padding to max_length included).
        domain_loss: ``corruption`` (permuted domain targets), ``reversal`` (DANN) or ``none``.
        domain_loss_weight: lambda_d.
        meta_every_n_steps: compute meta weights on every n-th optimiser step (ones in between).
        meta_inner_lr: learning rate of the inner differentiable SGD step (the normalised weights do
            not depend on it except numerically).
        meta_heldout: ``other_domains`` (Meta-KD rule) or ``all`` held-out examples.
        meta_engine: how the meta-gradient is computed: ``jvp`` (its closed form, one held-out backward
            and one forward-mode pass) or ``higher`` (the look-ahead by double backward); the same
            weights (:mod:`metakd.weighting`).
        meta_params: the parameters of the look-ahead: ``all``, ``head`` (the heads on the encoder) or
            ``last_k`` (the heads and the last ``meta_last_k`` encoder layers): cheaper, approximate.
        meta_last_k: the number of encoder layers of ``meta_params: last_k``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of the estimated optimiser steps spent in linear warm-up.
        dropout: dropout of the heads (the encoder keeps its config's dropout).
        gradient_clip_norm: clip the gradient norm to this value (None: no clipping).
        encoder_config: build a fresh encoder from ``BertConfig(**encoder_config)`` instead of the
            pre-trained weights (tests use tiny ones); the prototypes then come from that same fresh
            initialisation, which stands in for "pre-trained".
        attn_implementation: the encoder's attention kernel; forced to ``eager`` with meta weighting.
        transferability_cache: reuse t_i from the disk cache (``$METAKD_CACHE`` or
            ``~/.cache/metakd/transferability``) when the split, encoder and options match.
        transferability_scale: how t_i become instance weights (``prototype`` weighting):
            ``none`` (the paper: max(t_i, 0)), ``mean1`` (max(t_i, 0) over its mean on the training
            split) or ``temperature:<T>`` (N softmax(t / T), mean 1); see
            :func:`metakd.prototypes.rescale_transferability`. The buffer keeps the raw scores.
    """

    provides: frozenset[str] = frozenset({"logits", "hidden", "attention", "transferable"})
    """What :meth:`forward` can give a student: logits, hidden states, attentions, transferable knowledge."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        num_labels: int = 2,
        num_domains: int = 1,
        domain_names: list[str] | None = None,
        label_names: list[str] | None = None,
        weighting: Weighting = "prototype",
        prototype_granularity: PrototypeGranularity = "domain",
        prototype_pooling: PrototypePooling = "masked_mean",
        domain_loss: DomainLoss = "corruption",
        domain_loss_weight: float = 0.5,
        meta_every_n_steps: int = 1,
        meta_inner_lr: float = 1e-3,
        meta_heldout: HeldoutRule = "other_domains",
        meta_engine: MetaEngine = "jvp",
        meta_params: MetaParams = "all",
        meta_last_k: int = 1,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float = 0.1,
        gradient_clip_norm: float | None = 1.0,
        encoder_config: dict[str, Any] | None = None,
        attn_implementation: str | None = None,
        transferability_cache: bool = True,
        transferability_scale: str = "none",
    ) -> None:
        super().__init__()
        check_arguments(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        # logger=False: Lightning refuses to log model and datamodule hparams that share a key with
        # different values (e.g. a datamodule's label_names=None that it infers later); the hparams still
        # go into every checkpoint, and LightningCLI saves the full config.yaml.
        self.save_hyperparameters(logger=False)
        check_teacher_options(**self.hparams)  # learning rates, weights, ratios: ConfigError naming the key
        self.automatic_optimization = False

        self.domain = DomainAdversary(domain_loss, domain_loss_weight)
        self.transferability_weights = TransferabilityWeights(
            "prototype" in weighting, prototype_granularity, prototype_pooling, transferability_scale,
            transferability_cache,
        )  # fmt: skip
        self.network = self._build_network(
            eager_encoder(backbone, encoder_config, weighting, attn_implementation),
            num_labels, num_domains, dropout, self.domain.reverses_gradient,
        )  # fmt: skip
        self.meta = MetaWeighter(
            self.domain, meta_engine, self.network.meta_parameter_names(meta_params, meta_last_k),
            meta_inner_lr, meta_heldout, meta_every_n_steps,
        )  # fmt: skip
        # from_pretrained returns the encoder in eval mode; Lightning keeps module modes, so without
        # this the encoder's dropout would stay off during training.
        self.network.train()
        self.domain_names = list(domain_names) if domain_names else [f"domain{k}" for k in range(num_domains)]
        self.label_names = list(label_names) if label_names else [str(c) for c in range(num_labels)]

        # Filled at fit start (or from a checkpoint); sizes follow the data, see _load_from_state_dict.
        self.register_buffer("transferability", torch.ones(0))
        self.register_buffer("prototypes", torch.zeros(0))
        self.split_fingerprint: str | None = None
        self._transferability_options: dict[str, Any] | None = None
        self._fine_tuned = False  # restored from a checkpoint or fitted: not the pre-trained encoder
        self.init_evaluation(num_labels, num_domains)

    # ------------------------------------------------------------------ model
    def _build_network(
        self, encoder: nn.Module, num_labels: int, num_domains: int, dropout: float, reverse: bool
    ) -> nn.Module:
        """The encoder and heads (a subclass may build other heads on the same encoder)."""
        return TeacherNetwork(encoder, num_labels, num_domains, dropout, reverse)

    @property
    def encoder(self) -> nn.Module:
        """The transformer encoder (``self.network.encoder``)."""
        return self.network.encoder

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        domain_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TeacherOutput:
        """Encoder and heads; see :class:`TeacherOutput`."""
        return self.network(
            input_ids, attention_mask, token_type_ids, domain_ids, output_hidden_states, output_attentions
        )

    def _run(self, batch: dict[str, Tensor], network: Any = None) -> TeacherOutput:
        network = self.network if network is None else network
        return network(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
            domain_ids=batch["domain_ids"],
        )

    @property
    def _uses_prototypes(self) -> bool:
        return self.transferability_weights.enabled

    @property
    def _uses_meta(self) -> bool:
        return self.hparams.weighting in ("meta", "prototype+meta")

    # ------------------------------------------------------- transferability
    def on_fit_start(self) -> None:
        """Compute (or reuse) the transferability scores t_i before the first step."""
        datamodule = fit_datamodule(self.trainer)
        self.meta.reset()
        fingerprint, num_examples = datamodule.split_fingerprint, int(datamodule.num_pooled_train)
        wanted = self.transferability_weights.options()
        same = (
            self.split_fingerprint == fingerprint
            and self._transferability_options == wanted
            and self.transferability.shape == (num_examples,)
        )
        # The same split may load other examples (train_fraction, target_domain): reuse only full coverage.
        missing = missing_scores(self.transferability, datamodule) if same else None
        if same and not missing[0]:
            rank_zero_info("MetaTeacher: transferability scores restored with the model, not recomputed")
        else:
            # Restored or already fitted weights are fine-tuned: the prototypes need the pre-trained
            # encoder again (None).
            encoder = None if self._fine_tuned else self.network.encoder
            t, prototypes = self.transferability_weights.compute(
                datamodule, encoder, self.hparams, self.split_fingerprint, self.device, missing
            )
            self.transferability = t.to(self.device)
            self.prototypes = prototypes.to(self.device)
        self.split_fingerprint = fingerprint
        self._transferability_options = wanted
        self._fine_tuned = True  # from the first step on
        if self._uses_prototypes and self.trainer.is_global_zero:
            log_transferability(self.transferability, datamodule, self.domain_names, self.loggers)

    def transferability_summary(self, datamodule: Any) -> dict[str, float]:
        """mean/min/max of t per domain over the datamodule's training examples
        (keys ``transferability/<domain>_mean``, ``_min``, ``_max``)."""
        return transferability_summary(self.transferability, datamodule, self.domain_names)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_entries(
            checkpoint, type(self), self.hparams, self.split_fingerprint, self._transferability_options
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.split_fingerprint, self._transferability_options = read_entries(checkpoint, self.hparams)
        self._fine_tuned = True

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        # The buffers' sizes follow the training data, so a fresh model cannot know them: resize first.
        resize_buffers(self._buffers, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ---------------------------------------------------------------- training
    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_linear_schedule_with_warmup

        groups = adamw_param_groups(self.network.named_parameters(), self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.learning_rate)
        total = self.trainer.estimated_stepping_batches
        if not isinstance(total, int) and not float(total) < float("inf"):
            raise ConfigError(
                "the linear schedule needs a finite run: set trainer.max_epochs or trainer.max_steps"
            )
        total = int(total)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _prototype_weights(self, batch: dict[str, Tensor]) -> Tensor:
        """max(rescaled t_i, 0) of the batch's examples (:class:`TransferabilityWeights`)."""
        return self.transferability_weights.weights(
            self.transferability, batch["example_ids"], self.split_fingerprint
        )

    def meta_weights(
        self,
        batch: dict[str, Tensor],
        heldout: dict[str, Tensor],
        domain_targets: Tensor | None,
        engine: MetaEngine | None = None,
        meta_params: MetaParams | None = None,
        meta_last_k: int | None = None,
    ) -> MetaWeights:
        """The meta weights of ``batch`` against the held-out batch ``heldout`` (:mod:`metakd.weighting`):
        the look-ahead loss is the unweighted training loss, the held-out loss the classification CE.
        ``engine``, ``meta_params`` and ``meta_last_k`` override the hyperparameters (to compare them
        on the same batches, as ``benchmarks/speed.py`` does)."""
        hp = self.hparams
        param_names = self.meta.param_names
        if meta_params is not None or meta_last_k is not None:
            param_names = self.network.meta_parameter_names(
                meta_params or hp.meta_params, hp.meta_last_k if meta_last_k is None else meta_last_k
            )
        return self.meta.weights(self.network, self._run, batch, heldout, domain_targets, param_names, engine)

    def _meta_weights(self, batch: dict[str, Tensor], domain_targets: Tensor | None) -> Tensor:
        heldout = self.meta.heldout_batch(getattr(self.trainer, "datamodule", None), self.device)
        result = self.meta_weights(batch, heldout, domain_targets)
        batch_size = len(batch["labels"])
        self.log("train/meta_fallback", float(result.fallback_uniform), on_step=True, batch_size=batch_size)
        self.log(
            "train/meta_zero_frac", (result.weights == 0).float().mean(), on_step=True, batch_size=batch_size
        )
        return result.weights

    def instance_weights(self, batch: dict[str, Tensor], domain_targets: Tensor | None) -> Tensor:
        """w_i for this batch per ``weighting`` (see the module docstring)."""
        weights = torch.ones(batch["labels"].shape[0], device=self.device)
        if self._uses_prototypes:
            weights = weights * self._prototype_weights(batch)
        if self._uses_meta and self.meta.due(self.global_step):
            weights = weights * self._meta_weights(batch, domain_targets)
        return weights.detach()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        batch_size = batch["labels"].shape[0]
        domain_targets = self.domain.targets(batch)
        weights = self.instance_weights(batch, domain_targets)

        out = self._run(batch)
        loss = self.domain.loss(out, batch["labels"], domain_targets, weights)
        check_finite(
            "the training loss",
            loss.total,
            batch["example_ids"],
            self.global_step,
            self.current_epoch,
            batch_idx,
        )
        optimizer.zero_grad()
        self.manual_backward(self.domain.objective(loss, out, domain_targets))
        if self.hparams.gradient_clip_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.gradient_clip_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        scheduler.step()

        self.train_acc(out.logits.argmax(-1), batch["labels"])
        metrics = {
            "train/loss": loss.total,
            "train/loss_cls": loss.cls,
            "train/loss_domain": loss.domain,
            "train/weight_mean": weights.mean(),
            "train/weight_min": weights.min(),
            "train/weight_max": weights.max(),
            "train/lr": torch.tensor(scheduler.get_last_lr()[0]),
        }
        self.log_dict({k: v.detach() for k, v in metrics.items()}, on_step=True, batch_size=batch_size)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss.total.detach()


def check_arguments(**arguments: Any) -> None:
    """Refuse choices outside their ``Literal`` and inconsistent sizes (:class:`ConfigError`); warn that
    meta weighting replaces a non-eager attention kernel."""
    for name, choices in (
        ("weighting", Weighting), ("transferability_scale", None),
        ("prototype_granularity", PrototypeGranularity), ("prototype_pooling", PrototypePooling),
        ("domain_loss", DomainLoss), ("meta_heldout", HeldoutRule), ("meta_engine", MetaEngine),
        ("meta_params", MetaParams),
    ):  # fmt: skip
        if choices is None:
            parse_transferability_scale(arguments[name])  # ValueError naming the option
        elif arguments[name] not in choices.__args__:
            raise ConfigError(f"{name} must be one of {list(choices.__args__)}, got {arguments[name]!r}")
    num_labels, num_domains = arguments["num_labels"], arguments["num_domains"]
    if num_labels < 2 or num_domains < 1:
        raise ConfigError(f"need num_labels >= 2 and num_domains >= 1, got {num_labels} and {num_domains}")
    for name, n in (("domain_names", num_domains), ("label_names", num_labels)):
        names = arguments[name]
        if names is not None and len(names) != n:
            raise ConfigError(f"{name} has {len(names)} entries ({names}) but the model has {n}")
    weighting, attn = arguments["weighting"], arguments["attn_implementation"]
    if "meta" in weighting and attn not in (None, "eager"):
        warnings.warn(
            f"weighting={weighting!r} needs eager attention (sdpa has no double backward); "
            f"attn_implementation={attn!r} is replaced by 'eager'",
            stacklevel=3,
        )


def eager_encoder(
    backbone: str, encoder_config: dict[str, Any] | None, weighting: str, attn: str | None
) -> nn.Module:
    """:func:`build_encoder`, with eager attention when the weighting is meta (a double backward)."""
    attn = "eager" if "meta" in weighting else attn
    encoder = build_encoder(backbone, encoder_config, attn)
    if attn == "eager" and attn_implementation(encoder) not in (None, "eager"):
        raise ConfigError(
            f"backbone {backbone!r} came up with attention {attn_implementation(encoder)!r} instead of "
            f"'eager', which weighting={weighting!r} needs"
        )
    return encoder
