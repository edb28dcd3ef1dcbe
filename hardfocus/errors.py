"""The one exception type for mistakes a user can fix (a path, a column, a model name).

It carries a message that names the file, the row where there is one, and what to do.
Anything else that escapes a stage is a bug and keeps its traceback.
"""


class HardfocusError(Exception):
    """A user-facing error: the CLI prints its message, without a traceback, and exits 2."""
