"""The Meta-KD student: a small BERT distilled from a frozen MetaTeacher on one target domain.

Training objective (see ``metakd.distill_losses`` for the formulas):

- stage ``intermediate`` (part 1): ``L_1 = (1/B) sum_i w_i (L_hid,i + L_att,i + lambda_tk L_tk,i)``
  with ``w_i = (1 + t_i) sigma_i`` (``instance_weighting``) and the layer matches of the recipe
  (``metakd.recipe``; default: the uniform map). ``L_tk`` matches the teacher's transferable
  knowledge ``g = corrupt_dense(E[d] + c)`` with ``transferable_head(masked mean of the student's
  last layer)`` (a ``Linear(d_S, d_T)``; the teacher's domain term is constant on a single target
  domain, so the head's bias can absorb it).
- stage ``prediction`` (part 2): ``L_2 = (1/B) sum_i soft_CE_i(T) [* T^2] + hard_label_weight * CE``.
- ``both``: stage 1 for ``intermediate_epochs`` epochs, then stage 2, in one run.

Baselines by configuration (``distillation``):

- ``meta``: the above (defaults: instance weighting and transferable knowledge on);
- ``tinybert``: layers + logits, no instance weights, no transferable term;
- ``vanilla``: logits only (stage ``prediction``), any teacher;
- ``none``: fine-tuning with CE only, no teacher.

The student is a ``BertForSequenceClassification``-compatible HF model held in ``self.model`` so
that ``python -m metakd export`` writes exactly the trained network. The teacher is loaded from its
checkpoint, frozen and kept out of the module tree: it is not in the student's ``state_dict``,
optimiser or DDP wrapper.

Model selection: ``val/acc`` is the accuracy on the target domain's dev examples (rows of other
domains are ignored, whether or not the datamodule filtered them), ``test/acc`` likewise. The
classifier is not trained in stage 1, so during stage-1 epochs ``val/acc`` is logged as 0 (the real
value as ``val/stage1_acc``): ``ModelCheckpoint(monitor="val/acc")`` then selects among stage-2
epochs only. A stage-1-only run has nothing to select: start stage 2 from its ``last.ckpt``.

DDP: stage 1 leaves the classifier unused and stage 2 the projections, so a ``both`` or
``intermediate`` run under DDP needs ``strategy: ddp_find_unused_parameters_true``. The teacher is
never wrapped; each process holds its own copy and its own teacher-output cache.

Learning rates: ``intermediate_lr`` (5e-5, the original stage-1 value) while the stage is
``intermediate`` and ``prediction_lr`` (3e-5) while it is ``prediction``; constant, as the original.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from metakd.backbones import DEFAULT_BACKBONE, load_tokenizer, resolve_backbone
from metakd.distill_losses import (
    domain_expertise,
    instance_weights,
    soft_cross_entropy,
    transferable_mse,
    weighted_intermediate_loss,
)
from metakd.recipe import (
    LayerMatch,
    build_projections,
    coerce_match,
    match_losses,
    needs_attentions,
    uniform_layer_map,
    validate_matches,
)

log = logging.getLogger(__name__)

Distillation = Literal["meta", "tinybert", "vanilla", "none"]
Stage = Literal["intermediate", "prediction", "both"]
CacheMode = Literal["none", "logits", "all"]

CHECKPOINT_KEY = "metakd_student"
"""Key of the student's export metadata in its Lightning checkpoint (HF config, labels, tokenizer)."""

_PRESETS: dict[str, dict[str, Any]] = {
    "meta": {"instance_weighting": True, "use_transferable": True, "stage": "both"},
    "tinybert": {"instance_weighting": False, "use_transferable": False, "stage": "both"},
    "vanilla": {"instance_weighting": False, "use_transferable": False, "stage": "prediction"},
    "none": {"instance_weighting": False, "use_transferable": False, "stage": "prediction"},
}


class StudentConfigError(ValueError):
    """An inconsistent student / teacher / data configuration."""


class TeacherCheckpointError(StudentConfigError):
    """A teacher checkpoint that is missing, unreadable or not a MetaTeacher."""


# --------------------------------------------------------------------------------------------------
# helpers


@lru_cache(maxsize=16)
def tokenizer_signature(name: str) -> tuple[str, int, str]:
    """``(name_or_path, vocabulary size, sha256 of the vocabulary)`` of a backbone's tokenizer."""
    tokenizer = load_tokenizer(name)
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return str(getattr(tokenizer, "name_or_path", name)), len(tokenizer), digest


def check_same_tokenizer(name_a: str, role_a: str, name_b: str, role_b: str) -> None:
    """Raise :class:`StudentConfigError` unless two backbones tokenize identically (same vocabulary)."""
    if name_a == name_b:
        return
    sig_a, sig_b = tokenizer_signature(name_a), tokenizer_signature(name_b)
    if sig_a[1:] != sig_b[1:]:
        raise StudentConfigError(
            f"tokenizer mismatch: the {role_a} uses {name_a!r} ({sig_a[0]}, vocabulary {sig_a[1]}) but the "
            f"{role_b} uses {name_b!r} ({sig_b[0]}, vocabulary {sig_b[1]}); the student, its data and its "
            "teacher must share one tokenizer"
        )


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (keys the teacher-output cache by the exact teacher checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(path: str) -> nn.Module:
    """``MetaTeacher.load_from_checkpoint(path, map_location="cpu")``, frozen, with clear errors."""
    from metakd.teacher import MetaTeacher

    if not path or not Path(path).is_file():
        raise TeacherCheckpointError(
            f"teacher checkpoint not found: {path!r} (model.teacher_ckpt must name a MetaTeacher .ckpt "
            "written by `python -m metakd fit` with a MetaTeacher config)"
        )
    # LightningCLI instantiates the Student inside a context that hands *its* init args to every
    # save_hyperparameters() call; the nested teacher must record its own, so leave that context here.
    from pytorch_lightning.core.mixins import hparams_mixin

    given = getattr(hparams_mixin, "_given_hyperparameters", None)
    token = given.set(None) if given is not None else None
    try:
        teacher = MetaTeacher.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, foreign checkpoint, missing hyperparameters
        raise TeacherCheckpointError(
            f"cannot load the teacher checkpoint {path!r} as a MetaTeacher ({type(err).__name__}: {err})"
        ) from err
    finally:
        if token is not None:
            given.reset(token)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _teacher_encoder_config(teacher: nn.Module) -> Any:
    encoder = getattr(teacher, "encoder", None)
    config = getattr(encoder, "config", None)
    if config is None:
        raise StudentConfigError("the teacher exposes no `encoder.config` (HF encoder expected)")
    return config


def _use_eager_attention(model: nn.Module) -> None:
    """Attention maps need eager attention (sdpa returns none)."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


def build_student_model(
    num_labels: int,
    label_names: Sequence[str],
    tokenizer_name: str,
    student_backbone: str = DEFAULT_BACKBONE,
    student_layers: list[int] | int | None = None,
    student_config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A ``BertForSequenceClassification``-layout model: a fresh config, or a pretrained backbone
    (optionally cut to a subset of its layers, e.g. ``[0, 5]`` or ``2`` for the first two)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    id2label = {i: name for i, name in enumerate(label_names)}
    label2id = {name: i for i, name in id2label.items()}
    if student_config is not None:
        if student_layers is not None:
            raise StudentConfigError("give either student_config (a fresh model) or student_layers, not both")
        options = dict(student_config)
        _, vocab_size, _ = tokenizer_signature(tokenizer_name)
        options.setdefault("vocab_size", vocab_size)
        if options["vocab_size"] < vocab_size:
            raise StudentConfigError(
                f"student_config.vocab_size={options['vocab_size']} is smaller than the tokenizer "
                f"{tokenizer_name!r} ({vocab_size} tokens)"
            )
        pad_token_id = load_tokenizer(tokenizer_name).pad_token_id
        if pad_token_id is not None:
            options.setdefault("pad_token_id", pad_token_id)
        try:
            config = BertConfig(num_labels=num_labels, id2label=id2label, label2id=label2id, **options)
        except TypeError as err:
            raise StudentConfigError(f"invalid student_config {options}: {err}") from err
        return BertForSequenceClassification(config)

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_backbone(student_backbone), num_labels=num_labels, id2label=id2label, label2id=label2id
    )
    if student_layers is not None:
        layers = model.base_model.encoder.layer
        keep = list(range(student_layers)) if isinstance(student_layers, int) else list(student_layers)
        if not keep or any(not 0 <= i < len(layers) for i in keep) or len(set(keep)) != len(keep):
            raise StudentConfigError(
                f"student_layers={student_layers!r}: expected distinct layer indices in 0..{len(layers) - 1} "
                f"(or a count 1..{len(layers)}) of {student_backbone!r}, which has {len(layers)} layers"
            )
        model.base_model.encoder.layer = nn.ModuleList([layers[i] for i in keep])
        for new_index, layer in enumerate(model.base_model.encoder.layer):
            attention = getattr(getattr(layer, "attention", None), "self", None)
            if attention is not None and hasattr(attention, "layer_idx"):
                attention.layer_idx = new_index
        model.config.num_hidden_layers = len(keep)
    # from_pretrained returns the model in eval mode and Lightning keeps each module's mode: without
    # this the student would train with dropout off.
    return model.train()


@dataclass
class CachedTeacherOutput:
    """The teacher outputs a training step needs (a subset of ``TeacherOutput``)."""

    logits: Tensor
    transferable: Tensor | None = None
    hidden_states: tuple[Tensor | None, ...] | None = None
    attentions: tuple[Tensor | None, ...] | None = None


class TeacherOutputCache:
    """Teacher outputs on the training set, by ``example_ids``.

    The teacher is frozen and in eval mode, so its outputs are deterministic and caching is exact
    (up to float rounding across different padding lengths). ``logits`` keeps a (N, C) table;
    ``all`` also keeps, per example, the token features the recipe reads, trimmed to the example's
    length (memory heavy: use it for small target domains).
    """

    def __init__(self, mode: CacheMode, num_examples: int, num_labels: int) -> None:
        self.mode = mode
        self.key: str | None = None
        self.logits = torch.zeros(num_examples, num_labels)
        self.filled = torch.zeros(num_examples, dtype=torch.bool)
        self.features: dict[int, tuple[Tensor | None, tuple, tuple]] = {}

    def lookup(
        self, example_ids: Tensor, attention_mask: Tensor, need_features: bool
    ) -> CachedTeacherOutput | None:
        """Cached outputs for a batch, or None when any example (or needed feature) is missing."""
        ids = example_ids.cpu()
        if self.mode == "none" or not bool(self.filled[ids].all()):
            return None
        device = attention_mask.device
        logits = self.logits[ids].to(device)
        if not need_features:
            return CachedTeacherOutput(logits=logits)
        if self.mode != "all" or any(int(i) not in self.features for i in ids):
            return None
        length = attention_mask.shape[1]
        rows = [self.features[int(i)] for i in ids]
        transferable = None if rows[0][0] is None else torch.stack([r[0] for r in rows]).to(device)
        hidden = tuple(
            None if rows[0][1][k] is None else _pad_stack([r[1][k] for r in rows], length, (0,)).to(device)
            for k in range(len(rows[0][1]))
        )
        attentions = tuple(
            None if rows[0][2][k] is None else _pad_stack([r[2][k] for r in rows], length, (1, 2)).to(device)
            for k in range(len(rows[0][2]))
        )
        return CachedTeacherOutput(logits, transferable, hidden, attentions)

    def store(self, example_ids: Tensor, attention_mask: Tensor, output: CachedTeacherOutput) -> None:
        """Remember a batch's teacher outputs."""
        if self.mode == "none":
            return
        ids = example_ids.cpu()
        self.logits[ids] = output.logits.detach().float().cpu()
        self.filled[ids] = True
        if self.mode != "all" or output.hidden_states is None:
            return
        lengths = attention_mask.sum(dim=1).cpu().tolist()
        for row, (example_id, n) in enumerate(zip(ids.tolist(), lengths)):
            n = int(n)
            transferable = None if output.transferable is None else output.transferable[row].detach().cpu()
            hidden = tuple(None if h is None else h[row, :n].detach().cpu() for h in output.hidden_states)
            attentions = tuple(
                None if a is None else a[row, :, :n, :n].detach().cpu() for a in (output.attentions or ())
            )
            self.features[example_id] = (transferable, hidden, attentions)

    def reset(self, key: str | None) -> None:
        """Empty the cache and bind it to a new key."""
        self.key = key
        self.logits.zero_()
        self.filled.zero_()
        self.features.clear()


def _pad_stack(tensors: list[Tensor], length: int, dims: tuple[int, ...]) -> Tensor:
    """Zero-pad each tensor along ``dims`` (sequence axes) to ``length`` and stack."""
    padded = []
    for tensor in tensors:
        pad: list[int] = []
        for dim in reversed(range(tensor.dim())):
            pad.extend([0, length - tensor.shape[dim]] if dim in dims else [0, 0])
        padded.append(F.pad(tensor, pad))
    return torch.stack(padded)


# --------------------------------------------------------------------------------------------------
# the LightningModule


class Student(pl.LightningModule):
    """Meta-KD student (and the no-KD / vanilla-KD / TinyBERT-KD baselines).

    Args:
        teacher_ckpt: path to a ``MetaTeacher`` checkpoint; None only for ``distillation="none"``.
        num_labels, num_domains, domain_names, label_names: the data's label and domain sets (linked
            from the datamodule); the label set must equal the teacher's.
        target_domain: the domain the student is trained and selected on (linked from the datamodule;
            None = every domain of the data). Must be one of the teacher's domains unless
            ``teacher_domain`` names the teacher domain to use instead (zero-shot teachers).
        tokenizer_name: backbone name the data is tokenized with (linked from ``data.backbone``);
            defaults to the teacher's backbone. Must have the teacher's vocabulary.
        student_backbone: pretrained backbone of the student (ignored with ``student_config``).
        student_layers: keep these layers of ``student_backbone`` (e.g. ``[0, 5]``), or an int n for
            the first n; None keeps all.
        student_config: ``BertConfig`` keyword arguments of a freshly initialised student
            (e.g. ``{num_hidden_layers: 4, hidden_size: 312, num_attention_heads: 12,
            intermediate_size: 1200}``); ``vocab_size`` defaults to the tokenizer's.
        distillation: ``meta`` | ``tinybert`` | ``vanilla`` | ``none`` (see the module docstring).
        stage: ``intermediate`` | ``prediction`` | ``both``; None = the preset (``both`` for meta and
            tinybert, ``prediction`` for vanilla and none).
        intermediate_epochs: with ``both``, epochs of stage 1 before stage 2 (trainer.max_epochs must
            be larger).
        init_from: a Student checkpoint (e.g. a stage-1 run's ``last.ckpt``) to start from; weights
            only (no optimiser state, no epoch counter).
        matches: the layer-match recipe (``metakd.recipe.LayerMatch`` list); None = uniform map.
        lambda_tk: weight of the transferable-knowledge loss in ``L_1``.
        temperature: softmax temperature T of the prediction-layer loss.
        t2_scaling: multiply the prediction-layer loss by T^2.
        hard_label_weight: weight of a hard-label CE added to ``L_2`` (0 = pure distillation).
        instance_weighting: weight ``L_1`` per instance by ``(1 + t_i) sigma_i``; None = preset.
        use_transferable: include ``L_tk`` in ``L_1``; None = preset.
        intermediate_lr: learning rate during stage 1 (original 5e-5).
        prediction_lr: learning rate during stage 2 (original 3e-5).
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        cache_teacher_outputs: ``none``; ``logits`` (stage 2 skips the teacher after the first
            epoch); ``all`` (also the token features: stage 1 skips it too; memory heavy).
        cache_dir: if set, the logits cache is also saved there (keyed by the data fingerprint and the
            teacher checkpoint's sha256), so a later run (e.g. a stage-2 run) skips the teacher.
        teacher_domain: teacher domain whose embedding E[d] stands for the target domain; None = the
            target domain itself.
    """

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        num_labels: int = 2,
        num_domains: int = 1,
        domain_names: list[str] | None = None,
        label_names: list[str] | None = None,
        target_domain: str | None = None,
        tokenizer_name: str | None = None,
        student_backbone: str = DEFAULT_BACKBONE,
        student_layers: list[int] | int | None = None,
        student_config: dict[str, Any] | None = None,
        distillation: Distillation = "meta",
        stage: Stage | None = None,
        intermediate_epochs: int = 10,
        init_from: str | None = None,
        matches: list[LayerMatch] | None = None,
        lambda_tk: float = 0.5,
        temperature: float = 1.0,
        t2_scaling: bool = False,
        hard_label_weight: float = 0.0,
        instance_weighting: bool | None = None,
        use_transferable: bool | None = None,
        intermediate_lr: float = 5e-5,
        prediction_lr: float = 3e-5,
        weight_decay: float = 0.0,
        cache_teacher_outputs: CacheMode = "logits",
        cache_dir: str | None = None,
        teacher_domain: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if matches is not None:  # plain dicts in the checkpoint (loadable with weights_only=True)
            self.hparams["matches"] = [asdict(coerce_match(m)) for m in matches]
        if distillation not in _PRESETS:
            raise StudentConfigError(f"distillation must be one of {sorted(_PRESETS)}, got {distillation!r}")
        preset = _PRESETS[distillation]
        self.distillation = distillation
        self.stage_plan: str = stage or preset["stage"]
        if distillation in ("vanilla", "none") and self.stage_plan != "prediction":
            raise StudentConfigError(
                f"distillation={distillation!r} has no intermediate-layer stage; use stage: prediction"
            )
        self.instance_weighting = (
            preset["instance_weighting"] if instance_weighting is None else instance_weighting
        )
        self.use_transferable = preset["use_transferable"] if use_transferable is None else use_transferable
        if temperature <= 0:
            raise StudentConfigError(f"temperature must be > 0, got {temperature}")

        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        self.domain_names = list(domain_names) if domain_names else [f"domain{i}" for i in range(num_domains)]
        if len(self.label_names) != num_labels or len(self.domain_names) != num_domains:
            raise StudentConfigError(
                f"num_labels={num_labels} / num_domains={num_domains} disagree with label_names="
                f"{self.label_names} / domain_names={self.domain_names}"
            )
        if target_domain is not None and target_domain not in self.domain_names:
            raise StudentConfigError(
                f"target_domain {target_domain!r} is not a domain of the data; known: {self.domain_names}"
            )

        # The teacher: frozen, outside the module tree (not in state_dict, optimiser or DDP).
        teacher = None
        if distillation == "none":
            if teacher_ckpt is not None:
                log.info("distillation='none': the teacher checkpoint %s is not used", teacher_ckpt)
        else:
            if teacher_ckpt is None:
                raise StudentConfigError(
                    f"distillation={distillation!r} needs model.teacher_ckpt (a MetaTeacher checkpoint); "
                    "only distillation='none' trains without a teacher"
                )
            teacher = load_teacher(teacher_ckpt)
        object.__setattr__(self, "_teacher", teacher)

        teacher_backbone = None
        if teacher is not None:
            self._check_teacher_labels(teacher)
            teacher_backbone = str(teacher.hparams.get("backbone", DEFAULT_BACKBONE))
        self.tokenizer_name = tokenizer_name or teacher_backbone or student_backbone
        if teacher_backbone is not None:
            check_same_tokenizer(teacher_backbone, "teacher", self.tokenizer_name, "data")
        if student_config is None:
            check_same_tokenizer(self.tokenizer_name, "data", student_backbone, "student backbone")

        self.model = build_student_model(
            num_labels,
            self.label_names,
            self.tokenizer_name,
            student_backbone,
            student_layers,
            student_config,
        )

        # Recipe (stage 1 only): layer matches, projections, transferable head.
        self.matches: list[LayerMatch] = []
        self.projections = nn.ModuleDict()
        self.transferable_head: nn.Linear | None = None
        if self.stage_plan in ("intermediate", "both"):
            teacher_config = _teacher_encoder_config(teacher)
            n_teacher, n_student = teacher_config.num_hidden_layers, self.model.config.num_hidden_layers
            if matches is None:
                self.matches = uniform_layer_map(n_teacher, n_student)
            else:
                self.matches = validate_matches(matches, n_teacher, n_student)
            d_student, d_teacher = self.model.config.hidden_size, teacher_config.hidden_size
            self.projections = build_projections(self.matches, d_student, d_teacher)
            if self.use_transferable:
                self.transferable_head = nn.Linear(d_student, d_teacher)
            if needs_attentions(self.matches):
                _use_eager_attention(self.model)
                _use_eager_attention(teacher.encoder)

        # Domain maps: data domain index -> teacher domain index (-1: unknown to the teacher).
        self.teacher_domain_map = torch.full((num_domains,), -1, dtype=torch.long)
        if teacher is not None:
            self._map_domains(teacher, target_domain, teacher_domain)
        self.target_index = None if target_domain is None else self.domain_names.index(target_domain)

        self.val_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.transferability: Tensor | None = None
        self.teacher_forward_calls = 0
        self.cache: TeacherOutputCache | None = None
        self._cache_dirty = False

        if init_from is not None:
            self._load_initial_weights(init_from)

    # ---------------------------------------------------------------------------------------------
    # configuration checks

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (not a submodule), or None for ``distillation="none"``."""
        return self._teacher

    def _check_teacher_labels(self, teacher: nn.Module) -> None:
        teacher_labels = list(teacher.hparams.get("label_names") or [])
        if teacher_labels != self.label_names:
            raise StudentConfigError(
                f"label mismatch: the teacher {self.hparams.teacher_ckpt!r} predicts {teacher_labels} but "
                f"the student's data has labels {self.label_names}; distil from a teacher of the same task"
            )

    def _map_domains(self, teacher: nn.Module, target_domain: str | None, teacher_domain: str | None) -> None:
        teacher_domains = list(teacher.hparams.get("domain_names") or [])
        for index, name in enumerate(self.domain_names):
            if name in teacher_domains:
                self.teacher_domain_map[index] = teacher_domains.index(name)
        if teacher_domain is not None:
            if teacher_domain not in teacher_domains:
                raise StudentConfigError(
                    f"teacher_domain {teacher_domain!r} is not a domain of the teacher; its domains: "
                    f"{teacher_domains}"
                )
            if target_domain is None:
                raise StudentConfigError("teacher_domain needs a target_domain to stand for")
            self.teacher_domain_map[self.domain_names.index(target_domain)] = teacher_domains.index(
                teacher_domain
            )
        elif target_domain is not None and target_domain not in teacher_domains:
            raise StudentConfigError(
                f"target domain {target_domain!r} is unknown to the teacher {self.hparams.teacher_ckpt!r}, "
                f"whose domains are {teacher_domains}; pick one of them, or set model.teacher_domain to the "
                "teacher domain whose embedding should stand for it (zero-shot teacher)"
            )

    def _load_initial_weights(self, path: str) -> None:
        if not Path(path).is_file():
            raise StudentConfigError(f"init_from checkpoint not found: {path!r}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint["state_dict"]
        except Exception as err:
            raise StudentConfigError(f"cannot read student weights from {path!r}: {err}") from err
        own = self.state_dict()
        missing_model = sorted(k for k in own if k.startswith("model.") and k not in state)
        if missing_model:
            raise StudentConfigError(
                f"init_from {path!r} is not a compatible Student checkpoint: missing {missing_model[:5]}..."
            )
        usable = {k: v for k, v in state.items() if k in own}
        for key, value in usable.items():
            if own[key].shape != value.shape:
                raise StudentConfigError(
                    f"init_from {path!r}: {key} has shape {tuple(value.shape)}, "
                    f"the student {tuple(own[key].shape)}"
                )
        self.load_state_dict(usable, strict=False)
        skipped = sorted(set(state) - set(usable))
        log.info("initialised the student from %s (%d tensors; not used: %s)", path, len(usable), skipped)

    # ---------------------------------------------------------------------------------------------
    # stages, optimiser

    def current_stage(self) -> Literal["intermediate", "prediction"]:
        """The stage of the current epoch (``both`` switches after ``intermediate_epochs``)."""
        if self.stage_plan == "both":
            return "intermediate" if self.current_epoch < self.hparams.intermediate_epochs else "prediction"
        return self.stage_plan  # type: ignore[return-value]

    def _stage_lr(self) -> float:
        if self.current_stage() == "intermediate":
            return self.hparams.intermediate_lr
        return self.hparams.prediction_lr

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW at the current stage's constant learning rate (no decay on biases / LayerNorm)."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self._stage_lr())

    def on_train_epoch_start(self) -> None:
        lr = self._stage_lr()
        optimizers = self.optimizers(use_pl_optimizer=False)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] = lr
        if self.current_stage() == "prediction":
            self._prefill_logits_cache()

    def _prefill_logits_cache(self) -> None:
        """Before the first prediction epoch, run the teacher once over the examples the cache lacks
        (``train_eval_dataloader``): every later step reads its logits, also under DDP, where each
        rank's shuffled shards would otherwise keep missing the cache."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.cache is None or self.teacher is None or not hasattr(datamodule, "train_eval_dataloader"):
            return
        for batch in datamodule.train_eval_dataloader():
            if bool(self.cache.filled[batch["example_ids"]].all()):
                continue
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            self.teacher_outputs(batch, need_features=False)

    # ---------------------------------------------------------------------------------------------
    # fit set-up: teacher device, transferability, cache

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if self.stage_plan == "both" and max_epochs is not None and max_epochs > 0:
            if max_epochs <= self.hparams.intermediate_epochs:
                raise StudentConfigError(
                    f"stage 'both' runs {self.hparams.intermediate_epochs} intermediate epochs, but "
                    f"trainer.max_epochs={self.trainer.max_epochs} leaves none for the prediction stage"
                )
        if self.teacher is None:
            return
        self.teacher.to(self.device)
        self.teacher.eval()
        datamodule = getattr(self.trainer, "datamodule", None)
        needs_t = self.stage_plan != "prediction" and self.instance_weighting
        if needs_t:
            self.transferability = self._transferability(datamodule).to(self.device)
        self._setup_cache(datamodule)

    def _transferability(self, datamodule: Any) -> Tensor:
        """t_i by ``example_ids``: the teacher's stored scores when the pooled split matches, else
        recomputed from the teacher's stored prototypes."""
        if datamodule is None or not hasattr(datamodule, "split_fingerprint"):
            raise StudentConfigError(
                "instance weighting needs a metakd datamodule (split_fingerprint, example_ids); pass "
                "datamodule=... to trainer.fit or set model.instance_weighting: false"
            )
        teacher = self.teacher
        stored = getattr(teacher, "transferability", None)
        teacher_split = _teacher_split_fingerprint(teacher)
        if stored is not None and teacher_split == datamodule.split_fingerprint:
            if stored.shape[0] != datamodule.num_pooled_train:
                raise StudentConfigError(
                    f"teacher transferability has {stored.shape[0]} entries but the pooled training split "
                    f"has {datamodule.num_pooled_train}"
                )
            return stored.detach().float().cpu()
        log.info("teacher split fingerprint differs from the data's: recomputing t_i from its prototypes")
        return recompute_transferability(teacher, datamodule, self.teacher_domain_map)

    def _setup_cache(self, datamodule: Any) -> None:
        mode = self.hparams.cache_teacher_outputs
        if mode == "none":
            self.cache = None
            return
        fingerprint = getattr(datamodule, "data_fingerprint", None)
        size = getattr(datamodule, "num_pooled_train", None)
        if fingerprint is None or size is None:
            log.warning("teacher-output cache off: the datamodule has no data_fingerprint / num_pooled_train")
            self.cache = None
            return
        key = hashlib.sha256(
            json.dumps(
                {
                    "data": fingerprint,
                    "teacher": file_fingerprint(self.hparams.teacher_ckpt),
                    "domain_map": self.teacher_domain_map.tolist(),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:32]
        if self.cache is not None and self.cache.key == key and self.cache.mode == mode:
            return  # same data, same teacher: keep what an earlier fit cached
        self.cache = TeacherOutputCache(mode, size, self.hparams.num_labels)
        self.cache.reset(key)
        path = self._cache_path()
        if path is not None and path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored["logits"].shape == self.cache.logits.shape:
                    self.cache.logits.copy_(stored["logits"])
                    self.cache.filled.copy_(stored["filled"])
                    log.info("teacher logits read from cache %s", path)
            except Exception as err:
                log.warning("ignoring unreadable teacher-output cache %s (%s)", path, err)

    def _cache_path(self) -> Path | None:
        if self.hparams.cache_dir is None or self.cache is None:
            return None
        return Path(self.hparams.cache_dir) / f"teacher-logits-{self.cache.key}.pt"

    def on_train_epoch_end(self) -> None:
        path = self._cache_path()
        if path is not None and self._cache_dirty and self.global_rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"logits": self.cache.logits, "filled": self.cache.filled}, tmp)
            os.replace(tmp, path)
            self._cache_dirty = False

    # ---------------------------------------------------------------------------------------------
    # forward passes

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Any:
        """The student's HF forward (``SequenceClassifierOutput``: logits, hidden_states, attentions)."""
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

    @torch.no_grad()
    def teacher_outputs(self, batch: Mapping[str, Tensor], need_features: bool) -> CachedTeacherOutput:
        """Teacher outputs for a training batch: from the cache when possible, else a forward pass."""
        example_ids = batch.get("example_ids")
        if self.cache is not None and example_ids is not None:
            cached = self.cache.lookup(example_ids, batch["attention_mask"], need_features)
            if cached is not None:
                return cached
        domain_ids = self.teacher_domain_map.to(batch["domain_ids"].device)[batch["domain_ids"]]
        if bool((domain_ids < 0).any()):
            unknown = sorted({self.domain_names[i] for i in batch["domain_ids"][domain_ids < 0].tolist()})
            raise StudentConfigError(
                f"training examples of domains {unknown} are unknown to the teacher; set target_domain"
            )
        self.teacher_forward_calls += 1
        output = self.teacher(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
            domain_ids=domain_ids,
            output_hidden_states=need_features,
            output_attentions=need_features and needs_attentions(self.matches),
        )
        result = CachedTeacherOutput(
            logits=output.logits,
            transferable=output.transferable if need_features else None,
            hidden_states=self._used_teacher_layers(output.hidden_states, hidden=True)
            if need_features
            else None,
            attentions=self._used_teacher_layers(output.attentions, hidden=False) if need_features else None,
        )
        if self.cache is not None and example_ids is not None:
            self.cache.store(example_ids, batch["attention_mask"], result)
            self._cache_dirty = True
        return result

    def _used_teacher_layers(self, states: Sequence[Tensor] | None, hidden: bool) -> tuple | None:
        """Keep only the teacher layers the recipe reads (the rest -> None) to bound cache memory."""
        if states is None:
            return None
        if hidden:
            used = {m.teacher_layer for m in self.matches if m.is_hidden}
            return tuple(s if i in used else None for i, s in enumerate(states))
        used = {m.teacher_layer - 1 for m in self.matches if m.feature == "attention"}
        return tuple(s if i in used else None for i, s in enumerate(states))

    # ---------------------------------------------------------------------------------------------
    # steps

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.current_stage() == "intermediate":
            loss = self._intermediate_loss(batch)
        else:
            loss = self._prediction_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def _intermediate_loss(self, batch: dict[str, Tensor]) -> Tensor:
        batch_size = batch["labels"].shape[0]
        mask = batch["attention_mask"]
        attentions_needed = needs_attentions(self.matches)
        student = self(
            batch["input_ids"],
            mask,
            batch.get("token_type_ids"),
            output_hidden_states=True,
            output_attentions=attentions_needed,
        )
        teacher = self.teacher_outputs(batch, need_features=True)
        hidden, attention = match_losses(
            self.matches,
            student.hidden_states,
            student.attentions,
            teacher.hidden_states,
            teacher.attentions,
            mask,
            self.projections,
        )
        if self.use_transferable and self.transferable_head is not None:
            pooled = _masked_mean(student.hidden_states[-1], mask)
            transferable = transferable_mse(
                self.transferable_head(pooled).float(), teacher.transferable.float()
            )
        else:
            transferable = torch.zeros_like(hidden)
        weights = None
        if self.instance_weighting:
            t = self.transferability[batch["example_ids"]]
            if bool(torch.isnan(t).any()):
                raise StudentConfigError("some training examples have no transferability score (NaN t_i)")
            weights = instance_weights(t, domain_expertise(teacher.logits, batch["labels"]))
        loss = weighted_intermediate_loss(hidden, attention, transferable, weights, self.hparams.lambda_tk)
        logs = {
            "train/loss_hidden": hidden.mean(),
            "train/loss_attention": attention.mean(),
            "train/loss_tk": transferable.mean(),
            "train/weight_mean": weights.mean() if weights is not None else torch.ones(()),
        }
        self.log_dict(logs, batch_size=batch_size)
        return loss

    def _prediction_loss(self, batch: dict[str, Tensor]) -> Tensor:
        batch_size = batch["labels"].shape[0]
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        ce = F.cross_entropy(logits.float(), batch["labels"])
        self.log("train/loss_ce", ce, batch_size=batch_size)
        if self.distillation == "none":
            return ce
        teacher = self.teacher_outputs(batch, need_features=False)
        kd = soft_cross_entropy(
            logits.float(), teacher.logits.float(), self.hparams.temperature, self.hparams.t2_scaling
        ).mean()
        self.log("train/loss_kd", kd, batch_size=batch_size)
        return kd + self.hparams.hard_label_weight * ce if self.hparams.hard_label_weight else kd

    def _target_rows(self, batch: Mapping[str, Tensor]) -> Tensor:
        if self.target_index is None:
            return torch.ones_like(batch["labels"], dtype=torch.bool)
        return batch["domain_ids"] == self.target_index

    def _evaluate(self, batch: dict[str, Tensor], metric: MulticlassAccuracy, prefix: str) -> None:
        rows = self._target_rows(batch)
        if not bool(rows.any()):
            return
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        logits, labels = logits[rows], batch["labels"][rows]
        metric.update(logits, labels)
        self.log(
            f"{prefix}/loss",
            F.cross_entropy(logits.float(), labels),
            batch_size=int(rows.sum()),
            sync_dist=True,
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_acc, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_acc, "test")

    def on_validation_epoch_end(self) -> None:
        accuracy = self._compute(self.val_acc, "dev")
        if self.current_stage() == "intermediate" and not self.trainer.sanity_checking:
            # The classifier is not trained in stage 1: keep its epochs out of model selection.
            self.log("val/stage1_acc", accuracy)
            self.log("val/acc", torch.zeros(()), prog_bar=True)
            return
        self.log("val/acc", accuracy, prog_bar=True)
        self._log_target_domain_metric("val", accuracy)

    def on_test_epoch_end(self) -> None:
        accuracy = self._compute(self.test_acc, "test")
        self.log("test/acc", accuracy)
        self._log_target_domain_metric("test", accuracy)

    def _log_target_domain_metric(self, split: str, accuracy: Tensor) -> None:
        # The teacher's per-domain name (`<split>/acc_<domain>`) for the one domain a student serves.
        if self.hparams.target_domain is not None:
            self.log(f"{split}/acc_{self.hparams.target_domain}", accuracy)

    def _compute(self, metric: MulticlassAccuracy, split: str) -> Tensor:
        if not metric.update_called:
            raise StudentConfigError(
                f"the {split} set has no example of the target domain {self.hparams.target_domain!r}"
            )
        value = metric.compute()
        metric.reset()
        return value

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (B, C)."""
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        return torch.softmax(logits.float(), dim=-1)

    # ---------------------------------------------------------------------------------------------
    # checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What `python -m metakd export` needs, without re-instantiating the Student (or its teacher).
        checkpoint[CHECKPOINT_KEY] = {
            "hf_config": self.model.config.to_dict(),
            "label_names": self.label_names,
            "tokenizer_name": self.tokenizer_name,
            "target_domain": self.hparams.target_domain,
        }


def _masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _teacher_split_fingerprint(teacher: nn.Module) -> str | None:
    value = getattr(teacher, "split_fingerprint", None)
    if value is None:
        value = teacher.hparams.get("split_fingerprint")
    return value


def recompute_transferability(teacher: nn.Module, datamodule: Any, teacher_domain_map: Tensor) -> Tensor:
    """t_i on the datamodule's training set from the teacher's stored prototypes.

    Used when the data's pooled split differs from the teacher's (its stored t_i are keyed by another
    split). h_i comes from the teacher's *pre-trained* backbone with the teacher's pooling; domains are
    mapped to the teacher's by name, and a domain unknown to the teacher has no own prototype (t_i is
    then the cosine to the mean of the teacher's domain prototypes, see ``metakd.prototypes``).
    A teacher without prototypes (weighting without ``prototype``) gives t_i = 0, i.e. w_i = sigma_i.
    """
    from metakd.prototypes import _pad_batch_to, pool, transferability_scores
    from metakd.teacher import build_encoder

    hp = teacher.hparams
    num_examples = int(datamodule.num_pooled_train)
    prototypes = getattr(teacher, "prototypes", None)
    if prototypes is None or prototypes.numel() == 0:
        log.warning(
            "the teacher stores no prototypes (weighting without 'prototype'): t_i = 0, w_i = sigma_i"
        )
        return torch.zeros(num_examples)
    if hp.get("encoder_config") is not None:
        raise StudentConfigError(
            "cannot recompute t_i for this data: the teacher's encoder was a fresh random initialisation "
            f"(encoder_config) and its stored scores are for split {_teacher_split_fingerprint(teacher)!r}, "
            f"not the data's {datamodule.split_fingerprint!r}; distil on the split the teacher was trained on"
        )
    prototypes = prototypes.detach().float().cpu()
    # An extra all-zero (= absent) prototype for domains the teacher does not know.
    absent = torch.zeros_like(prototypes[:1])
    prototypes = torch.cat([prototypes, absent], dim=0)
    mapping = teacher_domain_map.clone()
    mapping[mapping < 0] = prototypes.shape[0] - 1
    encoder = build_encoder(hp["backbone"], None, None)
    encoder.eval()
    pooling = hp.get("prototype_pooling", "masked_mean")
    max_length = getattr(datamodule, "max_length", None)
    pad_token_id = getattr(encoder.config, "pad_token_id", None) or 0
    scores = torch.full((num_examples,), float("nan"))
    with torch.no_grad():
        for batch in datamodule.train_eval_dataloader():
            if pooling == "padded_mean_skip_cls" and max_length is not None:
                batch = _pad_batch_to(batch, max_length, pad_token_id)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            h = pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"], pooling).float()
            domains = mapping[batch["domain_ids"]]
            labels = batch["labels"] if prototypes.dim() == 3 else None
            scores[batch["example_ids"]] = transferability_scores(h, domains, prototypes, labels)
    return scores
