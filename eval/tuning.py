"""Hyper-parameter search on a validation split carved from the training data only.

Every model is tuned the same way: each point of its grid (:data:`eval.models.GRIDS`) is fitted
on the validation split's training part and scored on a seeded subset of validation readers;
the best ndcg@10 wins (ties: the earlier grid point). The test split is never touched here.

The hybrid is tuned in documented stages (:data:`HYBRID_SPACE`), reusing the validation-fitted
single models so nothing is fitted twice:

1-2. ``cf_model`` and its user vector (``cf_half_life``, ``cf_liked_boost``, see
   :class:`retrieval.sources.CFSource`) jointly: each tuned CF model (itemknn/als/bpr/ease,
   with its tuned hyper-parameters) under each user-vector variant, by the CF source's own
   validation ndcg@10;
3. the sequence source's variant (or none), by its own validation ndcg@10 (ordered data only);
4. per fusion method (score fusion, RRF with each ``rrf_k``), coordinate ascent over the other
   sources' weights with the CF weight fixed at 1 (fusion is scale-invariant), starting from
   all-zero, a few rounds over :data:`WEIGHT_STEPS`; the best (method, weights) wins. Ranked as
   the product ranks: with the series reading order (:mod:`retrieval.ranking`);
5. the cold slice's weights (``FusionConfig.cold_weights``: readers with fewer than the cold
   threshold of history books, e.g. a new reader's few loved books), by the same ascent on
   cold validation readers only, starting from the stage-4 weights
   (:func:`tune_cold_weights`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.config import CFConfig, SequenceConfig
from retrieval.fusion import combine, source_contribution, top_k_matrix
from retrieval.library import Library
from retrieval.ranking import series_mask
from retrieval.registry import BuildDeps, build_source
from retrieval.sources import CandidateSource
from retrieval.types import UserContext

from .metrics import ndcg_from_hits
from .models import CF_MODELS, build_model, hybrid_sources

__all__ = [
    "HYBRID_SPACE",
    "QUICK_HYBRID_SPACE",
    "WEIGHT_STEPS",
    "TuningResult",
    "TuningSet",
    "ndcg_from_topk",
    "score_matrix",
    "tune_cold_weights",
    "tune_hybrid",
    "tune_single",
]

# 8 and 13: SASRec's weight sat at the old top step (5) on goodbooks, i.e. on the grid's edge
WEIGHT_STEPS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)
_SEQ = {"window": 3, "norm": 1.0, "half_life": 1.0}
HYBRID_SPACE: dict[str, Any] = {
    "cf_half_life": [None, 1.0, 2.0, 4.0, 8.0, 16.0],
    "cf_liked_boost": [0.0, 0.5],
    "sequence": [None, {**_SEQ, "last": 2}, {**_SEQ, "last": 5}],
    "fusion": [("score", None), ("rrf", 10.0), ("rrf", 30.0), ("rrf", 60.0)],
    "weight_rounds": 2,
}
QUICK_HYBRID_SPACE: dict[str, Any] = {
    "cf_half_life": [None, 4.0],
    "cf_liked_boost": [0.5],
    "sequence": [None, {**_SEQ, "last": 5}],
    "fusion": [("score", None), ("rrf", 60.0)],
    "weight_rounds": 1,
}
_K = 10


@dataclass
class TuningSet:
    """Validation readers: the validation-train Library, their contexts, relevance and exclusions.

    ``relevant`` and ``exclude`` are boolean (readers x catalog) masks: held-out relevant books
    and the books each reader already has in the validation-train part.
    """

    lib: Library
    ctxs: list[UserContext]
    relevant: np.ndarray
    exclude: np.ndarray
    chunk: int = 1000
    _series: np.ndarray | None = None
    # the cold slice's validation readers (fewer than the cold threshold of training books), for
    # the cold fusion weights (:func:`tune_cold_weights`); None: not tuned
    cold: TuningSet | None = None
    cold_below: int = 5  # the cold slice's bound: fewer training books than this

    @property
    def rank_exclude(self) -> np.ndarray:
        """``exclude`` plus the books the series reading order holds back (the product's rank
        path, :func:`retrieval.ranking.series_mask`): what the hybrid's fusion is tuned under."""
        if self._series is None:
            self._series = self.exclude | series_mask(self.lib, self.ctxs)
        return self._series

    @classmethod
    def build(
        cls,
        lib: Library,
        ctxs: Sequence[UserContext],
        relevant: Sequence[set[str]],
        chunk: int = 1000,
    ) -> TuningSet:
        n = len(ctxs)
        rel = np.zeros((n, lib.n_items), dtype=bool)
        exc = np.zeros((n, lib.n_items), dtype=bool)
        for i, (c, r) in enumerate(zip(ctxs, relevant)):
            rel[i, [lib.index[b] for b in r if b in lib.index]] = True
            exc[i, [lib.index[h.book_id] for h in c.history if h.book_id in lib.index]] = True
        return cls(lib, list(ctxs), rel, exc, chunk)

    def __len__(self) -> int:
        return len(self.ctxs)


@dataclass
class TuningResult:
    """Outcome of one model's search: chosen parameters, every tried point, and the cost."""

    name: str
    best: dict[str, Any]
    best_ndcg: float
    table: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    model: CandidateSource | None = None  # the validation-fitted best model (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "validation_ndcg@10": self.best_ndcg, "grid": self.table}


def score_matrix(
    source: CandidateSource, ctxs: Sequence[UserContext], chunk: int = 1000
) -> np.ndarray:
    """``source.score_batch`` over ``ctxs`` in chunks, stacked as float32 (readers x items)."""
    parts = [
        np.asarray(source.score_batch(ctxs[s : s + chunk]), dtype=np.float32)
        for s in range(0, len(ctxs), chunk)
    ]
    return np.vstack(parts) if parts else np.zeros((0, source.lib.n_items), np.float32)


def ndcg_from_topk(
    idx: np.ndarray, valid: np.ndarray, relevant: np.ndarray, k: int = _K
) -> np.ndarray:
    """Per-reader ndcg@k from top-k indices and a relevance mask
    (:func:`eval.metrics.ndcg_from_hits`)."""
    idx, valid = idx[:, :k], valid[:, :k]
    hits = np.take_along_axis(relevant, idx, axis=1) & valid
    return ndcg_from_hits(hits, relevant.sum(axis=1), k)


def _ndcg(S: np.ndarray, ts: TuningSet, series_order: bool = False) -> float:
    idx, valid = top_k_matrix(S, ts.rank_exclude if series_order else ts.exclude, _K)
    return float(np.nanmean(ndcg_from_topk(idx, valid, ts.relevant)))


def evaluate_source(source: CandidateSource, ts: TuningSet) -> float:
    """Mean validation ndcg@10 of ``source`` over the tuning readers."""
    return _ndcg(score_matrix(source, ts.ctxs, ts.chunk), ts)


def tune_single(
    name: str,
    grid: Sequence[Mapping[str, Any]],
    ts: TuningSet,
    seed: int = 0,
    progress: bool = True,
) -> TuningResult:
    """Fit every grid point of model ``name`` on ``ts.lib`` and keep the best validation ndcg@10."""
    t0 = time.perf_counter()
    best: TuningResult | None = None
    table = []
    for params in tqdm(
        list(grid), desc=f"tune {name}", unit="cfg", disable=not progress, leave=False
    ):
        model = build_model(name, ts.lib, params, seed)
        score = evaluate_source(model, ts)
        table.append({"params": dict(params), "ndcg@10": round(score, 6)})
        if best is None or score > best.best_ndcg:
            best = TuningResult(name, dict(params), score, model=model)
        else:
            del model
    assert best is not None, f"empty grid for {name}"
    best.table = table
    best.seconds = time.perf_counter() - t0
    return best


def _ascent(
    evaluate: Callable[[dict[str, float]], float],
    names: Sequence[str],
    rounds: int,
    start: dict[str, float],
) -> tuple[dict[str, float], float, int]:
    """Coordinate ascent over ``WEIGHT_STEPS`` for ``names``; strict improvements only
    (deterministic)."""
    w = dict(start)
    best = evaluate(w)
    n_eval = 1
    for _ in range(rounds):
        improved = False
        for n in names:
            for v in WEIGHT_STEPS:
                if v == w.get(n, 0.0):
                    continue
                trial = {**w, n: v}
                s = evaluate(trial)
                n_eval += 1
                if s > best + 1e-9:
                    best, w, improved = s, trial, True
        if not improved:
            break
    return w, best, n_eval


def tune_hybrid(
    ts: TuningSet,
    tuned: Mapping[str, TuningResult],
    ordered: bool,
    seed: int = 0,
    space: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> TuningResult:
    """Tune the hybrid on the validation readers (stages in the module docstring).

    ``tuned`` holds the single models' results (their validation-fitted models are reused).
    ``ordered`` says whether the split is temporal: without an order, no sequence source.
    """
    t0 = time.perf_counter()
    space = dict(space or HYBRID_SPACE)
    table: list[dict[str, Any]] = []
    cf_scores = {n: r.best_ndcg for n, r in tuned.items() if n in CF_MODELS}
    if not cf_scores:
        raise ValueError(
            "tune_hybrid: no CF model was tuned; the hybrid needs one of itemknn, als, bpr, ease"
        )
    table.append({"stage": "cf_models", "validation_ndcg@10": cf_scores})
    bar = tqdm(desc="tune hybrid", unit="step", disable=not progress, leave=False)

    # Stages 1-2: the CF model and its user vector, jointly, by the CF source's own ndcg@10.
    best_cf: tuple[float, dict[str, Any], np.ndarray] | None = None
    # Without an order (random split) "recent" means nothing: no recency half-life then.
    half_lives = space["cf_half_life"] if ordered else [None]
    for cf_model in [m for m in CF_MODELS if m in cf_scores]:
        if cf_model in ("ease", "itemknn"):
            variants = [(h, b) for h in half_lives for b in space["cf_liked_boost"]]
        elif cf_model == "als":
            variants = [(h, 0.0) for h in half_lives]
        else:
            variants = [(None, 0.0)]
        fit = getattr(tuned[cf_model].model, "model", None)
        for hl, boost in variants:
            cfg = CFConfig(
                model=cf_model,
                params=dict(tuned[cf_model].best),
                max_ease_items=10**9,
                half_life_events=hl,
                liked_boost=boost,
            )
            src = build_source("cf", ts.lib, cfg, BuildDeps(fitted={"cf": fit}))
            S = score_matrix(src, ts.ctxs, ts.chunk)
            score = _ndcg(S, ts)
            table.append(
                {
                    "stage": "cf_user_vector",
                    "cf_model": cf_model,
                    "cf_half_life": hl,
                    "cf_liked_boost": boost,
                    "ndcg@10": round(score, 6),
                }
            )
            if best_cf is None or score > best_cf[0] + 1e-9:
                best_cf = (
                    score,
                    {"cf_model": cf_model, "cf_half_life": hl, "cf_liked_boost": boost},
                    S,
                )
            bar.update(1)
    assert best_cf is not None

    # Stage 3: the sequence source (ordered data only).
    seq_best: tuple[float, dict[str, Any] | None, np.ndarray | None] = (-1.0, None, None)
    for variant in space["sequence"] if ordered else [None]:
        if variant is None:
            continue
        S = score_matrix(
            build_source("sequence", ts.lib, SequenceConfig(**variant)), ts.ctxs, ts.chunk
        )
        score = _ndcg(S, ts)
        table.append({"stage": "sequence", "params": variant, "ndcg@10": round(score, 6)})
        if score > seq_best[0] + 1e-9:
            seq_best = (score, dict(variant), S)
        bar.update(1)

    params: dict[str, Any] = {**best_cf[1], "sequence": seq_best[1]}
    fitted = {n: r.model for n, r in tuned.items() if r.model is not None}
    srcs = hybrid_sources(ts.lib, params, {n: r.best for n, r in tuned.items()}, seed, fitted)
    raw = {
        n: (
            best_cf[2]
            if n == "cf"
            else seq_best[2]
            if n == "sequence"
            else score_matrix(s, ts.ctxs, ts.chunk)
        )
        for n, s in srcs.items()
    }
    others = [n for n in srcs if n != "cf"]

    # Stage 4: fusion method and weights.
    best: tuple[float, str, float, dict[str, float]] | None = None
    for method, rrf_k in space["fusion"]:
        contribs = {
            n: source_contribution(S, ts.exclude, method, rrf_k or 60.0, 200, srcs[n].indicator)
            for n, S in raw.items()
        }

        def evaluate(w: dict[str, float], contribs=contribs) -> float:
            bar.update(1)
            return _ndcg(combine(contribs, {"cf": 1.0, **w}, ts.exclude), ts, series_order=True)

        w, score, n_eval = _ascent(
            evaluate, others, int(space["weight_rounds"]), {n: 0.0 for n in others}
        )
        table.append(
            {
                "stage": "fusion",
                "method": method,
                "rrf_k": rrf_k,
                "weights": {"cf": 1.0, **w},
                "ndcg@10": round(score, 6),
                "evaluations": n_eval,
            }
        )
        if best is None or score > best[0] + 1e-9:
            best = (score, method, rrf_k or 60.0, {"cf": 1.0, **w})
        del contribs
    assert best is not None
    params.update({"method": best[1], "rrf_k": best[2], "depth": 200, "weights": best[3]})

    # Stage 5: the cold slice's weights, on the cold validation readers only.
    if ts.cold is not None and len(ts.cold) and space.get("cold_weights", True):
        cold, row = tune_cold_weights(
            ts.cold,
            srcs,
            best[1],
            best[2],
            best[3],
            int(space["weight_rounds"]),
            cold_below=ts.cold_below,
            seed=seed,
            on_eval=lambda: bar.update(1),
        )
        params["cold_weights"] = cold
        params["cold_below"] = ts.cold_below
        table.append(row)
    bar.close()
    return TuningResult("hybrid", params, best[0], table, time.perf_counter() - t0)


def tune_cold_weights(
    ts: TuningSet,
    srcs: Mapping[str, CandidateSource],
    method: str,
    rrf_k: float,
    warm: Mapping[str, float],
    rounds: int,
    cold_below: int = 5,
    seed: int = 0,
    on_eval: Callable[[], None] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The fusion weights of the cold slice (``FusionConfig.cold_weights``), on its readers.

    Coordinate ascent (as stage 4, same method and ``rrf_k``, CF fixed at 1) over every source's
    weight, *starting from the warm weights*: strict validation gains only, so the cold slice
    keeps the warm weights unless its own readers score better otherwise. Every source is
    scored, the readers source too even where the warm slice gave it no weight.

    Args:
        ts: the cold validation readers (``TuningSet.cold``), on the validation-train Library.
        srcs: the hybrid's component sources, fitted on that Library.
        method: the tuned fusion method.
        rrf_k: the tuned RRF constant.
        warm: the tuned (warm) weights.
        rounds: coordinate-ascent rounds.
        cold_below: the slice's history-length bound (recorded; ``ts`` holds those readers).
        seed: the paired test's seed.
        on_eval: called once per weight set tried (a progress bar).

    Returns:
        ``(cold_weights, row)``: the weights that differ from ``warm`` (empty: none do) and the
        tuning table's row (validation ndcg@10 with the warm and the cold weights, each source
        alone, the paired sign-flip test of cold vs warm weights).
    """
    from .stats import paired_test

    raw = {n: score_matrix(s, ts.ctxs, ts.chunk) for n, s in srcs.items()}
    contribs = {
        n: source_contribution(S, ts.exclude, method, rrf_k, 200, srcs[n].indicator)
        for n, S in raw.items()
    }

    def per_reader(w: Mapping[str, float]) -> np.ndarray:
        idx, valid = top_k_matrix(combine(contribs, w, ts.exclude), ts.rank_exclude, _K)
        return ndcg_from_topk(idx, valid, ts.relevant)

    def evaluate(w: dict[str, float]) -> float:
        if on_eval is not None:
            on_eval()
        return float(np.nanmean(per_reader({"cf": 1.0, **w})))

    start = {n: float(warm.get(n, 0.0)) for n in srcs if n != "cf"}
    w, score, n_eval = _ascent(evaluate, list(start), rounds, start)
    full = {"cf": 1.0, **w}
    cold = {n: v for n, v in full.items() if v != float(warm.get(n, 0.0))}
    base = per_reader({"cf": 1.0, **start})
    test = paired_test(per_reader(full), base, seed=seed)
    row = {
        "stage": "cold_fusion",
        "readers": len(ts),
        "cold_below": int(cold_below),
        "weights": full,
        "cold_weights": cold,
        "ndcg@10": round(score, 6),
        "ndcg@10_warm_weights": round(float(np.nanmean(base)), 6),
        "paired_vs_warm_weights": {
            "mean_diff": round(test.mean_diff, 6),
            "ci": [round(test.ci_low, 6), round(test.ci_high, 6)],
            "p": round(test.p_value, 4),
        },
        "alone": {n: round(_ndcg(raw[n], ts, series_order=True), 6) for n in raw},
        "evaluations": n_eval,
    }
    return cold, row
