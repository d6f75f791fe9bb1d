"""Import a reader's Goodreads export (or title list): one path for the CLI, the chat and its API.

Re-importing the same export changes nothing; a newer export updates what changed (see
:meth:`Recommender.sync_reader`). Books being read now are kept out of recommendations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval.errors import DataError
from retrieval.goodreads import match_rows, read_goodreads_export, to_history

from .explain import excerpt
from .recommender import Recommender

TITLE_EXCERPT = 80  # characters of an imported title quoted back in a message
LISTED = 8  # titles listed in a message; the rest are counted


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 book`` / ``3 books``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _titles(titles: list[str], n: int = LISTED) -> str:
    shown = ", ".join(f"“{excerpt(t, TITLE_EXCERPT)}”" for t in titles[:n])
    return shown + (f" and {len(titles) - n} more" if len(titles) > n else "")


@dataclass
class ImportResult:
    """What an import did, in numbers and titles (``to_dict`` is the JSON/API form)."""

    user_id: str
    rows: int
    matched: int
    ratings: int  # rated books in the export that are in the catalog
    to_read: int
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    to_read_added: int = 0
    currently_reading: list[str] = field(default_factory=list)  # titles
    unmatched: list[str] = field(default_factory=list)  # titles as written in the file

    def to_dict(self) -> dict:
        return asdict(self)

    def message(self, bold: bool = False) -> str:
        """A few natural sentences ("1 book is not in this catalog")."""
        b = (lambda s: f"**{s}**") if bold else (lambda s: s)
        if (
            self.ratings
            and not (self.added or self.updated or self.to_read_added)
            and self.unchanged
        ):
            head = (
                f"Nothing new for {b(self.user_id)}: the "
                f"{plural(self.ratings, 'rated book')} in this "
                "export were already imported."
            )
        else:
            got = [plural(self.ratings, "rated book")]
            if self.to_read:
                got.append(plural(self.to_read, "to-read book"))
            head = f"Imported {' and '.join(got)} as {b(self.user_id)}."
            changes = []
            if self.updated:
                changes.append(f"{plural(self.updated, 'rating')} changed since the last import")
            if self.unchanged:
                changes.append(f"{self.unchanged} already known")
            if changes:
                head += " " + "; ".join(changes).capitalize() + "."
        parts = [head]
        if self.currently_reading:
            n = len(self.currently_reading)
            parts.append(
                f"{plural(n, 'book')} you are reading now ({_titles(self.currently_reading)}) "
                f"{'is' if n == 1 else 'are'} left out of your picks."
            )
        if self.unmatched:
            n = len(self.unmatched)
            parts.append(
                f"{plural(n, 'book')} {'is' if n == 1 else 'are'} not in this catalog: "
                f"{_titles(self.unmatched)}."
            )
        return " ".join(parts)


def import_export(
    rec: Recommender, path: str | Path, user_id: str, origin: str | None = None
) -> ImportResult:
    """Read, match and store one export for ``user_id``.

    Args:
        rec: the recommender whose catalog and feedback store receive the reader.
        path: a Goodreads library export CSV, a CSV with a title column, or a .txt title list.
        user_id: the reader to create or bring up to date.
        origin: recorded for a new reader (default ``goodreads:<file name>``).

    Returns:
        The counts and titles, with a ready :meth:`ImportResult.message`.

    Raises:
        DataError: the file is unreadable, malformed or lists no books (one line: file, line, fix).
    """
    rows = read_goodreads_export(path)
    report = match_rows(rows, list(rec.books.values()))
    if not report.matched:  # storing nothing would leave an empty reader behind
        raise DataError(
            f"{path}: none of the {plural(len(rows), 'book')} in this file "
            f"{'is' if len(rows) == 1 else 'are'} in the {rec.dataset} catalog "
            f"(first: “{excerpt(rows[0].title, TITLE_EXCERPT)}”); nothing was imported: "
            "check that the file and the ingested catalog match"
        )
    ratings, to_read, reading = to_history(report, user_id)
    counts = rec.sync_reader(
        user_id,
        ratings,
        to_read=sorted(to_read),
        reading=sorted(reading),
        origin=origin or f"goodreads:{Path(path).name}",
    )
    return ImportResult(
        user_id=user_id,
        rows=len(rows),
        matched=len(report.matched),
        ratings=len(ratings),
        to_read=len(to_read),
        added=counts["added"],
        updated=counts["updated"],
        unchanged=counts["unchanged"],
        to_read_added=counts["to_read_added"],
        currently_reading=[rec.books[b].title for b in sorted(reading)],
        unmatched=[u.title for u in report.unmatched],
    )
