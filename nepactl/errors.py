"""One mapping of exception types to one-line messages; tracebacks only with NEPA_DEBUG=1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from nepa.errors import NepaError
from nepactl import console

F = TypeVar("F", bound=Callable)
EXIT_USER_ERROR = 2


class CliError(NepaError):
    """An error found by the CLI itself (bad option combination, missing run, ...)."""


def message_for(exc: BaseException) -> str | None:
    """The one-line message for errors a user can fix, None for bugs."""
    if isinstance(exc, NepaError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or exc}: no such file or directory; check the path"
    if isinstance(exc, PermissionError):
        return f"{exc.filename or exc}: permission denied; check the file's owner and mode"
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return f"{exc.filename or exc}: {exc.strerror}; check the path"
    return None


def handled(command: F) -> F:
    """Run a command body; print known errors as one line and exit 2, re-raise under NEPA_DEBUG."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            message = message_for(exc)
            if message is None or console.debug_enabled():
                raise
            console.err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
