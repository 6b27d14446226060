"""Checkpoint files: atomic writes and loading with clear errors.

Lightning's ``TorchCheckpointIO`` serialises to memory, then writes through an fsspec transaction whose
temporary file lies in the system temp directory (``tempfile.mkstemp()``) and is moved into place with
``shutil.move``. When that directory is on another filesystem than the checkpoint folder (a tmpfs
``/tmp``, a network or scratch volume), the move is a copy: a process killed during it leaves a truncated
``last.ckpt``. :class:`AtomicCheckpointIO` writes a ``.<name>.<pid>.partial`` file next to the target,
fsyncs it and ``os.replace``-s it over the target (``metakd.utils.atomic_write_bytes``), so a reader sees
the old file or the new one, never a half.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from metakd.errors import MetakdError
from metakd.utils import atomic_torch_save

# What each metakd module writes into its checkpoints (a key checked before a checkpoint is used).
EXPECTED_KEYS = {
    "MetaTeacher": ("state_dict", "hyper_parameters"),
    "Student": ("state_dict", "hyper_parameters"),
    "Lightning": ("state_dict",),
}


class CheckpointFileError(MetakdError, ValueError):
    """A checkpoint file that cannot be read, or is not the kind of checkpoint expected."""


class LastModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch (with ``save_last``).

    Lightning 2.6 writes ``last.ckpt`` only when it also writes a top-k checkpoint, so with
    ``monitor="val/acc"`` an epoch that does not improve leaves ``last.ckpt`` at the best epoch and
    ``fit --ckpt_path last`` would silently resume from there. Here ``last.ckpt`` is also written at the
    end of every ``every_n_epochs``-th epoch.
    """

    @property
    def state_key(self) -> str:
        # Keep ModelCheckpoint's key: checkpoints stay interchangeable (resume, `--ckpt_path best`).
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__) :]

    def _save_last_if_missed(self, trainer: Any) -> None:
        if (
            self.save_last
            and self._every_n_epochs >= 1
            and (trainer.current_epoch + 1) % self._every_n_epochs == 0
            and self._last_global_step_saved != trainer.global_step
            and not self._defer_save_until_validation
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        active = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(
            trainer
        )
        super().on_train_epoch_end(trainer, pl_module)
        if active:
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        active = not self._should_skip_saving_checkpoint(
            trainer
        ) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if active:
            self._save_last_if_missed(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes a partial file in the target folder, then ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        target = str(path)
        if "://" in target and not target.startswith("file://"):
            return super().save_checkpoint(checkpoint, path)  # remote filesystems: Lightning's way
        atomic_torch_save(
            checkpoint, target.removeprefix("file://")
        )  # serialised first: fails before any write

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        check_checkpoint_file(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _describe(path: Any) -> str:
    return repr(str(path))


def check_checkpoint_file(path: Any, expected: str = "Lightning") -> None:
    """Raise :class:`CheckpointFileError` unless ``path`` is an existing, complete torch zip file.

    Cheap (reads the zip directory, not the tensors): catches a missing file, a truncated copy, a text
    file or any non-torch file, naming the path and what was expected.
    """
    what = f"a {expected} checkpoint (.ckpt written by `python -m metakd fit`)"
    p = Path(str(path))
    if not p.is_file():
        raise CheckpointFileError(f"checkpoint not found: {_describe(path)}; expected {what}")
    if p.stat().st_size == 0:
        raise CheckpointFileError(f"{_describe(path)} is empty; expected {what}")
    if not zipfile.is_zipfile(p):
        raise CheckpointFileError(
            f"{_describe(path)} is not a torch checkpoint (truncated, or another kind of file); "
            f"expected {what}"
        )
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointFileError(
            f"{_describe(path)} is a damaged torch checkpoint ({err}); expected {what}"
        ) from err
    if not any(name.endswith("data.pkl") for name in names):
        raise CheckpointFileError(f"{_describe(path)} is a damaged torch checkpoint; expected {what}")


def load_checkpoint_file(path: Any, expected: str = "Lightning", map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the path and the expected kind.

    ``expected`` is a key of :data:`EXPECTED_KEYS` (``"MetaTeacher"``, ``"Student"``, ``"Lightning"``).
    """
    check_checkpoint_file(path, expected)
    what = f"a {expected} checkpoint"
    try:
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointFileError(f"cannot read {_describe(path)} as {what}: {first}") from err
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(
            f"{_describe(path)} holds a {type(checkpoint).__name__}, not {what} (a dict with "
            f"{', '.join(EXPECTED_KEYS.get(expected, ('state_dict',)))})"
        )
    missing = [key for key in EXPECTED_KEYS.get(expected, ("state_dict",)) if key not in checkpoint]
    if missing:
        raise CheckpointFileError(
            f"{_describe(path)} is not {what}: it has no {missing} entry "
            f"(keys: {sorted(map(str, checkpoint))[:8]})"
        )
    return checkpoint


class RNGStateCallback(Callback):
    """Carries torch's global random generator states in every checkpoint and restores them before a
    resumed run's first training batch.

    Lightning does not checkpoint RNG states, so dropout masks and the domain-corruption permutations of
    a resumed run would differ from the uninterrupted run's. The state is captured when a checkpoint is
    written (an epoch-end checkpoint is written after the epoch's last random draw) and set again in
    ``on_train_batch_start`` of the first batch after the restore, before that batch's first draw.
    Only torch's CPU and CUDA generators are kept (tensors, so the checkpoint still loads with
    ``weights_only=True``); metakd draws nothing from Python's or numpy's.
    A mid-epoch checkpoint cannot be resumed exactly this way (the loader restarts the epoch).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # The first batch after a resume: nothing drew from the global generators since the save point
        # (an epoch-end checkpoint's sanity check and loader creation draw nothing), so this is where the
        # uninterrupted run stood. A mid-epoch checkpoint gets its states back here too, though its
        # loader restarts the epoch (see docs/FAULTS.md).
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None


def load_student_weights(module: Any, path: str) -> None:
    """Start a Student from another Student checkpoint's weights (``init_from``: e.g. an intermediate-stage
    run's ``last.ckpt``): the architecture's weights must all be there with the same shapes; the method's
    modules (projections, heads) are taken where they fit. No optimiser state, no epoch counter."""
    import logging

    from metakd.errors import StudentConfigError

    try:
        state = load_checkpoint_file(path, expected="Student")["state_dict"]
    except CheckpointFileError as err:
        raise StudentConfigError(f"init_from: {err}") from err
    own = module.state_dict()
    missing_model = sorted(k for k in own if k.startswith("model.") and k not in state)
    if missing_model:
        raise StudentConfigError(
            f"init_from {path!r} is not a compatible Student checkpoint: missing {missing_model[:5]}..."
        )
    usable = {k: v for k, v in state.items() if k in own}
    for key, value in usable.items():
        if own[key].shape != value.shape:
            raise StudentConfigError(
                f"init_from {path!r}: {key} has shape {tuple(value.shape)}, "
                f"the student {tuple(own[key].shape)}"
            )
    module.load_state_dict(usable, strict=False)
    logging.getLogger(__name__).info(
        "initialised the student from %s (%d tensors; not used: %s)",
        path,
        len(usable),
        sorted(set(state) - set(usable)),
    )
