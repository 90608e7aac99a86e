"""How the readers of result files report trouble: an error for a file they refuse, a warning for what they
leave out, and the context managers that collect or show those warnings."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator


class ResultsFormatError(ValueError):
    """A results file that is missing, empty, malformed, or not one of this suite's."""


class ResultsWarning(UserWarning):
    """Something a reader left out or found inconsistent, without refusing the file (the CLIs show it)."""


@contextlib.contextmanager
def results_warnings() -> Iterator[list[str]]:
    """Collect the ResultsWarnings raised inside the block (their messages, in the list it yields, filled when
    the block ends) for a caller that lists warnings of its own; other warnings pass on as they were."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        yield messages
    for warning in caught:
        if issubclass(warning.category, ResultsWarning):
            messages.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


@contextlib.contextmanager
def one_line_results_warnings(program: str) -> Iterator[None]:
    """Inside the block, a ResultsWarning prints as one line on stderr ('<program>: warning: ...'), without
    Python's file and source line: it is about the user's file, not about our code."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, ResultsWarning):
            print(f"{program}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
