"""Where a frozen teacher comes from: two sources behind one interface (:class:`TeacherSource`).

- :class:`MetaTeacherCheckpoint`: a ``MetaTeacher`` checkpoint (``.ckpt`` written by
  ``python -m metakd fit``), or one of a subclass (the class is recorded in the checkpoint). It provides
  what its class declares (``provides``: logits, token states, attention maps and, for the MetaTeacher,
  the transferable knowledge ``g``), its domains, and the transferability scores t_i it was trained with
  (recomputed from its stored prototypes for another split).
- :class:`HFClassifier`: a HuggingFace ``*ForSequenceClassification`` model, a local directory
  (``save_pretrained``) or a hub name. It provides logits, token states and attention maps; it has no
  domains and no t_i.

:func:`open_teacher_source` picks the source for ``model.teacher_ckpt``;
:class:`metakd.teachers.FrozenTeacher` freezes it and serves it to a student.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metakd.errors import StudentConfigError, TeacherCheckpointError
from metakd.progress import WithProgress
from metakd.score_coverage import coverage_note, missing_scores
from metakd.utils import file_fingerprint, sha256_json

log = logging.getLogger(__name__)

TEACHER_CLASS_KEY = "metakd_teacher_class"
"""Checkpoint entry naming the teacher's class (a MetaTeacher subclass); MetaTeacher when absent."""


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: what a teacher is while a student learns from it."""
    module.eval()
    module.requires_grad_(False)
    return module


class TeacherSource:
    """A classifier a student can learn from, as loaded (not yet frozen).

    Attributes:
        kind: ``metakd`` or ``hf``.
        source: ``model.teacher_ckpt`` as given.
        module: the model.
        label_names: its classes, in order.
        domains: its domains (None: a teacher without domains).
        tokenizer_name: what its vocabulary is checked against (None: unknown).
        provides: the features beyond ``logits`` it can give (``hidden``, ``attention``, ``transferable``).
        config: the encoder's config (``num_hidden_layers``, ``hidden_size``).
    """

    kind: ClassVar[str] = ""
    source: str
    module: nn.Module
    label_names: list[str]
    domains: list[str] | None
    tokenizer_name: str | None
    provides: frozenset[str]
    config: Any

    @property
    def encoder(self) -> nn.Module:
        """The module whose attention kernel decides whether attention maps come back."""
        raise NotImplementedError

    def run(
        self, batch: Mapping[str, Tensor], domain_ids: Tensor | None, hidden: bool, attention: bool
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None, Tensor | None]:
        """``(logits, hidden_states, attentions, transferable)`` of one forward pass; ``domain_ids`` are
        the teacher's own (None for a teacher without domains)."""
        raise NotImplementedError

    def transferability(self, datamodule: Any, domain_map: Tensor) -> Tensor:
        """t_i by training ``example_ids`` (:func:`by_source_example`); ``domain_map`` maps the data's
        domains to the teacher's."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the weights for cache keys: a file's sha256, the files of a directory, or a hub
        name."""
        path = Path(self.source)
        if path.is_file():
            return file_fingerprint(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
            return sha256_json({p.name: file_fingerprint(p) for p in files}, length=64)
        return f"hub:{self.source}"


class MetaTeacherCheckpoint(TeacherSource):
    """A MetaTeacher (or subclass) checkpoint (see the module docstring)."""

    kind = "metakd"

    def __init__(self, source: str) -> None:
        from metakd.backbones import DEFAULT_BACKBONE

        self.source = source
        self.module = load_checkpoint(source)
        hp = self.module.hparams
        self.label_names = list(hp.get("label_names") or [])
        self.domains = list(hp.get("domain_names") or [])
        self.tokenizer_name = str(hp.get("backbone", DEFAULT_BACKBONE))
        self.provides = frozenset(getattr(self.module, "provides", {"logits", "hidden", "attention"}))
        self.config = self.module.encoder.config

    @property
    def encoder(self) -> nn.Module:
        return self.module.encoder

    def run(
        self, batch: Mapping[str, Tensor], domain_ids: Tensor | None, hidden: bool, attention: bool
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None, Tensor | None]:
        output = self.module(**model_inputs(batch, hidden, attention), domain_ids=domain_ids)
        return output.logits, output.hidden_states, output.attentions, output.transferable

    def transferability(self, datamodule: Any, domain_map: Tensor) -> Tensor:
        """The stored t_i when the data's pooled split is the teacher's and they cover every example the
        data trains on (:func:`.missing_scores`: a teacher trained on a ``train_fraction`` or
        ``target_domain`` has none for the others), else recomputed from its stored prototypes
        (:func:`recompute_transferability`); extended to augmented examples."""
        if datamodule is None or not hasattr(datamodule, "split_fingerprint"):
            raise StudentConfigError(
                "instance weighting needs a metakd datamodule (split_fingerprint, example_ids); pass "
                "datamodule=... to trainer.fit or set model.instance_weighting: false"
            )
        teacher = self.module
        stored = getattr(teacher, "transferability", None)
        reason = None
        if stored is not None and teacher_split_fingerprint(teacher) == datamodule.split_fingerprint:
            if stored.shape[0] != datamodule.num_pooled_train:
                raise StudentConfigError(
                    f"teacher transferability has {stored.shape[0]} entries but the pooled training split "
                    f"has {datamodule.num_pooled_train}"
                )
            missing, total = missing_scores(stored, datamodule)
            if not missing:
                return by_source_example(stored.detach().float().cpu(), datamodule)
            reason = coverage_note(missing, total)
            log.info("the teacher's t_i: %s; recomputing them from its prototypes", reason)
        else:
            log.info("teacher split fingerprint differs from the data's: recomputing t_i from its prototypes")
        scores = recompute_transferability(teacher, datamodule, domain_map, reason)
        return by_source_example(pooled_scores(scores, datamodule), datamodule)


class HFClassifier(TeacherSource):
    """A HuggingFace sequence classifier (see the module docstring)."""

    kind = "hf"

    def __init__(self, source: str) -> None:
        self.source = source
        self.module, self.tokenizer_name = load_hf_classifier(source)
        config = self.module.config
        self.label_names = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.domains = None
        self.provides = frozenset({"logits", "hidden", "attention"})
        self.config = config

    @property
    def positional_labels(self) -> bool:
        """A config saved without ``id2label`` (``LABEL_0``, ``LABEL_1``, ...): the classes are positional."""
        return all(name == f"LABEL_{i}" for i, name in enumerate(self.label_names))

    @property
    def encoder(self) -> nn.Module:
        return self.module

    def run(
        self, batch: Mapping[str, Tensor], domain_ids: Tensor | None, hidden: bool, attention: bool
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None, Tensor | None]:
        output = self.module(**model_inputs(batch, hidden, attention))
        states, attentions = getattr(output, "hidden_states", None), getattr(output, "attentions", None)
        return output.logits, states, attentions, None

    def transferability(self, datamodule: Any, domain_map: Tensor) -> Tensor:
        raise StudentConfigError(
            f"transferability weights need a MetaTeacher teacher; {self.source!r} is a plain "
            "HuggingFace classifier (turn the instance weights off)"
        )


def model_inputs(batch: Mapping[str, Tensor], hidden: bool, attention: bool) -> dict[str, Any]:
    """The keyword arguments of a classifier's forward for ``batch`` (HF names)."""
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch.get("token_type_ids"),
        "output_hidden_states": hidden,
        "output_attentions": attention,
    }


def open_teacher_source(source: str) -> TeacherSource:
    """The source ``model.teacher_ckpt`` names: a checkpoint file (or anything that is neither a
    directory nor a hub id, so its error names the checkpoint) or an HF classifier."""
    if (
        source.endswith(".ckpt")
        or Path(source).is_file()
        or not (Path(source).is_dir() or _is_hf_name(source))
    ):
        return MetaTeacherCheckpoint(source)
    return HFClassifier(source)


def _is_hf_name(source: str) -> bool:
    """A path-less hub id like ``org/name`` or ``name`` (not an absolute or relative file path)."""
    return not os.path.isabs(source) and not source.startswith(".") and source.count("/") <= 1


# --------------------------------------------------------------------------------------------------
# loading


def load_checkpoint(path: str) -> nn.Module:
    """A MetaTeacher (or subclass) from its checkpoint, with clear errors (not frozen)."""
    from metakd.checkpointing import CheckpointFileError, check_checkpoint_file
    from metakd.teacher import MetaTeacher
    from metakd.utils import import_object

    if not path or not Path(path).is_file():
        raise TeacherCheckpointError(
            f"teacher checkpoint not found: {path!r} (model.teacher_ckpt must name a MetaTeacher .ckpt "
            "written by `python -m metakd fit` with a MetaTeacher config, or a HuggingFace "
            "sequence-classification model directory)"
        )
    try:
        check_checkpoint_file(path, expected="MetaTeacher")
        header = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        name = header.get(TEACHER_CLASS_KEY) if isinstance(header, dict) else None
        cls = MetaTeacher if name is None else import_object(name)
        if not (isinstance(cls, type) and issubclass(cls, MetaTeacher)):
            raise TypeError(f"{name!r} is not a MetaTeacher subclass")
    except (CheckpointFileError, Exception) as err:  # corrupt file, foreign checkpoint
        raise TeacherCheckpointError(
            f"cannot load the teacher checkpoint {path!r} as a MetaTeacher ({type(err).__name__}: {err})"
        ) from err
    # LightningCLI instantiates the Student inside a context that hands *its* init args to every
    # save_hyperparameters() call; the nested teacher must record its own, so leave that context here.
    from pytorch_lightning.core.mixins import hparams_mixin

    given = getattr(hparams_mixin, "_given_hyperparameters", None)
    token = given.set(None) if given is not None else None
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing hyperparameters, mismatching weights
        raise TeacherCheckpointError(
            f"cannot load the teacher checkpoint {path!r} as a MetaTeacher ({type(err).__name__}: {err})"
        ) from err
    finally:
        if token is not None:
            given.reset(token)


def load_metakd_teacher(path: str) -> nn.Module:
    """A MetaTeacher (or subclass) checkpoint, frozen, with clear errors."""
    return freeze(load_checkpoint(path))


def load_teacher(path: str) -> nn.Module:
    """Historical name: :func:`load_metakd_teacher`."""
    return load_metakd_teacher(path)


def load_hf_classifier(source: str) -> tuple[nn.Module, str | None]:
    """An HF sequence classifier (directory or hub name), not frozen, and its tokenizer's name (None when
    it ships none)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(source)
    except (OSError, ValueError) as err:
        where = "directory" if Path(source).is_dir() else "name"
        raise TeacherCheckpointError(
            f"cannot load the teacher {source!r} as a HuggingFace sequence classifier (model.teacher_ckpt: "
            f"a MetaTeacher .ckpt or an HF classifier {where}; {type(err).__name__}: {err})"
        ) from err
    tokenizer_name: str | None = source
    path = Path(source)
    if path.is_dir() and not any(
        (path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        log.warning(
            "teacher %s ships no tokenizer: its vocabulary cannot be checked against the data's", source
        )
        tokenizer_name = None
    return model, tokenizer_name


# --------------------------------------------------------------------------------------------------
# t_i by example id


def train_id_count(datamodule: Any) -> int | None:
    """How many ``example_ids`` the training split uses: ``num_train_ids`` (augmented examples
    included), else ``num_pooled_train`` (a datamodule without augmentation), else None."""
    size = getattr(datamodule, "num_train_ids", None)
    return size if size is not None else getattr(datamodule, "num_pooled_train", None)


def by_source_example(values: Tensor, datamodule: Any) -> Tensor:
    """Per-example values of the pooled training split (``num_pooled_train`` rows) extended to every
    training id: an augmented example gets the value of the example it came from
    (``datamodule.source_example_ids``), NaN when it comes from none (source -1: an unlabelled review of
    a transfer set). Unchanged for a datamodule without augmentation."""
    source = getattr(datamodule, "source_example_ids", None)
    if source is None or source.shape[0] == values.shape[0]:
        return values
    source = source.to(values.device)
    out = values[source.clamp_min(0)]
    return out.masked_fill(source < 0, float("nan")) if out.is_floating_point() else out


def pooled_scores(scores: Tensor, datamodule: Any) -> Tensor:
    """Scores by training id (``num_train_ids`` rows, NaN where not loaded) to scores by pooled position
    (``num_pooled_train`` rows): a pooled example that is not loaded itself but is the source of an
    augmented one takes that one's score (a transfer set, ``metakd_transfer``, copies the other domains'
    examples: the same text and domain)."""
    num_pooled = int(datamodule.num_pooled_train)
    pooled = scores[:num_pooled].clone()
    source = getattr(datamodule, "source_example_ids", None)
    if source is None or scores.shape[0] == num_pooled:
        return pooled
    augmented = torch.arange(num_pooled, scores.shape[0])
    origin = source.cpu()[augmented]
    keep = (origin >= 0) & torch.isnan(pooled[origin.clamp_min(0)]) & torch.isfinite(scores[augmented])
    pooled[origin[keep]] = scores[augmented[keep]]
    return pooled


def teacher_split_fingerprint(teacher: nn.Module) -> str | None:
    value = getattr(teacher, "split_fingerprint", None)
    if value is None:
        value = teacher.hparams.get("split_fingerprint")
    return value


def recompute_transferability(
    teacher: nn.Module, datamodule: Any, teacher_domain_map: Tensor, reason: str | None = None
) -> Tensor:
    """t_i on the datamodule's training set from the teacher's stored prototypes.

    Used when the data's pooled split differs from the teacher's (its stored t_i are keyed by another
    split) or its stored t_i do not cover the data's training examples (``reason`` says so, for the
    error). h_i comes from the teacher's *pre-trained* backbone with the teacher's pooling; domains are
    mapped to the teacher's by name, and a domain unknown to the teacher has no own prototype (t_i is
    then the cosine to the mean of the teacher's domain prototypes, see ``metakd.prototypes``).
    A teacher without prototypes (weighting without ``prototype``) gives t_i = 0, i.e. w_i = sigma_i.
    """
    from metakd.meta_teacher.network import build_encoder
    from metakd.prototypes import _pad_batch_to, pool, transferability_scores

    hp = teacher.hparams
    num_examples = int(train_id_count(datamodule))
    prototypes = getattr(teacher, "prototypes", None)
    if prototypes is None or prototypes.numel() == 0:
        log.warning(
            "the teacher stores no prototypes (weighting without 'prototype'): t_i = 0, w_i = sigma_i"
        )
        return torch.zeros(num_examples)
    if hp.get("encoder_config") is not None:
        if reason is None:
            reason = (
                f"its stored scores are for split {teacher_split_fingerprint(teacher)!r}, not the data's "
                f"{datamodule.split_fingerprint!r}; distil on the split the teacher was trained on"
            )
        else:
            reason += "; distil on examples the teacher was trained on"
        raise StudentConfigError(
            "cannot recompute t_i for this data: the teacher's encoder was a fresh random initialisation "
            f"(encoder_config) and {reason}"
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
        for batch in WithProgress(datamodule.train_eval_dataloader(), "Transferability t_i (recomputed)"):
            if pooling == "padded_mean_skip_cls" and max_length is not None:
                batch = _pad_batch_to(batch, max_length, pad_token_id)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            h = pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"], pooling).float()
            domains = mapping[batch["domain_ids"]]
            labels = batch["labels"] if prototypes.dim() == 3 else None
            scores[batch["example_ids"]] = transferability_scores(h, domains, prototypes, labels)
    return scores
