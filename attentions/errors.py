"""Error types of the attention zoo.

Both subclass ``ValueError`` so callers that only know "bad input" still catch them,
while the harness can tell a configuration mistake from a backend that cannot run.
"""


class AttentionConfigError(ValueError):
    """An option, shape or input that the attention does not accept."""


class BackendUnavailableError(ValueError):
    """A backend that cannot run here: unknown device, dtype, missing package or option."""
