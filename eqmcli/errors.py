"""The one exception type for a user's mistake (bad recipe, missing file, corrupt data).

The CLI turns a `UserError` into one clear sentence on stderr and exit code 2; anything
else is a bug and keeps its traceback. It subclasses `ValueError` so library callers
(e.g. `build_head` with a bad hyperparameter) can catch the ordinary exception.
"""


class UserError(ValueError):
    """Bad input from the user: the message names the file, key or value at fault."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a NaN/Inf loss); the last good checkpoint is intact."""
