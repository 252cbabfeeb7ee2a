"""User-facing errors.

Every error a user can fix derives from `UserError`: the CLI prints its message without a
traceback and exits with status 2. The message says where the problem is (file, row, key) and
how to fix it.
"""

# The process exit codes tuneforge's commands end with, besides 0.
EXIT_USER_ERROR = 2  # a UserError: the message says what to fix (argparse uses 2 too)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM (the shell's 128 + SIGINT)


class UserError(Exception):
    """A problem in the user's input that they can fix; shown without a traceback."""


class ConfigError(UserError):
    """A configuration key or value is unknown, malformed or inconsistent."""


class DataError(UserError):
    """A dataset, its catalogue entry or one of its rows cannot be used."""


class ModelError(UserError):
    """A model or tokenizer cannot be found or loaded."""


class NotAvailableError(UserError):
    """A feature that exists in the interface but is not implemented in this version."""
