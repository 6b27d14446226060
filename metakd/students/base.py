"""The student-architecture contract: one output dataclass, declared features, build/rebuild/export.

A distillation method reads a student only through :class:`StudentOutput` (TextBrewer's adaptor idea,
HF's output dataclasses): ``logits`` always, and ``hidden_states``, ``attentions``, ``pooled``,
``exit_logits`` where the architecture has them. An architecture declares what it can return in
``provides``; a method whose loss terms need a feature the student lacks is refused when the Student is
built, with an error that names both.

Writing a new architecture (one file, e.g. ``metakd/students/bilstm.py``)::

    @STUDENTS.register("bilstm")
    class BiLSTMStudent(StudentModel):
        provides = frozenset({"hidden", "pooled"})

        def __init__(self, num_labels: int, vocab_size: int, hidden_size: int = 128) -> None:
            super().__init__()
            ...

        def forward(self, input_ids, attention_mask, token_type_ids=None, need=frozenset()):
            ...
            return StudentOutput(logits=..., hidden_states=(...,), pooled=...)

and use it from YAML: ``model.init_args.student_model: {class_path: metakd.students.bilstm.BiLSTMStudent,
init_args: {...}}`` (a dotted class path; a registered name such as ``bilstm`` works from Python, and in
a LightningCLI config without ``init_args``: jsonargparse imports the ``class_path`` of a mapping with
``init_args``). Constructor arguments named like a field of
:class:`StudentContext` (``num_labels``, ``label_names``, ``vocab_size``, ``pad_token_id``,
``tokenizer_name``) are filled from the data; the rest come from ``init_args``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.utils import Registry

if TYPE_CHECKING:  # pragma: no cover
    from metakd.teachers import FrozenTeacher

FEATURES: frozenset[str] = frozenset({"hidden", "attention", "pooled", "exit_logits"})
"""Features a student may provide besides ``logits`` (the :class:`StudentOutput` fields)."""

EXPORT_FILE = "metakd_student.json"
"""The file that marks an exported non-HF student directory (architecture, labels, format)."""
WEIGHTS_FILE = "model.safetensors"


@dataclass
class StudentOutput:
    """What every student returns (fields left None are features the student does not provide).

    Attributes:
        logits: (B, C) classifier output.
        hidden_states: per layer (B, T, H) token states, HF convention: index 0 is the embedding
            output, index m the output of layer m.
        attentions: per layer (B, heads, T, T) attention probabilities.
        pooled: (B, H) one vector per sentence (for a BERT student: the masked mean of the last layer).
        exit_logits: per exit branch (B, C) logits (early-exit students).
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    pooled: Tensor | None = None
    exit_logits: tuple[Tensor, ...] | None = None


@dataclass(frozen=True)
class StudentContext:
    """What the data tell an architecture: labels and tokenizer."""

    num_labels: int
    label_names: tuple[str, ...]
    tokenizer_name: str
    vocab_size: int
    pad_token_id: int


STUDENTS: Registry[type[StudentModel]] = Registry("student architecture")
"""Student architectures by name (``students/*.py`` register themselves; a dotted path works too)."""


class StudentModel(nn.Module):
    """Base class of student architectures (a plain ``nn.Module``; the Lightning system wires it).

    Subclasses set ``provides`` and implement :meth:`forward`; ``num_layers`` / ``hidden_size`` describe
    the ``hidden_states`` for layer maps (None when the student has none). Optional hooks:
    :meth:`bind_teacher` (an architecture built around its teacher sets ``needs_teacher``), :meth:`parts`
    (groups of modules a stage can train alone, ``Stage.trains``), :meth:`predict_logits` (inference that
    differs from the training forward, e.g. early exit) and :meth:`export_onnx_extras`.
    """

    provides: ClassVar[frozenset[str]] = frozenset()
    needs_teacher: ClassVar[bool] = False
    """True: the architecture is built around the teacher it is trained against (BERT-of-Theseus runs the
    teacher's frozen layers inside the student): the Student loads ``teacher_ckpt`` even when no loss term
    reads the teacher, and refuses to build without one."""

    def __init__(self) -> None:
        super().__init__()
        self.init_args: dict[str, Any] = {}  # filled by build_student: how to rebuild the architecture

    @property
    def num_layers(self) -> int | None:
        """Layers of ``hidden_states`` beyond the embeddings (None: no token states)."""
        return None

    @property
    def hidden_size(self) -> int | None:
        """Width of ``hidden_states`` / ``pooled`` (None: neither)."""
        return None

    def prepare(self, need: frozenset[str]) -> None:
        """Called once with every feature the method will ask for (e.g. switch to eager attention)."""

    def bind_teacher(self, teacher: FrozenTeacher) -> None:
        """Called once by the Student, right after the architecture is built and before the method's
        modules are, whenever the Student has a teacher. ``teacher.module`` is the frozen teacher (eval
        mode, no gradients; never register it as a submodule: it would enter the student's checkpoint
        and optimiser). Default: nothing."""

    def parts(self) -> dict[str, list[nn.Module]]:
        """Named groups of this model's submodules that a stage can train alone (``Stage.trains``, e.g.
        ``backbone``, ``classifier``, ``branches``); the Student freezes the other parameters for that
        stage. Default: none."""
        return {}

    def train_parts(self, parts: tuple[str, ...] | None, trainable: set[str]) -> None:
        """Freeze every parameter outside ``parts`` (names of :meth:`parts`; None: all of them) and
        outside ``trainable`` (the names the architecture left trainable when it was built). The
        optimiser holds them all; a frozen parameter gets no gradient, and AdamW skips it."""
        allowed: set[int] | None = None
        if parts is not None:
            groups = self.parts()
            allowed = {id(p) for part in parts for module in groups[part] for p in module.parameters()}
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in trainable and (allowed is None or id(parameter) in allowed))

    def predict_logits(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """The logits of inference (the Student's validation, test and predict steps): by default the
        forward's; an early-exit student exits early here while its forward runs every layer."""
        return self(input_ids, attention_mask, token_type_ids).logits

    def for_export(self) -> nn.Module:
        """The module ONNX export traces (the same logits as this model in eval mode). Default: the model
        itself; a quantisation-aware student returns a copy whose weights sit on their int8 grid, without
        the fake quantisation ops, so that dynamic int8 quantisation finds plain weights."""
        return self

    def export_onnx_extras(
        self, out_dir: Path, probe: dict[str, Tensor], opset: int, atol: float
    ) -> dict[str, Any]:
        """ONNX files beside ``model.onnx`` (which traces the forward's logits), written and checked by
        the architecture itself when ``python -m metakd export --onnx`` runs (e.g. one graph per exit
        point); returns what goes into the export report. Default: none."""
        return {}

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:  # pragma: no cover - abstract
        """Logits, plus the features in ``need`` (a subset of ``provides``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------
    # checkpoint and export

    def payload(self) -> dict[str, Any]:
        """JSON-able data that rebuild the architecture (not the weights): stored in checkpoints."""
        return {"class_path": class_path(type(self)), "init_args": dict(self.init_args)}

    @classmethod
    def rebuild(cls, payload: dict[str, Any]) -> StudentModel:
        """A fresh model (random weights) from :meth:`payload`; load the state dict after."""
        model = cls(**payload["init_args"])
        model.init_args = dict(payload["init_args"])
        return model

    def save_exported(self, out_dir: Path, label_names: list[str]) -> None:
        """Write an inference directory: ``metakd_student.json`` and ``model.safetensors`` (the HF student
        writes a plain HF model directory instead). The tokenizer is saved beside it by the exporter."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS_FILE))
        meta = {"format": 1, **self.payload(), "label_names": list(label_names)}
        (out_dir / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def student_class(name: str) -> type[StudentModel]:
    """A registered architecture name or a dotted class path, checked to be a :class:`StudentModel`.
    (The built-in architectures are registered: this module is imported through the ``metakd.students``
    package, whose ``__init__`` imports every architecture file.)"""
    try:
        cls = STUDENTS.get(name)
    except KeyError as err:
        raise StudentConfigError(f"model.student_model.class_path: {err.args[0]}") from None
    if not (inspect.isclass(cls) and issubclass(cls, StudentModel)):
        raise StudentConfigError(
            f"model.student_model.class_path {name!r} is {cls!r}, not a metakd.students.StudentModel subclass"
        )
    return cls


def spec_needs_teacher(spec: dict[str, Any] | None) -> bool:
    """Whether the architecture ``model.student_model`` names sets ``needs_teacher`` (False for the
    default BERT student; a malformed spec is reported by :func:`build_student`)."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        return False
    return bool(student_class(str(spec["class_path"])).needs_teacher)


def build_student(spec: dict[str, Any], context: StudentContext) -> StudentModel:
    """Instantiate ``{class_path, init_args}``, filling constructor arguments named like a
    :class:`StudentContext` field from the data."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise StudentConfigError(
            f"model.student_model must be a mapping with class_path (and init_args), got {spec!r}"
        )
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        raise StudentConfigError(
            f"model.student_model has unknown keys {unknown}; expected class_path, init_args (an "
            f"argument of the architecture goes below init_args: model.init_args.student_model.init_args."
            f"{unknown[0]})"
        )
    cls = student_class(str(spec["class_path"]))
    init_args = dict(spec.get("init_args") or {})
    parameters = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for field in fields(StudentContext):
        if field.name in parameters and field.name not in init_args:
            value = getattr(context, field.name)
            init_args[field.name] = list(value) if isinstance(value, tuple) else value
    if not takes_any:
        extra = sorted(set(init_args) - set(parameters))
        if extra:
            raise StudentConfigError(
                f"model.student_model.init_args: {cls.__name__} takes no {extra}; its arguments: "
                f"{sorted(p for p in parameters if p != 'self')}"
            )
    try:
        model = cls(**init_args)
    except TypeError as err:
        raise StudentConfigError(f"model.student_model: cannot build {cls.__name__}: {err}") from err
    model.init_args = init_args
    return model


def rebuild_student(payload: dict[str, Any]) -> StudentModel:
    """The architecture a checkpoint or export recorded (random weights)."""
    return student_class(payload["class_path"]).rebuild(payload)


class LogitsOnly(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> logits`` of a StudentModel or an HF classifier:
    what ONNX export traces and what the export checks compare."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        if isinstance(self.model, StudentModel):
            return self.model(input_ids, attention_mask, token_type_ids).logits
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def logits_only(model: nn.Module) -> nn.Module:
    return LogitsOnly(model)


@torch.no_grad()
def load_exported(directory: str | Path) -> tuple[nn.Module, Any, list[str]]:
    """``(model, tokenizer, label_names)`` from an exported student directory: a metakd directory
    (``metakd_student.json``; its weights in ``model.safetensors``, or in the files its
    ``weights_files`` lists) or a plain HF one. The model returns a :class:`StudentOutput` for a metakd
    directory and an HF output for an HF one (both have ``.logits``)."""
    from metakd.backbones import load_tokenizer

    directory = Path(directory)
    tokenizer = load_tokenizer(str(directory))
    meta_path = directory / EXPORT_FILE
    if meta_path.is_file():
        from safetensors.torch import load_file

        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        model = rebuild_student(meta)
        state: dict[str, Tensor] = {}
        for name in meta.get("weights_files", [WEIGHTS_FILE]):  # e.g. an HF model's and extra weights
            state.update(load_file(str(directory / name)))
        model.load_state_dict(state)
        return model.eval(), tokenizer, list(meta["label_names"])
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, tokenizer, labels


CHECKPOINT_FORMAT = 2
"""``metakd_student`` payload format; 1 (before the method registry) held an HF config only, and export
still reads it."""


def checkpoint_payload(
    model: StudentModel, label_names: list[str], tokenizer_name: str, target_domain: str | None, method: str
) -> dict[str, Any]:
    """The ``metakd_student`` entry of a Student checkpoint: how to rebuild and serve the architecture."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "student_class": class_path(type(model)),
        "student": model.payload(),
        "label_names": list(label_names),
        "tokenizer_name": tokenizer_name,
        "target_domain": target_domain,
        "distillation": method,
    }
    if "hf_config" in payload["student"]:
        payload["hf_config"] = payload["student"]["hf_config"]  # what format-1 readers look for
    return payload
