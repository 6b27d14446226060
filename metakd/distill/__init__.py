"""Distillation methods: a registry of :class:`Distiller` entries, each a list of stages of loss terms.

Every module of this folder is imported here, and each method file registers its methods, so a new
method is one new file: ``presets.py`` holds ``none``, ``vanilla``, ``tinybert`` and ``meta``. See
``metakd/distill/base.py`` for how to write one and ``docs/ARCHITECTURE.md`` for the checklist.
"""

from __future__ import annotations

import importlib
import pkgutil

from metakd.distill.base import (
    DISTILLERS,
    TEACHER_ROLES,
    DistillContext,
    Distiller,
    LossTerm,
    Stage,
    StageSchedule,
    StepContext,
    build_distiller,
    distiller_class,
    register_distiller,
)
from metakd.distill.terms import HardCE, LayerMatches, LogitKD, LogitMSE, TransferableMSE

__all__ = [
    "DISTILLERS",
    "TEACHER_ROLES",
    "DistillContext",
    "Distiller",
    "HardCE",
    "LayerMatches",
    "LogitKD",
    "LogitMSE",
    "LossTerm",
    "Stage",
    "StageSchedule",
    "StepContext",
    "TransferableMSE",
    "build_distiller",
    "distiller_class",
    "register_distiller",
]


_INFRASTRUCTURE = {"base", "terms", "losses", "layer_maps"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")  # a method file registers its methods
