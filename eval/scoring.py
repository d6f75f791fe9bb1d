"""Scoring: rank the full catalog for every test reader through the product's rank path, then
compute metrics, bootstrap summaries, paired tests, ablations and the 10% bar.

Rankings come from :func:`retrieval.ranking.rank_matrix`, the same call the live ``recommend``
makes: readnext's own models (the hybrid, its ablations, the LLM stage's head) rank with the
series reading order; the published peers rank as published (exclusions and top-k only).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retrieval.library import Library
from retrieval.ranking import rank_matrix
from retrieval.sources import CandidateSource, HybridSource
from retrieval.types import UserContext

from .metrics import ACCURACY_METRICS, BEYOND_METRICS, RunResult, evaluate_rankings, rank_scores
from .models import SINGLE_MODELS
from .protocol import EvalConfig, Prepared, chunk_size, clean
from .stats import paired_test, summarize


def exclude_rows(lib: Library, ctxs: Sequence[UserContext]) -> np.ndarray:
    m = np.zeros((len(ctxs), lib.n_items), dtype=bool)
    for i, c in enumerate(ctxs):
        m[i, [lib.index[r.book_id] for r in c.history if r.book_id in lib.index]] = True
    return m


def rank_rows(
    lib: Library, S: np.ndarray, ctxs: Sequence[UserContext], k: int, series_order: bool = False
) -> list[list[str]]:
    idx, valid, _ = rank_matrix(lib, S, ctxs, k, series_order=series_order)
    ids = [b.book_id for b in lib.books]
    return [[ids[j] for j in row[ok]] for row, ok in zip(idx, valid)]


@dataclass
class Sampler:
    """Per-reader candidate sets for the opt-in sampled protocol: relevant + N random negatives.

    Attributes:
        lib: the training Library.
        n_neg: random negatives per reader.
        seed: the run's seed (each reader's negatives are seeded by it and their id).
        test_items: reader -> held-out books (never drawn as negatives).
        cands: reader -> candidate item indices, filled on first use.
    """

    lib: Library
    n_neg: int
    seed: int
    test_items: dict[str, set[str]]
    cands: dict[str, np.ndarray] = field(default_factory=dict)

    def candidates(self, ctx: UserContext, relevant: set[str]) -> np.ndarray:
        """The reader's candidate items: their relevant books plus ``n_neg`` seeded negatives.

        Args:
            ctx: the reader.
            relevant: the reader's relevant held-out books.

        Returns:
            Sorted item indices (cached per reader).
        """
        if ctx.user_id not in self.cands:
            lib = self.lib
            seen = {lib.index[r.book_id] for r in ctx.history if r.book_id in lib.index}
            seen |= {lib.index[b] for b in self.test_items.get(ctx.user_id, ()) if b in lib.index}
            pool = np.setdiff1d(
                np.arange(lib.n_items), np.fromiter(seen, dtype=np.int64, count=len(seen))
            )
            rng = np.random.default_rng([self.seed, 3, abs(_hash_str(ctx.user_id))])
            neg = (
                rng.choice(pool, size=min(self.n_neg, len(pool)), replace=False)
                if len(pool)
                else pool
            )
            pos = np.array([lib.index[b] for b in relevant if b in lib.index], dtype=np.int64)
            self.cands[ctx.user_id] = np.unique(np.concatenate([pos, neg.astype(np.int64)]))
        return self.cands[ctx.user_id]

    def rank(self, ctx: UserContext, relevant: set[str], scores: np.ndarray, k: int) -> list[str]:
        """The top ``k`` of the reader's candidates by ``scores``.

        Args:
            ctx: the reader.
            relevant: the reader's relevant held-out books.
            scores: the model's scores over the whole catalog.
            k: how many books.

        Returns:
            Book ids, best first.
        """
        c = self.candidates(ctx, relevant)
        order = rank_scores(scores[c], None, k)
        return [self.lib.books[c[i]].book_id for i in order]


def _hash_str(s: str) -> int:
    """A stable (process-independent) 63-bit hash of a string, for per-reader seeds."""
    import hashlib

    return int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "big") >> 1


def _chunks(ctxs: Sequence[UserContext], size: int) -> Iterator[Sequence[UserContext]]:
    for s in range(0, len(ctxs), size):
        yield ctxs[s : s + size]


@dataclass
class Run:
    """One model's rankings (main and cold slices), sampled rankings and timings."""

    main: dict[str, list[str]] = field(default_factory=dict)
    cold: dict[str, list[str]] = field(default_factory=dict)
    sampled: dict[str, list[str]] = field(default_factory=dict)
    fit_s: float = 0.0
    score_s: float = 0.0


def score_model(
    model: CandidateSource,
    prep: Prepared,
    kmax: int,
    sampler: Sampler | None,
    progress: bool,
    desc: str,
    extra=None,
    series_order: bool = False,
) -> Run:
    """Rank the full catalog for every main and cold reader through the product's rank path.

    That is :func:`retrieval.ranking.rank_matrix`, in batches of :func:`chunk_size` readers.

    Args:
        model: the (fitted) candidate source.
        prep: the prepared split.
        kmax: how many books per reader (the largest K).
        sampler: also rank the sampled protocol's candidates (``None``: off).
        progress: show a progress bar.
        desc: the progress bar's label.
        extra: ``extra(chunk, per_source, S, slice)`` is called per batch, so the hybrid can reuse
            its per-source matrices for ablations (:func:`ablation_hook`).
        series_order: apply the series reading order (readnext's own models).

    Returns:
        The :class:`Run`: rankings per slice and timings.
    """
    run = Run()
    t = time.perf_counter()
    size = chunk_size(prep.lib.n_items)
    n = len(prep.main) + len(prep.cold)
    bar = tqdm(total=n, desc=desc, unit="reader", disable=not progress, leave=False)
    for slice_name, ctxs, rel, out in (
        ("main", prep.main, prep.main_rel, run.main),
        ("cold", prep.cold, prep.cold_rel, run.cold),
    ):
        for chunk in _chunks(ctxs, size):
            per = model.source_scores(chunk) if extra is not None else None
            S = model.fuse(per, chunk) if per is not None else model.score_batch(chunk)
            for c, ranking in zip(chunk, rank_rows(prep.lib, S, chunk, kmax, series_order)):
                out[c.user_id] = ranking
            if sampler is not None and slice_name == "main":
                for i, c in enumerate(chunk):
                    run.sampled[c.user_id] = sampler.rank(c, rel[c.user_id], S[i], kmax)
            if extra is not None:
                extra(chunk, per, S, slice_name)
            bar.update(len(chunk))
    bar.close()
    run.score_s = time.perf_counter() - t
    return run


# --------------------------------------------------------------------------- metrics


def metrics_of(
    rankings: Mapping[str, list[str]],
    relevant: Mapping[str, set[str]],
    lib: Library,
    ks: Sequence[int],
) -> RunResult:
    """Per-reader metrics of ``rankings`` (accuracy and beyond-accuracy) at each K.

    Args:
        rankings: reader -> ranked book ids.
        relevant: reader -> relevant held-out books.
        lib: the training Library (popularity, vectors for diversity/novelty).
        ks: the cut-offs.

    Returns:
        The per-reader :class:`~eval.metrics.RunResult`.
    """
    pop = pd.Series(
        lib.pop_count.astype(np.float64),
        index=pd.Index([b.book_id for b in lib.books], dtype=object),
    )
    return evaluate_rankings(
        rankings,
        relevant,
        ks,
        item_pop=pop,
        n_users=max(1, lib.R.shape[0]),
        n_items=lib.n_items,
        item_vectors=(lib.vectors, lib.index),
    )


def metric_keys(ks: Sequence[int]) -> list[str]:
    """The contractual metric keys of ``metrics.json``, grouped by K."""
    return [f"{m}@{k}" for k in ks for m in (*ACCURACY_METRICS, *BEYOND_METRICS)]


def summary(
    res: RunResult, ks: Sequence[int], cfg: EvalConfig
) -> dict[str, dict[str, float | None]]:
    """Means with bootstrap confidence intervals of every contractual metric.

    Args:
        res: per-reader metrics (:func:`metrics_of`).
        ks: the cut-offs.
        cfg: the run's config (``n_boot``, ``seed``).

    Returns:
        Metric key -> ``{"mean", "ci_low", "ci_high"}``, JSON-safe.
    """
    s = summarize(
        res, n_boot=cfg.n_boot, seed=cfg.seed, keys=[k for k in metric_keys(ks) if k in res]
    )
    return {k: {f: clean(v) for f, v in d.items()} for k, d in s.items()}


def paired(a: RunResult, b: RunResult, key: str, cfg: EvalConfig) -> dict[str, Any]:
    """Paired test on the users both results share (same order by construction).

    Args:
        a: the model's per-reader metrics.
        b: the baseline's.
        key: the metric key (e.g. ``"ndcg@10"``).
        cfg: the run's config (``n_boot``, ``seed``).

    Returns:
        ``n``, both means, the mean difference with its CI, ``relative`` and p-values,
        JSON-safe.
    """
    pos = {u: i for i, u in enumerate(b.users)}
    common = [u for u in a.users if u in pos]
    ia = {u: i for i, u in enumerate(a.users)}
    x = np.asarray(a[key])[[ia[u] for u in common]]
    y = np.asarray(b[key])[[pos[u] for u in common]]
    t = paired_test(x, y, seed=cfg.seed, n_boot=cfg.n_boot)
    base = float(np.nanmean(y)) if len(y) else math.nan
    return clean(
        {
            "n": t.n,
            "mean_a": float(np.nanmean(x)) if len(x) else math.nan,
            "mean_b": base,
            "mean_diff": t.mean_diff,
            "ci_low": t.ci_low,
            "ci_high": t.ci_high,
            "relative": t.mean_diff / base if base else math.nan,
            "p_value": t.p_value,
            "p_ttest": t.p_ttest,
            "exact": t.exact,
        }
    )


def ablation_hook(
    hybrid: HybridSource,
    params: Mapping[str, Any],
    tuned: Mapping[str, Mapping[str, Any]],
    prep: Prepared,
    kmax: int,
    fitted: Mapping[str, CandidateSource],
    seed: int,
):
    """Ablations of the tuned hybrid, fused from the same per-source matrices (nothing re-tuned).

    Returns ``(hook, rankings, cold)``: the hook (for :func:`score_model`) fills
    ``rankings[variant]`` for the main slice and ``cold[variant]`` (the "without a source"
    variants) for the cold-start slice. Variants: each weighted source dropped, the CF source alone,
    the sequence source alone, the plain (unweighted) CF user vector, the hybrid without the series
    reading
    order (what the rank path's series rule changes), and the shipped defaults: what
    ``readnext ingest`` + ``recommend`` build on this training data with default settings
    (:func:`retrieval.registry.build_sources`, its own CF fit, the SASRec of the shipped
    ``SASRecConfig``: :func:`_shipped_fits`), so the report shows how far the
    untuned product is from the tuned hybrid. Every variant but the one without it ranks with
    the series order, as the product does.

    Args:
        hybrid: the tuned hybrid.
        params: its tuned parameters (``weights``...).
        tuned: per source, its tuned parameters.
        prep: the prepared split.
        kmax: how many books per reader.
        fitted: the fitted single-source models, by name.
        seed: the run's seed.
    """
    from retrieval.registry import BuildDeps, build_source, build_sources

    weights = dict(params["weights"])
    cf = hybrid.sources["cf"]
    plain_cfg = dataclasses.replace(cf.config, half_life_events=None, liked_boost=0.0)
    plain = build_source("cf", prep.lib, plain_cfg, BuildDeps(fitted={"cf": cf.model}))  # type: ignore[attr-defined]
    shipped = build_sources(prep.lib, fitted=_shipped_fits(prep, fitted))["hybrid"]
    variants: dict[str, Any] = {}
    # the cold slice's weights (None: one set for all); a source weighted in either slice is
    # dropped from both in its "without" variant
    cold_w = hybrid.cold_weights
    cold_variants: dict[str, dict[str, float] | None] = {}
    names = [*weights, *[n for n in cold_w or {} if n not in weights]]
    for n in [n for n in names if n != "cf" and n in hybrid.sources]:
        if weights.get(n, 0) > 0 or (cold_w or {}).get(n, 0) > 0:
            variants[f"hybrid without {n}"] = {**weights, n: 0.0}
            cold_variants[f"hybrid without {n}"] = None if cold_w is None else {**cold_w, n: 0.0}
    variants["cf source alone (tuned user vector)"] = {"cf": 1.0}
    if weights.get("sequence", 0) > 0:
        variants["sequence source alone"] = {"sequence": 1.0}
    if weights.get("sasrec", 0) > 0 and weights.get("readers", 0) > 0:
        variants["hybrid without sasrec and readers"] = {**weights, "sasrec": 0.0, "readers": 0.0}
    if getattr(cf, "weighted", False):
        variants["hybrid with a plain CF user vector"] = "plain"
    variants["hybrid without the series reading order"] = "no-series-order"
    variants["shipped defaults (readnext's default settings, untuned)"] = "shipped"
    out: dict[str, dict[str, list[str]]] = {n: {} for n in variants}
    cold: dict[str, dict[str, list[str]]] = {
        n: {} for n in variants if n.startswith("hybrid without") and isinstance(variants[n], dict)
    }

    def hook(chunk, per, S_hybrid, slice_name):
        if slice_name != "main":
            for name in cold:  # where few books are known: does a source help new readers?
                S = hybrid.fuse(
                    per, chunk, weights=variants[name], cold_weights=cold_variants.get(name)
                )
                for c, r in zip(chunk, rank_rows(prep.lib, S, chunk, kmax, True)):
                    cold[name][c.user_id] = r
            return
        for name, w in variants.items():
            order = True
            if w == "plain":
                S = hybrid.fuse({**per, "cf": plain.score_batch(chunk)}, chunk)
            elif w == "shipped":
                S = shipped.score_batch(chunk)
            elif w == "no-series-order":
                S, order = S_hybrid, False
            else:
                S = hybrid.fuse(per, chunk, weights=w, cold_weights=cold_variants.get(name))
            for c, r in zip(chunk, rank_rows(prep.lib, S, chunk, kmax, order)):
                out[name][c.user_id] = r

    return hook, out, cold


def _shipped_fits(prep: Prepared, fitted: Mapping[str, CandidateSource]) -> dict[str, Any] | None:
    """The trained models ``readnext ingest`` builds on this training split with no config file.

    SASRec: the tuned model when eval's tuned ``[sasrec]`` is the shipped ``SASRecConfig()``
    (then ingest trains that very model: same call, data, config, seed), else one trained with
    the shipped config (:func:`eval.models.train_sasrec_model`, cached by data + config).
    """
    from retrieval.config import SASRecConfig

    from .models import train_sasrec_model

    sas = getattr(fitted.get("sasrec"), "model", None)
    if sas is None:
        return None
    if dataclasses.asdict(sas.cfg) != dataclasses.asdict(SASRecConfig()):
        sas = train_sasrec_model(prep.lib, {})
    return {"sasrec": sas}


def bar_check(models: Mapping[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """Does the hybrid beat every single-source model by >= 10% on ndcg@10 (relative)?

    Args:
        models: model -> metric summary (:func:`summary`).
        ks: the cut-offs (ndcg@10, else at the first K).

    Returns:
        ``{"metric", "met", ...}``: ``met`` is ``None`` when the hybrid was not evaluated.
    """
    key = f"ndcg@{10 if 10 in ks else ks[0]}"
    if "hybrid" not in models:
        return {"metric": key, "met": None, "reason": "hybrid not evaluated"}
    h = models["hybrid"][key]["mean"]
    rel = {
        m: (h / v["mean"] - 1.0 if v["mean"] else None)
        for m, v in ((m, models[m][key]) for m in SINGLE_MODELS if m in models)
    }
    if not rel:
        return {"metric": key, "met": None, "reason": "no single-source model evaluated"}
    worst = min(rel, key=lambda m: rel[m] if rel[m] is not None else math.inf)
    return clean(
        {
            "metric": key,
            "threshold": 0.10,
            "hybrid": h,
            "relative_gain": rel,
            "closest_model": worst,
            "min_gain": rel[worst],
            "met": all(v is not None and v >= 0.10 for v in rel.values()),
        }
    )
