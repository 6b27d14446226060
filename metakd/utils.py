"""Small helpers used across metakd, each written once: atomic file writes, hashing, a generic name
registry and AdamW parameter groups (masked mean pooling lives in ``metakd.prototypes``)."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# files


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through ``<path>.partial`` in the same folder, fsync, then ``os.replace``:
    a reader sees the old file or the new one, never a half-written file (also across processes)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_write_bytes` (serialised in memory first: a failure touches
    no file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Indented, key-sorted JSON written atomically (values that JSON lacks are written with ``str``)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(payload: Any, length: int = 32) -> str:
    """The first ``length`` hex digits of the sha256 of ``payload`` as key-sorted JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


# --------------------------------------------------------------------------------------------------
# registries


def import_object(path: str) -> Any:
    """The object named by a dotted path, ``package.module.Name``."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} is not a dotted path (package.module.Name)")
    return getattr(importlib.import_module(module_name), name)


class Registry(Generic[T]):
    """Named entries (e.g. distillation methods, student architectures) that users extend from their
    own modules, with lookups that fail naming the known entries and the closest one.

    ``get`` also accepts a dotted class path (``mypackage.methods.MyKD``), so a YAML config can name an
    entry that was never registered.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (a second, different object is an error)."""

        def decorator(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"a {self.what} named {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register temporary entries clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if "." in name:
            try:
                return import_object(name)
            except (ImportError, AttributeError) as err:
                raise KeyError(f"cannot import the {self.what} {name!r}: {err}") from None
        raise KeyError(f"unknown {self.what} {name!r}; {self.choices_hint(name)}")

    def choices_hint(self, name: str) -> str:
        """``known: [...]`` plus ``did you mean 'x'?`` when one is close."""
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"known: {known}"
        if close:
            hint += f"; did you mean {close[0]!r}?"
        return hint + " (or a dotted class path)"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterable[tuple[str, T]]:
        return self._entries.items()

    def names(self) -> list[str]:
        return list(self._entries)


# --------------------------------------------------------------------------------------------------
# modelling


def adamw_param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (``ndim >= 2``), none on biases, norms and other vectors.

    The rule goes by shape, not by name, so it holds for any architecture (an LSTM's biases, a
    ``layer_norm`` named otherwise). Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for _, parameter in named_parameters:
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
