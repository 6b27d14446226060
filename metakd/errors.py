"""Error classes of the distillation side, in one dependency-free module (the student, its teacher and
its architecture raise them; ``metakd.student`` re-exports them under their historical import path)."""

from __future__ import annotations


class StudentConfigError(ValueError):
    """An inconsistent student / teacher / data configuration."""


class TeacherCheckpointError(StudentConfigError):
    """A teacher that is missing, unreadable or not a classifier metakd can distil from."""
