"""Error types of the attention zoo.

Both subclass ``ValueError`` so callers that only know "bad input" still catch them,
while the harness can tell a configuration mistake from a backend that cannot run.
"""


class AttentionConfigError(ValueError):
    """An option, shape or input that the attention does not accept."""


class BackendUnavailableError(ValueError):
    """A backend that cannot run here: unknown device, dtype, missing package or option."""


def error_line(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message (a plugin's or a family's failure,
    reported where a traceback would be noise)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
