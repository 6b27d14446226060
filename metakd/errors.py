"""metakd's error boundary: bad input ends a command with one ``error: <message>`` line and exit status 2.

Every metakd command (``python -m metakd fit|validate|test|predict|export|sweep|pipeline``) runs inside
:func:`run_with_error_boundary`. Errors about bad input, the classes that inherit from
:class:`MetakdError` (``DataError``, ``BackboneError``, ``CheckpointFileError``, ``ConfigError``, ...)
and any classes listed in :data:`FOREIGN_ERRORS`), are printed on stderr as

    config key: data.init_args.target_domain (datamodules.JsonlDataModule)
    error: jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']

and the process exits with status 2. The first line, naming the config key, file or option, is there
only when the message does not already name one. The message is found however deep jsonargparse
wrapped it (LightningCLI builds the model and the datamodule inside jsonargparse's type checks, which
re-raise an ``__init__`` error as a ``ValueError: Does not validate against any of the Union subtypes``).
jsonargparse's parse errors (unknown option, wrong type, a value outside a ``Literal``) are shortened to
their key and leaf message, with the closest allowed value or option name suggested.

``--traceback`` (any position on the command line) or ``METAKD_TRACEBACK=1`` prints the full traceback
before those lines. Any other exception is a bug or an environment problem: it keeps its traceback
(exit status 1).

This module imports nothing heavy: every metakd module can import it.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

EXIT_BAD_INPUT = 2
TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "METAKD_TRACEBACK"


class MetakdError(Exception):
    """Marker base class of metakd's errors about bad input (data, backbone, checkpoint, config, ...).

    The message must say what is wrong and what is allowed; the CLI prints it as ``error: <message>``.
    Subclasses also inherit the builtin type they always had (``ValueError``, ``RuntimeError``), so
    ``except ValueError`` keeps catching them.
    """


class ConfigError(MetakdError, ValueError):
    """A bad option value; the message starts with its config key (``model.init_args.learning_rate``)."""


class StudentConfigError(MetakdError, ValueError):
    """An inconsistent student / teacher / data configuration (the Student, its method, its architecture
    and its teacher raise it; ``metakd.student`` re-exports it under its historical import path)."""


class TeacherCheckpointError(StudentConfigError):
    """A teacher that is missing, unreadable or not a classifier metakd can distil from."""


# Error classes of modules that do not inherit from MetakdError, recognised by module and class name.
# They are looked up in sys.modules: an instance exists only once its module is imported, and the
# boundary must not import heavy modules (torch, transformers) to report an error. Empty today: every
# metakd error class inherits MetakdError; a plug-in's own error classes could be listed here.
FOREIGN_ERRORS: tuple[tuple[str, str], ...] = ()


def metakd_error_types() -> tuple[type[BaseException], ...]:
    """:class:`MetakdError` and the :data:`FOREIGN_ERRORS` classes whose module is imported."""
    types: list[type[BaseException]] = [MetakdError]
    for module_name, name in FOREIGN_ERRORS:
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            types.append(cls)
    return tuple(types)


def is_metakd_error(exc: BaseException) -> bool:
    return isinstance(exc, metakd_error_types())


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then what it was raised from (``__cause__``, else an unsuppressed ``__context__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = (
            exc.__cause__
            if exc.__cause__ is not None
            else (None if exc.__suppress_context__ else exc.__context__)
        )


def _raised_by_jsonargparse(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("jsonargparse")


def unwrap(exc: BaseException) -> BaseException | None:
    """The metakd error that ``exc`` is or wraps, else None.

    Only jsonargparse's wrappers are looked through (an exception raised by other code while handling a
    metakd error is a bug, reported with its traceback). Of a chain of metakd errors the outermost is
    returned: metakd re-raises to add context (``TeacherCheckpointError`` from ``CheckpointFileError``).
    """
    for item in exception_chain(exc):
        if is_metakd_error(item):
            return item
        if not _raised_by_jsonargparse(item):
            return None
    return None


# ------------------------------------------------------------------------------------ parse errors
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)'")
_EXPECTED = re.compile(r"^Expected an? (.+?)\. Got value: (.*)$", re.DOTALL)
_LITERAL = re.compile(r"^typing\.Literal\[(.*)\]$", re.DOTALL)
_NOT_ACCEPTED = re.compile(r"^Option '([^']+)' is not accepted")
_CLASS_REPR = re.compile(r"<class '([\w.]+)'>")


def suggest(value: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``value`` (difflib), or ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def accepted_options(class_path: str) -> list[str]:
    """The ``__init__`` parameter names of ``class_path`` and of the bases its ``**kwargs`` go to."""
    import importlib
    import inspect

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except Exception:  # noqa: BLE001 - only a suggestion is lost
        return []
    names: list[str] = []
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        names.extend(p.name for p in parameters if p.name != "self" and p.kind not in variadic)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))


_NO_ATTRIBUTE = re.compile(r"^module '([\w.]+)' has no attribute '(\w+)'")


def _suggest_class(message: str) -> str:
    """For ``module 'm' has no attribute 'X'``: the closest public name of ``m`` (``; did you mean ...``)."""
    import importlib

    found = _NO_ATTRIBUTE.match(message)
    if not found:
        return ""
    try:
        module = importlib.import_module(found.group(1))
    except Exception:  # noqa: BLE001 - only a suggestion is lost
        return ""
    names = list(getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")])
    hint = suggest(found.group(2), names)
    return hint.replace("did you mean '", f"did you mean '{found.group(1)}.") if hint else ""


def describe_parse_error(exc: BaseException) -> str:
    """A one-line message for a jsonargparse parse error: the full config key and the leaf problem.

    E.g. ``model.init_args.weighting: 'protoype' is not one of ['prototype', 'meta', 'prototype+meta',
    'none']; did you mean 'prototype'?`` instead of the nested Union report.
    """
    keys: list[str] = []
    class_path: str | None = None
    leaf = exc
    for item in exception_chain(exc):
        text = str(item)
        key = _PARSER_KEY.match(text)
        if key and (not keys or keys[-1] != key.group(1)):
            keys.append(key.group(1))
        found = _CLASS_PATH.match(text)
        if found and class_path != found.group(1):
            class_path = found.group(1)
            keys.append("init_args")
        leaf = item
    message = str(leaf).strip()
    if message.startswith('expected "subcommand"'):
        return message  # completed by the caller, which knows the commands
    key = ".".join(keys)
    unknown = _NOT_ACCEPTED.match(message)
    if unknown:
        name = unknown.group(1)
        full = f"{key}.{name}" if key else name
        where = f" of {class_path}" if class_path else ""
        options = accepted_options(class_path) if class_path else []
        return f"{full}: no such option{where}{suggest(name, options)}"
    if key.endswith(".init_args") and class_path is not None:
        # a problem with the class itself (e.g. a misspelt class_path), not with one of its options
        return f"{key[: -len('.init_args')]}.class_path {class_path!r}: {message}{_suggest_class(message)}"
    expected = _EXPECTED.match(message)
    if expected:
        typ, value = expected.group(1), expected.group(2)
        literal = _LITERAL.match(typ)
        if literal:
            try:
                allowed = list(ast.literal_eval(f"[{literal.group(1)}]"))
            except (ValueError, SyntaxError):
                allowed = None
            if allowed is not None:
                hint = suggest(value, [str(a) for a in allowed])
                return f"{key}: {value!r} is not one of {allowed}{hint}"
        return f"{key}: expected {_CLASS_REPR.sub(lambda m: m.group(1), typ)}, got {value!r}"
    return f"{key}: {message}" if key else message


# ------------------------------------------------------------------------------------------ boundary
@dataclass
class ErrorReport:
    """What the boundary prints: an optional ``where`` line, then ``error: <message>``."""

    message: str
    where: str | None = None

    def lines(self) -> list[str]:
        return ([self.where] if self.where else []) + [f"error: {self.message}"]


_NAMED_KEY = re.compile(r"\b(model|data|trainer|checkpoint)\.\w")
_NAMED_FILE = re.compile(r"[\w.~-]*/[\w./-]+|\b[\w-]+\.(jsonl|json|ndjson|csv|gz|ckpt|ya?ml|onnx)\b")


def names_a_place(message: str) -> bool:
    """Whether ``message`` already names a config key (``model.``, ``data.``, ...) or a file (a path)."""
    return bool(_NAMED_KEY.search(message) or _NAMED_FILE.search(message))


def report_for(exc: BaseException) -> ErrorReport | None:
    """The report of a bad-input error (a metakd error, possibly wrapped, or a parse error), else None."""
    found = unwrap(exc)
    if found is not None:
        message = str(found).strip() or type(found).__name__
        where = getattr(found, "metakd_where", None)
        return ErrorReport(message, None if not where or names_a_place(message) else where)
    if isinstance(exc, argparse.ArgumentError):
        return ErrorReport(describe_parse_error(exc), getattr(exc, "metakd_where", None))
    return None


def traceback_requested(argv: list[str] | None = None) -> bool:
    """``--traceback`` in ``argv`` or ``METAKD_TRACEBACK`` set to anything but ``""``/``0``/``false``."""
    if argv is not None and TRACEBACK_FLAG in argv:
        return True
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_with_error_boundary(fn: Callable[[], int | None], show_traceback: bool | None = None) -> int:
    """Run ``fn`` and return its exit status; bad input prints ``error: ...`` and returns 2.

    Other exceptions propagate with their traceback; ``SystemExit`` (``--help``, argparse errors) and
    ``KeyboardInterrupt`` pass through.
    """
    try:
        return int(fn() or 0)
    except Exception as exc:
        report = report_for(exc)
        if report is None:
            raise
        if traceback_requested() if show_traceback is None else show_traceback:
            traceback.print_exception(exc)
        sys.stderr.flush()
        sys.stdout.flush()
        print("\n".join(report.lines()), file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


def annotate(exc: BaseException, where: str) -> BaseException:
    """Attach a ``where`` line (config key, file, option) to ``exc`` unless one is attached already."""
    if not getattr(exc, "metakd_where", None):
        try:
            exc.metakd_where = where  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            pass
    return exc


def main_with_boundary(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """``main`` wrapped for a module's ``if __name__ == "__main__"`` block (``--traceback`` honoured; a
    SIGINT/SIGTERM stops it with one line and exit 130/143: :mod:`metakd.interrupt`)."""
    from metakd.interrupt import run_stoppable

    def wrapped(argv: list[str] | None = None) -> int:
        words = list(sys.argv[1:] if argv is None else argv)
        show = traceback_requested(words)
        words = [w for w in words if w != TRACEBACK_FLAG]
        return run_stoppable(lambda: run_with_error_boundary(lambda: main(words), show_traceback=show))

    return wrapped


__all__ = [
    "EXIT_BAD_INPUT",
    "FOREIGN_ERRORS",
    "TRACEBACK_ENV",
    "TRACEBACK_FLAG",
    "ConfigError",
    "ErrorReport",
    "MetakdError",
    "annotate",
    "describe_parse_error",
    "is_metakd_error",
    "main_with_boundary",
    "names_a_place",
    "report_for",
    "run_with_error_boundary",
    "suggest",
    "traceback_requested",
    "unwrap",
]
