"""One error type for every problem a user can fix; the CLI prints it as one line."""


class ReadnextError(Exception):
    """A user-facing error: the message says what is wrong, where, and what to do."""


class DataError(ReadnextError, ValueError):
    """Bad input data (file, line, what to do)."""


class NotFoundError(ReadnextError, KeyError):
    """Unknown user, book, or missing index."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


MAX_EXCERPT = 60  # characters of bad input an error line may quote
MAX_MESSAGE = 400  # an error line never grows past this, whatever the input


def excerpt(value: object, limit: int = MAX_EXCERPT) -> str:
    """``repr`` of a piece of bad input, cut to ``limit`` characters (a 50 MB line stays short)."""
    s = value if isinstance(value, str) else str(value)
    if len(s) > limit:
        return repr(s[:limit]) + f"... ({len(s):,} chars)"
    return repr(s)


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one bounded line (for the CLI and API error fields)."""
    s = " ".join(str(message).split())
    return s if len(s) <= limit else s[: limit - 25] + f"... ({len(s):,} chars)"
