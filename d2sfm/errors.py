"""One exception type for problems the user can fix, printed by every command as a single line."""


class D2sfmError(Exception):
    """A user-facing error: the message names the file at fault and what to do about it."""
