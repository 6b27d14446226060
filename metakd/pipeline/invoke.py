"""Running ``python -m metakd <command>`` for a cell: in a subprocess, or in this process with its output
captured.

Either way the command's output goes to the cell's log file, and the pipeline's terminal keeps only its
progress lines. In this process (``in_process``) there is no interpreter start-up and no imports per cell:
:func:`output_to` sends ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2 to the log for the
duration of the command. A stop (SIGINT/SIGTERM, :mod:`metakd.interrupt`) reaches the command either way.

The progress of each model (steps done of total, rate, ETA) is not drawn here: the command's own progress
bar does it (``metakd.progress``, from the ``cli-fixes`` branch: it writes to the file descriptor that
``METAKD_PROGRESS_FD`` names, labelled by ``METAKD_PROGRESS_LABEL``). :func:`run_cli` is where the pipeline
hands its terminal to that bar (the comments marked "progress hand-off"): the terminal is file descriptor 1
before :func:`output_to` replaces it, and the environment of a subprocess cell.
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


def run_cli(args: list[str], log_path: Path, in_process: bool, timeout: float | None) -> int:
    """``python -m metakd <args>`` in a subprocess, or in this process (no interpreter start-up and
    imports per cell; ``timeout`` does not apply); the output goes to ``log_path`` either way.

    A stop (SIGINT/SIGTERM: :mod:`metakd.interrupt`) raises :class:`Interrupted`: in this process it stops
    the run in flight; a subprocess gets the signal forwarded, and its exit 130/143 raises it too."""
    if in_process:
        from metakd.cli import main as cli_main

        # progress hand-off (in this process): dup fd 1 here, before output_to sends it to the log, and
        # name the dup in METAKD_PROGRESS_FD for the duration of the command
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
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    # progress hand-off (subprocess): METAKD_PROGRESS_FD / METAKD_PROGRESS_LABEL in env, and the fd passed on
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            return run_child(
                [sys.executable, "-m", "metakd", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[pipeline] timed out after {timeout} s\n")
            return 124
