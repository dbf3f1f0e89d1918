"""One exception family whose messages tell the user what to do.

The CLI prints any `CoaError` as one line on stderr and exits with code 2.
"""


class CoaError(Exception):
    """A problem with the input, the settings or the model that the user can fix."""


class InputError(CoaError):
    """The document or the task is unusable (missing, empty, binary, ...)."""


class ConfigError(CoaError):
    """Settings that cannot work together: unknown model, window too small, ..."""


class ModelError(CoaError):
    """The model backend failed: unreachable server, rejected key, bad reply."""


class UnreachableError(ModelError):
    """The model backend cannot be reached at all (refused, no such host)."""


class LimitError(CoaError):
    """The run reached a limit it was given: model calls or total tokens."""


class ContextOverflowError(ModelError):
    """The backend says the prompt does not fit its context window."""
