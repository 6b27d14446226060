"""The Meta-KD meta-teacher (teacher training): one encoder trained on all domains mixed.

Heads on the encoder (docs/METAKD.md): a classifier on the [CLS] state, a domain embedding E (K x H),
``corrupt_dense`` (H -> H) and a domain classifier (H -> K):

    c_i = masked mean of the last-layer states,   g_i = corrupt_dense(E[d_i] + c_i),
    u_i = dropout(tanh(g_i)),                      domain_logits_i = domain_classifier(u_i),
    L_T = (1/B) sum_i w_i [CE(logits_i, y_i) + lambda_d CE(domain_logits_i, d~_i)]

Instance weights w_i (``weighting``):

- ``prototype``: the transferability t_i of :mod:`metakd.prototypes`, computed once at the start of
  ``fit`` from the *pre-trained* encoder (the initial weights, before any step) over
  ``datamodule.train_eval_dataloader()``, cached on disk and kept in the buffers ``transferability``
  (indexed by ``example_ids``) and ``prototypes``. Negative t_i are clamped to 0 as weights (a
  negative weight would be gradient *ascent* on that instance); the buffer keeps the raw scores.
- ``meta``: learning-to-reweight weights of :mod:`metakd.weighting` every ``meta_every_n_steps``
  steps (ones on the other steps). The held-out batch is drawn from the *training* split by an
  independent iterator (a second ``datamodule.train_dataloader()``, its own shuffle): the dev split
  selects the model (``val/acc``) and must not feed a training signal. With ``meta_heldout:
  other_domains`` instance i is weighted by its effect on the held-out examples of the other domains,
  which also excludes i itself from its own held-out set. The look-ahead loss is the unweighted
  per-instance training loss, the held-out loss is the classification CE. ``meta_engine: jvp`` (the
  default) computes the look-ahead's meta-gradient in closed form, ``higher`` by double backward (the
  same weights, ``jvp`` is cheaper); ``meta_params: head`` / ``last_k`` restrict the look-ahead to the
  heads (and the last ``meta_last_k`` encoder layers): cheaper still, approximate weights.
- ``prototype+meta``: w_i = t_i * m_i. (Using t_i inside the look-ahead instead gives the same
  normalised weights for t_i > 0, since the meta-gradient is linear in each instance's loss.)
- ``none``: ones (the mixed-domain baseline, with ``domain_loss: none``).

Domain loss (``domain_loss``): ``corruption`` (targets: the batch's domain ids under a fresh
permutation), ``reversal`` (DANN: the head predicts the true domain, a gradient reversal layer sits
between u and the domain classifier) or ``none``.

Optimisation is manual (AdamW, linear warm-up then decay, gradient clipping by norm) so the meta
look-ahead can run inside ``training_step``; Trainer's ``gradient_clip_val`` and
``accumulate_grad_batches`` do not apply (use ``gradient_clip_norm``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from metakd.backbones import DEFAULT_BACKBONE, BackboneError, load_encoder
from metakd.errors import ConfigError, MetakdError
from metakd.losses import (
    domain_corruption_targets,
    per_instance_cross_entropy,
    reverse_gradient,
    teacher_loss_terms,
    weighted_teacher_loss,
)
from metakd.prototypes import (
    PrototypePooling,
    load_or_compute_transferability,
    masked_mean_pool,
    parse_transferability_scale,
    rescale_transferability,
)
from metakd.utils import adamw_param_groups
from metakd.validation import check_teacher_options
from metakd.weighting import HeldoutRule, MetaEngine, MetaWeights, meta_instance_weights

log = logging.getLogger(__name__)

Weighting = Literal["prototype", "meta", "prototype+meta", "none"]
DomainLoss = Literal["corruption", "reversal", "none"]
PrototypeGranularity = Literal["domain", "domain_class"]
MetaParams = Literal["all", "head", "last_k"]

# Hyperparameters a checkpoint must share with the model that loads it.
IDENTITY_HPARAMS = ("backbone", "num_domains", "num_labels", "domain_names", "label_names", "encoder_config")
IDENTITY_KEY = "metakd_teacher_identity"
# The teacher's class (``module.QualName``), so a loader can rebuild a subclass such as MultiTaskTeacher.
CLASS_KEY = "metakd_teacher_class"


class CheckpointMismatchError(MetakdError, ValueError):
    """A checkpoint trained for another backbone, domain set or label set."""


class NonFiniteLossError(MetakdError, FloatingPointError):
    """A NaN or infinite training loss; the message names the step and the batch's example_ids."""


@dataclass
class TeacherOutput:
    """What :meth:`MetaTeacher.forward` returns (docs/ARCHITECTURE.md).

    Attributes:
        logits: (B, C) classifier on the [CLS] state (the multi-task teacher: each example's domain head).
        domain_logits: (B, K) domain head on u = dropout(tanh(corrupt_dense(E[d] + c))); None for a
            teacher without a domain head (:class:`MultiTaskTeacher`).
        pooled: (B, H) c, masked mean of the last-layer token states.
        transferable: (B, H) g = corrupt_dense(E[d] + c), before tanh; None for a teacher without it
            (``"transferable" not in type(teacher).provides``).
        hidden_states: L+1 tensors (B, T, H) (embedding output, then each layer) or None.
        attentions: L tensors (B, heads, T, T) of attention probabilities or None.
    """

    logits: Tensor
    domain_logits: Tensor | None
    pooled: Tensor
    transferable: Tensor | None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


def build_encoder(
    backbone: str, encoder_config: dict[str, Any] | None = None, attn_implementation: str | None = None
) -> nn.Module:
    """The encoder: pre-trained ``backbone`` weights, or a fresh ``BertConfig(**encoder_config)``.

    The pooler is dropped (or frozen when the architecture has no switch): the classifier reads the
    raw [CLS] state, and unused trainable parameters would trouble DDP.
    """
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if encoder_config is not None:
            from transformers import AutoModel, BertConfig

            encoder = AutoModel.from_config(BertConfig(**encoder_config), add_pooling_layer=False, **kwargs)
        else:
            try:
                encoder = load_encoder(backbone, add_pooling_layer=False, **kwargs)
            except TypeError:  # an architecture without a pooler switch
                encoder = load_encoder(backbone, **kwargs)
    except (ValueError, ImportError) as err:
        if attn_implementation == "eager" and not isinstance(err, BackboneError):
            raise ConfigError(
                f"backbone {backbone!r} cannot be built with attn_implementation='eager', which the meta "
                f"weighting (a double backward through attention) needs: {err}. Use weighting 'prototype' "
                "or 'none' with this backbone."
            ) from err
        raise
    pooler = getattr(encoder, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    return encoder


def encoder_layers(encoder: nn.Module) -> tuple[str, int]:
    """(module path, count) of the encoder's stack of layers: the ``nn.ModuleList`` with
    ``config.num_hidden_layers`` entries (``encoder.layer`` in BERT)."""
    count = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, count
    raise ConfigError(
        "model.init_args.meta_params 'last_k' needs the encoder's layer stack (a ModuleList of "
        f"config.num_hidden_layers={count} layers); {type(encoder).__name__} has none. Use meta_params "
        "'all' or 'head'."
    )


def _attn_implementation(encoder: nn.Module) -> str | None:
    config = getattr(encoder, "config", None)
    return getattr(config, "_attn_implementation", None)


def use_eager_attention(encoder: nn.Module) -> None:
    """Switch ``encoder`` to eager attention (sdpa returns no attention probabilities)."""
    if _attn_implementation(encoder) == "eager":
        return
    if not hasattr(encoder, "set_attn_implementation"):
        raise ValueError(
            "attention probabilities need attn_implementation='eager'; build the teacher with "
            "attn_implementation='eager' (this transformers version cannot switch a loaded model)"
        )
    encoder.set_attn_implementation("eager")


class EncoderNetwork(nn.Module):
    """An encoder with heads on it (a plain module: what the meta look-ahead differentiates through).

    :meth:`forward` runs the encoder and hands its last-layer states to :meth:`heads`, which subclasses
    implement; ``encoder`` and ``dropout`` are set by them.
    """

    encoder: nn.Module
    dropout: nn.Module

    def meta_parameter_names(self, scope: MetaParams, last_k: int = 1) -> list[str] | None:
        """The parameters the meta look-ahead moves: ``all`` (None: every trainable one), ``head``
        (the heads on the encoder) or ``last_k`` (the heads and the encoder's last ``last_k`` layers)."""
        if scope == "all":
            return None
        trainable = [name for name, p in self.named_parameters() if p.requires_grad]
        names = [name for name in trainable if not name.startswith("encoder.")]
        if scope == "last_k":
            prefix, count = encoder_layers(self.encoder)
            if not 1 <= last_k <= count:
                raise ConfigError(
                    f"model.init_args.meta_last_k must be between 1 and the encoder's {count} layers, "
                    f"got {last_k}"
                )
            layers = tuple(f"encoder.{prefix}.{i}." for i in range(count - last_k, count))
            names += [name for name in trainable if name.startswith(layers)]
        return names

    def use_eager_attention(self) -> None:
        """Switch the encoder to eager attention (sdpa returns no attention probabilities)."""
        use_eager_attention(self.encoder)

    def heads(
        self, states: Tensor, attention_mask: Tensor, domain_ids: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(logits, domain_logits, pooled, transferable)`` from the last-layer states (B, T, H)."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        domain_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TeacherOutput:
        if domain_ids is None:
            raise ValueError(
                f"{type(self).__name__} needs domain_ids (the heads depend on each example's domain)"
            )
        if output_attentions:
            self.use_eager_attention()
        encoded = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits, domain_logits, pooled, transferable = self.heads(
            encoded.last_hidden_state, attention_mask, domain_ids
        )
        return TeacherOutput(
            logits=logits,
            domain_logits=domain_logits,
            pooled=pooled,
            transferable=transferable,
            hidden_states=tuple(encoded.hidden_states) if output_hidden_states else None,
            attentions=tuple(encoded.attentions) if output_attentions else None,
        )


class TeacherNetwork(EncoderNetwork):
    """Encoder and Meta-KD heads (see the module docstring)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        num_domains: int,
        dropout: float,
        reverse_domain_gradient: bool,
    ) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        self.domain_embedding = nn.Embedding(num_domains, hidden)
        self.corrupt_dense = nn.Linear(hidden, hidden)
        self.domain_classifier = nn.Linear(hidden, num_domains)
        self.reverse_domain_gradient = reverse_domain_gradient

    def heads(
        self, states: Tensor, attention_mask: Tensor, domain_ids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits = self.classifier(self.dropout(states[:, 0]))
        pooled = masked_mean_pool(states, attention_mask)
        transferable = self.corrupt_dense(self.domain_embedding(domain_ids) + pooled)
        u = self.dropout(torch.tanh(transferable))
        if self.reverse_domain_gradient:
            u = reverse_gradient(u)
        return logits, self.domain_classifier(u), pooled, transferable


class PerDomainAccuracy(torchmetrics.Metric):
    """Accuracy per domain; NaN for a domain without examples (DDP-safe: sums of counts)."""

    full_state_update = False

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros(num_domains), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_domains), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, domain_ids: Tensor) -> None:
        self.correct.index_add_(0, domain_ids, (preds == target).float())
        self.total.index_add_(0, domain_ids, torch.ones_like(domain_ids, dtype=torch.float))

    def compute(self) -> Tensor:
        return torch.where(self.total > 0, self.correct / self.total.clamp_min(1), torch.nan)


def check_checkpoint_compatible(stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` unless backbone, domains and labels agree."""
    problems = []
    for key in IDENTITY_HPARAMS:
        if key not in stored:
            continue
        old, new = stored[key], current.get(key)
        if key in ("domain_names", "label_names") and (old is None or new is None):
            continue
        if key == "encoder_config" and old is not None and new is not None:
            old, new = dict(old), dict(new)
        if old != new:
            problems.append(f"{key}: checkpoint has {old!r}, this model has {new!r}")
    if problems:
        raise CheckpointMismatchError(
            "refusing a MetaTeacher checkpoint made for another model: "
            + "; ".join(problems)
            + ". Use the datamodule (domains, labels) and backbone the checkpoint was trained with."
        )


class MetaTeacher(pl.LightningModule):
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
        _check_choice("weighting", weighting, Weighting)
        parse_transferability_scale(transferability_scale)
        _check_choice("prototype_granularity", prototype_granularity, PrototypeGranularity)
        _check_choice("prototype_pooling", prototype_pooling, PrototypePooling)
        _check_choice("domain_loss", domain_loss, DomainLoss)
        _check_choice("meta_heldout", meta_heldout, HeldoutRule)
        _check_choice("meta_engine", meta_engine, MetaEngine)
        _check_choice("meta_params", meta_params, MetaParams)
        if num_labels < 2 or num_domains < 1:
            raise ConfigError(
                f"need num_labels >= 2 and num_domains >= 1, got {num_labels} and {num_domains}"
            )
        for name, names, n in (
            ("domain_names", domain_names, num_domains),
            ("label_names", label_names, num_labels),
        ):
            if names is not None and len(names) != n:
                raise ConfigError(f"{name} has {len(names)} entries ({names}) but the model has {n}")
        if "meta" in weighting and attn_implementation not in (None, "eager"):
            warnings.warn(
                f"weighting={weighting!r} needs eager attention (sdpa has no double backward); "
                f"attn_implementation={attn_implementation!r} is replaced by 'eager'",
                stacklevel=2,
            )
        # logger=False: Lightning refuses to log model and datamodule hparams that share a key with
        # different values (e.g. a datamodule's label_names=None that it infers later); the hparams still
        # go into every checkpoint, and LightningCLI saves the full config.yaml.
        self.save_hyperparameters(logger=False)
        check_teacher_options(**self.hparams)  # learning rates, weights, ratios: ConfigError naming the key
        self.automatic_optimization = False

        attn = "eager" if "meta" in weighting else attn_implementation
        encoder = build_encoder(backbone, encoder_config, attn)
        if attn == "eager" and _attn_implementation(encoder) not in (None, "eager"):
            raise ConfigError(
                f"backbone {backbone!r} came up with attention {_attn_implementation(encoder)!r} instead of "
                f"'eager', which weighting={weighting!r} needs"
            )
        self.network = self._build_network(
            encoder, num_labels, num_domains, dropout, domain_loss == "reversal"
        )
        self._meta_param_names = self.network.meta_parameter_names(meta_params, meta_last_k)
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
        self._restored_from_checkpoint = False
        self._heldout_iterator: Any = None
        self._scaled_weights: tuple[Tensor, Tensor] | None = None  # (t it was made from, weights)

        self.train_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_domain_acc = PerDomainAccuracy(num_domains)
        self.test_domain_acc = PerDomainAccuracy(num_domains)

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
        return self.hparams.weighting in ("prototype", "prototype+meta")

    @property
    def _uses_meta(self) -> bool:
        return self.hparams.weighting in ("meta", "prototype+meta")

    # ------------------------------------------------------- transferability
    def _wanted_transferability_options(self) -> dict[str, Any]:
        if not self._uses_prototypes:
            return {"prototypes": False}
        return {
            "prototypes": True,
            "granularity": self.hparams.prototype_granularity,
            "pooling": self.hparams.prototype_pooling,
        }

    def on_fit_start(self) -> None:
        """Compute (or reuse) the transferability scores t_i before the first step."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "split_fingerprint"):
            raise ConfigError(
                "MetaTeacher needs a LightningDataModule following docs/ARCHITECTURE.md (split_fingerprint, "
                "num_pooled_train, train_eval_dataloader); pass it with trainer.fit(model, datamodule=...)"
            )
        self._heldout_iterator = None
        fingerprint, num_examples = datamodule.split_fingerprint, int(datamodule.num_pooled_train)
        if getattr(datamodule, "num_train_ids", None) not in (None, num_examples):
            raise ConfigError(
                "data.init_args.augment: MetaTeacher trains on the pooled training split; "
                "data.init_args.augment (augmented examples) is for students: remove it from the teacher's "
                "data config"
            )
        wanted = self._wanted_transferability_options()
        if (
            self.split_fingerprint == fingerprint
            and self._transferability_options == wanted
            and self.transferability.shape == (num_examples,)
        ):
            rank_zero_info("MetaTeacher: transferability scores restored with the model, not recomputed")
        elif not self._uses_prototypes:
            self.transferability = torch.ones(num_examples, device=self.device)
            self.prototypes = torch.zeros(0, device=self.device)
        else:
            t, prototypes = self._compute_transferability(datamodule, num_examples)
            self.transferability = t.to(self.device)
            self.prototypes = prototypes.to(self.device)
        self.split_fingerprint = fingerprint
        self._transferability_options = wanted
        self._log_transferability(datamodule)

    def _compute_transferability(self, datamodule: Any, num_examples: int) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        if self._restored_from_checkpoint:
            # The weights are fine-tuned: the prototypes need the pre-trained encoder again.
            if hp.encoder_config is not None:
                raise ConfigError(
                    "cannot compute transferability scores for this data: the checkpoint's encoder was a "
                    "fresh random initialisation (encoder_config), whose initial weights are gone, and its "
                    f"stored scores are for split_fingerprint {self.split_fingerprint!r}, not "
                    f"{datamodule.split_fingerprint!r}"
                )
            encoder = build_encoder(hp.backbone, None, None).to(self.device)
        else:
            encoder = self.network.encoder
        t, prototypes, from_cache = load_or_compute_transferability(
            encoder,
            datamodule.train_eval_dataloader(),
            split_fingerprint=datamodule.split_fingerprint,
            backbone=hp.backbone,
            max_length=getattr(datamodule, "max_length", None),
            num_examples=num_examples,
            num_domains=hp.num_domains,
            num_labels=hp.num_labels,
            by_class=hp.prototype_granularity == "domain_class",
            pooling=hp.prototype_pooling,
            use_cache=hp.transferability_cache,
            device=self.device,
        )
        rank_zero_info(
            f"MetaTeacher: transferability scores {'read from cache' if from_cache else 'computed'}"
        )
        return t, prototypes

    def transferability_summary(self, datamodule: Any) -> dict[str, float]:
        """mean/min/max of t per domain over the datamodule's training examples.

        Keys ``transferability/<domain>_mean`` (``_min``, ``_max``).
        """
        domains, ids = [], []
        for batch in datamodule.train_eval_dataloader():
            domains.append(batch["domain_ids"])
            ids.append(batch["example_ids"])
        domain_ids, example_ids = torch.cat(domains), torch.cat(ids)
        t = self.transferability.detach().cpu()[example_ids]
        summary = {}
        for k, name in enumerate(self.domain_names):
            values = t[(domain_ids == k) & torch.isfinite(t)]
            if values.numel():
                summary[f"transferability/{name}_mean"] = float(values.mean())
                summary[f"transferability/{name}_min"] = float(values.min())
                summary[f"transferability/{name}_max"] = float(values.max())
        return summary

    def _log_transferability(self, datamodule: Any) -> None:
        if not self._uses_prototypes or not self.trainer.is_global_zero:
            return
        t = self.transferability.detach().cpu()
        finite = t[torch.isfinite(t)]
        summary = self.transferability_summary(datamodule)
        for logger in self.loggers:
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

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["split_fingerprint"] = self.split_fingerprint
        checkpoint["transferability_options"] = self._transferability_options
        # A copy that load_from_checkpoint(**overrides) does not rewrite (it updates hyper_parameters).
        checkpoint[IDENTITY_KEY] = {key: self.hparams[key] for key in IDENTITY_HPARAMS}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(IDENTITY_KEY, checkpoint.get("hyper_parameters", {}))
        check_checkpoint_compatible(stored, dict(self.hparams))
        self.split_fingerprint = checkpoint.get("split_fingerprint")
        self._transferability_options = checkpoint.get("transferability_options")
        self._restored_from_checkpoint = True

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The buffers' sizes follow the training data, so a fresh model cannot know them: resize first.
        for name in ("transferability", "prototypes"):
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(stored, device=self._buffers[name].device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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

    def _domain_targets(self, batch: dict[str, Tensor]) -> Tensor | None:
        mode = self.hparams.domain_loss
        if mode == "corruption":
            return domain_corruption_targets(batch["domain_ids"])
        if mode == "reversal":
            return batch["domain_ids"]
        return None

    def _prototype_weights(self, batch: dict[str, Tensor]) -> Tensor:
        ids = batch["example_ids"]
        if self.transferability.numel() == 0:
            raise RuntimeError("transferability scores are missing: they are computed in on_fit_start")
        if int(ids.max()) >= self.transferability.numel():
            raise IndexError(
                f"example_ids up to {int(ids.max())} but transferability has {self.transferability.numel()} "
                "entries: the batch does not come from the split the scores were computed on"
            )
        t = self.transferability[ids]
        if not torch.isfinite(t).all():
            bad = ids[~torch.isfinite(t)].tolist()
            raise RuntimeError(
                f"no transferability score for example_ids {bad}: they were not in the train_eval_dataloader "
                f"the scores were computed on (split_fingerprint {self.split_fingerprint!r})"
            )
        return self._transferability_weights()[ids].clamp_min(0.0)

    def _transferability_weights(self) -> Tensor:
        """The scores of the whole training split rescaled by ``transferability_scale`` (made once per
        scores buffer)."""
        mode = self.hparams.get("transferability_scale", "none")
        if mode == "none":
            return self.transferability
        if self._scaled_weights is None or self._scaled_weights[0] is not self.transferability:
            scaled = rescale_transferability(self.transferability, mode)
            self._scaled_weights = (self.transferability, scaled)
        return self._scaled_weights[1]

    def _next_heldout_batch(self) -> dict[str, Tensor]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ConfigError("meta weighting draws its held-out batch from the datamodule's training split")
        for _ in range(2):
            if self._heldout_iterator is None:
                self._heldout_iterator = iter(datamodule.train_dataloader())
            try:
                batch = next(self._heldout_iterator)
                return {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
            except StopIteration:
                self._heldout_iterator = None
        raise ConfigError(
            "the datamodule's train_dataloader() is empty: no held-out batch for meta weighting"
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
        lam = hp.domain_loss_weight
        param_names = self._meta_param_names
        if meta_params is not None or meta_last_k is not None:
            param_names = self.network.meta_parameter_names(
                meta_params or hp.meta_params, hp.meta_last_k if meta_last_k is None else meta_last_k
            )
        train = dict(batch) if domain_targets is None else {**batch, "domain_targets": domain_targets}

        def rows_of(tensors: dict[str, Tensor], rows: Tensor | None) -> dict[str, Tensor]:
            return tensors if rows is None else {k: v[rows] for k, v in tensors.items()}

        def train_losses(network: Any, rows: Tensor | None) -> Tensor:
            part = rows_of(train, rows)
            out = self._run(part, network)
            cls, dom = teacher_loss_terms(
                out.logits, part["labels"], out.domain_logits, part.get("domain_targets"), lam
            )
            return cls + lam * dom

        def heldout_losses(network: Any, rows: Tensor | None) -> Tensor:
            part = rows_of(heldout, rows)
            return per_instance_cross_entropy(self._run(part, network).logits, part["labels"])

        return meta_instance_weights(
            self.network,
            train_losses,
            heldout_losses,
            inner_lr=hp.meta_inner_lr,
            heldout=hp.meta_heldout,
            train_domains=batch["domain_ids"],
            heldout_domains=heldout["domain_ids"],
            engine=engine or hp.meta_engine,
            param_names=param_names,
        )

    def _meta_weights(self, batch: dict[str, Tensor], domain_targets: Tensor | None) -> Tensor:
        result = self.meta_weights(batch, self._next_heldout_batch(), domain_targets)
        self.log(
            "train/meta_fallback",
            float(result.fallback_uniform),
            on_step=True,
            batch_size=len(batch["labels"]),
        )
        self.log(
            "train/meta_zero_frac",
            (result.weights == 0).float().mean(),
            on_step=True,
            batch_size=len(batch["labels"]),
        )
        return result.weights

    def instance_weights(self, batch: dict[str, Tensor], domain_targets: Tensor | None) -> Tensor:
        """w_i for this batch per ``weighting`` (see the module docstring)."""
        weights = torch.ones(batch["labels"].shape[0], device=self.device)
        if self._uses_prototypes:
            weights = weights * self._prototype_weights(batch)
        if self._uses_meta and self.global_step % self.hparams.meta_every_n_steps == 0:
            weights = weights * self._meta_weights(batch, domain_targets)
        return weights.detach()

    def _raise_not_finite(self, what: str, value: Tensor, batch: dict[str, Tensor], batch_idx: int) -> None:
        raise NonFiniteLossError(
            f"{what} is {value.item()} at global step {self.global_step} (epoch {self.current_epoch}, batch "
            f"{batch_idx}); example_ids of the batch: {batch['example_ids'].tolist()}. Lower the learning "
            "rate, check these examples, or keep fp32."
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        batch_size = batch["labels"].shape[0]
        domain_targets = self._domain_targets(batch)
        weights = self.instance_weights(batch, domain_targets)

        out = self._run(batch)
        loss = weighted_teacher_loss(
            out.logits,
            batch["labels"],
            out.domain_logits if domain_targets is not None else None,
            domain_targets,
            weights,
            self.hparams.domain_loss_weight,
        )
        if not torch.isfinite(loss.total):
            self._raise_not_finite("the training loss", loss.total, batch, batch_idx)
        objective = loss.total
        if domain_targets is None and out.domain_logits is not None:
            # Without a domain loss the domain head gets a zero gradient, so DDP (which expects every
            # trainable parameter in the graph) needs no find_unused_parameters.
            objective = objective + 0.0 * out.domain_logits.sum()

        optimizer.zero_grad()
        self.manual_backward(objective)
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

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict[str, Tensor], split: str) -> Tensor:
        """Update the split's metrics with one batch; returns the logits."""
        out = self._run(batch)
        preds = out.logits.argmax(-1)
        labels = batch["labels"]
        accuracy = self.val_acc if split == "val" else self.test_acc
        per_domain = self.val_domain_acc if split == "val" else self.test_domain_acc
        accuracy.update(preds, labels)
        per_domain.update(preds, labels, batch["domain_ids"])
        loss = per_instance_cross_entropy(out.logits, labels).mean()
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=labels.shape[0], sync_dist=True)
        self.log(f"{split}/acc", accuracy, on_epoch=True, batch_size=labels.shape[0])
        return out.logits

    def _log_domain_accuracy(self, split: str) -> None:
        metric = self.val_domain_acc if split == "val" else self.test_domain_acc
        values = metric.compute().reshape(-1)  # torchmetrics squeezes a one-domain result to 0-d
        metric.reset()
        for name, value in zip(self.domain_names, values):
            if torch.isfinite(value):
                self.log(f"{split}/acc_{name}", value)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_domain_accuracy("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Test metrics of one batch; returns the rows' ``example_ids``, ``domain_ids``, ``labels`` and
        ``logits`` (what :class:`metakd.pipeline.PredictionsWriter` saves per example)."""
        logits = self._evaluate(batch, "test")
        return {
            "example_ids": batch["example_ids"],
            "domain_ids": batch["domain_ids"],
            "labels": batch["labels"],
            "logits": logits.detach(),
        }

    def on_test_epoch_end(self) -> None:
        self._log_domain_accuracy("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = self._run(batch)
        return {
            "example_ids": batch["example_ids"],
            "domain_ids": batch["domain_ids"],
            "probs": out.logits.softmax(-1),
        }


def _check_choice(name: str, value: Any, choices: Any) -> None:
    allowed = choices.__args__
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
