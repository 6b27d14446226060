"""Student architectures behind one interface (:class:`StudentModel`, :class:`StudentOutput`), one file
each; every module of this folder is imported here and registers its architectures. Built in: ``hf``
(a BERT layer subset or a fresh small BERT, ``hf.py``)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from metakd.errors import StudentConfigError
from metakd.students.base import (
    STUDENTS,
    StudentContext,
    StudentModel,
    StudentOutput,
    build_student,
    load_exported,
    rebuild_student,
)
from metakd.students.hf import HFStudent, build_student_model

__all__ = [
    "STUDENTS",
    "HFStudent",
    "StudentContext",
    "StudentModel",
    "StudentOutput",
    "build_student",
    "build_student_model",
    "load_exported",
    "rebuild_student",
    "student_from_arguments",
]


def student_from_arguments(
    spec: dict[str, Any] | None,
    backbone: str,
    layers: list[int] | int | None,
    config: dict[str, Any] | None,
    label_names: list[str],
    tokenizer_name: str,
) -> StudentModel:
    """The Student's architecture: ``spec`` (``student_model``), else the BERT student of ``backbone`` /
    ``layers`` / ``config``."""
    from metakd.backbones import load_tokenizer

    if spec is None:
        model = HFStudent(len(label_names), label_names, tokenizer_name, backbone, layers, config)
        model.init_args = {"backbone": backbone, "layers": layers, "config": config}
        return model
    if layers is not None or config is not None:
        raise StudentConfigError("give model.student_model or student_layers / student_config, not both")
    tokenizer = load_tokenizer(tokenizer_name)
    context = StudentContext(
        num_labels=len(label_names),
        label_names=tuple(label_names),
        tokenizer_name=tokenizer_name,
        vocab_size=len(tokenizer),
        pad_token_id=int(tokenizer.pad_token_id or 0),
    )
    return build_student(spec, context)


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")  # an architecture file registers itself
