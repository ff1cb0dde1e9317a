"""Mistakes a user can fix, told apart from bugs.

Every error distillab raises because of something a user wrote or gave (a config key, an option's value, a
file, a data set, a flag) derives from :class:`UserError`: the command line shows its message as one line
and exits with code 2. Anything else is a bug (in distillab or a library) and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the key, file or flag and the fix."""


class UsageError(UserError, ValueError):
    """A command-line argument or flag that cannot be used."""


class DataError(UserError, ValueError):
    """A data set that cannot be read or built as asked (a corrupt archive, a bad option value, an OS error)."""


class DataMissingError(UserError, FileNotFoundError):
    """A data set whose files are not where they were looked for."""


class TrainingError(UserError, FloatingPointError):
    """Training that cannot go on (a NaN or infinite loss); the message says what was kept and what to try."""
