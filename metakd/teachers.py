"""The frozen teacher a student learns from: a MetaTeacher checkpoint or any HF sequence classifier.

The two sources, behind one interface, are :mod:`metakd.teacher_sources`. :class:`FrozenTeacher`
opens one (``model.teacher_ckpt``), freezes it (eval mode, no gradients) and serves it: it checks it
against the student's data (label set, tokenizer, domains), maps the data's domains to the teacher's,
runs it, trims the features to the layers a method reads, caches its outputs on the training set
(:mod:`metakd.teacher_cache`) and hands out t_i by ``example_ids``. The teacher module is never a
submodule of the Student: it is not in the student's ``state_dict``, optimiser or DDP wrapper.

What a teacher provides is declared in ``FrozenTeacher.provides`` and checked against what a method
needs when the Student is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.teacher_cache import CacheMode, LogitsByInput, TeacherOutputCache
from metakd.teacher_labelling import prefill
from metakd.teacher_sources import (
    TeacherSource,
    freeze,
    load_metakd_teacher,
    load_teacher,
    open_teacher_source,
    train_id_count,
)
from metakd.utils import sha256_json

log = logging.getLogger(__name__)

# The loaders keep their names here too (where they lived before the sources had their own file).
__all__ = [
    "CacheMode",
    "FrozenTeacher",
    "TeacherOutputs",
    "TeacherRequest",
    "load_metakd_teacher",
    "load_teacher",
]


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
        self.origin: TeacherSource = open_teacher_source(source)
        freeze(self.origin.module)
        self.label_names = list(self.origin.label_names)
        self.domain_names = list(domain_names)
        self._check_labels(list(label_names))
        self.domain_map = self._map_domains(list(domain_names), target_domain, teacher_domain)
        self.forward_calls = 0
        self.reads_own_tokens = False  # the data's tokenizer is a featurizer: see check_tokenizer
        self._view: tuple[Any, Any] | None = None
        self.cache: TeacherOutputCache | None = None
        self._cache_dir: Path | None = None
        self._cache_dirty = False

    # ------------------------------------------------------------------ what it is
    @property
    def module(self) -> nn.Module:
        """The frozen teacher model."""
        return self.origin.module

    @property
    def kind(self) -> str:
        """``metakd`` (a MetaTeacher checkpoint) or ``hf`` (an HF classifier)."""
        return self.origin.kind

    @property
    def teacher_domains(self) -> list[str] | None:
        return self.origin.domains

    @property
    def tokenizer_name(self) -> str | None:
        return self.origin.tokenizer_name

    @property
    def provides(self) -> frozenset[str]:
        return self.origin.provides

    @property
    def encoder_config(self) -> Any:
        return self.origin.config

    @property
    def num_layers(self) -> int:
        return int(self.encoder_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder_config.hidden_size)

    @property
    def uses_domains(self) -> bool:
        return self.teacher_domains is not None

    # ------------------------------------------------------------------ checks and maps
    def _check_labels(self, label_names: list[str]) -> None:
        if getattr(self.origin, "positional_labels", False) and len(self.label_names) == len(label_names):
            # save_pretrained without id2label: the classes are positional.
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
        """The data's tokenizer must be the teacher's, unless it is a pQRNN featurizer
        (:mod:`metakd.text_features`), whose ids the teacher cannot read: then the teacher reads its own
        tokenization of the same examples (:meth:`view`) into the logits cache, and the student's steps
        read its logits by ``example_ids`` (``reads_own_tokens``)."""
        from metakd.backbones import check_same_tokenizer
        from metakd.text_features import featurizer_for

        if featurizer_for(data_tokenizer) is not None:
            if self.tokenizer_name is None:
                raise StudentConfigError(
                    f"the data's tokenizer {data_tokenizer!r} is a pQRNN featurizer, so the teacher must "
                    f"tokenise the examples itself, but the teacher {self.source!r} ships no tokenizer"
                )
            self.reads_own_tokens = True
            return
        if self.tokenizer_name is not None:
            check_same_tokenizer(self.tokenizer_name, "teacher", data_tokenizer, "data")

    def check_own_tokens(self, mode: CacheMode, requests: Sequence[TeacherRequest]) -> None:
        """Refuse what a teacher reading its own tokenization cannot give: token features, or a step
        without the logits cache."""
        if not self.reads_own_tokens:
            return
        if any(not request.logits_only for request in requests):
            raise StudentConfigError(
                "the student's data are pQRNN features, which the teacher cannot read: only methods that "
                "read the teacher's logits work (e.g. tang, vanilla, meta_logit, meta with stage: prediction)"
            )
        if mode == "none":
            raise StudentConfigError(
                "the student's data are pQRNN features: the teacher's logits come from its own tokenization "
                "by example id; set model.init_args.cache_teacher_outputs: logits"
            )

    def view(self, datamodule: Any) -> Any:
        """The datamodule the teacher reads: ``datamodule`` itself, or (``reads_own_tokens``) the same
        examples tokenised by the teacher's tokenizer (``MultiDomainDataModule.with_backbone``)."""
        if not self.reads_own_tokens or datamodule is None:
            return datamodule
        if self._view is None or self._view[0] is not datamodule:
            if not hasattr(datamodule, "with_backbone"):
                raise StudentConfigError(
                    f"{type(datamodule).__name__} cannot tokenise its examples for the teacher (no "
                    "with_backbone); a pQRNN featurizer needs a metakd MultiDomainDataModule"
                )
            self._view = (datamodule, datamodule.with_backbone(self.tokenizer_name))
        return self._view[1]

    def prepare(self, request: TeacherRequest) -> None:
        """Switch to eager attention when attention maps will be read (sdpa returns none)."""
        if "attention" not in request.features:
            return
        encoder = self.origin.encoder
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
                return TeacherOutputs(*cached)
        if self.reads_own_tokens:
            raise StudentConfigError(
                "teacher logits missing for a batch of pQRNN features (the teacher reads its own "
                "tokenization only when the logits cache is filled, at the start of each epoch)"
            )
        return self._forward_and_store(batch, request)

    def _forward_and_store(self, batch: Mapping[str, Tensor], request: TeacherRequest) -> TeacherOutputs:
        result = self.forward(batch, request)
        example_ids = batch.get("example_ids")
        if self.cache is not None and example_ids is not None:
            self.cache.store(example_ids, batch["attention_mask"], result)
            self._cache_dirty = True
        return result

    def teacher_domain_ids(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """The batch's domain ids as the teacher numbers its domains (-1: unknown to it); None when the
        teacher reads no domain."""
        if not self.uses_domains:
            return None
        return self.domain_map.to(batch["domain_ids"].device)[batch["domain_ids"]]

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Tensor], request: TeacherRequest) -> TeacherOutputs:
        """One forward pass of the frozen teacher (features trimmed to the requested layers)."""
        need_features = not request.logits_only
        attention = "attention" in request.features
        self.forward_calls += 1
        domain_ids = self.teacher_domain_ids(batch)
        if domain_ids is not None:
            if bool((domain_ids < 0).any()):
                unknown = sorted({self.domain_names[i] for i in batch["domain_ids"][domain_ids < 0].tolist()})
                raise StudentConfigError(
                    f"training examples of domains {unknown} are unknown to the teacher; set target_domain"
                )
        logits, hidden, attentions, transferable = self.origin.run(
            batch, domain_ids, need_features, attention
        )
        return TeacherOutputs(
            logits=logits,
            transferable=transferable if "transferable" in request.features else None,
            hidden_states=_keep(hidden if need_features else None, request.hidden_layers),
            attentions=_keep(attentions if attention else None, {m - 1 for m in request.attention_layers}),
        )

    # ------------------------------------------------------------------ cache
    def setup_cache(self, mode: CacheMode, datamodule: Any, num_labels: int, cache_dir: str | None) -> None:
        """Bind the output cache to this data and teacher (a same-key cache keeps what it holds); with
        ``cache_dir`` the logits are also read from / written to disk."""
        if mode == "none":
            self.cache = None
            return
        datamodule = self.view(datamodule)
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
            self.cache.read_logits(path)

    def fingerprint(self) -> str:
        """Identity of the teacher's weights for cache keys (:meth:`TeacherSource.fingerprint`)."""
        return self.origin.fingerprint()

    def cache_path(self) -> Path | None:
        if self._cache_dir is None or self.cache is None:
            return None
        return self._cache_dir / f"teacher-logits-{self.cache.key}.pt"

    def save_cache(self) -> None:
        """Write the logits cache to ``cache_dir`` if it changed."""
        path = self.cache_path()
        if path is not None and self._cache_dirty:
            self.cache.write_logits(path)
            self._cache_dirty = False

    def prefill_logits(self, dataloader: Any, device: torch.device) -> None:
        """Run the teacher once over the examples the logits cache lacks (:func:`.teacher_labelling.prefill`):
        every later step reads its logits, also under DDP, where each rank's shuffled shards would otherwise
        keep missing the cache. With a ``cache_dir``, logits are also looked up and kept by input
        (:class:`LogitsByInput`), so an example that another data set of this teacher already had is not
        labelled again."""
        if self.cache is None:
            return
        by_input = None
        if self._cache_dir is not None:
            by_input = LogitsByInput(self._cache_dir / f"teacher-input-logits-{self.fingerprint()[:32]}.pt")
        label = lambda batch: self._forward_and_store(batch, TeacherRequest()).logits  # noqa: E731
        prefill(self.cache, dataloader, device, label, by_input, self.teacher_domain_ids)
        if by_input is not None:
            self._cache_dirty = True

    # ------------------------------------------------------------------ transferability
    def transferability(self, datamodule: Any) -> Tensor:
        """t_i by ``example_ids``: a MetaTeacher's stored scores when the pooled split matches, else
        recomputed from its stored prototypes (:meth:`TeacherSource.transferability`; on the teacher's own
        tokenization of the examples when it reads one, :meth:`view`)."""
        return self.origin.transferability(self.view(datamodule), self.domain_map)


def _keep(states: Sequence[Tensor] | None, used: set[int] | frozenset[int]) -> tuple | None:
    """Keep only the layers a method reads (the rest -> None) to bound cache memory."""
    if states is None:
        return None
    return tuple(s if i in used else None for i, s in enumerate(states))
