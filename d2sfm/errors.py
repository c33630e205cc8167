"""One exception type for problems the user can fix, printed by every command as a single line."""


class D2sfmError(Exception):
    """A user-facing error: the message names the file at fault and what to do about it."""


def some_names(names: list[str], shown: int = 3) -> str:
    """The first few of ``names`` and how many more, for a one-line message ("a.jpg, b.jpg, c.jpg and 4 more")."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
