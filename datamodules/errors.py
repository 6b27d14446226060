"""The one error type the datamodules raise for bad input data or arguments."""

from __future__ import annotations

from metakd.errors import MetakdError


class DataError(MetakdError, ValueError):
    """Bad input: a malformed file, a missing field, an unknown label or domain, a bad argument.

    Messages name the file and line (where there is one), the offending value and what is allowed.
    """
