"""Progress of a model being trained, validated, tested or used to predict: Lightning's tqdm bar
(:class:`~pytorch_lightning.callbacks.TQDMProgressBar`), labelled, written to a stream of your choice.

On a terminal it is Lightning's bar. Elsewhere (CI, a log file, a pipe) a bar would be a flood of carriage
returns, so it is a plain line now and then instead, the same text without the bar (tqdm's
``format_meter``)::

    books/meta: Epoch 2/3: 120/400 [01:02<02:25, 1.93it/s, v_num=0, train/loss=0.412]

Lines come at most every ``interval`` seconds (the first step of a run prints at once), plus one closing
line when a run (training, testing, predicting, a validation run on its own) ends.

``python -m metakd fit|validate|test|predict`` uses this bar when the trainer's progress bar is on and
no other is given; these environment variables set it up (a pipeline that runs cells with their output
sent to log files points the bar at its own terminal this way):

- ``METAKD_PROGRESS_FD``: write to this open file descriptor (default: standard output);
- ``METAKD_PROGRESS_LABEL``: put this label in front of each description (e.g. a cell's name);
- ``METAKD_PROGRESS_INTERVAL``: seconds between lines off a terminal (default 30);
- ``METAKD_PROGRESS_TERMINAL``: ``1`` a bar, ``0`` lines, whatever the stream is (default: ask it).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from metakd.errors import ConfigError

DEFAULT_INTERVAL = 30.0
ENV_FD, ENV_LABEL, ENV_INTERVAL = "METAKD_PROGRESS_FD", "METAKD_PROGRESS_LABEL", "METAKD_PROGRESS_INTERVAL"
ENV_TERMINAL = "METAKD_PROGRESS_TERMINAL"


def labelled(label: str | None, description: str | None) -> str:
    """``label: description`` (either alone when the other is empty)."""
    parts = [part for part in (label, description) if part]
    return ": ".join(parts)


class LineThrottle:
    """When the next line is due: at most one every ``interval`` seconds of ``clock`` (shared by the bars
    of one callback, so a validation run inside training does not add lines of its own)."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval, self.clock = interval, clock
        self.last: float | None = None

    def due(self) -> bool:
        return self.last is None or self.clock() - self.last >= self.interval

    def mark(self) -> None:
        self.last = self.clock()


class LabelledTqdm(Tqdm):
    """Lightning's tqdm bar whose descriptions carry a label (Lightning sets them per epoch and loader)."""

    def __init__(self, *args: Any, label: str | None = None, **kwargs: Any) -> None:
        self.label = label
        kwargs["desc"] = labelled(label, kwargs.get("desc"))
        super().__init__(*args, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(labelled(self.label, desc), refresh)


class _Discard:
    """Where a line bar's own tqdm output goes (its lines are written by :class:`LineTqdm` itself)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LineTqdm(LabelledTqdm):
    """A bar shown as a plain line on ``out`` when ``throttle`` says one is due, and a last line when a
    bar with ``leave`` closes; nothing else (no carriage returns)."""

    LINE_FORMAT = (
        "{desc}{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"  # desc ends in ": "
    )

    def __init__(self, *args: Any, out: IO[str], throttle: LineThrottle, **kwargs: Any) -> None:
        self.out, self.throttle, self.printed_n = out, throttle, 0
        kwargs.update(file=_Discard(), bar_format=self.LINE_FORMAT, dynamic_ncols=False)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if 0 < self.n != self.printed_n and self.throttle.due():
            self.write_line()
        return True

    def write_line(self) -> None:
        self.out.write(self.format_meter(**self.format_dict) + "\n")
        self.out.flush()
        self.printed_n = self.n
        self.throttle.mark()

    def reset(self, total: float | None = None) -> None:
        self.printed_n = 0
        super().reset(total)

    def close(self) -> None:
        if not self.disable and self.leave and self.n > self.printed_n:
            self.write_line()  # the run's last state, even when a line was printed moments ago
        super().close()


class StreamProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar for fit (training and its validation), validate, test and predict:
    steps done of total, elapsed time, ETA and rate, labelled, on a chosen stream; off a terminal a plain
    line at most every ``interval`` seconds (see the module docstring).

    Args:
        label: put in front of every description (e.g. the pipeline cell's name).
        stream: where to write: a file object, an open file descriptor (int; it is not closed), a file
            path (appended to), or None for standard output at the time a bar starts.
        interval: seconds between two lines off a terminal.
        refresh_rate: update the bar every n batches (Lightning's ``refresh_rate``).
        terminal: whether ``stream`` is a terminal (None: ask ``stream.isatty()``).
        leave: keep each finished epoch's bar on a terminal (Lightning's ``leave``).
        clock: the clock of the line interval (tests pass a fake one).
    """

    def __init__(
        self,
        label: str | None = None,
        stream: Any = None,
        interval: float = DEFAULT_INTERVAL,
        refresh_rate: int = 1,
        terminal: bool | None = None,
        leave: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval >= 0:
            raise ConfigError(f"progress interval must be a number of seconds >= 0, got {interval!r}")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.label, self.stream_spec, self.terminal = label, stream, terminal
        self.throttle = LineThrottle(float(interval), clock)
        self._stream: IO[str] | None = None
        self._owns_stream = False

    # --- where the bars go
    @property
    def stream(self) -> IO[str]:
        """The open stream (opened on first use: an fd or a path given in a config is opened here)."""
        if self._stream is None:
            spec = self.stream_spec
            if spec is None:
                return sys.stdout
            if isinstance(spec, int) and not isinstance(spec, bool):
                self._stream = os.fdopen(spec, "w", buffering=1, encoding="utf-8", closefd=False)
            elif isinstance(spec, (str, os.PathLike)):
                self._stream = open(spec, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed in teardown)
                self._owns_stream = True
            elif callable(getattr(spec, "write", None)):
                self._stream = spec
            else:
                raise ConfigError(
                    f"progress stream must be a file object, a file descriptor or a path, got {spec!r}"
                )
        return self._stream

    def is_terminal(self) -> bool:
        if self.terminal is not None:
            return self.terminal
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
            return False

    def make_bar(self, desc: str, position: int, leave: bool, **kwargs: Any) -> Tqdm:
        """A bar for one loop: Lightning's settings, this callback's label and stream."""
        common = {"desc": desc, "position": position, "disable": self.is_disabled, "leave": leave,
                  "label": self.label, **kwargs}  # fmt: skip
        if self.is_terminal():
            return LabelledTqdm(file=self.stream, dynamic_ncols=True, bar_format=self.BAR_FORMAT, **common)
        return LineTqdm(out=self.stream, throttle=self.throttle, **common)

    def init_sanity_tqdm(self) -> Tqdm:
        return self.make_bar(self.sanity_check_description, 2 * self.process_position, leave=False)

    def init_train_tqdm(self) -> Tqdm:
        return self.make_bar(self.train_description, 2 * self.process_position, leave=True, smoothing=0)

    def init_predict_tqdm(self) -> Tqdm:
        return self.make_bar(self.predict_description, 2 * self.process_position, leave=True, smoothing=0)

    def init_validation_tqdm(self) -> Tqdm:
        has_main_bar = self.trainer.state.fn != "validate"  # as Lightning: no train bar in `validate`
        position = 2 * self.process_position + has_main_bar
        return self.make_bar(self.validation_description, position, leave=not has_main_bar)

    def init_test_tqdm(self) -> Tqdm:
        return self.make_bar(self.test_description, 2 * self.process_position, leave=True)

    # --- what the training bar counts
    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        """``Epoch e/E`` (from 1), and a total that stops at ``max_steps`` when that comes first."""
        if self._leave:  # (as Lightning: a new bar per epoch)
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        total = convert_inf(self.total_train_batches)
        if trainer.max_steps is not None and trainer.max_steps > 0 and total is not None:
            total = max(
                0, min(total, (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches)
            )
        epochs = trainer.max_epochs
        of = f"/{epochs}" if isinstance(epochs, int) and epochs > 0 else ""
        bar.set_description(f"Epoch {trainer.current_epoch + 1}{of}", refresh=False)
        bar.initial = 0
        bar.reset(total)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._owns_stream and self._stream is not None:
            self._stream.close()
            self._stream, self._owns_stream = None, False

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # (without the tqdm bars)
        state.update(_stream=None, _owns_stream=False)  # a spawned process opens the stream again
        return state


def loop_bar(
    total: int | None, desc: str, unit: str = "batch", environ: Mapping[str, str] | None = None
) -> Tqdm:
    """A progress bar for a loop outside Lightning's (a teacher labelling a transfer set, the
    transferability scores of a training set): on the stream and with the label that
    ``METAKD_PROGRESS_FD`` / ``_LABEL`` name (standard error and no label by default), a bar on a terminal
    and a line at most every ``METAKD_PROGRESS_INTERVAL`` seconds elsewhere, as :class:`StreamProgressBar`.
    Use it as tqdm: ``update(n)``, ``close()``."""
    environ = os.environ if environ is None else environ
    settings = progress_bar_from_environment(environ)
    if settings.stream_spec is None:
        settings.stream_spec = sys.stderr
    desc = desc if desc.endswith(": ") else f"{desc}: "  # (the line format puts the count right after it)
    common = {"total": total, "desc": desc, "unit": unit, "label": settings.label, "leave": True}
    if settings.is_terminal():
        return LabelledTqdm(file=settings.stream, dynamic_ncols=True, mininterval=0.5, **common)
    return LineTqdm(out=settings.stream, throttle=settings.throttle, **common)


class WithProgress:
    """A data loader that shows a :func:`loop_bar` while it is iterated; every other attribute (its
    ``dataset``, its length) is the loader's, so code that inspects the loader sees no difference."""

    def __init__(self, loader: Any, desc: str, unit: str = "batch") -> None:
        self.loader, self.desc, self.unit = loader, desc, unit

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Any:
        total = len(self.loader) if hasattr(self.loader, "__len__") else None
        bar = loop_bar(total, self.desc, self.unit)
        try:
            for item in self.loader:
                yield item
                bar.update(1)
        finally:
            bar.close()


def progress_bar_from_environment(environ: Mapping[str, str] | None = None) -> StreamProgressBar:
    """The bar ``python -m metakd`` adds: ``METAKD_PROGRESS_FD``, ``_LABEL``, ``_INTERVAL`` and
    ``_TERMINAL`` (see the module docstring); each unset one takes its default."""
    environ = os.environ if environ is None else environ
    fd, label, interval, terminal = (
        environ.get(name) or None for name in (ENV_FD, ENV_LABEL, ENV_INTERVAL, ENV_TERMINAL)
    )
    try:
        seconds = DEFAULT_INTERVAL if interval is None else float(interval)
        stream = None if fd is None else int(fd)
    except ValueError:
        raise ConfigError(
            f"{ENV_FD} must be a file descriptor number and {ENV_INTERVAL} a number of seconds, got "
            f"{fd!r} and {interval!r}"
        ) from None
    if not math.isfinite(seconds):
        raise ConfigError(f"{ENV_INTERVAL} must be a finite number of seconds, got {interval!r}")
    if terminal not in (None, "0", "1"):
        raise ConfigError(f"{ENV_TERMINAL} must be 1 (a bar) or 0 (lines), got {terminal!r}")
    is_terminal = None if terminal is None else terminal == "1"
    return StreamProgressBar(label=label, stream=stream, interval=seconds, terminal=is_terminal)
