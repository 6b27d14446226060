"""metakd: meta knowledge distillation of BERT-like models across domains (Lightning)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MetaTeacher": "metakd.teacher",
    "MultiTaskTeacher": "metakd.teacher_mtl",
    "Student": "metakd.student",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import datamodules` (which uses metakd.backbones) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metakd' has no attribute {name!r}")


__all__ = ["MetaTeacher", "MultiTaskTeacher", "Student", "__version__"]
