"""User-facing errors.

A `UserError` is a mistake the user can fix (a missing file, a bad field, a
wrong name). The CLI prints its message as one line and exits non-zero without
a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error caused by user input; its message names the culprit and the fix."""
