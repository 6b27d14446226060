"""The frozen teacher a student learns from: a MetaTeacher checkpoint or any HF sequence classifier.

:class:`FrozenTeacher` loads the teacher (``model.teacher_ckpt``), checks it against the student's data
(label set, tokenizer, domains), maps the data's domains to the teacher's, runs it (eval mode, no grad)
and caches its outputs on the training set. The teacher module is never a submodule of the Student: it
is not in the student's ``state_dict``, optimiser or DDP wrapper.

Accepted teachers:

- a ``MetaTeacher`` checkpoint (``.ckpt`` written by ``python -m metakd fit``), or one of a subclass
  (the class is recorded in the checkpoint); it provides logits, token states, attention maps and the
  transferable knowledge ``g`` (its domain heads), plus the transferability scores t_i it was trained
  with;
- a HuggingFace ``*ForSequenceClassification`` model: a local directory (``save_pretrained``) or a hub
  name. It provides logits, token states and attention maps; it has no domains.

What a teacher provides is declared in ``FrozenTeacher.provides`` and checked against what a method
needs when the Student is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import StudentConfigError, TeacherCheckpointError
from metakd.utils import atomic_torch_save, file_fingerprint, sha256_json

log = logging.getLogger(__name__)

CacheMode = Literal["none", "logits", "all"]
TEACHER_CLASS_KEY = "metakd_teacher_class"
"""Checkpoint entry naming the teacher's class (a MetaTeacher subclass); MetaTeacher when absent."""


@dataclass
class TeacherOutputs:
    """The teacher outputs a training step reads (all but ``logits`` only when asked for)."""

    logits: Tensor
    transferable: Tensor | None = None
    hidden_states: tuple[Tensor | None, ...] | None = None
    attentions: tuple[Tensor | None, ...] | None = None


@dataclass(frozen=True)
class TeacherRequest:
    """What a stage reads from the teacher: features beyond logits, and which layers (the cache keeps
    only those)."""

    features: frozenset[str] = frozenset()
    hidden_layers: frozenset[int] = frozenset()
    attention_layers: frozenset[int] = frozenset()

    @property
    def logits_only(self) -> bool:
        return not self.features


# --------------------------------------------------------------------------------------------------
# loading


def load_metakd_teacher(path: str) -> nn.Module:
    """A MetaTeacher (or subclass) checkpoint, frozen, with clear errors."""
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
        teacher = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing hyperparameters, mismatching weights
        raise TeacherCheckpointError(
            f"cannot load the teacher checkpoint {path!r} as a MetaTeacher ({type(err).__name__}: {err})"
        ) from err
    finally:
        if token is not None:
            given.reset(token)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_teacher(path: str) -> nn.Module:
    """Historical name: :func:`load_metakd_teacher`."""
    return load_metakd_teacher(path)


def _is_metakd_checkpoint(source: str) -> bool:
    return source.endswith(".ckpt") or Path(source).is_file()


def _is_hf_name(source: str) -> bool:
    """A path-less hub id like ``org/name`` or ``name`` (not an absolute or relative file path)."""
    return not os.path.isabs(source) and not source.startswith(".") and source.count("/") <= 1


class FrozenTeacher:
    """A frozen classifier to distil from (see the module docstring), with its checks and caches.

    Args:
        source: ``model.teacher_ckpt``: a MetaTeacher ``.ckpt`` or an HF classifier (directory or name).
        label_names: the student's label set (must equal the teacher's).
        domain_names: the data's domains.
        target_domain: the student's domain (must be known to a domain-aware teacher unless
            ``teacher_domain`` names the teacher domain that stands in for it).
        teacher_domain: see above (zero-shot teachers).
    """

    def __init__(
        self,
        source: str,
        label_names: Sequence[str],
        domain_names: Sequence[str],
        target_domain: str | None = None,
        teacher_domain: str | None = None,
    ) -> None:
        self.source = source
        if _is_metakd_checkpoint(source) or not (Path(source).is_dir() or _is_hf_name(source)):
            self.module = load_metakd_teacher(source)
            self.kind = "metakd"
            hp = self.module.hparams
            self.label_names = list(hp.get("label_names") or [])
            self.teacher_domains: list[str] | None = list(hp.get("domain_names") or [])
            from metakd.backbones import DEFAULT_BACKBONE

            self.tokenizer_name: str | None = str(hp.get("backbone", DEFAULT_BACKBONE))
            self.provides = frozenset(getattr(self.module, "provides", {"logits", "hidden", "attention"}))
            self.encoder_config = self.module.encoder.config
        else:
            self.module, self.tokenizer_name = _load_hf_classifier(source)
            self.kind = "hf"
            config = self.module.config
            self.label_names = [str(config.id2label[i]) for i in range(config.num_labels)]
            self.teacher_domains = None
            self.provides = frozenset({"logits", "hidden", "attention"})
            self.encoder_config = config
        self.domain_names = list(domain_names)
        self._check_labels(list(label_names))
        self.domain_map = self._map_domains(list(domain_names), target_domain, teacher_domain)
        self.forward_calls = 0
        self.cache: TeacherOutputCache | None = None
        self._cache_dir: Path | None = None
        self._cache_dirty = False

    # ------------------------------------------------------------------ checks and maps
    @property
    def num_layers(self) -> int:
        return int(self.encoder_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder_config.hidden_size)

    @property
    def uses_domains(self) -> bool:
        return self.teacher_domains is not None

    def _check_labels(self, label_names: list[str]) -> None:
        if self.kind == "hf" and all(name == f"LABEL_{i}" for i, name in enumerate(self.label_names)):
            # save_pretrained without id2label: the classes are positional.
            if len(self.label_names) == len(label_names):
                log.warning(
                    "teacher %s has no label names (LABEL_0..); its classes are taken in the order %s",
                    self.source,
                    label_names,
                )
                self.label_names = list(label_names)
                return
        if self.label_names != label_names:
            raise StudentConfigError(
                f"label mismatch: the teacher {self.source!r} predicts {self.label_names} but "
                f"the student's data has labels {label_names}; distil from a teacher of the same task"
            )

    def _map_domains(
        self, domain_names: list[str], target_domain: str | None, teacher_domain: str | None
    ) -> Tensor:
        """Data domain index -> teacher domain index (-1: unknown to the teacher; 0 for a teacher without
        domains)."""
        if self.teacher_domains is None:
            if teacher_domain is not None:
                raise StudentConfigError(
                    f"teacher_domain {teacher_domain!r}: the teacher {self.source!r} has no domains"
                )
            return torch.zeros(len(domain_names), dtype=torch.long)
        teacher_domains = self.teacher_domains
        mapping = torch.full((len(domain_names),), -1, dtype=torch.long)
        for index, name in enumerate(domain_names):
            if name in teacher_domains:
                mapping[index] = teacher_domains.index(name)
        if teacher_domain is not None:
            if teacher_domain not in teacher_domains:
                raise StudentConfigError(
                    f"teacher_domain {teacher_domain!r} is not a domain of the teacher; its domains: "
                    f"{teacher_domains}"
                )
            if target_domain is None:
                raise StudentConfigError("teacher_domain needs a target_domain to stand for")
            mapping[domain_names.index(target_domain)] = teacher_domains.index(teacher_domain)
        elif target_domain is not None and target_domain not in teacher_domains:
            raise StudentConfigError(
                f"target domain {target_domain!r} is unknown to the teacher {self.source!r}, "
                f"whose domains are {teacher_domains}; pick one of them, or set model.teacher_domain to the "
                "teacher domain whose embedding should stand for it (zero-shot teacher)"
            )
        return mapping

    def check_tokenizer(self, data_tokenizer: str) -> None:
        from metakd.backbones import check_same_tokenizer

        if self.tokenizer_name is not None:
            check_same_tokenizer(self.tokenizer_name, "teacher", data_tokenizer, "data")

    def prepare(self, request: TeacherRequest) -> None:
        """Switch to eager attention when attention maps will be read (sdpa returns none)."""
        if "attention" not in request.features:
            return
        if self.kind == "metakd":
            encoder = self.module.encoder
        else:
            encoder = self.module
        if getattr(encoder.config, "_attn_implementation", "eager") != "eager":
            encoder.set_attn_implementation("eager")

    def to(self, device: torch.device) -> FrozenTeacher:
        self.module.to(device)
        self.module.eval()
        return self

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def outputs(self, batch: Mapping[str, Tensor], request: TeacherRequest) -> TeacherOutputs:
        """Teacher outputs for a training batch: from the cache when possible, else a forward pass."""
        example_ids = batch.get("example_ids")
        if self.cache is not None and example_ids is not None:
            cached = self.cache.lookup(example_ids, batch["attention_mask"], not request.logits_only)
            if cached is not None:
                return cached
        result = self.forward(batch, request)
        if self.cache is not None and example_ids is not None:
            self.cache.store(example_ids, batch["attention_mask"], result)
            self._cache_dirty = True
        return result

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Tensor], request: TeacherRequest) -> TeacherOutputs:
        """One forward pass of the frozen teacher (features trimmed to the requested layers)."""
        need_features = not request.logits_only
        self.forward_calls += 1
        if self.kind == "metakd":
            domain_ids = self.domain_map.to(batch["domain_ids"].device)[batch["domain_ids"]]
            if bool((domain_ids < 0).any()):
                unknown = sorted({self.domain_names[i] for i in batch["domain_ids"][domain_ids < 0].tolist()})
                raise StudentConfigError(
                    f"training examples of domains {unknown} are unknown to the teacher; set target_domain"
                )
            output = self.module(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"),
                domain_ids=domain_ids,
                output_hidden_states=need_features,
                output_attentions="attention" in request.features,
            )
            transferable = output.transferable if "transferable" in request.features else None
        else:
            output = self.module(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"),
                output_hidden_states=need_features,
                output_attentions="attention" in request.features,
            )
            transferable = None
        hidden = getattr(output, "hidden_states", None) if need_features else None
        attentions = getattr(output, "attentions", None) if "attention" in request.features else None
        return TeacherOutputs(
            logits=output.logits,
            transferable=transferable,
            hidden_states=_keep(hidden, request.hidden_layers),
            attentions=_keep(attentions, {m - 1 for m in request.attention_layers}),
        )

    # ------------------------------------------------------------------ cache
    def setup_cache(self, mode: CacheMode, datamodule: Any, num_labels: int, cache_dir: str | None) -> None:
        """Bind the output cache to this data and teacher (a same-key cache keeps what it holds); with
        ``cache_dir`` the logits are also read from / written to disk."""
        if mode == "none":
            self.cache = None
            return
        fingerprint = getattr(datamodule, "data_fingerprint", None)
        size = train_id_count(datamodule)
        if fingerprint is None or size is None:
            log.warning("teacher-output cache off: the datamodule has no data_fingerprint / num_pooled_train")
            self.cache = None
            return
        key = sha256_json(
            {"data": fingerprint, "teacher": self.fingerprint(), "domain_map": self.domain_map.tolist()}
        )
        if self.cache is not None and self.cache.key == key and self.cache.mode == mode:
            return  # same data, same teacher: keep what an earlier fit cached
        self.cache = TeacherOutputCache(mode, size, num_labels)
        self.cache.reset(key)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        path = self.cache_path()
        if path is not None and path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored["logits"].shape == self.cache.logits.shape:
                    self.cache.logits.copy_(stored["logits"])
                    self.cache.filled.copy_(stored["filled"])
                    log.info("teacher logits read from cache %s", path)
            except Exception as err:
                log.warning("ignoring unreadable teacher-output cache %s (%s)", path, err)

    def fingerprint(self) -> str:
        """Identity of the teacher's weights for cache keys: the checkpoint's sha256, or the files of an
        HF directory, or an HF hub name."""
        path = Path(self.source)
        if path.is_file():
            return file_fingerprint(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
            return sha256_json({p.name: file_fingerprint(p) for p in files}, length=64)
        return f"hub:{self.source}"

    def cache_path(self) -> Path | None:
        if self._cache_dir is None or self.cache is None:
            return None
        return self._cache_dir / f"teacher-logits-{self.cache.key}.pt"

    def save_cache(self) -> None:
        """Write the logits cache to ``cache_dir`` if it changed."""
        path = self.cache_path()
        if path is not None and self._cache_dirty:
            atomic_torch_save({"logits": self.cache.logits, "filled": self.cache.filled}, path)
            self._cache_dirty = False

    @torch.no_grad()
    def prefill_logits(self, dataloader: Any, device: torch.device) -> None:
        """Run the teacher once over the examples the logits cache lacks: every later step reads its
        logits, also under DDP, where each rank's shuffled shards would otherwise keep missing the cache."""
        if self.cache is None:
            return
        for batch in dataloader:
            if bool(self.cache.filled[batch["example_ids"]].all()):
                continue
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            self.outputs(batch, TeacherRequest())

    # ------------------------------------------------------------------ transferability
    def transferability(self, datamodule: Any) -> Tensor:
        """t_i by ``example_ids``: the MetaTeacher's stored scores when the pooled split matches, else
        recomputed from its stored prototypes (:func:`recompute_transferability`)."""
        if self.kind != "metakd":
            raise StudentConfigError(
                f"transferability weights need a MetaTeacher teacher; {self.source!r} is a plain "
                "HuggingFace classifier (turn the instance weights off)"
            )
        if datamodule is None or not hasattr(datamodule, "split_fingerprint"):
            raise StudentConfigError(
                "instance weighting needs a metakd datamodule (split_fingerprint, example_ids); pass "
                "datamodule=... to trainer.fit or set model.instance_weighting: false"
            )
        teacher = self.module
        stored = getattr(teacher, "transferability", None)
        teacher_split = teacher_split_fingerprint(teacher)
        if stored is not None and teacher_split == datamodule.split_fingerprint:
            if stored.shape[0] != datamodule.num_pooled_train:
                raise StudentConfigError(
                    f"teacher transferability has {stored.shape[0]} entries but the pooled training split "
                    f"has {datamodule.num_pooled_train}"
                )
            return by_source_example(stored.detach().float().cpu(), datamodule)
        log.info("teacher split fingerprint differs from the data's: recomputing t_i from its prototypes")
        scores = recompute_transferability(teacher, datamodule, self.domain_map)
        return by_source_example(scores[: datamodule.num_pooled_train], datamodule)


def teacher_for_student(
    teacher_ckpt: str | None,
    distillation: str,
    reads_teacher: bool,
    student_model: dict[str, Any] | None,
    label_names: list[str],
    domain_names: list[str],
    target_domain: str | None,
    teacher_domain: str | None,
) -> FrozenTeacher | None:
    """The teacher a Student loads: when a stage's loss reads it (``reads_teacher``) or the architecture
    is built around it (``StudentModel.needs_teacher``); None otherwise. A missing ``teacher_ckpt`` is
    refused, naming what needs it."""
    from metakd.students.base import spec_needs_teacher  # students.base refers to this module

    if reads_teacher and teacher_ckpt is None:
        raise StudentConfigError(
            f"distillation={distillation!r} needs model.teacher_ckpt (a MetaTeacher checkpoint or an HF "
            "classifier); only distillation='none' trains without a teacher"
        )
    architecture_needs_teacher = spec_needs_teacher(student_model)
    if architecture_needs_teacher and teacher_ckpt is None:
        raise StudentConfigError(
            f"the student architecture {student_model['class_path']!r} (model.student_model) is built "
            "around its teacher: set model.teacher_ckpt (a MetaTeacher checkpoint or an HF classifier)"
        )
    if not (reads_teacher or architecture_needs_teacher):
        if teacher_ckpt is not None:
            log.info("distillation=%r: the teacher %s is not used", distillation, teacher_ckpt)
        return None
    return FrozenTeacher(teacher_ckpt, label_names, domain_names, target_domain, teacher_domain)


def train_id_count(datamodule: Any) -> int | None:
    """How many ``example_ids`` the training split uses: ``num_train_ids`` (augmented examples
    included), else ``num_pooled_train`` (a datamodule without augmentation), else None."""
    size = getattr(datamodule, "num_train_ids", None)
    return size if size is not None else getattr(datamodule, "num_pooled_train", None)


def by_source_example(values: Tensor, datamodule: Any) -> Tensor:
    """Per-example values of the pooled training split (``num_pooled_train`` rows) extended to every
    training id: an augmented example gets the value of the example it came from
    (``datamodule.source_example_ids``). Unchanged for a datamodule without augmentation."""
    source = getattr(datamodule, "source_example_ids", None)
    if source is None or source.shape[0] == values.shape[0]:
        return values
    return values[source.to(values.device)]


def _keep(states: Sequence[Tensor] | None, used: set[int] | frozenset[int]) -> tuple | None:
    """Keep only the layers a method reads (the rest -> None) to bound cache memory."""
    if states is None:
        return None
    return tuple(s if i in used else None for i, s in enumerate(states))


def _load_hf_classifier(source: str) -> tuple[nn.Module, str | None]:
    """An HF sequence classifier (directory or hub name), frozen, and its tokenizer's name (None when it
    ships none)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(source)
    except (OSError, ValueError) as err:
        where = "directory" if Path(source).is_dir() else "name"
        raise TeacherCheckpointError(
            f"cannot load the teacher {source!r} as a HuggingFace sequence classifier (model.teacher_ckpt: "
            f"a MetaTeacher .ckpt or an HF classifier {where}; {type(err).__name__}: {err})"
        ) from err
    model.eval()
    model.requires_grad_(False)
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


def teacher_split_fingerprint(teacher: nn.Module) -> str | None:
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
    num_examples = int(train_id_count(datamodule))
    prototypes = getattr(teacher, "prototypes", None)
    if prototypes is None or prototypes.numel() == 0:
        log.warning(
            "the teacher stores no prototypes (weighting without 'prototype'): t_i = 0, w_i = sigma_i"
        )
        return torch.zeros(num_examples)
    if hp.get("encoder_config") is not None:
        raise StudentConfigError(
            "cannot recompute t_i for this data: the teacher's encoder was a fresh random initialisation "
            f"(encoder_config) and its stored scores are for split {teacher_split_fingerprint(teacher)!r}, "
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


# --------------------------------------------------------------------------------------------------
# output cache


class TeacherOutputCache:
    """Teacher outputs on the training set, by ``example_ids``.

    The teacher is frozen and in eval mode, so its outputs are deterministic and caching is exact
    (up to float rounding across different padding lengths). ``logits`` keeps a (N, C) table;
    ``all`` also keeps, per example, the token features the method reads, trimmed to the example's
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
    ) -> TeacherOutputs | None:
        """Cached outputs for a batch, or None when any example (or needed feature) is missing."""
        ids = example_ids.cpu()
        if self.mode == "none" or not bool(self.filled[ids].all()):
            return None
        device = attention_mask.device
        logits = self.logits[ids].to(device)
        if not need_features:
            return TeacherOutputs(logits=logits)
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
        return TeacherOutputs(logits, transferable, hidden, attentions)

    def store(self, example_ids: Tensor, attention_mask: Tensor, output: TeacherOutputs) -> None:
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
