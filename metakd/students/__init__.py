"""Student architectures behind one interface (:class:`StudentModel`, :class:`StudentOutput`), one file
each; every module of this folder is imported here and registers its architectures. Built in: ``hf``
(a BERT layer subset or a fresh small BERT, ``hf.py``)."""

from __future__ import annotations

import importlib
import pkgutil

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
]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")  # an architecture file registers itself
