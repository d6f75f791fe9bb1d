"""Anchors: "something like X" scores books by X's neighbours, co-readers and tags.

X's own text is never the query (its embedding text would then be quoted back as "what you
asked for"); instead three item-to-item signals, each z-normalised over the catalog, are summed:

* content: cosine between X's and each book's embedding;
* co-readers: cosine between the sets of readers who liked X and who liked each book (skipped
  when fewer than :data:`~retrieval.evidence.CO_READERS_MIN` readers liked X);
* tags: Jaccard overlap of the tag sets.

The hybrid fuses this with the reader's own sources, so the list is "like X, for this reader".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .evidence import CO_READERS_MIN, SIMILAR_MIN
from .library import LIKED, Library
from .types import Evidence

__all__ = ["anchor_evidence", "anchor_scores", "co_liker_cosine", "tag_jaccard"]

NEG = -np.inf
FAVOURABLE_SHARE = 0.5  # co-reader evidence is shown only when most of them liked the book


def _z(x: np.ndarray, skip: int) -> np.ndarray:
    m = np.ones(len(x), dtype=bool)
    m[skip] = False
    sd = float(x[m].std()) if m.any() else 0.0
    return (x - float(x[m].mean())) / sd if sd > 0 else np.zeros(len(x))


def co_liker_cosine(lib: Library, item: int) -> np.ndarray | None:
    """Cosine of the liker sets of ``item`` and every book, or None with too few likers."""
    likers = lib.likers(item)
    if len(likers) < CO_READERS_MIN or lib.R.shape[0] == 0:
        return None
    L = lib.__dict__.get("_liked_csc")
    if L is None:  # readers x items, 1 where liked; built once per library
        L = lib.R_csc.copy()
        L.data = (L.data >= LIKED).astype(np.float64)
        L.eliminate_zeros()
        lib.__dict__["_liked_csc"] = L
    v = np.zeros(lib.R.shape[0])
    v[likers] = 1.0
    inter = np.asarray(L.T @ v).ravel()
    sizes = np.diff(L.indptr).astype(np.float64)
    return inter / np.sqrt(np.maximum(sizes, 1.0) * len(likers))


def tag_jaccard(lib: Library, item: int) -> np.ndarray:
    """Jaccard overlap between ``item``'s tags and every book's."""
    a = lib.tag_sets[item]
    if not a:
        return np.zeros(lib.n_items)
    return np.array([len(a & t) / len(a | t) if t else 0.0 for t in lib.tag_sets])


def anchor_scores(lib: Library, anchors: Sequence[str]) -> np.ndarray:
    """Summed z-scores of the three signals for every book (``-inf``: no anchor, or the anchor).

    Args:
        lib: the catalog.
        anchors: book ids the request is "like"; ids not in ``lib`` are ignored.

    Returns:
        One score per catalog item.
    """
    idx = [lib.index[a] for a in anchors if a in lib.index]
    if not idx:
        return np.full(lib.n_items, NEG)
    total = np.zeros(lib.n_items)
    for i in idx:
        parts = [lib.vectors @ lib.vectors[i], tag_jaccard(lib, i)]
        co = co_liker_cosine(lib, i)
        if co is not None:
            parts.append(co)
        total += sum(_z(np.asarray(p, np.float64), i) for p in parts)
    total[idx] = NEG  # "like X" never answers X
    return total


def anchor_evidence(lib: Library, item: int, anchor: str) -> Evidence | None:
    """What makes ``item`` like the anchor: shared tags, closeness, favourable co-readers.

    Args:
        lib: the catalog.
        item: the recommended book's item index.
        anchor: the anchor's book id.

    Returns:
        An ``anchor`` evidence, or ``None`` when nothing links the two.
    """
    if anchor not in lib.index:
        return None
    a = lib.index[anchor]
    shared = [t for t in lib.books[item].tags if t.lower() in lib.tag_sets[a]][:4]
    sim = float(lib.vectors[a] @ lib.vectors[item])
    count = share = None
    raters, their = lib.raters(item)
    if len(raters):
        mask = np.isin(raters, lib.likers(a), assume_unique=True)
        n = int(mask.sum())
        if n >= CO_READERS_MIN:
            s = float((their[mask] >= LIKED).mean())
            if s >= FAVOURABLE_SHARE:
                count, share = n, round(s, 2)
    if not shared and sim < SIMILAR_MIN and count is None:
        return None
    return Evidence(
        "anchor",
        book_ids=(anchor,),
        tags=tuple(shared),
        value=round(sim, 3),
        count=count,
        share=share,
    )


def verify_anchor(lib: Library, book_id: str, ev: Evidence, tol: float = 0.011) -> bool:
    """Re-check an ``anchor`` evidence record against the catalog and the ratings.

    Args:
        lib: the catalog.
        book_id: the recommended book.
        ev: the evidence to check.
        tol: the tolerance on the rounded similarity and share.

    Returns:
        Whether every number and tag in ``ev`` holds.
    """
    if not ev.book_ids or ev.book_ids[0] not in lib.index or book_id not in lib.index:
        return False
    a, i = lib.index[ev.book_ids[0]], lib.index[book_id]
    if not all(t.lower() in lib.tag_sets[a] and t.lower() in lib.tag_sets[i] for t in ev.tags):
        return False
    if abs(float(lib.vectors[a] @ lib.vectors[i]) - (ev.value or 0.0)) >= tol:
        return False
    if ev.count is None:
        return True
    raters, their = lib.raters(i)
    mask = np.isin(raters, lib.likers(a), assume_unique=True)
    return (
        int(mask.sum()) == ev.count and abs((their[mask] >= LIKED).mean() - (ev.share or 0)) < tol
    )
