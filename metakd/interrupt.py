"""Stopping a command: SIGINT (Ctrl-C) and SIGTERM (a scheduler, a container runtime, Ray) end every
metakd command within seconds, keep what finished, and say how to resume.

The path, the same for ``fit``, ``pipeline``, ``search``, ``sweep`` and the other commands:

- :func:`run_stoppable` (the CLI boundary, once per command) installs handlers for both signals. The
  first signal raises :class:`Interrupted` in the main thread. It is a ``BaseException``, so neither an
  ``except Exception`` (the pipeline's "a failed cell must not stop the pipeline") nor Lightning's
  ``KeyboardInterrupt`` branch (which ignores SIGINT for good and calls ``sys.exit(1)``, so that a Ctrl-C
  used to look like a failed cell) catches it: Lightning's ``_call_and_handle_interrupt`` runs the
  ``on_exception`` hooks, tears the trainer down and re-raises it. Checkpoints already written are kept
  (they are written atomically: metakd/checkpointing.py).
- On the way out each command adds what finished and how to resume (:attr:`Interrupted.detail`,
  :attr:`Interrupted.resume`; the outermost command speaks last), and the boundary prints ONE line on
  stderr, ``interrupted by SIGINT (Ctrl-C): <detail>; <resume>``, and returns 130 (SIGINT) or 143 (SIGTERM).
- A second signal while the first is handled exits at once (``os._exit(128 + signal)``), after a
  SIGKILL to the process groups of the children started by :func:`run_child`. A SIGTERM repeated within
  :data:`DUPLICATE_WINDOW_S` of the first is the same request delivered twice (a scheduler that signals
  every process of a job while the parent forwards its own) and is ignored.
- :func:`run_child` runs a subprocess (a pipeline cell's ``fit``, a sweep trial) in its own session, so
  that a terminal's Ctrl-C reaches only this process, which forwards the signal it got (SIGTERM from a
  scheduler reaches only this process anyway), waits up to :data:`STOP_GRACE_S` for the child to stop,
  then kills it. A child that exits 130 or 143 (or dies of SIGINT/SIGTERM) was interrupted: the parent
  stops as if it had received that signal.
- :func:`deferred` holds the stop back while C code runs that mishandles an exception raised by a signal
  handler (``ray.wait`` returns a ``SystemError``); the stop is raised when the block ends.

This module imports nothing heavy (standard library only): every metakd module can import it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_S = 10.0
"""Seconds a child (a subprocess cell, a sweep trial, a Ray task) gets to stop after the signal is
forwarded, before it is killed."""
DUPLICATE_WINDOW_S = 1.0
"""A second SIGTERM this soon after the first is the same request (see the module docstring)."""
EXIT_CODES = {int(signal.SIGINT): 130, int(signal.SIGTERM): 143}


class Interrupted(BaseException):
    """A stop signal (SIGINT or SIGTERM) arrived: the command winds down and exits ``128 + signum``.

    ``detail`` says what finished and what was interrupted, ``resume`` how to go on; each command sets
    them on the way out (the outermost last), and the boundary prints :meth:`line`.
    """

    def __init__(self, signum: int, detail: str = "", resume: str = "") -> None:
        super().__init__(signal_name(signum))
        self.signum = int(signum)
        self.detail = detail
        self.resume = resume

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        """``interrupted by SIGINT (Ctrl-C): <detail>; <resume>`` (one line)."""
        text = f"interrupted by {signal_name(self.signum)}"
        if self.detail:
            text += f": {self.detail}"
        resume = self.resume or "run the same command again"
        return " ".join(f"{text}; {resume}".split())


def signal_name(signum: int) -> str:
    """``SIGINT (Ctrl-C)``, ``SIGTERM``, or the signal's name."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def interrupted_exit(returncode: int | None) -> int | None:
    """The stop signal behind a child's exit status (130/143, or killed by SIGINT/SIGTERM), else None."""
    for signum, code in EXIT_CODES.items():
        if returncode in (code, -signum):
            return signum
    return None


class _State:
    """What this process's handlers know: the first stop signal, the children to kill on a second."""

    def __init__(self) -> None:
        self.depth = 0  # nested run_stoppable calls (an in-process pipeline cell runs the CLI again)
        self.previous: dict[int, Any] = {}
        self.received: int | None = None
        self.received_at = 0.0
        self.deferring = 0
        self.pending = False  # a signal arrived inside deferred(): raise when the block ends
        self.children: set[subprocess.Popen] = set()
        self.stderr_fd: int | None = None  # the command's stderr, even while a cell's log replaces fd 2

    def reset(self) -> None:
        self.received, self.received_at, self.pending = None, 0.0, False


_state = _State()


def _handle(signum: int, frame: Any) -> None:
    now = time.monotonic()
    if _state.received is None:
        _state.received, _state.received_at = signum, now
        if _state.deferring:
            _state.pending = True
            return
        raise Interrupted(signum)
    if signum == _state.received == signal.SIGTERM and now - _state.received_at < DUPLICATE_WINDOW_S:
        return  # the same request delivered twice
    _exit_now(signum)


def _exit_now(signum: int) -> None:
    """The second signal: kill the children's process groups and leave without cleaning up."""
    kill_children(signal.SIGKILL)
    message = f"\n{signal_name(signum)} again: exiting at once (checkpoints already written are kept)\n"
    with contextlib.suppress(OSError):
        os.write(2 if _state.stderr_fd is None else _state.stderr_fd, message.encode())
    os._exit(128 + signum)


def _install() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)


def reinstall() -> None:
    """Put this module's handlers back where a library replaced them (``ray.init`` sets its own SIGTERM
    handler); a no-op outside :func:`run_stoppable` or off the main thread."""
    if _state.depth and threading.current_thread() is threading.main_thread():
        _install()


def note(signum: int) -> Interrupted:
    """Record that a child was interrupted by ``signum`` (so that a signal now counts as the second) and
    return the :class:`Interrupted` to raise."""
    if _state.received is None:
        _state.received, _state.received_at = signum, time.monotonic()
    return Interrupted(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only; nested blocks
    keep the outer handlers). The previous handlers are restored at the end, unless a stop came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _state.depth == 0
    if outermost:
        if signal.getsignal(signal.SIGINT) is not _handle:  # (left installed by an earlier stop)
            _state.previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        if _state.stderr_fd is None:
            with contextlib.suppress(OSError):
                _state.stderr_fd = os.dup(2)
        _state.reset()
        _install()
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not outermost:  # the inner command may have replaced them (Lightning ignores SIGINT after a
            _install()  # KeyboardInterrupt): the outer command keeps its handlers
        elif _state.received is None:
            for signum, handler in _state.previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        # after a stop the handlers stay: the process is on its way out, and a second signal while it
        # exits (interpreter shutdown takes seconds with torch loaded) still exits at once


def run_stoppable(fn: Callable[[], int | None]) -> int:
    """Run a command with :func:`stop_signals`; a stop prints its one line on stderr and returns 130/143.

    Nested (a pipeline running ``fit`` in its own process), the line goes to the current stderr (the
    cell's log) and the stop propagates to the outer command, which reports it.
    """
    nested = _state.depth > 0
    with stop_signals():
        try:
            return int(fn() or 0)
        except Interrupted as stop:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            print(stop.line(), file=sys.stderr, flush=True)
            if nested:
                raise
            return stop.exit_code


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A stop signal inside the block is recorded and raised when the block ends (for C code that cannot
    take an exception from a signal handler, e.g. ``ray.wait``; keep the block short)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
        if not _state.deferring and _state.pending:
            _state.pending = False
            raise Interrupted(_state.received or signal.SIGINT)


def kill_children(signum: int) -> None:
    """Send ``signum`` to the process group of every child that :func:`run_child` is waiting for."""
    for child in list(_state.children):
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signum)


def _stop_child(process: subprocess.Popen, signum: int) -> None:
    """Forward ``signum`` to the child's process group, wait up to STOP_GRACE_S, then kill the group."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signum)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_child(
    argv: list[str],
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    pass_fds: tuple[int, ...] = (),
) -> int:
    """``subprocess.run(argv, ...).returncode`` (``subprocess.TimeoutExpired`` after ``timeout``), for a
    child that a stop reaches: it runs in its own session; when this process gets a stop signal the
    child gets the same signal and up to :data:`STOP_GRACE_S` to stop, then :class:`Interrupted` is
    raised. A child that exits 130/143 by itself raises :class:`Interrupted` too."""
    process: subprocess.Popen | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with deferred():  # a stop between the start and the registration would leave the child running
            process = subprocess.Popen(
                argv, stdout=stdout, stderr=stderr, env=env, start_new_session=True, pass_fds=pass_fds
            )
            _state.children.add(process)
        while True:
            try:
                # short waits: a stop that only sets Python's "signal tripped" flag (Ray's cancel calls
                # _thread.interrupt_main) is handled between them
                returncode = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    _stop_child(process, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(argv, timeout) from None
    except Interrupted as stop:
        if process is not None:
            _stop_child(process, stop.signum)
        raise
    except BaseException:
        if process is not None:
            _stop_child(process, signal.SIGKILL)
        raise
    finally:
        _state.children.discard(process)
    signum = interrupted_exit(returncode)
    if signum is not None:
        raise note(signum)
    return returncode


def describe_stopped_trainer(trainer: Any, subcommand: str, ckpt_path: Any = None) -> tuple[str, str]:
    """``(detail, resume)`` of a stopped Lightning run: where a fit stopped, the ``last.ckpt`` it keeps
    and ``--ckpt_path last`` to resume from it (exact from an epoch-end checkpoint: docs/FAULTS.md)."""
    if trainer is None:
        return f"{subcommand} stopped before it started", "run the same command again"
    if subcommand != "fit":
        return f"{subcommand} stopped (it saves nothing)", "run the same command again"
    detail = f"fit stopped in epoch {trainer.current_epoch} at step {trainer.global_step}"
    callback = getattr(trainer, "checkpoint_callback", None)
    last = os.path.join(str(callback.dirpath), "last.ckpt") if getattr(callback, "dirpath", None) else None
    if last is None or not os.path.isfile(last):
        return f"{detail}, no checkpoint saved yet", "run the same command again (it starts over)"
    again = "the same command" if str(ckpt_path) == "last" else "the same command with --ckpt_path last"
    return f"{detail}; {last} is kept", f"to resume from it, run {again}"


__all__ = [
    "DUPLICATE_WINDOW_S",
    "EXIT_CODES",
    "STOP_GRACE_S",
    "Interrupted",
    "deferred",
    "describe_stopped_trainer",
    "interrupted_exit",
    "kill_children",
    "note",
    "reinstall",
    "run_child",
    "run_stoppable",
    "signal_name",
    "stop_signals",
]
