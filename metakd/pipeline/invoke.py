"""Running ``python -m metakd <command>`` for a cell: in a subprocess, or in this process with its output
captured.

Either way the command's output goes to the cell's log file, and the pipeline's terminal keeps only its
progress lines. In this process (``in_process``) there is no interpreter start-up and no imports per cell:
:func:`output_to` sends ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2 to the log for the
duration of the command. A stop (SIGINT/SIGTERM, :mod:`metakd.interrupt`) reaches the command either way.

The progress of each model (steps done of total, rate, ETA) is drawn by the command's own progress bar
(:mod:`metakd.progress`) on the pipeline's standard output, although the rest of the command's output goes
to the log: :func:`progress_hand_off` duplicates file descriptor 1 before :func:`output_to` replaces it,
and names the duplicate and the cell in ``METAKD_PROGRESS_FD`` / ``METAKD_PROGRESS_LABEL`` (a subprocess
cell inherits the descriptor). Off a terminal the bar is a line now and then.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metakd.interrupt import interrupted_exit, note, run_child
from metakd.progress import ENV_FD, ENV_LABEL


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[Any]:
    """Send this process's output to ``log_path`` for the duration of the block: ``sys.stdout``/``stderr``
    and file descriptors 1 and 2 (loggers bound to the old streams, native code)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    yield log
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def progress_hand_off(label: str | None) -> Iterator[dict[str, str]]:
    """While the block runs, ``METAKD_PROGRESS_FD`` names a duplicate of this process's standard output
    and ``METAKD_PROGRESS_LABEL`` is ``label``; yields those variables (for a subprocess's environment).
    Without a label nothing is handed off."""
    if label is None:
        yield {}
        return
    sys.stdout.flush()
    fd = os.dup(1)
    variables = {ENV_FD: str(fd), ENV_LABEL: label}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield variables
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.close(fd)


def run_cli(
    args: list[str], log_path: Path, in_process: bool, timeout: float | None, label: str | None = None
) -> int:
    """``python -m metakd <args>`` in a subprocess, or in this process (no interpreter start-up and
    imports per cell; ``timeout`` does not apply); the output goes to ``log_path`` either way, the
    progress bar of the model (labelled ``label``) to this process's standard output.

    A stop (SIGINT/SIGTERM: :mod:`metakd.interrupt`) raises :class:`Interrupted`: in this process it stops
    the run in flight; a subprocess gets the signal forwarded, and its exit 130/143 raises it too."""
    with progress_hand_off(label) as variables:
        if in_process:
            return _run_in_process(args, log_path)
        env = {**os.environ, **variables}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
        env.setdefault("WANDB_MODE", "disabled")
        passed = (int(variables[ENV_FD]),) if variables else ()
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                return run_child(
                    [sys.executable, "-m", "metakd", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=timeout,
                    pass_fds=passed,
                )
            except subprocess.TimeoutExpired:
                log.write(f"\n[pipeline] timed out after {timeout} s\n")
                return 124


def _run_in_process(args: list[str], log_path: Path) -> int:
    from metakd.cli import main as cli_main

    with output_to(log_path):
        try:
            code = int(cli_main(args) or 0)
        except SystemExit as exit_:
            code = int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
        except Exception:  # noqa: BLE001 - a failed cell must not stop the pipeline
            traceback.print_exc()
            return 1
    signum = interrupted_exit(code)
    if signum is not None:  # (only without an outer stop handler: otherwise Interrupted propagates)
        raise note(signum)
    return code
