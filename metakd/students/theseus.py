"""BERT-of-Theseus's student (Xu et al., EMNLP 2020, arXiv 2002.02925): a compact *successor* that
replaces the *predecessor* (the teacher, a fine-tuned BERT-family classifier) block by block.

The predecessor's ``L`` layers form ``n`` blocks of ``k = L / n`` consecutive layers; successor module
``i`` is one BERT layer that replaces block ``i``. During replacement training each block is replaced
independently with probability ``p`` (one Bernoulli draw per block per step, ``replacing_rate``, which
the ``theseus`` method sets every step), so a step runs a mix of successor modules and the
predecessor's frozen layers; gradients flow through the frozen layers to the successor modules below
them. Evaluation, export and the successor fine-tuning stage (``p = 1``) run the successor alone.

Initialisation (from the predecessor, in ``bind_teacher``): embeddings and classifier head are copies
of the predecessor's; successor module ``i`` is a copy of predecessor layer ``i`` (``successor_init:
bottom``, the authors' code: ``scc_layer = [deepcopy(layer[i]) for i in range(n)]``) or of the first
layer of its block, ``i * k`` (``block``). The embeddings are frozen (``freeze_embeddings``), as in the
authors' code; the successor modules and the head train (the authors' code trains the successor
modules only).

Predecessors: an HF ``BertForSequenceClassification`` (head: pooler + linear on [CLS]; the export is a
plain HF model directory that ``transformers.pipeline`` loads) or a MetaTeacher (its encoder and its
linear classifier on the raw [CLS] state, which ``BertForSequenceClassification`` cannot express, so
the export is a metakd directory that ``metakd.students.load_exported`` loads). The predecessor's layers
are referenced, never registered: they stay out of the student's checkpoint and optimiser, in eval mode
(no dropout) and without gradients.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.students.base import STUDENTS, StudentModel, StudentOutput
from metakd.students.hf import bert_embed, run_bert_layer

SUCCESSOR_INITS = ("bottom", "block")


def predecessor_parts(teacher: Any) -> tuple[nn.Module, nn.Module | None, nn.Linear]:
    """``(BERT encoder, pooler or None, linear classifier)`` of a teacher usable as a predecessor, or a
    clear error: an HF BERT classifier (pooler + classifier) or a MetaTeacher (classifier on raw [CLS])."""
    module = teacher.module
    if teacher.kind == "metakd":
        encoder = getattr(module, "encoder", None)
        classifier = getattr(getattr(module, "network", None), "classifier", None)
        pooler = None  # the MetaTeacher's classifier reads the raw [CLS] state
    else:
        encoder = getattr(module, "base_model", None)
        classifier = getattr(module, "classifier", None)
        pooler = getattr(encoder, "pooler", None)
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    usable = (
        model_type == "bert"
        and isinstance(classifier, nn.Linear)
        and hasattr(encoder, "embeddings")
        and isinstance(layers, nn.ModuleList)
        and (teacher.kind == "metakd" or isinstance(pooler, nn.Module))
    )
    if not usable:
        raise StudentConfigError(
            f"BERT-of-Theseus needs a BERT classifier as its predecessor (model.teacher_ckpt): an HF "
            "BertForSequenceClassification or a MetaTeacher checkpoint (a BERT encoder with a linear "
            f"classifier on [CLS]); {teacher.source!r} is a {type(module).__name__} "
            f"(model_type {model_type!r})"
        )
    return encoder, pooler, classifier


@STUDENTS.register("theseus")
class TheseusStudent(StudentModel):
    """The successor of a BERT-of-Theseus compression (see the module docstring), bound to its
    predecessor (the teacher) when the Student is built.

    Args:
        num_successors: n successor modules (layers); the teacher's layer count must be a multiple.
        successor_init: ``bottom`` (predecessor layer i, the authors' code) or ``block`` (layer i * k).
        freeze_embeddings: keep the copied embeddings frozen (the authors' code trains none of them).
        replacing_rate: the probability p that a block is replaced in a training step (the ``theseus``
            method sets it every step; 1 = the successor alone).
    """

    needs_teacher = True

    def __init__(
        self,
        num_labels: int,
        label_names: list[str],
        tokenizer_name: str,
        num_successors: int = 2,
        successor_init: Literal["bottom", "block"] = "bottom",
        freeze_embeddings: bool = True,
        replacing_rate: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_successors, int) or num_successors < 1:
            raise StudentConfigError(
                "model.student_model.init_args.num_successors must be a positive integer, got "
                f"{num_successors!r}"
            )
        if successor_init not in SUCCESSOR_INITS:
            raise StudentConfigError(
                f"model.student_model.init_args.successor_init must be one of {list(SUCCESSOR_INITS)}, "
                f"got {successor_init!r}"
            )
        self.num_labels, self.label_names = num_labels, list(label_names)
        self.num_successors, self.successor_init = num_successors, successor_init
        self.freeze_embeddings = freeze_embeddings
        self.set_replacing_rate(replacing_rate)
        self.head: str | None = None  # "pooler" (HF head) or "cls" (linear on raw [CLS]) once built
        self.block_size: int | None = None
        # The predecessor's layers: referenced, not registered (kept out of state_dict and optimiser).
        object.__setattr__(self, "predecessor_layers", None)
        object.__setattr__(self, "hf_model", None)

    # ------------------------------------------------------------------ building
    def _build(self, config: Any, head: str) -> None:
        """The successor's modules (random weights) for a BERT ``config`` cut to ``num_successors`` layers."""
        from transformers import BertForSequenceClassification, BertModel

        config.num_hidden_layers = self.num_successors
        config.num_labels = self.num_labels
        config.id2label = dict(enumerate(self.label_names))
        config.label2id = {name: i for i, name in enumerate(self.label_names)}
        if head == "pooler":
            model = BertForSequenceClassification(config)
            for name, child in model.named_children():  # bert, dropout, classifier: HF's own keys
                self.add_module(name, child)
            object.__setattr__(self, "hf_model", model)
        else:
            self.bert = BertModel(config, add_pooling_layer=False)
            dropout = config.classifier_dropout
            self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
            self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        for index, layer in enumerate(self.bert.encoder.layer):
            attention = getattr(getattr(layer, "attention", None), "self", None)
            if attention is not None and hasattr(attention, "layer_idx"):
                attention.layer_idx = index
        self.head = head

    def bind_teacher(self, teacher: Any) -> None:
        """Build the successor from the predecessor (``teacher``) and keep a reference to its layers."""
        encoder, pooler, classifier = predecessor_parts(teacher)
        layers = encoder.encoder.layer
        n_teacher, n = len(layers), self.num_successors
        if n_teacher % n != 0:
            raise StudentConfigError(
                f"model.student_model.init_args.num_successors={n}: the teacher {teacher.source!r} has "
                f"{n_teacher} layers, not a multiple of {n} (each successor module replaces k = L / n "
                f"consecutive teacher layers); choose a divisor of {n_teacher}"
            )
        k = n_teacher // n
        self._build(copy.deepcopy(encoder.config), "cls" if pooler is None else "pooler")
        with torch.no_grad():
            self.bert.embeddings.load_state_dict(encoder.embeddings.state_dict())
            for index, layer in enumerate(self.bert.encoder.layer):
                source = index if self.successor_init == "bottom" else index * k
                layer.load_state_dict(layers[source].state_dict())
            if pooler is not None:
                self.bert.pooler.load_state_dict(pooler.state_dict())
            self.classifier.load_state_dict(classifier.state_dict())
        if self.freeze_embeddings:
            self.bert.embeddings.requires_grad_(False)
        self.block_size = k
        object.__setattr__(self, "predecessor_layers", list(layers))

    def set_replacing_rate(self, rate: float) -> None:
        """p, the probability that a block is replaced by its successor module in a training step."""
        if not 0.0 <= float(rate) <= 1.0:
            raise StudentConfigError(f"replacing_rate must be in [0, 1], got {rate!r}")
        self.replacing_rate = float(rate)

    def _check_built(self) -> None:
        if self.head is None:
            raise StudentConfigError(
                "the BERT-of-Theseus student has no successor yet: it is built from its predecessor "
                "(model.teacher_ckpt) when the Student binds the teacher"
            )

    # ------------------------------------------------------------------ running
    @property
    def num_layers(self) -> int:
        return self.num_successors

    @property
    def hidden_size(self) -> int | None:
        return None if self.head is None else int(self.bert.config.hidden_size)

    def parts(self) -> dict[str, list[nn.Module]]:
        self._check_built()
        head = [self.classifier] if self.head == "cls" else [self.bert.pooler, self.classifier]
        return {"embeddings": [self.bert.embeddings], "successors": [self.bert.encoder], "head": head}

    def sample_layers(self) -> list[nn.Module]:
        """The layers a training step runs: block i is successor module i with probability
        ``replacing_rate``, else the predecessor's k layers of that block (independent draws)."""
        successors = list(self.bert.encoder.layer)
        replaced = torch.rand(len(successors)) < self.replacing_rate  # p = 0: never; p = 1: always
        self.last_replaced = replaced
        k = self.block_size
        layers: list[nn.Module] = []
        for index, successor in enumerate(successors):
            layers += (
                [successor] if bool(replaced[index]) else self.predecessor_layers[index * k : (index + 1) * k]
            )
        return layers

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        self._check_built()
        mixing = self.training and self.predecessor_layers is not None
        layers = self.sample_layers() if mixing else list(self.bert.encoder.layer)
        hidden, mask = bert_embed(self.bert, input_ids, attention_mask, token_type_ids)
        for layer in layers:
            hidden = run_bert_layer(layer, hidden, mask)
        states = hidden[:, 0] if self.head == "cls" else self.bert.pooler(hidden)
        return StudentOutput(logits=self.classifier(self.dropout(states)))

    # ------------------------------------------------------------------ checkpoint and export
    def payload(self) -> dict[str, Any]:
        self._check_built()
        return {**super().payload(), "hf_config": self.bert.config.to_dict(), "head": self.head}

    @classmethod
    def rebuild(cls, payload: dict[str, Any]) -> TheseusStudent:
        """The successor alone (random weights; no predecessor): what export and inference use."""
        from transformers import BertConfig

        model = cls(**payload["init_args"])
        model.init_args = dict(payload["init_args"])
        config = {k: v for k, v in payload["hf_config"].items() if k != "model_type"}
        model._build(BertConfig.from_dict(config), payload["head"])
        return model.eval()

    def save_exported(self, out_dir: Path, label_names: list[str]) -> None:
        """The successor alone: a plain HF ``BertForSequenceClassification`` directory (HF predecessor),
        or a metakd directory (MetaTeacher predecessor: a classifier on the raw [CLS] state)."""
        self._check_built()
        if self.hf_model is None:
            super().save_exported(out_dir, label_names)
            return
        config = self.hf_model.config
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
        self.hf_model.save_pretrained(out_dir)
