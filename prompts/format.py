"""Prompt formatting: catalog records, reader histories and evidence as delimited prompt text.

Lives next to the prompt files because what the model sees is defined by both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prompts import delimit
from retrieval.types import Book, Evidence


def format_book(book: Book, desc_chars: int = 200, max_tags: int = 8) -> str:
    """One delimited line of catalog facts about ``book`` (title, authors, year, tags,
    description)."""
    parts = [book.title]
    if book.authors:
        parts.append("by " + ", ".join(book.authors))
    if book.year is not None:
        parts.append(f"({book.year})")
    text = " ".join(parts)
    if book.tags:
        text += ". Tags: " + ", ".join(book.tags[:max_tags])
    desc = " ".join(book.description.split())
    if desc_chars > 0 and desc:
        text += ". Description: " + (
            desc if len(desc) <= desc_chars else desc[: desc_chars - 1].rstrip() + "…"
        )
    return delimit(text)


def format_history(
    history: Sequence[Book | tuple[Book, float | None]], k: int = 5, numbered: bool = False
) -> str:
    """The reader's ``k`` best-rated books (ties: most recent first; input is oldest first), one per
    line.

    Args:
        history: books, or (book, rating) pairs (rating ``None``: shelved without one).
        k: how many lines at most.
        numbered: ``R1.``, ``R2.`` ... instead of ``-`` bullets (facts the model can point at).

    Returns:
        The lines, or ``"(none)"``.
    """
    rated = [
        (h, None) if isinstance(h, Book) else (h[0], None if h[1] is None else float(h[1]))
        for h in history
    ]
    order = sorted(range(len(rated)), key=lambda i: (-(rated[i][1] or 0.0), -i))[:k]
    if not order:
        return "(none)"
    lines = []
    for n, i in enumerate(order, 1):
        book, rating = rated[i]
        label = f"{book.title} by {', '.join(book.authors)}" if book.authors else book.title
        bullet = f"R{n}." if numbered else "-"
        lines.append(
            f"{bullet} {delimit(label)}" + (f", rated {rating:g}" if rating is not None else "")
        )
    return "\n".join(lines)


def _title(books_by_id: Mapping[str, Book], book_id: str) -> str | None:
    b = books_by_id.get(book_id)
    return delimit(b.title) if b else None


def format_evidence(
    evidence: Sequence[Evidence], books_by_id: Mapping[str, Book], numbered: bool = False
) -> str:
    """Evidence as plain-English fact lines, naming only books the system holds.

    With ``numbered`` the lines read ``F1.``, ``F2.`` ... (facts the model can point at).
    """
    lines = []
    for e in evidence:
        titles = ", ".join(t for t in (_title(books_by_id, i) for i in e.book_ids) if t)
        if e.kind == "similar_to" and titles:
            lines.append(f"- It is similar to {titles}, which the reader liked.")
        elif e.kind == "shared_tags" and e.tags:
            lines.append(
                f"- It shares the tags {delimit(', '.join(e.tags))}"
                + (f" with {titles}." if titles else ".")
            )
        elif e.kind == "same_author" and e.authors:
            lines.append(
                f"- It is by {delimit(', '.join(e.authors))}, who also wrote "
                f"{titles or 'books the reader liked'}."
            )
        elif e.kind == "co_readers" and titles:
            share = f"{e.share:.0%} of " if e.share is not None else ""
            lines.append(
                f"- {share}{e.count or 'several'} readers who liked {titles} rated it 4 or 5."
            )
        elif e.kind == "popular":
            mean = f" with a mean of {e.value:.2f}" if e.value is not None else ""
            lines.append(f"- It is popular: {e.count or 'many'} ratings{mean}.")
        elif e.kind == "series_next" and e.series:
            lines.append(
                f"- It is the next volume of the series {delimit(e.series)}"
                + (f" after {titles}." if titles else ".")
            )
        elif e.kind == "query_match" and e.text:
            lines.append(f"- It matches the reader's request {delimit(e.text, 200)}.")
        elif e.kind == "to_read":
            lines.append("- The reader saved it to read later.")
        elif e.kind == "readers_like_you" and e.count:
            lines.append(
                f"- {e.count} of the readers whose taste is closest to the reader's rated it "
                f"{e.value:.1f} stars on average."
            )
        elif e.kind == "anchor" and titles:
            bits = [f"the tags {delimit(', '.join(e.tags))}"] if e.tags else []
            if e.count:
                bits.append(f"{e.share:.0%} of {e.count} readers who liked it rated this 4 or 5")
            lines.append(
                f"- The reader asked for books like {titles}"
                + (": " + "; ".join(bits) if bits else "")
                + "."
            )
    if numbered:
        lines = [f"F{n}. {line[2:]}" for n, line in enumerate(lines, 1)]
    return "\n".join(lines) or "- (no specific facts)"
