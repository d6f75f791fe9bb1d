"""Lexical retrieval for requests: BM25 over each book's tags, authors, title and description.

The dense embedding of "a funny fantasy" lands near books *about* fantasy in general (Kafka on
the Shore, A Game of Thrones); the catalog's own tags say which books are funny *and* fantasy.
BM25 (Robertson & Zaragoza 2009) scores those words where they occur, and the hybrid fuses it
with the embedding, so a request naming tags finds the books carrying them.

Our own scipy BM25 rather than ``bm25s``: we need the score of *every* catalog item as one
vector (the candidate-source contract, fused as z-scores), field weights (a tag counts more than
a word of the description) and tag tokens that the intent parser can address exactly; the whole
index is one sparse matrix built in well under a second for 10k books.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .library import Library
from .matcher import fold
from .types import Book, UserContext

__all__ = ["BM25Index", "FIELD_WEIGHTS", "tag_token", "tokenize"]

NEG = -np.inf
# How many times a token in each field counts (BM25F-style weighting by repetition).
FIELD_WEIGHTS = {"tags": 3.0, "authors": 2.0, "title": 2.0, "description": 1.0}
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "by",
        "from",
        "at",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "me",
        "my",
        "you",
        "your",
        "we",
        "our",
        "some",
        "any",
        "something",
        "anything",
        "book",
        "books",
        "novel",
        "novels",
        "read",
        "reads",
        "reading",
        "like",
        "more",
        "less",
        "please",
        "want",
        "would",
        "could",
        "should",
        "can",
        "give",
        "find",
        "show",
        "story",
        "stories",
        "about",
        "very",
        "really",
        "good",
        "great",
        "new",
        "one",
        "ones",
    ]
)


def tokenize(text: str) -> list[str]:
    """Folded words without stop words, lightly singularised ("vampires" -> "vampire").

    Args:
        text: any text (``None``/empty gives no tokens).

    Returns:
        The tokens, in order.
    """
    out = []
    for w in re.findall(r"[a-z0-9]+", fold(text or "")):
        if w in _STOP or len(w) < 2:
            continue
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def tag_token(tag: str) -> str:
    """The token a whole tag is indexed under ("science-fiction" -> "tag:science-fiction")."""
    return "tag:" + tag.strip().lower()


def _book_tokens(b: Book) -> dict[str, float]:
    tf: dict[str, float] = {}

    def add(tokens: Sequence[str], w: float) -> None:
        for t in tokens:
            tf[t] = tf.get(t, 0.0) + w

    for tag in b.tags:
        add([tag_token(tag)], FIELD_WEIGHTS["tags"])
        add(tokenize(tag.replace("-", " ")), FIELD_WEIGHTS["tags"])
    add(tokenize(" ".join(b.authors)), FIELD_WEIGHTS["authors"])
    add(tokenize(b.title), FIELD_WEIGHTS["title"])
    add(tokenize(b.description), FIELD_WEIGHTS["description"])
    return tf


class BM25Index:
    """BM25 weights of every (book, token), precomputed: a query's scores are a column sum.

    Args:
        books: the catalog, in library order.
        k1: term-frequency saturation.
        b: length normalisation.
    """

    def __init__(self, books: Sequence[Book], k1: float = 1.2, b: float = 0.75) -> None:
        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        for i, book in enumerate(books):
            for t, f in _book_tokens(book).items():
                rows.append(i)
                cols.append(vocab.setdefault(t, len(vocab)))
                vals.append(f)
        n = len(books)
        tf = sp.csr_matrix((np.asarray(vals, np.float64), (rows, cols)), shape=(n, len(vocab)))
        dl = np.asarray(tf.sum(axis=1)).ravel()
        avg = float(dl.mean()) if n else 1.0
        df = np.diff(tf.tocsc().indptr)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        tf = tf.tocoo()
        norm = k1 * (1 - b + b * dl[tf.row] / max(avg, 1e-9))
        w = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + norm)
        self.weights = sp.csc_matrix((w, (tf.row, tf.col)), shape=(n, len(vocab)))
        self.vocab = vocab
        self.n = n

    def score(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every book for a bag of query tokens (0 where none occurs).

        Args:
            tokens: query tokens (:func:`tokenize`, :func:`tag_token`); unknown ones are ignored.

        Returns:
            One score per book, in library order.
        """
        cols = [self.vocab[t] for t in tokens if t in self.vocab]
        if not cols:
            return np.zeros(self.n)
        return np.asarray(self.weights[:, cols].sum(axis=1)).ravel()


def request_tokens(ctx: UserContext) -> list[str]:
    """The query's words plus the tags the request named (as whole-tag tokens).

    Args:
        ctx: the reader's context (``query``, ``query_tags``).

    Returns:
        The tokens.
    """
    return tokenize(ctx.query or "") + [tag_token(t) for t in ctx.query_tags]


def lexical_scores(index: BM25Index, lib: Library, ctx: UserContext) -> np.ndarray:
    """Scores for :class:`~retrieval.sources.LexicalSource`: ``-inf`` where nothing matched.

    Args:
        index: the catalog's BM25 index.
        lib: the catalog (for its size).
        ctx: the reader's context with the request.

    Returns:
        One score per catalog item.
    """
    tokens = request_tokens(ctx)
    if not tokens:
        return np.full(lib.n_items, NEG)
    s = index.score(tokens)
    return np.where(s > 0, s, NEG)
