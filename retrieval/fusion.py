"""Fusing the scores of several candidate sources into one ranking (the hybrid's arithmetic).

Everything here works on score matrices (readers x catalog items, ``-inf`` = no opinion), so the
live pipeline (one reader) and offline evaluation (thousands at once) share one implementation.

Two methods:

* ``"score"`` (default): ``sum_s w_s * z_s`` of per-reader z-normalised scores. Keeps *how much*
  better a source finds one book than another; on goodbooks it beat reciprocal-rank fusion
  (``eval/results/goodbooks-partial``).
* ``"rrf"``: weighted reciprocal-rank fusion ``sum_s w_s / (rrf_k + rank_s)`` over each source's
  top ``depth`` (Cormack et al. 2009); robust when source scales are wild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .config import FUSION_METHODS

__all__ = [
    "FUSION_METHODS",
    "combine",
    "fuse_matrices",
    "normalise",
    "source_contribution",
    "top_k_matrix",
]

NEG = -np.inf


def normalise(S: np.ndarray, exclude: np.ndarray, indicator: bool = False) -> np.ndarray:
    """Per-row z-scores over rankable items; unrankable items get the row's minimum, empty rows 0.

    ``exclude`` is a boolean mask (readers x items) of books never to rank (already read).
    With ``indicator`` the source's finite scores become 1 and the rest 0 (the series source
    names a handful of next volumes; its raw value is not a scale).

    Args:
        S: the source's scores, readers x items.
        exclude: the mask of items never to rank.
        indicator: treat finite scores as 1 and the rest as 0.

    Returns:
        The normalised matrix.
    """
    finite = np.isfinite(S) & ~exclude
    if indicator:
        return finite.astype(np.float64)
    n = finite.sum(axis=1, keepdims=True)
    X = np.where(finite, S, 0.0)
    mean = X.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(finite, (X - mean) ** 2, 0.0)).sum(axis=1, keepdims=True) / np.maximum(n, 1)
    sd = np.sqrt(var)
    Z = np.where(finite, (X - mean) / np.where(sd > 0, sd, 1.0), np.inf)
    low = Z.min(axis=1, keepdims=True)
    Z = np.where(finite, Z, np.where(np.isfinite(low), low, 0.0))
    Z[n[:, 0] == 0] = 0.0  # no opinion on this reader at all: contributes nothing
    return Z


def top_k_matrix(
    S: np.ndarray, exclude: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` item indices, best first: higher score first, then lower item index.

    ``nan``/``-inf`` and excluded items are not rankable. Returns ``(idx, valid)``, both
    ``(rows, min(k, items))``: ``valid`` is False in the tail of rows with fewer than ``k``
    rankable items (their ``idx`` there is meaningless).

    Args:
        S: scores, rows x items.
        exclude: a boolean mask of items not to rank (``None``: none).
        k: how many per row.

    Returns:
        ``(idx, valid)`` as above.
    """
    S = np.asarray(S, dtype=np.float64)
    X = np.where(np.isnan(S), -np.inf, S)
    if exclude is not None:
        X = np.where(exclude, -np.inf, X)
    n_rows, n_items = X.shape
    k = min(int(k), n_items)
    if k <= 0 or n_rows == 0:
        return np.zeros((n_rows, 0), np.int64), np.zeros((n_rows, 0), bool)
    kth = -np.partition(-X, k - 1, axis=1)[:, k - 1 : k]  # the k-th largest per row
    above = kth < X
    tied = kth == X
    need = k - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= need))  # boundary ties: lowest indices
    idx = np.nonzero(take)[1].reshape(n_rows, k)
    vals = np.take_along_axis(X, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    valid = np.take_along_axis(vals, order, axis=1) > -np.inf
    return idx, valid


def source_contribution(
    S: np.ndarray,
    exclude: np.ndarray,
    method: str = "score",
    rrf_k: float = 60.0,
    depth: int = 200,
    indicator: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One source's unweighted share of the fused score, and where it has an opinion.

    ``method="score"``: per-reader z-scores (:func:`normalise`). ``method="rrf"``:
    ``1 / (rrf_k + rank)`` over the source's top ``depth`` rankable items, 0 elsewhere.
    Returns ``(contribution, found)``.
    """
    ok = np.isfinite(S) & ~exclude
    if method == "score":
        return normalise(S, exclude, indicator), ok
    if method != "rrf":
        raise ValueError(
            f"unknown fusion method {method!r}; use one of {', '.join(FUSION_METHODS)}"
        )
    n_rows, n_items = S.shape
    contrib = np.zeros(S.shape)
    found = np.zeros(S.shape, dtype=bool)
    d = min(int(depth), n_items)
    if d == 0 or n_rows == 0:
        return contrib, found
    idx, valid = top_k_matrix(S, exclude, d)
    rows = np.repeat(np.arange(n_rows), idx.shape[1]).reshape(idx.shape)
    share = (1.0 / (rrf_k + 1.0 + np.arange(idx.shape[1])))[None, :] * valid
    contrib[rows[valid], idx[valid]] = share[valid]
    found[rows[valid], idx[valid]] = True
    return contrib, found


def combine(
    contributions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    weights: Mapping[str, float],
    exclude: np.ndarray,
) -> np.ndarray:
    """Weighted sum of :func:`source_contribution` outputs.

    Args:
        contributions: source name -> ``(contribution, found)``.
        weights: fusion weight per source name (names without a positive weight are skipped).
        exclude: the mask of items never to rank.

    Returns:
        The fused matrix; ``-inf`` where no weighted source has an opinion.

    Raises:
        ValueError: every weight is 0.
    """
    names = [n for n in contributions if weights.get(n, 0) > 0]
    if not names:
        raise ValueError(
            "fusion: every fusion weight is 0; give at least one source a positive weight"
        )
    fused = np.zeros(exclude.shape)
    found = np.zeros(exclude.shape, dtype=bool)
    for n in names:
        c, f = contributions[n]
        fused += weights[n] * c
        found |= f
    return np.where(found & ~exclude, fused, NEG)


def fuse_matrices(
    per_source: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    exclude: np.ndarray,
    method: str = "score",
    rrf_k: float = 60.0,
    depth: int = 200,
    indicator: Sequence[str] = (),
) -> np.ndarray:
    """Fuse per-source score matrices (readers x items) into one.

    Excluded items and items no weighted source can rank get ``-inf``.

    Args:
        per_source: source name -> score matrix.
        weights: fusion weight per source name.
        exclude: the mask of items never to rank (readers x items).
        method: ``"score"`` (z-scores) or ``"rrf"``.
        rrf_k: the RRF constant.
        depth: the RRF depth.
        indicator: the sources whose finite scores count 1 / 0 (a source declares it:
            ``CandidateSource.indicator``).

    Returns:
        The fused readers x items matrix.

    Raises:
        ValueError: an unknown method, or every weight is 0.
    """
    contribs = {
        n: source_contribution(S, exclude, method, rrf_k, depth, n in indicator)
        for n, S in per_source.items()
        if weights.get(n, 0) > 0
    }
    return combine(contribs, weights, exclude)
