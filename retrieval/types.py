"""Core data types shared by every layer.

Evidence is plain data (kind + ids + numbers): retrieval produces it, templates render it,
the LLM receives it, and eval checks it against the ratings. Nothing here imports a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

EvidenceKind = Literal[
    "similar_to",  # a liked book whose embedding is close: book_ids=[liked], value=cosine
    "shared_tags",  # tags shared with liked books: tags=[...], book_ids=[liked books having them]
    "same_author",  # author shared with liked books: authors=[...], book_ids=[liked]
    # readers who liked book_ids[0] rated this: count=n, value=mean rating, share=fraction >=4
    "co_readers",
    "popular",  # count=number of ratings, value=mean rating
    # next unread volume: series=name, value=volume index, book_ids=[previous volume read]
    "series_next",
    "query_match",  # matches the reader's request: text=query, value=cosine
    "to_read",  # the reader shelved it as to-read
    "anchor",  # like a book the reader asked about: book_ids=[anchor], tags shared, value=cosine,
    #            count/share = readers who liked the anchor and rated this (when favourable)
    # the reader's nearest readers by taste vector who rated it: count=n of neighbours=size,
    # value=their mean rating, share=fraction >= 4; reader_ids (internal, never shown) for verify()
    "readers_like_you",
]


@dataclass(frozen=True)
class Book:
    """One catalog item. ``book_id`` is always a string (dataset ids are stringified)."""

    book_id: str
    title: str
    authors: tuple[str, ...] = ()
    year: int | None = None
    tags: tuple[str, ...] = ()
    description: str = ""
    isbn: str | None = None
    image_url: str | None = None
    series: str | None = None
    series_index: float | None = None

    def embedding_text(self) -> str:
        """The text we embed: title, authors, year, tags and description."""
        parts = [self.title]
        if self.authors:
            parts.append("by " + ", ".join(self.authors))
        if self.year is not None:
            parts.append(f"({self.year})")
        if self.tags:
            parts.append("Tags: " + ", ".join(self.tags))
        if self.description:
            parts.append(self.description)
        return ". ".join(parts)


@dataclass(frozen=True)
class Rating:
    """One interaction. ``ts`` is a unix time, or the event's position where data has no clock."""

    user_id: str
    book_id: str
    rating: float
    ts: float


@dataclass(frozen=True)
class Evidence:
    """A fact the system holds that supports a recommendation."""

    kind: EvidenceKind
    book_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    series: str | None = None
    text: str | None = None
    count: int | None = None
    value: float | None = None
    share: float | None = None
    neighbours: int | None = None
    # query_match: the request's words found in the book's description
    terms: tuple[str, ...] = ()
    # Other readers' ids behind a readers_like_you claim: kept for verify(), never rendered,
    # serialised or sent to the LLM (a reader's data is theirs).
    reader_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # field by field, not dataclasses.asdict: its recursive deep copy was ~10% of a served
        # recommend (every field is a str, a number, None or a tuple of str: nothing to copy)
        d = {}
        for k in _EVIDENCE_FIELDS:
            v = getattr(self, k)
            if v is None or v == () or v == [] or k == "reader_ids":
                continue
            d[k] = list(v) if k in _EVIDENCE_LISTS else v
        return d


_EVIDENCE_FIELDS = tuple(f.name for f in fields(Evidence))
_EVIDENCE_LISTS = frozenset(("book_ids", "tags", "authors", "terms"))


@dataclass
class Candidate:
    """A book proposed by a candidate source, with the evidence that source holds for it."""

    book_id: str
    score: float
    source: str
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class UserContext:
    """Everything a candidate source may use for one request.

    ``history`` is the reader's rated books (oldest first); ``query`` is free text from chat;
    ``exclude`` are books never to return (read, dismissed). A parsed request adds
    ``query_tags`` (catalog tags it named, for lexical retrieval) and ``anchors`` (books it asked
    for "something like", scored by their neighbours, co-readers and tags).
    """

    user_id: str | None = None
    history: list[Rating] = field(default_factory=list)
    query: str | None = None
    exclude: set[str] = field(default_factory=set)
    to_read: set[str] = field(default_factory=set)
    query_tags: tuple[str, ...] = ()
    anchors: tuple[str, ...] = ()


def year_text(year: int | None) -> str:
    """A publication year as a reader writes it: ``1937``, ``340 BC``; ``""`` when unknown."""
    if year is None:
        return ""
    return f"{-int(year)} BC" if int(year) < 0 else str(int(year))
