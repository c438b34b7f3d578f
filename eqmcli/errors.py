"""The exception types the CLI turns into one sentence (and a helper to keep it short).

The CLI turns a `UserError` into one clear sentence on stderr and exit code 2; anything
else is a bug and keeps its traceback. It subclasses `ValueError` so library callers
(e.g. `build_head` with a bad hyperparameter) can catch the ordinary exception.
"""

from __future__ import annotations

import reprlib


class UserError(ValueError):
    """Bad input from the user: the message names the file, key or value at fault."""


class StorageError(UserError):
    """A file could not be written (disk full, quota, read-only); the previous one is intact."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a NaN/Inf loss); the message says which checkpoint is good."""


def shown(value: object, limit: int = 60) -> str:
    """A bounded ``repr`` of a user's value (at most ~``limit`` characters) for messages.

    A user's value may be huge (a 1 MB key, a YAML alias expanded a billion times); the
    `reprlib` walk looks at a few items per level only, so this is fast on any input.
    """
    brief = reprlib.Repr()
    brief.maxlevel = 2
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = 4
    brief.maxstring = brief.maxother = brief.maxlong = limit
    text = brief.repr(value)
    return text if len(text) <= limit + 3 else f"{text[:limit]}..."
