"""Collaborative-filtering and popularity item scorers behind one tiny API.

Every model maps a user x item preference matrix to item scores::

    model = make_model("ease", l2=200.0).fit(train)   # train: users x items csr, values > 0
    scores = model.score(history_rows)                 # (n_rows, n_items) float32, any users
    ids, vals = model.recommend(history_rows, n=20)    # top-n per row, history masked

``score`` takes the *history rows* rather than user ids, so one fitted model serves training
users, held-out evaluation users and brand-new readers alike (fold-in). Models persist as a
plain ``.npz`` (no pickle) via ``save``/``ItemScorer.load``.

Threads: implicit's ALS/BPR loops are parallel themselves and slow down badly when OpenBLAS
also spawns threads, so their fit runs under ``threadpool_limits(1, "blas")`` (this is also
what implicit's warning asks for). EASE and ItemKNN keep BLAS threads: their heavy step *is*
BLAS.
"""

from __future__ import annotations

import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

__all__ = [
    "ALS",
    "BPR",
    "EASE",
    "MODELS",
    "ItemKNN",
    "ItemScorer",
    "NotFittedError",
    "Popularity",
    "build_user_items",
    "confidence_from_ratings",
    "make_model",
    "mask_seen",
]

ConfidenceMode = Literal["binary", "rating", "liked"]

_FORMAT_VERSION = 1
# Dense scratch per block (entries) for ItemKNN similarity and ALS fold-in: bounds peak memory
# independently of catalog size (2**23 float64 = 64 MiB).
_BLOCK_ENTRIES = 2**23


class NotFittedError(RuntimeError):
    """Raised when a model is used before ``fit`` or ``load``."""


# ---------------------------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------------------------


def build_user_items(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    weights: np.ndarray | None,
    n_users: int,
    n_items: int,
) -> sp.csr_matrix:
    """Build the users x items float32 csr matrix; repeated (user, item) pairs are summed.

    ``weights`` (e.g. from :func:`confidence_from_ratings`) must be finite and > 0; ``None``
    means 1 for every pair.

    Args:
        user_idx: one user row index per interaction.
        item_idx: one item column index per interaction.
        weights: one weight per interaction, or ``None`` for 1.
        n_users: the number of rows.
        n_items: the number of columns.

    Returns:
        The ``(n_users, n_items)`` float32 csr matrix.

    Raises:
        ValueError: the arrays differ in shape, an index is out of range or not an integer, or a
            weight is not finite and > 0.
    """
    users = np.asarray(user_idx)
    items = np.asarray(item_idx)
    if users.ndim != 1 or items.shape != users.shape:
        raise ValueError(
            f"build_user_items: user_idx {users.shape} and item_idx {items.shape} must be 1-D "
            "arrays of equal length"
        )
    w = np.ones(len(users), np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != users.shape:
        raise ValueError(f"build_user_items: weights {w.shape} must match user_idx {users.shape}")
    for name, idx, size in (("user_idx", users, n_users), ("item_idx", items, n_items)):
        if len(idx) and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"build_user_items: {name} must hold integers, got {idx.dtype}")
        bad = np.flatnonzero((idx < 0) | (idx >= size))
        if len(bad):
            raise ValueError(
                f"build_user_items: {name}[{bad[0]}] = {idx[bad[0]]} is outside [0, {size}); "
                "map ids to contiguous indices first"
            )
    bad = np.flatnonzero(~np.isfinite(w) | (w <= 0))
    if len(bad):
        raise ValueError(
            f"build_user_items: weights[{bad[0]}] = {w[bad[0]]} must be finite and > 0 "
            "(drop non-interactions instead of weighting them 0)"
        )
    # coo -> csr sums duplicates, which is what repeated reads of a book should do.
    mat = sp.coo_matrix((w, (users, items)), shape=(n_users, n_items)).tocsr()
    mat.sort_indices()
    return mat


def confidence_from_ratings(
    ratings: np.ndarray, mode: ConfidenceMode = "binary", *, max_rating: float = 5.0
) -> np.ndarray:
    """Map explicit ratings (1..``max_rating``) to positive preference weights (float32).

    * ``"binary"``: 1 for every rating. Reading a book is the signal, whatever the stars.
    * ``"rating"``: the rating itself (5 counts five times a 1).
    * ``"liked"``: ``1 + clip(r - neutral, 0)`` with ``neutral = 0.6 * max_rating`` (3 of 5):
      1, 2, 3 stars -> 1, 4 -> 2, 5 -> 3. Low ratings stay weak positives (the reader did pick
      the book) and never outweigh a liked one; this is the confidence ALS expects.

    A rating of 0 (Book-Crossing's "implicit" interaction) is accepted and gets the base
    weight 1 in ``binary``/``liked`` mode; ``rating`` mode refuses it (weight 0 = no signal).

    Args:
        ratings: the explicit ratings.
        mode: ``"binary"``, ``"rating"`` or ``"liked"`` (above).
        max_rating: the top of the rating scale.

    Returns:
        float32 weights, the shape of ``ratings``.

    Raises:
        ValueError: a rating is outside ``[0, max_rating]``, a 0 in ``"rating"`` mode, or an
            unknown mode.
    """
    r = np.asarray(ratings, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(r) | (r < 0) | (r > max_rating))
    if len(bad):
        raise ValueError(
            f"confidence_from_ratings: ratings[{bad[0]}] = {r[bad[0]]} is outside "
            f"[0, {max_rating}]; clean the data or pass the scale as max_rating"
        )
    if mode == "binary":
        return np.ones(r.shape, np.float32)
    if mode == "rating":
        if np.any(r == 0):
            i = int(np.flatnonzero(r == 0)[0])
            raise ValueError(
                f"confidence_from_ratings: ratings[{i}] = 0 gives weight 0 in 'rating' mode; "
                "use mode='liked' or 'binary' for data with implicit (0) ratings"
            )
        return r.astype(np.float32)
    if mode == "liked":
        return (1.0 + np.clip(r - 0.6 * max_rating, 0.0, None)).astype(np.float32)
    raise ValueError(f"confidence_from_ratings: unknown mode {mode!r}; use binary, rating or liked")


def mask_seen(scores: np.ndarray, user_items: sp.spmatrix, value: float = -np.inf) -> np.ndarray:
    """Set ``scores[r, i] = value`` (in place) wherever row ``r`` of ``user_items`` has item ``i``.

    Use it to stop recommending what a reader already has; returns ``scores`` for chaining.
    """
    x = sp.csr_matrix(user_items)
    if x.shape != scores.shape:
        raise ValueError(f"mask_seen: user_items {x.shape} and scores {scores.shape} differ")
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    scores[rows, x.indices] = value
    return scores


def _check_matrix(user_items: Any, where: str, n_items: int | None = None) -> sp.csr_matrix:
    """Return a clean float32 csr copy (no explicit zeros) or raise a one-line ValueError."""
    if not sp.issparse(user_items):
        raise ValueError(
            f"{where}: user_items must be a scipy.sparse users x items matrix, got "
            f"{type(user_items).__name__}; build it with build_user_items()"
        )
    x = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    if n_items is not None and x.shape[1] != n_items:
        raise ValueError(
            f"{where}: user_items has {x.shape[1]} item columns but the model was fitted on "
            f"{n_items}; use the same item index as at fit time"
        )
    if x.nnz and (not np.all(np.isfinite(x.data)) or x.data.min() < 0):
        raise ValueError(f"{where}: user_items values must be finite and > 0 (preference weights)")
    return x


def _binarize(x: sp.csr_matrix) -> sp.csr_matrix:
    out = x.copy()
    out.data[:] = 1.0
    return out


def _top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-n of a 2-D array, best first (argpartition: O(n_items) per row)."""
    n = min(n, scores.shape[1])
    if n <= 0:
        empty = np.empty((scores.shape[0], 0))
        return empty.astype(np.int64), empty.astype(scores.dtype)
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _top_similar(sims: np.ndarray, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n of one similarity vector, excluding ``item_idx`` itself."""
    sims = sims.astype(np.float32, copy=True)
    sims[item_idx] = -np.inf
    ids, vals = _top_n(sims[None, :], min(n, len(sims) - 1))
    return ids[0], vals[0]


@contextmanager
def _single_thread_blas() -> Iterator[None]:
    """implicit parallelises over users itself; nested OpenBLAS threads make it ~10x slower."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------


class ItemScorer(ABC):
    """A fitted model scores every item for a batch of users given their history rows.

    Subclasses set ``name``, take hyper-parameters as keyword constructor arguments (recorded
    in ``params``) and implement ``_fit``, ``_score``, ``_similar``, ``_state``/``_set_state``.

    Args:
        **params: the model's hyper-parameters (each subclass names its own), recorded in
            ``params`` and saved with the model.
    """

    name: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)
        self.n_items: int | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # -- public API ----------------------------------------------------------------------------

    def fit(self, user_items: sp.spmatrix, show_progress: bool = False) -> Self:
        """Fit on ``user_items``.

        Args:
            user_items: users x items, values = preference weight > 0 (e.g. from
                :func:`confidence_from_ratings`).
            show_progress: show a progress bar where the model has iterations (ALS, BPR).

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: the matrix is malformed or holds no interactions.
        """
        x = _check_matrix(user_items, f"{self.name}.fit")
        if x.shape[0] == 0 or x.shape[1] == 0 or x.nnz == 0:
            raise ValueError(f"{self.name}.fit: user_items {x.shape} holds no interactions")
        self._fit(x, show_progress)
        self.n_items = x.shape[1]
        return self

    def score(self, user_items: sp.spmatrix) -> np.ndarray:
        """Scores (n_rows x n_items, float32) for a batch of users given their history rows.

        Rows need not be training users: models fold the history in. History items are *not*
        masked here (see :func:`mask_seen` / :meth:`recommend`). Memory is n_rows * n_items * 4
        bytes, so score large populations in batches.

        Args:
            user_items: history rows (n_rows x n_items), weighted as for :meth:`fit`.

        Returns:
            A float32 ``(n_rows, n_items)`` score matrix.

        Raises:
            NotFittedError: neither :meth:`fit` nor :meth:`load` ran.
            ValueError: the matrix is malformed or has the wrong number of items.
        """
        x = _check_matrix(user_items, f"{self.name}.score", self._require_fitted())
        return np.ascontiguousarray(self._score(x), dtype=np.float32)

    def recommend(
        self,
        user_items: sp.spmatrix,
        n: int = 10,
        exclude_seen: bool = True,
        batch_size: int = 2048,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item indices and scores per row, best first, in batches of ``batch_size``.

        With ``exclude_seen`` the history items get score ``-inf`` and therefore come last
        (only reachable when ``n`` exceeds the unseen items).

        Args:
            user_items: history rows (n_rows x n_items).
            n: how many items per row.
            exclude_seen: push each row's history items to the end (score ``-inf``).
            batch_size: rows scored at once (memory: ``batch_size * n_items * 4`` bytes).

        Returns:
            ``(ids, scores)``, each ``(n_rows, n)``.
        """
        x = sp.csr_matrix(user_items)
        ids, vals = [], []
        for start in range(0, x.shape[0], batch_size):
            rows = x[start : start + batch_size]
            s = self.score(rows)
            if exclude_seen:
                mask_seen(s, rows)
            i, v = _top_n(s, n)
            ids.append(i)
            vals.append(v)
        if not ids:
            return np.empty((0, n), np.int64), np.empty((0, n), np.float32)
        return np.concatenate(ids), np.concatenate(vals)

    def similar_items(self, item_idx: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the ``n`` items most similar to ``item_idx``, best first, itself
        excluded.

        ItemKNN returns at most its ``k`` stored neighbours.

        Args:
            item_idx: the item's column index.
            n: how many similar items.

        Returns:
            ``(ids, scores)``, best first.

        Raises:
            NotFittedError: the model is not fitted.
            ValueError: ``item_idx`` is out of range.
        """
        n_items = self._require_fitted()
        if not 0 <= int(item_idx) < n_items:
            raise ValueError(
                f"{self.name}.similar_items: item_idx {item_idx} not in [0, {n_items})"
            )
        return self._similar(int(item_idx), max(0, int(n)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted model to ``path`` as ``.npz`` (no pickle), atomically.

        Args:
            path: the file to write (parents are created).

        Raises:
            NotFittedError: the model is not fitted.
        """
        n_items = self._require_fitted()
        path = Path(path)
        arrays = {f"state_{k}": np.asarray(v) for k, v in self._state().items()}
        arrays["model"] = np.array(self.name)
        arrays["params"] = np.array(json.dumps(self.params))
        arrays["n_items"] = np.array(n_items)
        arrays["format_version"] = np.array(_FORMAT_VERSION)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "xb") as f:  # a file object stops numpy appending ".npz"
                np.savez(f, **arrays)
            os.replace(tmp, path)  # readers see the old file or the new one, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Load a model written by :meth:`save`.

        ``ItemScorer.load`` picks the class from the file; ``EASE.load`` etc. also check that the
        file holds that model.

        Args:
            path: a file written by :meth:`save`.

        Returns:
            The fitted model.

        Raises:
            ValueError: the file is unreadable, not a saved model, of another format version, or
                holds another model than ``cls``.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                files = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable model .npz ({exc}); re-save it") from exc
        missing = {"model", "params", "n_items", "format_version"} - files.keys()
        if missing:
            raise ValueError(f"{path}: not a saved ItemScorer (missing {sorted(missing)})")
        if int(files["format_version"]) != _FORMAT_VERSION:
            raise ValueError(f"{path}: format {int(files['format_version'])} unsupported; re-fit")
        name = str(files["model"])
        klass = MODELS.get(name)
        if klass is None or not issubclass(klass, cls):
            raise ValueError(f"{path}: holds model {name!r}, cannot load it as {cls.__name__}")
        model = klass(**json.loads(str(files["params"])))
        prefix = "state_"
        model._set_state({k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)})
        model.n_items = int(files["n_items"])
        return cast(Self, model)

    # -- subclass hooks ------------------------------------------------------------------------

    @abstractmethod
    def _fit(self, x: sp.csr_matrix, show_progress: bool) -> None: ...

    @abstractmethod
    def _score(self, x: sp.csr_matrix) -> np.ndarray: ...

    @abstractmethod
    def _similar(self, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _set_state(self, state: dict[str, np.ndarray]) -> None: ...

    def _require_fitted(self) -> int:
        if self.n_items is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit() or ItemScorer.load()")
        return self.n_items


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class Popularity(ItemScorer):
    """Same score for every user: ``count_i ** damping``.

    ``count_i`` is the number of users with item ``i`` (or the sum of their weights when
    ``weighted``). ``damping`` < 1 flattens the head (0.5 = square root); the ranking is the
    same for any ``damping`` > 0, it only matters when scores are blended with other models.
    """

    name = "popularity"

    def __init__(self, damping: float = 1.0, weighted: bool = False) -> None:
        if not damping > 0:
            raise ValueError(f"Popularity: damping must be > 0, got {damping}")
        super().__init__(damping=float(damping), weighted=bool(weighted))
        self.item_scores: np.ndarray | None = None

    def _fit(self, x: sp.csr_matrix, show_progress: bool) -> None:
        counts = np.asarray((x if self.params["weighted"] else _binarize(x)).sum(axis=0)).ravel()
        self.item_scores = (counts ** self.params["damping"]).astype(np.float32)

    def _score(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.item_scores is not None
        return np.broadcast_to(self.item_scores, (x.shape[0], len(self.item_scores)))

    def _similar(self, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        # No notion of similarity: "people also read" degenerates to the most popular others.
        assert self.item_scores is not None
        return _top_similar(self.item_scores, item_idx, n)

    def _state(self) -> dict[str, np.ndarray]:
        assert self.item_scores is not None
        return {"item_scores": self.item_scores}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.item_scores = state["item_scores"].astype(np.float32)


class ItemKNN(ItemScorer):
    """Item-item cosine neighbours: ``score = history @ S``.

    ``S[i, j] = x_i . x_j / (|x_i| |x_j| + shrink)`` over the item columns (binarised when
    ``binarize``), ``S[i, i] = 0``, keeping each row's ``k`` largest positive entries. ``shrink``
    damps similarities supported by few co-readers. ``S`` is built block by block, so memory is
    O(nnz(S) + block) even for 100k users x 50k items.
    """

    name = "itemknn"

    def __init__(self, k: int = 100, shrink: float = 10.0, binarize: bool = True) -> None:
        if k < 1 or shrink < 0:
            raise ValueError(f"ItemKNN: need k >= 1 and shrink >= 0, got k={k}, shrink={shrink}")
        super().__init__(k=int(k), shrink=float(shrink), binarize=bool(binarize))
        self.similarity: sp.csr_matrix | None = None

    def _fit(self, x: sp.csr_matrix, show_progress: bool) -> None:
        if self.params["binarize"]:
            x = _binarize(x)
        n_items = x.shape[1]
        k = min(self.params["k"], n_items - 1)
        shrink = self.params["shrink"]
        xt = x.T.tocsr()  # items x users
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        block = max(1, _BLOCK_ENTRIES // n_items)
        indptr = [np.zeros(1, np.int64)]
        indices: list[np.ndarray] = []
        data: list[np.ndarray] = []
        starts = range(0, n_items, block)
        for start in tqdm(starts, disable=not show_progress, desc="itemknn"):
            stop = min(start + block, n_items)
            sims = (xt[start:stop] @ x).toarray()  # co-occurrence rows, dense per block only
            sims /= norms[start:stop, None] * norms[None, :] + shrink + 1e-12
            sims[np.arange(stop - start), np.arange(start, stop)] = 0.0
            if k > 0:
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            else:
                top = np.empty((stop - start, 0), np.int64)
            vals = np.take_along_axis(sims, top, axis=1)
            keep = vals > 0  # zero/negative entries are "no neighbour", keep S sparse
            indptr.append(indptr[-1][-1] + np.cumsum(keep.sum(axis=1)))
            indices.append(top[keep])
            data.append(vals[keep].astype(np.float32))
        self.similarity = sp.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)),
            shape=(n_items, n_items),
        )
        self.similarity.sort_indices()

    def _score(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.similarity is not None
        if self.params["binarize"]:
            x = _binarize(x)
        return (x @ self.similarity).toarray()

    def _similar(self, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.similarity is not None
        row = self.similarity[item_idx]
        order = np.argsort(-row.data, kind="stable")[:n]
        return row.indices[order].astype(np.int64), row.data[order].astype(np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        s = self.similarity
        assert s is not None
        shape = np.array(s.shape)
        return {"data": s.data, "indices": s.indices, "indptr": s.indptr, "shape": shape}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.similarity = sp.csr_matrix(
            (state["data"], state["indices"], state["indptr"]), shape=tuple(state["shape"])
        )


class EASE(ItemScorer):
    """Steck (2019) EASE: ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``, ``diag(B) = 0``.

    ``score = X_u @ B``. Closed form and usually the strongest model on small catalogs, but
    ``B`` is dense: fitting needs about ``3 * 8 * n_items**2`` bytes (~10 GB at 20k items), so
    it refuses catalogs above ``max_items``. ``l2`` acts against ``X^T X``, whose entries grow
    with the number of users (and with squared weights if not ``binarize``). The default, 30, is
    what ``readnext eval`` tuned on goodbooks (50k readers, grid 10-1000; the shipped default
    ``[cf] params = {}`` uses it); tune it per dataset.
    """

    name = "ease"

    def __init__(self, l2: float = 30.0, binarize: bool = True, max_items: int = 20000) -> None:
        if not l2 > 0:
            raise ValueError(f"EASE: l2 must be > 0, got {l2}")
        super().__init__(l2=float(l2), binarize=bool(binarize), max_items=int(max_items))
        self.weights: np.ndarray | None = None

    def _fit(self, x: sp.csr_matrix, show_progress: bool) -> None:
        n_items = x.shape[1]
        if n_items > self.params["max_items"]:
            raise ValueError(
                f"EASE: {n_items} items > max_items={self.params['max_items']}; its dense "
                f"n_items^2 fit needs ~{24 * n_items**2 / 2**30:.0f} GiB. Use ItemKNN or ALS, or "
                "raise max_items if the machine has the memory"
            )
        if self.params["binarize"]:
            x = _binarize(x)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices(n_items)] += self.params["l2"]
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        p /= -np.diag(p)[None, :]  # B_ij = -P_ij / P_jj
        p[np.diag_indices(n_items)] = 0.0
        # C order: scoring reads W by rows (x_u @ W); the F-ordered inverse made scipy copy all
        # of W on every call (5x slower on goodbooks), same values either way
        self.weights = np.ascontiguousarray(p, dtype=np.float32)

    def _score(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.weights is not None
        if self.params["binarize"]:
            x = _binarize(x)
        return np.asarray(x @ self.weights)

    def _similar(self, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        # Row i of B: how much reading i raises each other item's score.
        assert self.weights is not None
        return _top_similar(self.weights[item_idx], item_idx, n)

    def _state(self) -> dict[str, np.ndarray]:
        assert self.weights is not None
        return {"weights": self.weights}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.weights = np.ascontiguousarray(state["weights"], dtype=np.float32)


class _FactorModel(ItemScorer):
    """Shared parts of the implicit-backed matrix-factorisation models."""

    item_factors: np.ndarray | None = None

    def _latent(self) -> np.ndarray:
        """Item vectors used for similarity (no bias columns)."""
        assert self.item_factors is not None
        return self.item_factors

    def _similar(self, item_idx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = self._latent().astype(np.float64)
        norms = np.linalg.norm(y, axis=1)
        norms[norms == 0] = 1.0
        sims = (y @ y[item_idx]) / (norms * norms[item_idx])
        return _top_similar(sims, item_idx, n)

    def _state(self) -> dict[str, np.ndarray]:
        assert self.item_factors is not None
        return {"item_factors": self.item_factors}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.item_factors = state["item_factors"].astype(np.float32)


class ALS(_FactorModel):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) fitted by ``implicit``.

    Confidence is ``c_ui = alpha * weight_ui`` (implicit 0.7 semantics: no ``1 +``), so with
    binary weights ``alpha`` is how much more an interaction counts than a missing entry.
    implicit does not scale ``regularization`` with history length, so it is large here:
    on the goodbooks sample, ``regularization`` ~ 5-10x ``alpha`` was the good ridge.
    Scoring folds each history row in with the exact user solve
    ``x_u = (Y^T Y + Y^T (C_u - I) Y + reg I)^-1 Y^T C_u p_u`` against the fitted item factors,
    vectorised over the batch. Fitting is deterministic for a given ``seed`` (each half-step
    solves users independently, so ``num_threads`` does not change the result).
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 50.0,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
        num_threads: int = 0,
    ) -> None:
        super().__init__(
            factors=int(factors),
            regularization=float(regularization),
            alpha=float(alpha),
            iterations=int(iterations),
            seed=int(seed),
            num_threads=int(num_threads),
        )
        self._gram: np.ndarray | None = None

    def _fit(self, x: sp.csr_matrix, show_progress: bool) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        with _single_thread_blas():  # also where implicit checks the BLAS config and warns
            model = AlternatingLeastSquares(
                factors=p["factors"],
                regularization=p["regularization"],
                alpha=p["alpha"],
                iterations=p["iterations"],
                random_state=p["seed"],
                num_threads=p["num_threads"],
            )
            model.fit(x, show_progress=show_progress)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        self._gram = None

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        super()._set_state(state)
        self._gram = None

    def user_factors(self, user_items: sp.spmatrix) -> np.ndarray:
        """Fold-in: the ALS least-squares user vectors (n_rows x factors) for history rows."""
        x = _check_matrix(user_items, "als.user_factors", self._require_fitted())
        return self._fold_in(x)

    def _fold_in(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.item_factors is not None
        y = self.item_factors  # float32: the per-user sums; the solve itself is float64
        f = y.shape[1]
        if self._gram is None:
            y64 = y.astype(np.float64)
            self._gram = y64.T @ y64 + self.params["regularization"] * np.eye(f)
        conf = x * self.params["alpha"]
        lengths = np.diff(conf.indptr)
        out = np.zeros((x.shape[0], f), np.float32)  # empty history: b = 0 -> x_u = 0
        # Rows sorted by history length, solved in chunks as zero-padded (rows, L, f) stacks:
        # little padding waste, and each chunk's scratch stays under _BLOCK_ENTRIES.
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] > 0]
        budget = _BLOCK_ENTRIES
        start, max_rows = 0, max(1, budget // (f * f))
        while start < len(order):
            stop = min(len(order), start + max_rows)
            # sorted, so the chunk's last row is its longest: halve until the padding fits
            while stop - start > 1 and lengths[order[stop - 1]] * (stop - start) * f > budget:
                stop = start + (stop - start) // 2
            rows = order[start:stop]
            c = conf[rows]
            n_rows, width = len(rows), int(lengths[rows].max())
            row_of = np.repeat(np.arange(n_rows), np.diff(c.indptr))
            slot = np.arange(c.nnz) - np.repeat(c.indptr[:-1], np.diff(c.indptr))
            ys = np.zeros((n_rows, width, f), np.float32)
            ys[row_of, slot] = y[c.indices]
            cs = np.zeros((n_rows, width), np.float32)
            cs[row_of, slot] = c.data
            # A_u = Y^T Y + reg I + Y_u^T (C_u - I) Y_u ;  b_u = Y_u^T C_u 1  (pads have y = 0)
            weighted_t = np.ascontiguousarray((ys * (cs - 1.0)[:, :, None]).transpose(0, 2, 1))
            a = self._gram + np.matmul(weighted_t, ys)
            b = np.einsum("rl,rlf->rf", cs, ys).astype(np.float64)
            out[rows] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
            start = stop
        return out

    def _score(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.item_factors is not None
        return self._fold_in(x) @ self.item_factors.T


class BPR(_FactorModel):
    """Bayesian Personalized Ranking (Rendle et al. 2009) fitted by ``implicit``.

    BPR ignores weights (any entry is a positive). implicit appends an item-bias column to
    ``item_factors`` (user side fixed at 1). Fold-in approximation: a user vector is the mean
    latent vector of the history items (bias column kept at 1), i.e. "near what you read,
    tilted to what is generally liked"; no per-user optimisation, so it is cheap and
    deterministic. On the goodbooks sample it ranked held-out books about twice as well as
    implicit's own (overfitted) trained user factors. An empty history scores by item bias.
    ``num_threads=1`` by default because implicit's multi-threaded (Hogwild) SGD is not
    reproducible; any other value trades determinism for speed.
    """

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 200,
        seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        super().__init__(
            factors=int(factors),
            learning_rate=float(learning_rate),
            regularization=float(regularization),
            iterations=int(iterations),
            seed=int(seed),
            num_threads=int(num_threads),
        )

    def _fit(self, x: sp.csr_matrix, show_progress: bool) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        p = self.params
        with _single_thread_blas():
            model = BayesianPersonalizedRanking(
                factors=p["factors"],
                learning_rate=p["learning_rate"],
                regularization=p["regularization"],
                iterations=p["iterations"],
                random_state=p["seed"],
                num_threads=p["num_threads"],
            )
            model.fit(x, show_progress=show_progress)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def _latent(self) -> np.ndarray:
        assert self.item_factors is not None
        return self.item_factors[:, :-1]

    def user_factors(self, user_items: sp.spmatrix) -> np.ndarray:
        """Fold-in user vectors (n_rows x factors + 1, last column = 1 for the item bias)."""
        x = _check_matrix(user_items, "bpr.user_factors", self._require_fitted())
        return self._fold_in(x)

    def _fold_in(self, x: sp.csr_matrix) -> np.ndarray:
        latent = self._latent()
        xb = _binarize(x)
        counts = np.asarray(xb.sum(axis=1)).ravel()
        mean = np.asarray(xb @ latent) / np.maximum(counts, 1.0)[:, None]
        return np.hstack([mean, np.ones((x.shape[0], 1))]).astype(np.float32)

    def _score(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.item_factors is not None
        return self._fold_in(x) @ self.item_factors.T


MODELS: dict[str, type[ItemScorer]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "als": ALS,
    "bpr": BPR,
}


def make_model(name: str, **params: Any) -> ItemScorer:
    """Instantiate a registered model by name with hyper-parameters.

    Example: ``make_model("ease", l2=200.0)``.

    Args:
        name: a registered model name (``ease``, ``als``, ``itemknn``, ``bpr``, ``popularity``).
        **params: the model's hyper-parameters.

    Returns:
        The unfitted model.

    Raises:
        ValueError: an unknown name or bad hyper-parameters.
    """
    try:
        klass = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    try:
        return klass(**params)
    except TypeError as exc:
        raise ValueError(f"make_model({name!r}): bad hyper-parameters {params}: {exc}") from None


def available_memory_bytes() -> int | None:
    """Memory the kernel says a new allocation can get now (``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def ease_fit_bytes(n_items: int) -> int:
    """Peak memory of an EASE fit: the float64 Gram/inverse, LAPACK scratch, the float32 B."""
    return 24 * n_items * n_items


def choose_cf_model(
    n_items: int,
    max_ease_items: int = 15000,
    max_itemknn_items: int = 200_000,
    ease_memory_fraction: float = 0.5,
    available_bytes: int | None = None,
) -> tuple[str, str]:
    """The CF model ``cf.model = "auto"`` trains for ``n_items`` rated books, and why.

    The rule (docs/scaling.md):

    1. **EASE** while ``n_items <= max_ease_items`` *and* its dense fit
       (:func:`ease_fit_bytes`, ~24 bytes x n_items^2: 2.4 GB at 10k, 240 GB at 100k) fits in
       ``ease_memory_fraction`` of the memory available now: the strongest model on small
       catalogs (goodbooks, the demo), but quadratic in memory and cubic in time.
    2. **item-kNN** up to ``max_itemknn_items``: memory O(k x n_items) for the kept neighbours,
       but the fit scans each item block against every item, O(n_items^2) time.
    3. **ALS** (implicit) beyond: memory and time linear in ratings and items.

    Args:
        n_items: books with at least one rating (the CF model's columns).
        max_ease_items: ``cf.max_ease_items``.
        max_itemknn_items: ``cf.max_itemknn_items``.
        ease_memory_fraction: ``cf.ease_memory_fraction``.
        available_bytes: memory available (default: :func:`available_memory_bytes`).

    Returns:
        ``(model name, one-line reason)``.
    """
    need = ease_fit_bytes(n_items)
    if n_items <= max_ease_items:
        avail = available_memory_bytes() if available_bytes is None else available_bytes
        if avail is None or need <= ease_memory_fraction * avail:
            have = f"{avail / 2**30:.1f} GiB available" if avail is not None else "memory unknown"
            return "ease", (
                f"ease: {n_items:,} rated books <= cf.max_ease_items={max_ease_items:,} and its "
                f"dense fit (~{need / 2**30:.2f} GiB) fits ({have})"
            )
        why = (
            f"its dense fit needs ~{need / 2**30:.1f} GiB, over {ease_memory_fraction:g} x "
            f"{avail / 2**30:.1f} GiB available"
        )
    else:
        why = (
            f"{n_items:,} rated books > cf.max_ease_items={max_ease_items:,} "
            f"(dense fit ~{need / 2**30:.0f} GiB)"
        )
    if n_items <= max_itemknn_items:
        return "itemknn", f"itemknn: EASE skipped, {why}"
    return "als", (
        f"als: EASE skipped, {why}; {n_items:,} > cf.max_itemknn_items={max_itemknn_items:,} "
        "(item-kNN's fit is quadratic in items)"
    )
