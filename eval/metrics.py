"""Top-K ranking metrics: accuracy per user, beyond-accuracy per user and per run.

Conventions (contractual: scripts outside the project recompute these numbers):

* A ranking is a sequence (list, tuple or 1-D array) of book ids, best first, duplicate-free.
  Ordering ties is the producer's job; :func:`rank_scores` turns a score vector into a ranking
  with a deterministic tie-break. Duplicates within the top K raise ``ValueError``.
* K larger than a ranking: the ranking is used as is, never padded. Precision still divides by K,
  so a short list is penalised there and nowhere else.
* ``relevant`` is the set of held-out relevant ids; ids absent from the catalog or the ranking
  still count in ``|relevant|``. A user with an empty relevant set gets ``nan`` from every
  per-user accuracy function, and :func:`evaluate_rankings` skips and counts such users.

Definitions, with hits h_r = 1 if the item at rank r (1-based) is relevant, R = |relevant|:

* ``recall@K = sum_{r<=K} h_r / R`` and ``precision@K = sum_{r<=K} h_r / K``
* ``ndcg@K = DCG / IDCG``, binary gains, ``DCG = sum_{r<=K} h_r / log2(r + 1)``,
  ``IDCG = sum_{r<=min(R, K)} 1 / log2(r + 1)``
* ``hitrate@K = 1`` if any hit in the top K, else 0
* ``mrr@K = 1 / r`` of the first hit within K, else 0
* ``map@K = sum_{r<=K} h_r * precision@r / min(R, K)``
* ``coverage@K`` = distinct items in any user's top K / ``n_items`` (one scalar per run)
* ``diversity@K`` = mean pairwise cosine distance ``1 - cos`` among the top-K items that have a
  (non-zero) vector; ``nan`` when fewer than two do
* ``novelty@K`` = mean over the top K of ``-log2(pop_i / n_users)``; an item with popularity 0
  (or unknown) is smoothed to pop 1, i.e. the information of an item seen once
* ``arp@K`` = mean over the top K of ``pop_i`` (unknown items count 0)

Beyond-accuracy values of an empty ranking are ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = [
    "RunResult",
    "arp",
    "catalog_coverage",
    "evaluate_rankings",
    "hitrate_at_k",
    "intra_list_diversity",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "ndcg_from_hits",
    "novelty",
    "precision_at_k",
    "rank_scores",
    "recall_at_k",
]

Ranking = Union[Sequence[str], np.ndarray]
Rankings = Union[Mapping[str, Ranking], Sequence[Ranking]]
ItemPop = Union[Mapping[str, float], pd.Series]
# Either {book_id: vector} or (matrix, {book_id: row index}).
ItemVectors = Union[Mapping[str, Any], tuple[np.ndarray, Mapping[str, int]]]

ACCURACY_METRICS = ("recall", "precision", "ndcg", "hitrate", "mrr", "map")
BEYOND_METRICS = ("coverage", "diversity", "novelty", "arp")


# --------------------------------------------------------------------------- ranking from scores


def rank_scores(
    scores: np.ndarray | Sequence[float],
    item_ids: Sequence[str] | np.ndarray | None,
    k: int,
    exclude: Iterable[int] | np.ndarray | None = None,
) -> list:
    """Top-``k`` item ids from a score vector, with a deterministic tie-break.

    Order: higher score first, then lower item index. ``nan`` and ``-inf`` scores and the
    items in ``exclude`` (int indices or a boolean mask, e.g. books already read) are not
    rankable, so the result may be shorter than ``k``; ``+inf`` ranks first. With
    ``item_ids=None`` the item indices are returned. ``np.argpartition`` keeps the cost at
    O(n + k log k).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"rank_scores: scores must be 1-D, got shape {s.shape}")
    _check_k(k, "rank_scores")
    if item_ids is not None and len(item_ids) != len(s):
        raise ValueError(
            f"rank_scores: {len(item_ids)} item_ids for {len(s)} scores; they must align"
        )
    rankable = ~np.isnan(s) & (s != -np.inf)
    if exclude is not None:
        ex = np.asarray(exclude if isinstance(exclude, np.ndarray) else list(exclude))
        if ex.dtype == bool:  # a boolean mask over items
            if ex.shape != s.shape:
                raise ValueError(
                    f"rank_scores: boolean exclude mask has shape {ex.shape}, scores {s.shape}"
                )
            rankable &= ~ex
        elif ex.size:
            if not np.issubdtype(ex.dtype, np.integer):
                raise ValueError(
                    "rank_scores: exclude must hold int item indices (not ids), got dtype "
                    f"{ex.dtype}"
                )
            if ex.min() < 0 or ex.max() >= len(s):
                raise ValueError(
                    f"rank_scores: exclude holds indices outside [0, {len(s)}); pass item indices"
                )
            rankable[ex] = False
    cand = np.flatnonzero(rankable)  # ascending index, which the tie-break relies on
    vals = s[cand]
    if len(cand) > k:
        kth = vals[np.argpartition(-vals, k - 1)[k - 1]]  # the k-th largest score
        above = cand[vals > kth]
        tied = cand[vals == kth][: k - len(above)]  # lowest indices win the boundary tie
        cand = np.concatenate([above, tied])
    top = cand[np.lexsort((cand, -s[cand]))]
    if item_ids is None:
        return top.tolist()
    if isinstance(item_ids, np.ndarray):
        return item_ids[top].tolist()
    return [item_ids[i] for i in top]


# --------------------------------------------------------------------------- per-user accuracy


def _check_k(k: int, where: str) -> None:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"{where}: k must be a positive int, got {k!r}")


def _top(ranking: Ranking, k: int, where: str) -> list:
    """The first ``k`` entries of a ranking, checked for order and duplicates."""
    _check_k(k, where)
    if isinstance(ranking, (set, frozenset, Mapping)) or isinstance(ranking, str):
        raise ValueError(
            f"{where}: a ranking must be an ordered sequence of ids, got {type(ranking).__name__}"
        )
    top = list(ranking[:k])
    if len(set(top)) != len(top):
        seen: set = set()
        dup = next(x for x in top if x in seen or seen.add(x))
        raise ValueError(
            f"{where}: ranking repeats item {dup!r} within its top {k}; rankings must be "
            "duplicate-free"
        )
    return top


def _hits(ranking: Ranking, relevant: Collection[str], k: int, where: str) -> np.ndarray | None:
    """Binary hit vector of the top ``k`` (not padded), or None when nothing is relevant."""
    top = _top(ranking, k, where)
    if len(relevant) == 0:
        return None
    rel = relevant if isinstance(relevant, (set, frozenset)) else set(relevant)
    return np.fromiter((x in rel for x in top), dtype=bool, count=len(top))


def _n_rel(relevant: Collection[str]) -> int:
    return len(relevant) if isinstance(relevant, (set, frozenset)) else len(set(relevant))


def recall_at_k(ranking: Ranking, relevant: Collection[str], k: int) -> float:
    """Hits in the top ``k`` / ``|relevant|``; ``nan`` if ``relevant`` is empty."""
    h = _hits(ranking, relevant, k, "recall_at_k")
    return math.nan if h is None else float(h.sum()) / _n_rel(relevant)


def precision_at_k(ranking: Ranking, relevant: Collection[str], k: int) -> float:
    """Hits in the top ``k`` / ``k`` (not the list length); ``nan`` if ``relevant`` is empty."""
    h = _hits(ranking, relevant, k, "precision_at_k")
    return math.nan if h is None else float(h.sum()) / k


def ndcg_from_hits(hits: np.ndarray, n_rel: np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """Per-row binary-gain ndcg@k from a hit matrix: the one NDCG implementation.

    ``hits[u, r]`` says whether the book at rank ``r`` (0-based; rows may be shorter than ``k``,
    never padded) is relevant for row ``u``; ``n_rel[u] = |relevant|``. ``DCG = sum h_r /
    log2(r + 2)``, ``IDCG`` over ``min(n_rel, k)`` ranks; ``nan`` where ``n_rel`` is 0.
    :func:`ndcg_at_k`, :func:`evaluate_rankings` and eval's tuning all call this.
    """
    h = np.asarray(hits, dtype=bool)
    h = (h[None, :] if h.ndim == 1 else h)[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate(([0.0], np.cumsum(disc)))
    idcg = ideal[np.minimum(np.asarray(n_rel, dtype=np.int64), k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, (h @ disc[: h.shape[1]]) / np.where(idcg > 0, idcg, 1.0), np.nan)


def ndcg_at_k(ranking: Ranking, relevant: Collection[str], k: int) -> float:
    """Binary-gain NDCG with ideal DCG over ``min(|relevant|, k)``; ``nan`` if ``relevant`` is
    empty."""
    h = _hits(ranking, relevant, k, "ndcg_at_k")
    if h is None:
        return math.nan
    return float(ndcg_from_hits(h[None, :], [_n_rel(relevant)], k)[0])


def hitrate_at_k(ranking: Ranking, relevant: Collection[str], k: int) -> float:
    """1.0 if any of the top ``k`` is relevant, else 0.0; ``nan`` if ``relevant`` is empty."""
    h = _hits(ranking, relevant, k, "hitrate_at_k")
    return math.nan if h is None else float(h.any())


def mrr_at_k(ranking: Ranking, relevant: Collection[str], k: int) -> float:
    """1 / rank of the first relevant item within ``k`` (else 0); ``nan`` if ``relevant`` is
    empty."""
    h = _hits(ranking, relevant, k, "mrr_at_k")
    if h is None:
        return math.nan
    return 1.0 / (int(np.argmax(h)) + 1) if h.any() else 0.0


def map_at_k(ranking: Ranking, relevant: Collection[str], k: int) -> float:
    """Average precision at ``k`` normalised by ``min(|relevant|, k)``; ``nan`` if ``relevant`` is
    empty."""
    h = _hits(ranking, relevant, k, "map_at_k")
    if h is None:
        return math.nan
    prec = np.cumsum(h) / np.arange(1, len(h) + 1)
    return float((prec * h).sum()) / min(_n_rel(relevant), k)


# --------------------------------------------------------------------------- flattened runs


@dataclass
class _Flat:
    """All rankings of a run, truncated to ``kmax``, as flat integer arrays (one row per entry)."""

    labels: list  # user id (or list position) per ranking
    user_idx: np.ndarray  # ranking index per entry
    pos: np.ndarray  # 0-based rank per entry
    codes: np.ndarray  # index into ``uniques`` per entry
    uniques: np.ndarray  # distinct item ids (object array)
    kmax: int

    @property
    def n_lists(self) -> int:
        return len(self.labels)

    def at(self, k: int) -> np.ndarray:
        """Entry mask for the top ``k`` of every ranking."""
        return self.pos < k


def _flatten(rankings: Rankings, kmax: int, where: str) -> _Flat:
    """Flatten rankings (mapping or sequence) to arrays; raise on unordered or duplicate lists."""
    _check_k(kmax, where)
    if isinstance(rankings, Mapping):
        labels, lists = list(rankings.keys()), list(rankings.values())
    else:
        lists = list(rankings)
        labels = list(range(len(lists)))
    tops = []
    for label, r in zip(labels, lists):
        if isinstance(r, (set, frozenset, Mapping, str)):
            kind = type(r).__name__
            raise ValueError(
                f"{where}: ranking of user {label!r} is a {kind}; it must be an ordered sequence"
            )
        tops.append(r[:kmax])
    lens = np.fromiter((len(t) for t in tops), dtype=np.int64, count=len(tops))
    flat = np.empty(int(lens.sum()), dtype=object)
    flat[:] = [x for t in tops for x in t]  # object array: ids stay Python/numpy str scalars
    codes, uniques = pd.factorize(flat, sort=False)
    user_idx = np.repeat(np.arange(len(tops), dtype=np.int64), lens)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
    pos = np.arange(len(flat), dtype=np.int64) - np.repeat(starts, lens)
    out = _Flat(
        labels, user_idx, pos, codes.astype(np.int64), np.asarray(uniques, dtype=object), kmax
    )
    keys = np.sort(out.user_idx * max(len(uniques), 1) + out.codes)
    dup = keys[1:][keys[1:] == keys[:-1]]
    if dup.size:
        u, c = divmod(int(dup[0]), max(len(uniques), 1))
        raise ValueError(
            f"{where}: ranking of user {labels[u]!r} repeats item {uniques[c]!r} within its top "
            f"{kmax}; rankings must be duplicate-free"
        )
    return out


def _mean_per_list(values: np.ndarray, flat: _Flat, mask: np.ndarray) -> np.ndarray:
    """Mean of per-entry ``values`` over each ranking's masked entries; nan for none."""
    counts = np.bincount(flat.user_idx[mask], minlength=flat.n_lists).astype(np.float64)
    sums = np.bincount(flat.user_idx[mask], weights=values[mask], minlength=flat.n_lists)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)


def _pop_of(item_pop: ItemPop, uniques: np.ndarray, where: str) -> np.ndarray:
    """Popularity for each distinct item (unknown items -> 0)."""
    if isinstance(item_pop, pd.Series):
        pop = item_pop.reindex(pd.Index(uniques, dtype=object)).fillna(0).to_numpy(dtype=np.float64)
    elif isinstance(item_pop, Mapping):
        pop = np.fromiter(
            (item_pop.get(u, 0) for u in uniques), dtype=np.float64, count=len(uniques)
        )
    else:
        kind = type(item_pop).__name__
        raise ValueError(
            f"{where}: item_pop must be a mapping or pandas Series book_id -> count, got {kind}"
        )
    if pop.size and (np.isnan(pop).any() or pop.min() < 0):
        raise ValueError(
            f"{where}: item_pop holds negative or nan counts; pass non-negative counts per book_id"
        )
    return pop


def _unit_vectors(
    item_vectors: ItemVectors, uniques: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised vectors for each distinct item and a mask of items that have a usable one."""
    if isinstance(item_vectors, tuple):
        if len(item_vectors) != 2 or not isinstance(item_vectors[1], Mapping):
            raise ValueError(f"{where}: item_vectors tuple must be (matrix, {{book_id: row}})")
        mat = np.asarray(item_vectors[0], dtype=np.float64)
        rows = np.fromiter(
            (item_vectors[1].get(u, -1) for u in uniques), dtype=np.int64, count=len(uniques)
        )
        has = rows >= 0
        vecs = np.zeros((len(uniques), mat.shape[1]), dtype=np.float64)
        vecs[has] = mat[rows[has]]
    elif isinstance(item_vectors, Mapping):
        found = [item_vectors.get(u) for u in uniques]
        dims = {np.shape(v) for v in found if v is not None}
        if len(dims) > 1:
            raise ValueError(
                f"{where}: item vectors have differing shapes {sorted(dims)}; use one dimension"
            )
        dim = dims.pop()[0] if dims else 1
        has = np.array([v is not None for v in found], dtype=bool)
        vecs = np.zeros((len(uniques), dim), dtype=np.float64)
        if has.any():
            vecs[has] = np.stack([np.asarray(v, dtype=np.float64) for v in found if v is not None])
    else:
        raise ValueError(
            f"{where}: item_vectors must be {{book_id: vector}} or (matrix, {{book_id: row}})"
        )
    norms = np.linalg.norm(vecs, axis=1)
    has &= norms > 0  # a zero vector has no direction, so no cosine
    vecs[has] /= norms[has, None]
    return vecs, has


def _coverage(flat: _Flat, k: int, n_items: int, where: str) -> float:
    if int(n_items) != n_items or n_items < 1:
        raise ValueError(f"{where}: n_items must be a positive int, got {n_items!r}")
    n_seen = np.unique(flat.codes[flat.at(k)]).size
    if n_seen > n_items:
        raise ValueError(
            f"{where}: {n_seen} distinct items recommended but n_items={n_items}; pass the catalog "
            "size"
        )
    return n_seen / n_items


def _diversity(flat: _Flat, k: int, vecs: np.ndarray, has: np.ndarray) -> np.ndarray:
    # For unit vectors, sum_{i<j} cos_ij = (|sum_i v_i|^2 - m) / 2, so no pairwise matrix is built.
    mask = flat.at(k) & has[flat.codes]
    m = sparse.csr_matrix(
        (np.ones(int(mask.sum())), (flat.user_idx[mask], flat.codes[mask])),
        shape=(flat.n_lists, len(flat.uniques)),
    )
    counts = np.asarray(m.sum(axis=1)).ravel()
    sumsq = np.empty(flat.n_lists)
    for start in range(0, flat.n_lists, 8192):  # bounds the dense (users x dim) block
        block = m[start : start + 8192] @ vecs
        sumsq[start : start + 8192] = np.einsum("ij,ij->i", block, block)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_cos = (sumsq - counts) / (counts * (counts - 1))
    return np.where(counts >= 2, np.clip(1.0 - mean_cos, 0.0, 2.0), np.nan)


def _information(pop: np.ndarray, n_users: int, where: str) -> np.ndarray:
    if int(n_users) != n_users or n_users < 1:
        raise ValueError(f"{where}: n_users must be a positive int, got {n_users!r}")
    if pop.size and pop.max() > n_users:
        raise ValueError(
            f"{where}: an item's popularity {pop.max():g} exceeds n_users={n_users}; pop must "
            "count distinct users"
        )
    return -np.log2(np.maximum(pop, 1.0) / n_users)


# --------------------------------------------------------------------------- beyond accuracy


def catalog_coverage(rankings: Rankings, n_items: int, k: int) -> float:
    """Fraction of the ``n_items`` catalog that appears in at least one top-``k`` list."""
    return _coverage(_flatten(rankings, k, "catalog_coverage"), k, n_items, "catalog_coverage")


def intra_list_diversity(rankings: Rankings, item_vectors: ItemVectors, k: int) -> np.ndarray:
    """Per ranking (in iteration order): mean pairwise cosine distance among its top ``k``.

    ``item_vectors`` is ``{book_id: vector}`` or ``(matrix, {book_id: row})``. Items without a
    vector (or with a zero vector) are left out; fewer than two usable items gives ``nan``.
    """
    flat = _flatten(rankings, k, "intra_list_diversity")
    vecs, has = _unit_vectors(item_vectors, flat.uniques, "intra_list_diversity")
    return _diversity(flat, k, vecs, has)


def novelty(rankings: Rankings, item_pop: ItemPop, n_users: int, k: int) -> np.ndarray:
    """Per ranking: mean self-information ``-log2(pop_i / n_users)`` of its top ``k``.

    ``pop_i`` is the number of (training) users who rated item i; pop 0 or unknown is smoothed
    to 1 so the value stays finite (at most ``log2(n_users)``).
    """
    flat = _flatten(rankings, k, "novelty")
    info = _information(_pop_of(item_pop, flat.uniques, "novelty"), n_users, "novelty")
    return _mean_per_list(info[flat.codes], flat, flat.at(k))


def arp(rankings: Rankings, item_pop: ItemPop, k: int) -> np.ndarray:
    """Per ranking: average recommendation popularity, mean ``pop_i`` over its top ``k``."""
    flat = _flatten(rankings, k, "arp")
    pop = _pop_of(item_pop, flat.uniques, "arp")
    return _mean_per_list(pop[flat.codes], flat, flat.at(k))


# --------------------------------------------------------------------------- whole run


@dataclass
class RunResult:
    """Metric values of one run.

    ``per_user[key]`` is an array aligned with ``users`` (the evaluated users, in the order of
    ``relevant``); ``run_level`` holds scalars (``coverage@K``). Keys are lower case, e.g.
    ``"ndcg@10"``. ``n_skipped`` counts users skipped for an empty relevant set;
    ``n_missing`` counts evaluated users that had no ranking (scored as an empty list).
    """

    users: list[str]
    per_user: dict[str, np.ndarray]
    run_level: dict[str, float]
    n_skipped: int
    n_missing: int = 0
    ks: tuple[int, ...] = ()
    key_order: list[str] = field(default_factory=list)

    def keys(self) -> list[str]:
        """All metric keys, grouped by K in the documented metric order."""
        return list(self.key_order) or [*self.per_user, *self.run_level]

    def __getitem__(self, key: str) -> np.ndarray | float:
        if key in self.per_user:
            return self.per_user[key]
        if key in self.run_level:
            return self.run_level[key]
        raise KeyError(f"RunResult has no metric {key!r}; available: {self.keys()}")

    def __contains__(self, key: object) -> bool:
        return key in self.per_user or key in self.run_level

    def mean(self, key: str) -> float:
        """Mean over users, ignoring nan (a run-level value is returned as is)."""
        v = self[key]
        if isinstance(v, float):
            return v
        return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(dict.fromkeys(ks))
    if not out:
        raise ValueError("evaluate_rankings: ks is empty; pass cutoffs such as ks=(10, 20)")
    for k in out:
        _check_k(k, "evaluate_rankings")
    return tuple(int(k) for k in out)


def evaluate_rankings(
    rankings: Mapping[str, Ranking],
    relevant: Mapping[str, Collection[str]],
    ks: Iterable[int] = (10, 20),
    item_pop: ItemPop | None = None,
    n_users: int | None = None,
    n_items: int | None = None,
    item_vectors: ItemVectors | None = None,
) -> RunResult:
    """Score a run: every metric at every K for the users of ``relevant``.

    Users with an empty relevant set are skipped (``n_skipped``); evaluated users with no entry
    in ``rankings`` score as an empty ranking (``n_missing``); rankings of users absent from
    ``relevant`` are ignored. Beyond-accuracy metrics use the same evaluated users so all
    per-user arrays align. Optional metrics: ``coverage@K`` needs ``n_items``; ``novelty@K``
    needs ``item_pop`` and ``n_users``; ``arp@K`` needs ``item_pop``; ``diversity@K`` needs
    ``item_vectors``.
    """
    where = "evaluate_rankings"
    ks = _check_ks(ks)
    if not isinstance(rankings, Mapping) or not isinstance(relevant, Mapping):
        raise ValueError(f"{where}: rankings and relevant must be mappings keyed by user_id")
    if item_pop is not None and n_users is None:
        raise ValueError(
            f"{where}: novelty needs n_users (number of training users) alongside item_pop"
        )
    kmax = max(ks)
    users, n_rel, n_skipped = [], [], 0
    for u, rel in relevant.items():
        n = _n_rel(rel)
        if n == 0:
            n_skipped += 1
        else:
            users.append(u)
            n_rel.append(n)
    n_missing = sum(1 for u in users if u not in rankings)
    flat = _flatten({u: rankings.get(u, ()) for u in users}, kmax, where)
    n_rel_arr = np.asarray(n_rel, dtype=np.int64)

    rel_lists = [relevant[u] for u in users]
    rel_flat = np.empty(int(sum(len(r) for r in rel_lists)), dtype=object)
    rel_flat[:] = [x for r in rel_lists for x in r]
    _check_id_types(flat.uniques, rel_flat, where)
    rel_codes = pd.Index(flat.uniques, dtype=object).get_indexer(rel_flat)  # -1: never ranked
    rel_users = np.repeat(np.arange(len(users), dtype=np.int64), [len(r) for r in rel_lists])
    width = max(len(flat.uniques), 1)
    rel_keys = rel_users[rel_codes >= 0] * width + rel_codes[rel_codes >= 0]
    hit_flat = np.isin(flat.user_idx * width + flat.codes, rel_keys)
    hits = np.zeros((len(users), kmax), dtype=bool)
    hits[flat.user_idx, flat.pos] = hit_flat

    per_user: dict[str, np.ndarray] = {}
    run_level: dict[str, float] = {}
    order: list[str] = []
    pop = _pop_of(item_pop, flat.uniques, where) if item_pop is not None else None
    info = _information(pop, n_users, where) if pop is not None else None
    unit = _unit_vectors(item_vectors, flat.uniques, where) if item_vectors is not None else None
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(axis=1).astype(np.float64)
        cut = np.minimum(n_rel_arr, k)
        any_hit = h.any(axis=1)
        prec_at_r = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        per_user[f"recall@{k}"] = n_hit / n_rel_arr
        per_user[f"precision@{k}"] = n_hit / k
        per_user[f"ndcg@{k}"] = ndcg_from_hits(h, n_rel_arr, k)
        per_user[f"hitrate@{k}"] = any_hit.astype(np.float64)
        per_user[f"mrr@{k}"] = np.where(any_hit, 1.0 / (np.argmax(h, axis=1) + 1), 0.0)
        per_user[f"map@{k}"] = (prec_at_r * h).sum(axis=1) / cut
        order += [f"{m}@{k}" for m in ACCURACY_METRICS]
        if n_items is not None:
            run_level[f"coverage@{k}"] = _coverage(flat, k, n_items, where)
            order.append(f"coverage@{k}")
        if unit is not None:
            per_user[f"diversity@{k}"] = _diversity(flat, k, *unit)
            order.append(f"diversity@{k}")
        if info is not None:
            per_user[f"novelty@{k}"] = _mean_per_list(info[flat.codes], flat, flat.at(k))
            order.append(f"novelty@{k}")
        if pop is not None:
            per_user[f"arp@{k}"] = _mean_per_list(pop[flat.codes], flat, flat.at(k))
            order.append(f"arp@{k}")
    return RunResult(users, per_user, run_level, n_skipped, n_missing, ks, order)


def _check_id_types(ranked: np.ndarray, rel: np.ndarray, where: str) -> None:
    """Catch int-vs-str id mixups, which would otherwise silently score zero."""
    if len(ranked) and len(rel) and isinstance(ranked[0], str) != isinstance(rel[0], str):
        raise ValueError(
            f"{where}: rankings hold {type(ranked[0]).__name__} ids but relevant holds "
            f"{type(rel[0]).__name__} ids; convert both to str book ids"
        )
