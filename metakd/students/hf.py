"""The BERT student: a HuggingFace ``*ForSequenceClassification`` model, either a subset of a pretrained
backbone's layers (e.g. MiniLM layers 0 and 5) or a fresh smaller config (e.g. 4 layers, hidden 312).

The HF model's own submodules are registered on :class:`HFStudent` directly, so the Student's
``state_dict`` keys stay ``model.bert.*`` / ``model.classifier.*`` and the export is a plain HF model
directory that ``transformers.pipeline`` loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from metakd.backbones import (
    DEFAULT_BACKBONE,
    check_same_tokenizer,
    load_classifier,
    load_tokenizer,
    tokenizer_signature,
)
from metakd.errors import StudentConfigError
from metakd.prototypes import masked_mean_pool
from metakd.students.base import STUDENTS, StudentModel, StudentOutput


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
    from transformers import BertConfig, BertForSequenceClassification

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

    model = load_classifier(student_backbone, num_labels=num_labels, id2label=id2label, label2id=label2id)
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
    return model.train()


def bert_attention_mask(bert: nn.Module, hidden: Tensor, attention_mask: Tensor) -> Any:
    """The mask BERT's layers take, built from a (B, T) 0/1 ``attention_mask`` as ``bert`` (a
    ``BertModel``) builds it for its attention implementation: for architectures that run the layers
    one by one (BERT-of-Theseus, early exit)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4: an additive (B, 1, 1, T) mask
        return bert.get_extended_attention_mask(attention_mask, attention_mask.shape)
    return create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask)


def bert_embed(
    bert: nn.Module, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None
) -> tuple:
    """``(embedding output, the layers' attention mask)`` of a ``BertModel`` for a batch."""
    hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    return hidden, bert_attention_mask(bert, hidden, attention_mask)


def run_bert_layer(layer: nn.Module, hidden: Tensor, mask: Any) -> Tensor:
    """One BERT layer's output states (transformers 4 returns a tuple, 5 the tensor)."""
    out = layer(hidden, mask)
    return out[0] if isinstance(out, tuple) else out


@STUDENTS.register("hf")
class HFStudent(StudentModel):
    """A HuggingFace sequence classifier as a student: ``backbone`` cut to ``layers``, or a fresh
    ``BertConfig(**config)`` (``vocab_size`` and ``pad_token_id`` default to the tokenizer's).

    Provides token ``hidden`` states (embedding output first), ``attention`` maps (eager attention is
    switched on when a method asks for them) and ``pooled`` = the masked mean of the last layer.
    """

    provides = frozenset({"hidden", "attention", "pooled"})

    def __init__(
        self,
        num_labels: int,
        label_names: list[str],
        tokenizer_name: str,
        backbone: str = DEFAULT_BACKBONE,
        layers: list[int] | int | None = None,
        config: dict[str, Any] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            if config is None:
                check_same_tokenizer(tokenizer_name, "data", backbone, "student backbone")
            model = build_student_model(num_labels, label_names, tokenizer_name, backbone, layers, config)
        self.wrap(model)

    def wrap(self, model: nn.Module) -> None:
        # The HF model's children become this module's children (same objects): state_dict keys and the
        # trained weights are exactly the HF model's, which stays callable and exportable as it is.
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "hf_model", model)

    def train(self, mode: bool = True) -> HFStudent:
        super().train(mode)
        self.hf_model.training = mode  # the wrapper itself is not a child; keep its flag in step
        return self

    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def prepare(self, need: frozenset[str]) -> None:
        # Attention maps need eager attention (sdpa returns none).
        if "attention" in need and getattr(self.config, "_attn_implementation", "eager") != "eager":
            self.hf_model.set_attn_implementation("eager")

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        want_states = "hidden" in need or "pooled" in need
        out = self.hf_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=want_states,
            output_attentions="attention" in need,
        )
        hidden = tuple(out.hidden_states) if want_states else None
        return StudentOutput(
            logits=out.logits,
            hidden_states=hidden if "hidden" in need else None,
            attentions=tuple(out.attentions) if "attention" in need else None,
            pooled=masked_mean_pool(hidden[-1], attention_mask) if "pooled" in need else None,
        )

    def payload(self) -> dict[str, Any]:
        # The HF config rebuilds the architecture without the pretrained weights.
        return {**super().payload(), "hf_config": self.config.to_dict()}

    @classmethod
    def rebuild(cls, payload: dict[str, Any]) -> HFStudent:
        return cls.from_hf_config(payload["hf_config"])

    @classmethod
    def from_hf_config(cls, hf_config: dict[str, Any], label_names: list[str] | None = None) -> HFStudent:
        """A fresh model of an HF config dict (``model_type`` picks the architecture)."""
        from transformers import CONFIG_MAPPING, AutoModelForSequenceClassification

        config_dict = dict(hf_config)
        model_type = config_dict.pop("model_type", "bert")
        config = CONFIG_MAPPING[model_type].from_dict(config_dict)
        if label_names is not None:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
            config.num_labels = len(label_names)
        model = AutoModelForSequenceClassification.from_config(config)
        student = cls.__new__(cls)
        StudentModel.__init__(student)
        student.wrap(model)
        student.init_args = {}
        return student.eval()

    def save_exported(self, out_dir: Path, label_names: list[str]) -> None:
        """A plain HF model directory (``save_pretrained``) with ``id2label`` from the data's labels."""
        config = self.config
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
        self.hf_model.save_pretrained(out_dir)
