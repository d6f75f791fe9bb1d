"""One error type for every problem a user can fix; the CLI prints it as one line."""


class ReadnextError(Exception):
    """A user-facing error: the message says what is wrong, where, and what to do."""


class DataError(ReadnextError, ValueError):
    """Bad input data (file, line, what to do)."""


class NotFoundError(ReadnextError, KeyError):
    """Unknown user, book, or missing index."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
