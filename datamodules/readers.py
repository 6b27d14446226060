"""Reading JSONL / CSV files (plain or gzip) into plain dicts, with errors that name file and line."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)


def file_format(path: str | Path) -> str:
    """``"jsonl"`` or ``"csv"`` from the file name (a trailing ``.gz`` is allowed)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the file format from its name; use one of "
        f"{', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)} (optionally followed by .gz)"
    )


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every record of a JSONL or CSV file (1-based lines).

    Blank JSONL lines are skipped. Raises :class:`DataError` for a missing or empty file, a malformed
    JSON line, a JSON line that is not an object, and a CSV row with too few columns.
    """
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    count = 0
    try:
        with _open_text(path) as handle:
            if fmt == "jsonl":
                for lineno, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{lineno}: malformed JSON line ({err.msg})") from None
                    if not isinstance(record, dict):
                        raise DataError(
                            f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                        )
                    count += 1
                    yield lineno, record
            else:
                reader = csv.DictReader(handle, restval=None)
                for row in reader:
                    record = {k: v for k, v in row.items() if k is not None and v is not None}
                    count += 1
                    yield reader.line_num, record
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        if isinstance(err, FileNotFoundError):
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: cannot read the file ({type(err).__name__}: {err})") from err
    if count == 0:
        raise DataError(f"{path}: the file is empty (no records)")


def require_field(record: dict[str, Any], field: str, path: str | Path, lineno: int) -> Any:
    """``record[field]``, or a :class:`DataError` naming file, line, the field and the fields present."""
    value = record.get(field)
    if value is None:
        present = sorted(k for k, v in record.items() if v is not None)
        raise DataError(f"{path}:{lineno}: missing field {field!r}; fields present: {present}")
    return value


def require_text(record: dict[str, Any], field: str, path: str | Path, lineno: int) -> str:
    """A non-empty string field (see :func:`require_field`).

    An empty or whitespace-only text is refused (nothing to classify; a tokenizer would turn it into
    ``[CLS] [SEP]`` and the example would train on its label alone), with file, line and field.
    """
    value = require_field(record, field, path, lineno)
    if not isinstance(value, str):
        raise DataError(
            f"{path}:{lineno}: field {field!r} must be a string, got {type(value).__name__} {value!r}"
        )
    if not value.strip():
        raise DataError(
            f"{path}:{lineno}: field {field!r} is empty ({value!r}); every example needs a text "
            "(fill it in or remove the line)"
        )
    return value


def label_index(
    value: Any, label_names: list[str], path: str | Path, lineno: int, field: str = "label"
) -> int:
    """Map a label given as a name or as an index (int or digit string) to its index in ``label_names``."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped in label_names:
            return label_names.index(stripped)
        if stripped.lstrip("-").isdigit():
            value = int(stripped)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(label_names):
        return value
    allowed = ", ".join(f"{i}={name!r}" for i, name in enumerate(label_names))
    raise DataError(
        f"{path}:{lineno}: {field} {value!r} is not in the label set; allowed labels (index=name): {allowed}"
    )
