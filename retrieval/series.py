"""Series awareness: parse Goodreads-style series suffixes and keep reading order.

Goodreads titles carry the series in a trailing parenthesis::

    "Catching Fire (The Hunger Games, #2)"           -> volume 2 of "The Hunger Games"
    "The Slow Regard of Silent Things (The Kingkiller Chronicle #2.5)"  -> novella 2.5
    "Harry Potter Boxed Set, Books 1-5 (Harry Potter, #1-5)"  -> omnibus covering 1..5
    "The Color of Magic (Discworld, #1; Rincewind #1)"  -> first series wins: Discworld 1
    "Persuasion (Penguin Classics)"                   -> no '#', so not a series

The reading-order rule (``series_filter``) and the "next volume" source (``next_in_series``) work
on integer volumes only: novellas (#0.5, #2.5) never block and are never blocked, and omnibus
editions never block; an omnibus is dropped once the reader has read a volume it contains.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .types import Book

__all__ = [
    "SeriesInfo",
    "SeriesIndex",
    "parse_series",
    "series_key",
    "series_info",
    "next_in_series",
    "series_filter",
]


@dataclass(frozen=True)
class SeriesInfo:
    """What a title says about its series.

    ``index`` is the volume number (float: novellas are 0.5, 2.5, ...). For an omnibus (box set,
    "#1-3", "#0.5, 2.5") ``index`` is None and ``first``/``last`` give the range it covers.
    """

    title: str
    series: str | None = None
    index: float | None = None
    omnibus: bool = False
    first: float | None = None
    last: float | None = None

    @property
    def is_volume(self) -> bool:
        """True for a single whole-numbered volume (the only kind that takes part in ordering)."""
        return self.index is not None and not self.omnibus and float(self.index).is_integer()

    @property
    def is_novella(self) -> bool:
        """True for an in-between entry such as #0.5 or #2.5."""
        return self.index is not None and not self.omnibus and not float(self.index).is_integer()


_NUM = r"\d+(?:\.\d+)?"
# "Series, #3", "Series #3", "Series,#3", "One Thousand White Women#1"; the series part is
# non-greedy so "Dark-Hunter #5, Were-Hunter #1" stops at the first '#'.
_ENTRY_RE = re.compile(rf"^(?P<series>.+?)\s*,?\s*#\s*(?P<num>{_NUM})(?P<rest>.*)$", re.S)
# What may follow the first number and makes it a range: "-5", " - 0.4", "–3".
_RANGE_RE = re.compile(rf"^\s*[-–—]\s*(?P<end>{_NUM})(?P<rest>.*)$", re.S)
# "#1-4 + 3.5", "#0.5, 2.5", "#3 & 4": more numbers after the first means a collection.
_MORE_RE = re.compile(rf"^\s*(?:[,+&]|and)\s*#?\s*(?P<num>{_NUM})\s*(?:$|[,+&;)]|and\b)", re.S)


def _trailing_group(title: str) -> tuple[str, str] | None:
    """Split ``"Name (inner (x))"`` into ``("Name", "inner (x)")``; None if no trailing group."""
    s = title.rstrip()
    if not s.endswith(")"):
        return None
    depth = 0
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                head = s[:i].rstrip()
                return (head, s[i + 1 : -1].strip()) if head else None
    return None


def parse_series(title: str) -> SeriesInfo:
    """Parse a Goodreads-style title into clean title, series name, volume index and omnibus flag.

    Only a trailing parenthesis holding ``#<number>`` counts as a series, so "(Penguin Classics)"
    or "(Star Wars)" give ``series=None``. Several series ("Discworld, #1; Rincewind #1" or
    "Dark-Hunter #5, Were-Hunter #1"): the first one is kept.
    """
    split = _trailing_group(title)
    if split is None:
        return SeriesInfo(title=title.strip())
    head, inner = split
    first_part = inner.split(";")[0].strip()
    m = _ENTRY_RE.match(first_part)
    if not m:
        return SeriesInfo(title=title.strip())
    series = m.group("series").strip().rstrip(",").strip()
    if not series:
        return SeriesInfo(title=title.strip())
    start = float(m.group("num"))
    rest = m.group("rest")
    end = start
    omnibus = False
    r = _RANGE_RE.match(rest)
    if r:
        end = float(r.group("end"))
        rest = r.group("rest")
        # "#1-1" (part of volume 1) is a single volume, not a collection.
        omnibus = end != start
    more = _MORE_RE.match(rest)
    if more:
        omnibus = True
        extra = float(more.group("num"))
        start, end = min(start, extra), max(end, extra)
    if omnibus:
        return SeriesInfo(
            title=head,
            series=series,
            index=None,
            omnibus=True,
            first=min(start, end),
            last=max(start, end),
        )
    return SeriesInfo(title=head, series=series, index=start, first=start, last=start)


_ARTICLE_RE = re.compile(r"^(the|a|an)\s+")


def series_key(name: str) -> str:
    """Normalise a series name so "The Hunger Games" and "hunger games" group together."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    s = re.sub(r"[^a-z0-9]+", " ", s).strip()
    return _ARTICLE_RE.sub("", s)


def series_info(book: Book) -> SeriesInfo:
    """A book's series info: its ``series``/``series_index`` fields, else parsed from the title."""
    if book.series and book.series_index is not None:
        idx = float(book.series_index)
        return SeriesInfo(
            title=parse_series(book.title).title, series=book.series, index=idx, first=idx, last=idx
        )
    info = parse_series(book.title)
    if info.series is None and book.series:
        return SeriesInfo(title=info.title, series=book.series)
    return info


@dataclass
class SeriesIndex:
    """Series facts of a catalog, built once (one title parse per book).

    ``volumes[key][index]`` lists the ids of single integer or novella volumes in catalog order
    (editions such as "#5, Part 1" share an index).
    """

    info: dict[str, SeriesInfo] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, dict[float, list[str]]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)  # every id of a series (any kind)
    _default: set[str] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, books: Mapping[str, Book]) -> SeriesIndex:
        """Index every book of ``books`` (id -> Book) that belongs to a numbered series."""
        idx = cls()
        for bid, book in books.items():
            info = series_info(book)
            if info.series is None or (info.index is None and not info.omnibus):
                continue
            key = series_key(info.series)
            if not key:
                continue
            idx.info[bid] = info
            idx.keys[bid] = key
            idx.members.setdefault(key, []).append(bid)
            if info.index is not None:
                idx.volumes.setdefault(key, {}).setdefault(info.index, []).append(bid)
        return idx

    def read_indices(self, read_ids: Iterable[str]) -> dict[str, set[float]]:
        """Per series key, the integer volume indices the reader has covered.

        Novellas are left out (reading #2.5 says nothing about volume 2). A read omnibus covers
        the integer volumes in its range (reading the "#1-3" box set means volume 4 comes next).
        """
        out: dict[str, set[float]] = {}
        for bid in read_ids:
            info = self.info.get(bid)
            if info is None:
                continue
            got = out.setdefault(self.keys[bid], set())
            if info.omnibus and info.first is not None and info.last is not None:
                got.update(
                    float(i) for i in range(math.ceil(info.first), math.floor(info.last) + 1)
                )
            elif info.is_volume:
                got.add(float(info.index))  # type: ignore[arg-type]
        return out

    def blocked(self, candidate_ids: Iterable[str], read_ids: Iterable[str]) -> set[str]:
        """Candidate ids that break reading order; see :func:`series_filter`."""
        read = self.read_indices(read_ids)
        drop: set[str] = set()
        for cid in candidate_ids:
            info = self.info.get(cid)
            if info is None:
                continue
            key = self.keys[cid]
            have = read.get(key, set())
            if info.omnibus:
                if (
                    info.first is not None
                    and info.last is not None
                    and any(info.first <= v <= info.last for v in have)
                ):
                    drop.add(cid)
                continue
            if not info.is_volume:
                continue  # novellas never block and are never blocked
            top = max(have) if have else -math.inf
            v = float(info.index)  # type: ignore[arg-type]
            if any(i.is_integer() and top < i < v for i in self.volumes.get(key, {})):
                drop.add(cid)
        return drop

    def default_blocked(self) -> set[str]:
        """What :meth:`blocked` drops from the whole catalog for a reader who has read nothing:
        every integer volume above its series' lowest catalog volume (computed once)."""
        if self._default is None:
            self._default = self.blocked(self.info.keys(), ())
        return self._default

    def blocked_for(self, read_ids: Iterable[str]) -> set[str]:
        """Every catalog id that breaks reading order for a reader who read ``read_ids``.

        Equals ``blocked(all catalog ids, read_ids)``, at the cost of the series the reader
        touched only: untouched series block as for a new reader (:meth:`default_blocked`).
        """
        read = list(read_ids)
        touched = {self.keys[b] for b in read if b in self.keys}
        if not touched:
            return self.default_blocked()
        out = {b for b in self.default_blocked() if self.keys[b] not in touched}
        return out | self.blocked([b for k in touched for b in self.members[k]], read)

    def next_volumes(
        self, history: Mapping[str, float], books: Mapping[str, Book], liked_threshold: float = 3.5
    ) -> dict[str, Book]:
        """See :func:`next_in_series`."""
        ratings: dict[str, list[float]] = {}
        for bid, r in history.items():
            if bid in self.info:
                ratings.setdefault(self.keys[bid], []).append(float(r))
        read = self.read_indices(history.keys())
        out: dict[str, Book] = {}
        for key, rs in ratings.items():
            if sum(rs) / len(rs) < liked_threshold:
                continue
            have = read.get(key, set())
            top = max(have) if have else -math.inf
            nxt = sorted(
                i for i in self.volumes.get(key, {}) if i.is_integer() and i > top and i not in have
            )
            if not nxt:
                continue
            # Several editions may share an index: take the first in catalog order.
            book = books[self.volumes[key][nxt[0]][0]]
            out[self.info[book.book_id].series or key] = book
        return out


def next_in_series(
    history: Mapping[str, float],
    books: Mapping[str, Book],
    liked_threshold: float = 3.5,
    index: SeriesIndex | None = None,
) -> dict[str, Book]:
    """Next unread volume of each series the reader liked.

    ``history`` maps book_id -> rating. A series counts as liked when the mean rating of the
    reader's books in it (volumes, novellas and omnibus editions alike) is >= ``liked_threshold``.
    Its next volume is the smallest integer volume in the catalog above the highest integer
    volume the reader has covered (a read omnibus covers its range; a novella alone covers
    nothing, so after reading only #0.5 the next volume is #1). Returns {series name: Book};
    series with nothing left to read are absent. Pass a prebuilt ``index`` to avoid re-parsing a
    large catalog.
    """
    idx = index if index is not None else SeriesIndex.build(books)
    return idx.next_volumes(history, books, liked_threshold)


def series_filter(
    candidate_ids: Iterable[str],
    read_ids: Iterable[str],
    books: Mapping[str, Book],
    index: SeriesIndex | None = None,
) -> set[str]:
    """Candidate ids to drop because they would skip ahead in a series.

    Let ``top`` be the highest integer volume of series S the reader has covered (single volumes
    and omnibus ranges; novellas do not count). An integer volume v of S is dropped iff the
    catalog holds an integer volume u of S with ``top < u < v``: it would skip the next unread
    volume. Consequences: with nothing read only the lowest catalog volume passes; volumes the
    catalog lacks never block; volumes below ``top`` (read elsewhere, or skipped on purpose)
    pass, which keeps this rule consistent with :func:`next_in_series`. Novellas (#0.5, #2.5)
    never block or get blocked. An omnibus never blocks and is dropped when the reader has
    covered a volume in its range. Books outside a numbered series are never dropped, and
    already-read candidates are the caller's business (exclude read ids separately).
    """
    idx = index if index is not None else SeriesIndex.build(books)
    return idx.blocked(candidate_ids, read_ids)
