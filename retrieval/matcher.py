"""The one catalog matcher: a loosely typed title or author name -> the catalog's own.

Chat requests ("something like the hunger gmaes"), onboarding ("dune by frank herbert") and
Goodreads imports all resolve names here, so a typo is forgiven (or refused) the same way
everywhere. Matching is exact on a normalised key first (case, accents, punctuation, a leading
article and a series suffix removed), then fuzzy with :mod:`rapidfuzz` above a cutoff.

>>> m = CatalogMatcher(books)
>>> m.title("the hunger gmaes")          # -> TitleHit(book_id=..., title=..., score=...)
>>> m.author("pratchett")                # -> "Terry Pratchett" (a unique surname)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rapidfuzz import fuzz, process

from .series import parse_series
from .types import Book

__all__ = [
    "AUTHOR_CUTOFF",
    "TITLE_CUTOFF",
    "CatalogMatcher",
    "TitleHit",
    "best_match",
    "fold",
    "matches",
    "name_key",
    "title_key",
]

TITLE_CUTOFF = 88.0
"""Minimum ``fuzz.ratio`` (0-100) between normalised titles for a fuzzy title match."""
AUTHOR_CUTOFF = 85.0
"""Minimum ``token_sort_ratio`` between normalised names for a fuzzy author match."""

_SCORERS: dict[str, Callable[..., float]] = {
    "ratio": fuzz.ratio,
    "token_sort": fuzz.token_sort_ratio,
    "wratio": fuzz.WRatio,
    "partial": fuzz.partial_ratio,
}
_ARTICLE_RE = re.compile(r"^(?:the|a|an)\s+")
_APOSTROPHE_RE = re.compile(r"['\u2019\u2018`]")
_NON_WORD_RE = re.compile(r"[^\w]+|_")


def best_match(
    query: str, choices: Sequence[str] | Mapping[Any, str], cutoff: float, scorer: str = "ratio"
) -> tuple[str, float, Any] | None:
    """The best fuzzy match of ``query`` among ``choices`` scoring at least ``cutoff``.

    Args:
        query: the already-normalised text to look up.
        choices: normalised candidates (a list, or a mapping key -> text).
        cutoff: minimum score, 0-100.
        scorer: ``ratio`` | ``token_sort`` | ``wratio`` | ``partial``.

    Returns:
        ``(choice, score, key)`` (key = list position or mapping key), or None.
    """
    return process.extractOne(query, choices, scorer=_SCORERS[scorer], score_cutoff=cutoff)


def matches(
    query: str,
    choices: Sequence[str] | Mapping[Any, str],
    cutoff: float,
    scorer: str = "ratio",
    limit: int = 10,
) -> list[tuple[str, float, Any]]:
    """Every fuzzy match of ``query`` scoring at least ``cutoff``, best first (at most
    ``limit``)."""
    return process.extract(
        query, choices, scorer=_SCORERS[scorer], score_cutoff=cutoff, limit=limit
    )


@lru_cache(maxsize=65536)
def fold(s: str) -> str:
    """Lower case, accents stripped, apostrophes dropped, other punctuation -> spaces."""
    if not s.isascii():
        s = unicodedata.normalize("NFKD", s)
        s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.lower().replace("&", " and ")
    s = _APOSTROPHE_RE.sub("", s)  # "sorcerer's" -> "sorcerers", not "sorcerer s"
    return _NON_WORD_RE.sub(" ", s).strip()


def title_key(title: str) -> str:
    """Matching key for a title: series suffix, case, accents, punctuation, article removed."""
    return _ARTICLE_RE.sub("", fold(parse_series(title).title))


def name_key(name: str) -> str:
    """Matching key for an author name ("Ursula K. Le Guin" -> "ursula k le guin")."""
    return " ".join(fold(name.replace(".", " ")).split())


@dataclass(frozen=True)
class TitleHit:
    """A catalog book a phrase names: its id, its catalog title, and how sure (100 = exact)."""

    book_id: str
    title: str
    score: float


class CatalogMatcher:
    """Title and author lookup over one catalog (built once, then cheap per query).

    Args:
        books: the catalog, most popular first when possible (an exact key shared by two books
            resolves to the first).
        title_cutoff: fuzzy threshold for titles (see :data:`TITLE_CUTOFF`).
        author_cutoff: fuzzy threshold for names (see :data:`AUTHOR_CUTOFF`).
    """

    def __init__(
        self,
        books: Sequence[Book],
        title_cutoff: float = TITLE_CUTOFF,
        author_cutoff: float = AUTHOR_CUTOFF,
    ) -> None:
        self.title_cutoff, self.author_cutoff = float(title_cutoff), float(author_cutoff)
        self._exact: dict[str, int] = {}
        self._keys: list[str] = []
        self._books: list[Book] = list(books)
        for pos, b in enumerate(self._books):
            k = title_key(b.title)
            self._keys.append(k)
            if k:
                self._exact.setdefault(k, pos)
        # "like Harry Potter", "books like Mistborn": a series name means its first volume
        self._series: dict[str, int] = {}
        for pos, b in enumerate(self._books):
            if b.series and b.series_index is not None:
                k = _ARTICLE_RE.sub("", fold(b.series))
                cur = self._series.get(k)
                if k and (cur is None or (self._books[cur].series_index or 0) > b.series_index):
                    self._series[k] = pos
        names = sorted({a for b in self._books for a in b.authors})
        self.authors: list[str] = names
        self._name_keys = [name_key(a) for a in names]
        self._by_name = {k: a for k, a in zip(self._name_keys, names, strict=True) if k}
        tails: dict[str, set[str]] = {}
        for k, a in zip(self._name_keys, names, strict=True):
            parts = k.split()
            for i in range(1, len(parts)):
                tails.setdefault(" ".join(parts[i:]), set()).add(a)
        # "pratchett", "le guin": a name tail that belongs to exactly one author
        self._by_tail = {t: next(iter(s)) for t, s in tails.items() if len(s) == 1 and len(t) > 2}

    @classmethod
    def from_titles(cls, titles: Sequence[str], authors: Sequence[str] = ()) -> CatalogMatcher:
        """A matcher over bare title strings (ids are the titles themselves), e.g. for tests."""
        books = [Book(t, t) for t in titles] + [Book(f"author:{a}", "", (a,)) for a in authors]
        m = cls(books)
        return m

    def title(self, text: str, exact_only: bool = False) -> TitleHit | None:
        """The catalog book ``text`` names, or None.

        Args:
            text: a loosely typed title ("the hunger gmaes", "Dune", "dune by frank herbert").
            exact_only: refuse fuzzy matches (e.g. to tell a title from a genre phrase).
        """
        q = title_key(re.split(r"\s+(?:by|-)\s+", text.strip(), maxsplit=1)[0])
        if not q:
            return None
        exact = self._exact.get(q, self._series.get(q))
        if exact is not None:
            b = self._books[exact]
            return TitleHit(b.book_id, b.title, 100.0)
        if exact_only or len(q) < 4:
            return None
        hit = best_match(q, self._keys, self.title_cutoff, "ratio")
        if not hit:
            return None
        b = self._books[hit[2]]
        return TitleHit(b.book_id, b.title, float(hit[1]))

    def title_prefix(
        self, words: Sequence[tuple[int, str]], exact_only: bool = False, max_words: int = 12
    ) -> tuple[TitleHit, int] | None:
        """The longest prefix of a phrase that names a book.

        Args:
            words: ``(end offset, text up to that offset)`` for each prefix, longest first.
            exact_only: refuse fuzzy matches.
            max_words: how many prefixes to try.

        Returns:
            ``(hit, end offset)`` of the first (longest) prefix matching exactly or fuzzily, so
            "Stand by Me" is not cut down to "The Stand" and a typo in a full title still matches.
        """
        for end, text in list(words)[:max_words]:
            q = title_key(text)
            if not q:
                continue
            exact = self._exact.get(q, self._series.get(q))
            if exact is not None:
                b = self._books[exact]
                return TitleHit(b.book_id, b.title, 100.0), end
            if exact_only or len(q) < 4:
                continue
            hit = best_match(q, self._keys, self.title_cutoff, "ratio")
            if hit:
                b = self._books[hit[2]]
                return TitleHit(b.book_id, b.title, float(hit[1])), end
        return None

    def author(self, text: str, fuzzy: bool = True) -> str | None:
        """The catalog author ``text`` names (full name, unique surname/tail, or a near
        spelling)."""
        key = name_key(text)
        if not key:
            return None
        if key in self._by_name:
            return self._by_name[key]
        if key in self._by_tail:
            return self._by_tail[key]
        if not fuzzy or len(key) < 4:
            return None
        hit = best_match(key, self._name_keys, self.author_cutoff, "token_sort")
        if hit:
            return self.authors[hit[2]]
        # "by pratchet": a near spelling of a surname that is unique in the catalog
        tail = best_match(key, list(self._by_tail), self.author_cutoff, "ratio")
        return self._by_tail[tail[0]] if tail and len(key) >= 5 else None

    def full_author(self, key: str) -> str | None:
        """The author whose full normalised name is exactly ``key`` (no tails, no fuzz)."""
        return self._by_name.get(key)
