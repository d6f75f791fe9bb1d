"""The offline study: load -> split -> tune on validation -> fit -> rank the full catalog -> score -> write.

>>> from eval.runner import EvalConfig, run
>>> results = run(EvalConfig(dataset="../shared/data/goodbooks-sample", quick=True, users=300, out="out"))

Everything is deterministic for a seed: the split, the user subsets, the tuning, the models
(ALS/BPR are seeded) and the bootstrap. ``metrics.json`` differs between two identical runs only
in ``runtime_s``. Protocol (each step is recorded in ``metrics.json["protocol"]``):

* per-user holdout of the last ``holdout`` share (min 1) of each reader's ratings by time or by
  documented row order; data without an order get a seeded random per-user holdout;
* relevant = held-out rating >= ``relevant``; readers without a relevant held-out book are
  skipped and counted; readers with fewer than ``cold_threshold`` training ratings form the
  cold-start slice, reported apart from the main table;
* every model ranks every catalog book (default: every book with a rating) not in the reader's
  training history; no sampled negatives unless ``sampled`` is set, which adds a separate,
  warned-about section;
* hyper-parameters come from a validation split carved out of the training part only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retrieval.config import Settings
from retrieval.data import Dataset, detect_format, load_dataset, load_demo
from retrieval.errors import DataError, ReadnextError
from retrieval.fusion import fuse_matrices, top_k_matrix
from retrieval.library import Library
from retrieval.sources import CandidateSource, HybridSource
from retrieval.types import Book, UserContext

from .metrics import ACCURACY_METRICS, BEYOND_METRICS, RunResult, evaluate_rankings, rank_scores
from .models import (
    ALL_MODELS,
    GRIDS,
    QUICK_GRIDS,
    SINGLE_MODELS,
    build_hybrid,
    build_model,
    tuned_config_toml,
)
from .splits import Split, cold_start_users, relevant_items, temporal_holdout, validation_split
from .stats import paired_test, summarize
from .tuning import HYBRID_SPACE, QUICK_HYBRID_SPACE, TuningResult, TuningSet, tune_hybrid, tune_single

__all__ = ["EvalConfig", "Prepared", "load_eval_dataset", "prepare", "run", "SAMPLED_WARNING"]

SAMPLED_WARNING = (
    "Sampled-negative metrics are NOT full-catalog metrics. Krichene & Rendle (KDD 2020, 'On Sampled "
    "Metrics for Item Recommendation') show they are inconsistent with the exact metrics and can even "
    "reverse the order of two models. They are reported only for comparison with older work; "
    "conclusions rest on the full-catalog tables."
)
KRICHENE_RENDLE = "Krichene & Rendle, On Sampled Metrics for Item Recommendation, KDD 2020"


@dataclass
class EvalConfig:
    """Everything that defines a run; with the same config and seed a run is reproducible.

    ``dataset`` (a folder, format auto-detected) or ``data_dir`` (an ingested index) selects the
    data; neither means the shipped demo. ``users`` evaluates a seeded subset of test readers.
    """

    dataset: str | None = None
    data_dir: str | None = None
    config: str | None = None
    models: tuple[str, ...] | None = None  # None: every model (hybrid+llm only with llm or not quick)
    users: int | None = None
    seed: int = 42
    ks: tuple[int, ...] = (10, 20)
    out: str = "eval-results"
    dump_rankings: bool = False
    quick: bool = False
    llm: str | None = None
    llm_users: int = 30
    llm_explain: int = 10  # LLM explanations written (top pick of this many LLM readers)
    sampled: int | None = None
    relevant: float = 4.0
    holdout: float = 0.2
    cold_threshold: int = 5
    explain_users: int = 200
    val_users: int | None = None  # cap on validation readers (default 3000, quick 600)
    n_boot: int = 1000
    catalog: str = "rated"  # rated: books with >= 1 rating in the data; all: every catalog book
    min_item_ratings: int | None = None  # k-core filter (default 5 for Book-Crossing, else none)
    min_user_ratings: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    verbose: bool = True  # one line per stage on stderr
    command: str = ""

    def chosen_models(self) -> list[str]:
        """The models to run, in the canonical order."""
        if self.models is None:
            names = [m for m in ALL_MODELS if m != "hybrid+llm" or (self.llm or not self.quick)]
        else:
            names = list(dict.fromkeys(self.models))
            bad = [m for m in names if m not in ALL_MODELS]
            if bad:
                raise ReadnextError(f"--models: unknown model(s) {', '.join(bad)}; choose from {', '.join(ALL_MODELS)}")
        if "hybrid+llm" in names and "hybrid" not in names:
            raise ReadnextError("--models: hybrid+llm reranks the hybrid, so list hybrid too")
        return [m for m in ALL_MODELS if m in names]


@dataclass
class Prepared:
    """A split dataset ready to score: training Library over the catalog plus the test readers."""

    dataset: Dataset
    split: Split
    lib: Library
    main: list[UserContext]
    main_rel: dict[str, set[str]]
    cold: list[UserContext]
    cold_rel: dict[str, set[str]]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _bookcrossing_core(ds: Dataset, min_item: int, min_user: int) -> tuple[Dataset, list[str]]:
    """Put Book-Crossing on the 1-5 scale and keep its ``min_item``/``min_user`` k-core.

    Explicit 1-10 ratings become ``r / 2`` (so 8/10 -> 4 = liked/relevant); an implicit 0 (the
    reader has the book, no score) becomes 3, a mild positive that is never relevant.
    """
    r = ds.ratings.copy()
    raw = r["rating"].to_numpy(dtype=np.float64)
    r["rating"] = np.where(raw == 0, 3.0, raw / 2.0)
    n0 = len(r)
    while True:
        before = len(r)
        ic = r["book_id"].value_counts()
        r = r[r["book_id"].isin(ic.index[ic >= min_item])]
        uc = r["user_id"].value_counts()
        r = r[r["user_id"].isin(uc.index[uc >= min_user])]
        if len(r) == before:
            break
    keep = set(r["book_id"].unique())
    books = [b for b in ds.books if b.book_id in keep]
    notes = [
        "Book-Crossing ratings rescaled to 1-5: explicit r/10 -> r/2 (so relevant >= 4 means >= 8/10); "
        "implicit 0 -> 3 (a weak positive, never relevant)",
        f"iterative {min_item}-core: books with >= {min_item} and readers with >= {min_user} ratings, "
        f"repeated until stable: {n0:,} -> {len(r):,} ratings, {len(books):,} books, {r['user_id'].nunique():,} readers",
    ]
    label = f"Book-Crossing ({min_item}-core: {len(r):,} ratings, {len(books):,} books)"
    out = replace(ds, books=books, ratings=r.reset_index(drop=True), label=label, notes=ds.notes + notes)
    return out, notes


def load_eval_dataset(cfg: EvalConfig, settings: Settings) -> tuple[Dataset, dict[str, np.ndarray] | None]:
    """The dataset to evaluate and, for an ingested index, its stored book vectors (by book id)."""
    if cfg.dataset and cfg.data_dir:
        raise ReadnextError("give either --dataset DIR or --data-dir D, not both")
    vectors = None
    if cfg.dataset:
        fmt = detect_format(cfg.dataset)
        ds = load_dataset(fmt, directory=cfg.dataset)
    elif cfg.data_dir:
        from retrieval.index import Index

        idx = Index.open(Path(cfg.data_dir).expanduser())
        meta = idx.meta
        ds = Dataset(name=meta.get("dataset", "index"), books=idx.books, ratings=idx.ratings, to_read=idx.to_read,
                     has_timestamps=bool(meta.get("has_timestamps")), ordered=bool(meta.get("ordered", True)),
                     label=meta.get("label") or meta.get("dataset", "index"), notes=list(meta.get("notes", [])))
        vectors = {b.book_id: idx.vectors[i] for i, b in enumerate(idx.books)}
    else:
        ds = load_demo()
    if not len(ds.ratings):
        raise DataError(f"dataset {ds.label or ds.name} has no ratings; evaluation needs a ratings file")
    if ds.name == "bookcrossing":
        ds, _ = _bookcrossing_core(ds, cfg.min_item_ratings or 5, cfg.min_user_ratings or 5)
    elif cfg.min_item_ratings or cfg.min_user_ratings:
        r = ds.ratings
        ic = r["book_id"].value_counts()
        r = r[r["book_id"].isin(ic.index[ic >= (cfg.min_item_ratings or 1)])]
        uc = r["user_id"].value_counts()
        r = r[r["user_id"].isin(uc.index[uc >= (cfg.min_user_ratings or 1)])]
        ds = replace(ds, ratings=r.reset_index(drop=True),
                     notes=ds.notes + [f"filtered to books with >= {cfg.min_item_ratings or 1} and readers with "
                                       f">= {cfg.min_user_ratings or 1} ratings (one pass)"])
    top = float(ds.ratings["rating"].max())
    if top > 5.0:
        raise DataError(f"{ds.label or ds.name}: ratings go up to {top:g}, but readnext's models and the relevance "
                        "threshold use a 1-5 scale; rescale the ratings to 1-5 first")
    return ds, vectors


def _embed(books: Sequence[Book], settings: Settings, cache_dir: Path, given: Mapping[str, np.ndarray] | None,
           progress: bool) -> np.ndarray:
    """Unit vectors of ``books`` (stored index vectors when given, else the cached embedder)."""
    if given is not None and all(b.book_id in given for b in books):
        return np.vstack([given[b.book_id] for b in books]).astype(np.float32)
    from retrieval.embed import Embedder

    e = settings.embedder
    emb = Embedder(e.model, e.device, e.batch_size, cache_dir=cache_dir)
    return emb.encode([b.embedding_text() for b in books], show_progress=progress, desc="embed catalog")


def _contexts(lib: Library, users: Sequence[str]) -> list[UserContext]:
    hist = lib.histories()
    return [UserContext(user_id=u, history=hist.get(u, [])) for u in users]


def _subset(items: Sequence[str], n: int | None, seed: int, salt: int) -> list[str]:
    """A seeded subset of ``n`` of ``items`` (sorted first, so it depends only on the set)."""
    pool = sorted(items)
    if n is None or n >= len(pool):
        return pool
    rng = np.random.default_rng([seed, salt])
    return sorted(pool[i] for i in rng.choice(len(pool), size=n, replace=False))


def prepare(cfg: EvalConfig, settings: Settings) -> Prepared:
    """Load, split, embed and pick the test readers (main and cold-start slices)."""
    t = time.perf_counter()
    ds, given = load_eval_dataset(cfg, settings)
    notes = list(ds.notes)
    split = temporal_holdout(ds.ratings, frac=cfg.holdout, min_test=1, ordered=ds.ordered, seed=cfg.seed)
    if cfg.catalog not in ("rated", "all"):
        raise ReadnextError(f"--catalog must be 'rated' or 'all', got {cfg.catalog!r}")
    if cfg.catalog == "rated":
        rated = set(ds.ratings["book_id"].unique())
        catalog = [b for b in ds.books if b.book_id in rated]
    else:
        catalog = list(ds.books)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else settings.home / "cache"
    vectors = _embed(catalog, settings, cache_dir, given, cfg.progress)
    train = split.train.reset_index(drop=True)
    # ordered: the training rows carry an event order (what the live index records in its meta)
    lib = Library(catalog, vectors, train, ds.has_timestamps, None, ds.name, split.method == "temporal")

    rel = relevant_items(split.test, cfg.relevant)
    test_users = _subset(list(rel), cfg.users, cfg.seed, 1)
    cold = cold_start_users(split, cfg.cold_threshold)
    skipped = [u for u in test_users if not rel[u]]
    main_u = [u for u in test_users if rel[u] and u not in cold]
    cold_u = [u for u in test_users if rel[u] and u in cold]
    hist = lib.histories()
    info = {
        "dataset": {**ds.stats(), "catalog_books": len(catalog), "catalog": cfg.catalog,
                    "split": split.describe()},
        "users": {"test_users": len(rel), "evaluated_pool": len(test_users), "main": len(main_u),
                  "cold_start": len(cold_u), "skipped_no_relevant": len(skipped)},
        "prepare_s": time.perf_counter() - t,
    }
    return Prepared(ds, split, lib,
                    [UserContext(u, hist.get(u, [])) for u in main_u], {u: rel[u] for u in main_u},
                    [UserContext(u, hist.get(u, [])) for u in cold_u], {u: rel[u] for u in cold_u},
                    info, notes)


def tuning_set(prep: Prepared, cfg: EvalConfig) -> tuple[TuningSet, dict[str, Any]]:
    """Validation readers: the last share of each training history, carved from training only."""
    val = validation_split(prep.split, frac=cfg.holdout, min_test=1, seed=cfg.seed)
    lib = Library(prep.lib.books, prep.lib.vectors, val.train.reset_index(drop=True), prep.lib.has_timestamps,
                  None, prep.lib.name, prep.lib.ordered)
    rel = relevant_items(val.test, cfg.relevant)
    counts = val.train["user_id"].value_counts()
    warm = [u for u, r in rel.items() if r and counts.get(u, 0) >= cfg.cold_threshold]
    cap = cfg.val_users or (600 if cfg.quick else 3000)
    cap = max(200, min(cap, int(4e7 // max(lib.n_items, 1))))  # bounds the cached score matrices
    users = _subset(warm, cap, cfg.seed, 2)
    ctxs = _contexts(lib, users)
    ts = TuningSet.build(lib, ctxs, [rel[u] for u in users], chunk=_chunk(lib.n_items))
    desc = {"method": val.method, "frac": cfg.holdout, "validation_readers": len(users),
            "eligible_readers": len(warm), "train_events": len(val.train), "validation_events": len(val.test)}
    return ts, desc


def _chunk(n_items: int) -> int:
    """Readers per scoring batch: 1,000, fewer for large catalogs (bounds dense score blocks)."""
    return int(max(50, min(1000, 2e7 // max(n_items, 1))))


# --------------------------------------------------------------------------- scoring


def _exclude(lib: Library, ctxs: Sequence[UserContext]) -> np.ndarray:
    m = np.zeros((len(ctxs), lib.n_items), dtype=bool)
    for i, c in enumerate(ctxs):
        m[i, [lib.index[r.book_id] for r in c.history if r.book_id in lib.index]] = True
    return m


def _rank_rows(lib: Library, S: np.ndarray, exclude: np.ndarray, k: int) -> list[list[str]]:
    idx, valid = top_k_matrix(S, exclude, k)
    ids = [b.book_id for b in lib.books]
    return [[ids[j] for j in row[ok]] for row, ok in zip(idx, valid)]


@dataclass
class _Sampler:
    """Per-reader candidate sets for the opt-in sampled protocol: relevant + N random negatives."""

    lib: Library
    n_neg: int
    seed: int
    test_items: dict[str, set[str]]
    cands: dict[str, np.ndarray] = field(default_factory=dict)

    def candidates(self, ctx: UserContext, relevant: set[str]) -> np.ndarray:
        if ctx.user_id not in self.cands:
            lib = self.lib
            seen = {lib.index[r.book_id] for r in ctx.history if r.book_id in lib.index}
            seen |= {lib.index[b] for b in self.test_items.get(ctx.user_id, ()) if b in lib.index}
            pool = np.setdiff1d(np.arange(lib.n_items), np.fromiter(seen, dtype=np.int64, count=len(seen)))
            rng = np.random.default_rng([self.seed, 3, abs(_hash_str(ctx.user_id))])
            neg = rng.choice(pool, size=min(self.n_neg, len(pool)), replace=False) if len(pool) else pool
            pos = np.array([lib.index[b] for b in relevant if b in lib.index], dtype=np.int64)
            self.cands[ctx.user_id] = np.unique(np.concatenate([pos, neg.astype(np.int64)]))
        return self.cands[ctx.user_id]

    def rank(self, ctx: UserContext, relevant: set[str], scores: np.ndarray, k: int) -> list[str]:
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
class _Run:
    """One model's rankings (main and cold slices), sampled rankings and timings."""

    main: dict[str, list[str]] = field(default_factory=dict)
    cold: dict[str, list[str]] = field(default_factory=dict)
    sampled: dict[str, list[str]] = field(default_factory=dict)
    fit_s: float = 0.0
    score_s: float = 0.0


def _score_model(model: CandidateSource, prep: Prepared, kmax: int, sampler: _Sampler | None, progress: bool,
                 desc: str, extra=None) -> _Run:
    """Rank the full catalog for every main and cold reader; ``extra(chunk, per_source, S, excl, slice)``
    lets the hybrid reuse its per-source matrices for ablations."""
    run = _Run()
    t = time.perf_counter()
    size = _chunk(prep.lib.n_items)
    n = len(prep.main) + len(prep.cold)
    bar = tqdm(total=n, desc=desc, unit="reader", disable=not progress, leave=False)
    for slice_name, ctxs, rel, out in (("main", prep.main, prep.main_rel, run.main),
                                       ("cold", prep.cold, prep.cold_rel, run.cold)):
        for chunk in _chunks(ctxs, size):
            per = model.source_scores(chunk) if extra is not None else None
            S = model.fuse(per, chunk) if per is not None else model.score_batch(chunk)
            excl = _exclude(prep.lib, chunk)
            for c, ranking in zip(chunk, _rank_rows(prep.lib, S, excl, kmax)):
                out[c.user_id] = ranking
            if sampler is not None and slice_name == "main":
                for i, c in enumerate(chunk):
                    run.sampled[c.user_id] = sampler.rank(c, rel[c.user_id], S[i], kmax)
            if extra is not None:
                extra(chunk, per, excl, slice_name)
            bar.update(len(chunk))
    bar.close()
    run.score_s = time.perf_counter() - t
    return run


# --------------------------------------------------------------------------- metrics


def _metrics(rankings: Mapping[str, list[str]], relevant: Mapping[str, set[str]], lib: Library,
             ks: Sequence[int]) -> RunResult:
    pop = pd.Series(lib.pop_count.astype(np.float64), index=pd.Index([b.book_id for b in lib.books], dtype=object))
    return evaluate_rankings(rankings, relevant, ks, item_pop=pop, n_users=max(1, lib.R.shape[0]),
                             n_items=lib.n_items, item_vectors=(lib.vectors, lib.index))


def metric_keys(ks: Sequence[int]) -> list[str]:
    """The contractual metric keys of ``metrics.json``, grouped by K."""
    return [f"{m}@{k}" for k in ks for m in (*ACCURACY_METRICS, *BEYOND_METRICS)]


def _summary(res: RunResult, ks: Sequence[int], cfg: EvalConfig) -> dict[str, dict[str, float | None]]:
    s = summarize(res, n_boot=cfg.n_boot, seed=cfg.seed, keys=[k for k in metric_keys(ks) if k in res])
    return {k: {f: _clean(v) for f, v in d.items()} for k, d in s.items()}


def _clean(x: Any) -> Any:
    """JSON-safe numbers: nan/inf -> None, numpy scalars -> float, rounded to 6 decimals."""
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _paired(a: RunResult, b: RunResult, key: str, cfg: EvalConfig) -> dict[str, Any]:
    """Paired test on the users both results share (same order by construction)."""
    pos = {u: i for i, u in enumerate(b.users)}
    common = [u for u in a.users if u in pos]
    ia = {u: i for i, u in enumerate(a.users)}
    x = np.asarray(a[key])[[ia[u] for u in common]]
    y = np.asarray(b[key])[[pos[u] for u in common]]
    t = paired_test(x, y, seed=cfg.seed, n_boot=cfg.n_boot)
    base = float(np.nanmean(y)) if len(y) else math.nan
    return _clean({"n": t.n, "mean_a": float(np.nanmean(x)) if len(x) else math.nan, "mean_b": base,
                   "mean_diff": t.mean_diff, "ci_low": t.ci_low, "ci_high": t.ci_high,
                   "relative": t.mean_diff / base if base else math.nan,
                   "p_value": t.p_value, "p_ttest": t.p_ttest, "exact": t.exact})


# --------------------------------------------------------------------------- explanations


def _faithfulness(hybrid: HybridSource, prep: Prepared, rankings: Mapping[str, list[str]], cfg: EvalConfig,
                  k: int) -> dict[str, Any]:
    """Re-check every evidence record behind the hybrid's top ``k`` against the training data."""
    from retrieval.evidence import verify

    users = _subset([c.user_id for c in prep.main], cfg.explain_users, cfg.seed, 4)
    by_id = {c.user_id: c for c in prep.main}
    kinds: Counter = Counter()
    bad_kinds: Counter = Counter()
    failures: list[dict[str, Any]] = []
    n_items = no_evidence = 0
    for u in tqdm(users, desc="verify evidence", unit="reader", disable=not cfg.progress, leave=False):
        ctx = by_id[u]
        ids = rankings.get(u, [])[:k]
        items = [prep.lib.index[b] for b in ids]
        for b, evs in zip(ids, hybrid.evidence_for(ctx, items)):
            n_items += 1
            no_evidence += not evs
            for e in evs:
                kinds[e.kind] += 1
                if not verify(prep.lib, b, e, ctx.history):
                    bad_kinds[e.kind] += 1
                    if len(failures) < 20:
                        failures.append({"user_id": u, "book_id": b, "evidence": e.to_dict()})
    total = sum(kinds.values())
    ok = total - sum(bad_kinds.values())
    return _clean({"readers": len(users), "items": n_items, "evidence_records": total, "verified": ok,
                   "faithfulness": ok / total if total else math.nan, "items_without_evidence": no_evidence,
                   "by_kind": dict(sorted(kinds.items())), "failed_by_kind": dict(sorted(bad_kinds.items())),
                   "failures": failures, "k": k})


# --------------------------------------------------------------------------- the LLM stage


def _llm_stage(prep: Prepared, ts: TuningSet, hybrid: CandidateSource, val_hybrid: CandidateSource,
               cfg: EvalConfig, kmax: int, notes: list[str]) -> tuple[dict[str, list[str]], dict[str, Any]] | None:
    """Rerank the hybrid's head with the LLM for a seeded subset of readers (weight tuned on validation).

    Returns the reranked rankings of the test subset and a report dict, or None (with a note)
    when the LLM layer is unavailable.
    """
    try:
        from assistant.llm import load_backend
        from assistant.rerank import LLMReranker, zscores
    except ImportError as e:
        notes.append(f"hybrid+llm skipped: the LLM layer is not importable ({e})")
        return None
    t0 = time.perf_counter()
    try:
        backend = load_backend(cfg.llm or "local")
    except Exception as e:  # noqa: BLE001 - any load failure means: skip this stage, say why
        notes.append(f"hybrid+llm skipped: cannot load LLM backend {cfg.llm or 'local'!r} ({e})")
        return None
    if backend.name == "none":
        notes.append("hybrid+llm skipped: --llm none")
        return None
    top_n = 20
    reranker = LLMReranker(backend, weight=1.0, top_n=top_n)
    grid = (0.0, 0.25, 0.5, 1.0, 2.0)

    def llm_scores(lib: Library, model: CandidateSource, ctxs: Sequence[UserContext], desc: str):
        """Hybrid head (ids, scores) and LLM scores per reader."""
        out = []
        S = model.score_batch(ctxs)
        excl = _exclude(lib, ctxs)
        idx, valid = top_k_matrix(S, excl, max(top_n, kmax))
        for i, c in enumerate(tqdm(ctxs, desc=desc, unit="reader", disable=not cfg.progress, leave=False)):
            items = idx[i][valid[i]]
            cands = [(lib.books[j], float(S[i, j])) for j in items]
            hist = [(lib.by_id[r.book_id], r.rating) for r in c.history if r.book_id in lib.by_id]
            res = reranker.rerank(hist, cands)
            llm = {r.book_id: r.llm_score for r in res if r.llm_score is not None}
            out.append(([b.book_id for b, _ in cands], [s for _, s in cands], llm))
        return out

    def fuse(head_ids, head_scores, llm, w: float) -> list[str]:
        n = min(top_n, len(head_ids))
        if w == 0 or n < 2 or len(llm) < n:
            return list(head_ids)  # weight 0 (or no LLM signal): the hybrid order, exactly
        z_r = zscores(head_scores[:n])
        z_l = zscores([llm[b] for b in head_ids[:n]])
        fused = [a + w * b for a, b in zip(z_r, z_l)]
        order = sorted(range(n), key=lambda i: (-fused[i], i))
        return [head_ids[i] for i in order] + list(head_ids[n:])

    # Tune the weight on validation readers (a seeded subset of the tuning readers).
    val_users = _subset([c.user_id for c in ts.ctxs], cfg.llm_users, cfg.seed, 5)
    vpos = {c.user_id: i for i, c in enumerate(ts.ctxs)}
    vctx = [ts.ctxs[vpos[u]] for u in val_users]
    vscores = llm_scores(ts.lib, val_hybrid, vctx, "LLM rerank (validation)")
    per_w: dict[float, np.ndarray] = {}
    for w in grid:
        nd = []
        for c, (ids, sc, llm) in zip(vctx, vscores):
            rel = ts.relevant[vpos[c.user_id]]
            ranked = fuse(ids, sc, llm, w)[:10]
            hits = np.array([rel[ts.lib.index[b]] for b in ranked], dtype=float)
            disc = 1 / np.log2(np.arange(2, len(hits) + 2))
            ideal = (1 / np.log2(np.arange(2, min(int(rel.sum()), 10) + 2))).sum()
            nd.append(float(hits @ disc / ideal) if ideal else math.nan)
        per_w[w] = np.asarray(nd)
    best_w, best, table = _pick_weight(per_w)
    # Test readers.
    users = _subset([c.user_id for c in prep.main], cfg.llm_users, cfg.seed, 6)
    by_id = {c.user_id: c for c in prep.main}
    tctx = [by_id[u] for u in users]
    if best_w == 0:  # the hybrid's ranking exactly: no need to ask the model on the test readers
        S = hybrid.score_batch(tctx)
        rankings = dict(zip(users, _rank_rows(prep.lib, S, _exclude(prep.lib, tctx), kmax)))
    else:
        tscores = llm_scores(prep.lib, hybrid, tctx, "LLM rerank (test)")
        rankings = {c.user_id: fuse(ids, sc, llm, best_w)[:kmax] for c, (ids, sc, llm) in zip(tctx, tscores)}
    info: dict[str, Any] = {
        "backend": backend.describe(), "mode": "pointwise" if backend.supports_logprobs else "listwise",
        "top_n": top_n, "readers": len(users), "validation_readers": len(vctx),
        "weight_grid": table, "weight": best_w, "validation_ndcg@10": _clean(best),
        "selection": "best validation ndcg@10, kept only if its gain over weight 0 exceeds one standard error",
        "errors": reranker.last_error,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    info["explanations"] = _llm_explanations(backend, prep, hybrid, tctx, rankings, cfg)
    return rankings, info


def _pick_weight(per_w: Mapping[float, np.ndarray]) -> tuple[float, float, list[dict[str, Any]]]:
    """The LLM weight by validation ndcg@10 with the one-standard-error rule toward weight 0.

    With a few dozen readers the best weight often wins by noise, so a weight > 0 is kept only
    when its paired gain over weight 0 exceeds one standard error of that gain (Hastie et al.,
    "Elements of Statistical Learning", 7.10). Returns ``(weight, its mean ndcg, table)``.
    """
    means = {w: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for w, v in per_w.items()}
    base = per_w[0.0]
    table = []
    for w, v in per_w.items():
        d = (v - base)[~(np.isnan(v) | np.isnan(base))]
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
        table.append({"weight": w, "ndcg@10": _clean(means[w]), "gain_vs_0": _clean(float(d.mean()) if len(d) else
                                                                                    math.nan),
                      "gain_se": _clean(se)})
    best = max(per_w, key=lambda w: (means[w], -w))
    d = next(t for t in table if t["weight"] == best)
    if best != 0.0 and not (d["gain_vs_0"] is not None and d["gain_se"] is not None and d["gain_vs_0"] > d["gain_se"]):
        best = 0.0
    return best, means[best], table


def _hallucination(reason: str) -> str:
    """Classify a grounding-guard rejection: ``title``, ``author``, ``other name`` or ``other``.

    The guard's reasons read "names title 'X' ...", "quotes an unknown title 'X'", "blurb names
    author 'Y' ...", "unsupported name 'Z' ..." (a capitalised word found in no fact).
    """
    if "names title" in reason or "unknown title" in reason:
        return "title"
    if "names author" in reason:
        return "author"
    if "unsupported name" in reason or "unsupported year" in reason:
        return "other name"
    return "other"


def _llm_explanations(backend, prep: Prepared, hybrid: HybridSource, ctxs: Sequence[UserContext],
                      rankings: Mapping[str, list[str]], cfg: EvalConfig) -> dict[str, Any]:
    """LLM explanations for the top pick of the first ``cfg.llm_explain`` LLM readers: guard stats."""
    try:
        from assistant.explain import template_explanation
        from assistant.explainer import Explainer
    except ImportError as e:
        return {"skipped": f"assistant.explainer.Explainer not importable ({e})"}
    ex = Explainer(backend)
    lib = prep.lib
    kinds: Counter = Counter()
    n = 0
    for c in tqdm(list(ctxs)[: cfg.llm_explain], desc="LLM explanations", unit="text", disable=not cfg.progress,
                  leave=False):
        top = rankings.get(c.user_id, [])[:1]
        if not top:
            continue
        item = lib.index[top[0]]
        evs = hybrid.evidence_for(c, [item])[0]
        rated = {r.book_id: r.rating for r in c.history}
        text = template_explanation(evs, lib.by_id, rated)
        hist = [lib.by_id[r.book_id] for r in c.history if r.book_id in lib.by_id]
        res = ex.explain(lib.books[item], evs, hist, lib.by_id, text)
        n += 1
        kinds[_hallucination(res.rejected_reason or "")] += 1
    counts = ex.counter.as_dict()
    rate = (lambda k: kinds[k] / n if n else math.nan)  # noqa: E731
    return _clean({"explanations": n, "hallucinated_title_rate": rate("title"),
                   "hallucinated_author_rate": rate("author"), "unsupported_name_rate": rate("other name"),
                   "guard_fallback_rate": counts["fallback_rate"], "fallback_reasons": counts["reasons"],
                   "llm_accepted": counts["llm"]})


# --------------------------------------------------------------------------- main entry


def _hardware() -> dict[str, Any]:
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "python": platform.python_version(),
            "platform": platform.platform(), "numpy": np.__version__, "torch": version("torch"),
            "scipy": version("scipy"), "implicit": version("implicit"),
            "sentence_transformers": version("sentence-transformers")}


def _command(cfg: EvalConfig) -> str:
    if cfg.command:
        return cfg.command
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("readnext", "cli.py", "__main__.py"):
        argv = ["readnext", *argv[1:]]
    return shlex.join(argv)


class _Study:
    """One run, stage by stage; each stage records its wall time in ``runtime``."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.models = cfg.chosen_models()
        if not self.models:
            raise ReadnextError("--models: nothing to evaluate")
        self.ks = tuple(sorted(set(int(k) for k in cfg.ks)))
        if not self.ks or min(self.ks) < 1:
            raise ReadnextError(f"--k needs positive cut-offs such as 10,20; got {cfg.ks}")
        self.kmax = max(self.ks)
        self.key10 = f"ndcg@{10 if 10 in self.ks else self.ks[0]}"
        self.settings = Settings.load(config_file=cfg.config, home=cfg.data_dir)
        self.runtime: dict[str, Any] = {"models": {}, "tuning": {}}
        self.t0 = time.perf_counter()
        self.skipped: dict[str, str] = {}
        self.tuned: dict[str, TuningResult] = {}
        self.hybrid_tuned: TuningResult | None = None
        self.fitted: dict[str, CandidateSource] = {}
        self.runs: dict[str, _Run] = {}
        self.hybrid: HybridSource | None = None
        self.ablation_runs: dict[str, dict[str, list[str]]] = {}
        self.llm_info: dict[str, Any] | None = None
        self.sampler: _Sampler | None = None

    def log(self, msg: str) -> None:
        if self.cfg.verbose:
            print(f"[eval {time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def prepare(self) -> None:
        self.log("loading and splitting the data, embedding the catalog")
        self.prep = prepare(self.cfg, self.settings)
        self.runtime["prepare"] = round(self.prep.info.pop("prepare_s"), 2)
        self.notes = self.prep.notes
        if not self.prep.main:
            raise ReadnextError("no test reader has a relevant held-out rating and enough training ratings; "
                                "lower --relevant or use more data")
        u = self.prep.info["users"]
        self.log(f"{self.prep.lib.n_items:,} catalog books; {u['main']:,} main and {u['cold_start']:,} cold-start "
                 f"readers ({u['skipped_no_relevant']:,} skipped: no relevant held-out book)")

    def tune(self) -> None:
        t = time.perf_counter()
        self.ts, self.val_desc = tuning_set(self.prep, self.cfg)
        grids = dict(QUICK_GRIDS if self.cfg.quick else GRIDS)
        if self.prep.split.method != "temporal":
            # No order: a profile's recency decay would follow file order (Book-Crossing: ISBN order).
            grids["content"] = [{"half_life_events": 1e9, "pivot": p} for p in sorted({g["pivot"] for g in grids["content"]})]
            self.notes.append("data without order: the content profile uses no recency decay, the hybrid no "
                              "recency-weighted CF user vector and no sequence source")
        elif self.prep.dataset.has_timestamps:
            # Profiles decay by days when there are timestamps (ProfileConfig.half_life_days).
            pivots = sorted({g["pivot"] for g in grids["content"]})
            days = (90.0, 365.0) if self.cfg.quick else (30.0, 180.0, 730.0)
            grids["content"] = [{"half_life_days": d, "pivot": p} for d in days for p in pivots]
        need = [m for m in SINGLE_MODELS if m in self.models or "hybrid" in self.models]
        limit = self.settings.cf.max_ease_items
        if self.prep.lib.n_items > limit and "ease" in need:
            need.remove("ease")
            self.skipped["ease"] = (f"skipped: {self.prep.lib.n_items:,} catalog books exceed EASE's limit of "
                                    f"{limit:,} (cf.max_ease_items: its dense item x item inverse would not fit)")
            self.notes.append(f"ease {self.skipped['ease']}")
        for m in need:
            self.log(f"tuning {m} ({len(grids[m])} grid points, {len(self.ts):,} validation readers)")
            self.tuned[m] = tune_single(m, grids[m], self.ts, self.cfg.seed, self.cfg.progress)
            self.runtime["tuning"][m] = round(self.tuned[m].seconds, 2)
        if "hybrid" in self.models:
            self.log("tuning the hybrid (CF model + user vector, sequence source, fusion method and weights)")
            space = QUICK_HYBRID_SPACE if self.cfg.quick else HYBRID_SPACE
            self.hybrid_tuned = tune_hybrid(self.ts, self.tuned, self.prep.split.method == "temporal",
                                            self.cfg.seed, space, self.cfg.progress)
            self.runtime["tuning"]["hybrid"] = round(self.hybrid_tuned.seconds, 2)
        self.runtime["tuning_total"] = round(time.perf_counter() - t, 2)

    def rank(self) -> None:
        """Refit each tuned model on the whole training split and rank the catalog for every reader."""
        cfg, prep = self.cfg, self.prep
        if cfg.sampled:
            test_items = prep.split.test.groupby("user_id")["book_id"].agg(set).to_dict()
            self.sampler = _Sampler(prep.lib, int(cfg.sampled), cfg.seed, test_items)
            print(f"warning: --sampled {cfg.sampled}: {SAMPLED_WARNING}", file=sys.stderr)
        fit_s: dict[str, float] = {}
        for m in [m for m in SINGLE_MODELS if m in self.tuned]:
            self.log(f"fitting and ranking {m}")
            t = time.perf_counter()
            self.fitted[m] = build_model(m, prep.lib, self.tuned[m].best, cfg.seed)
            fit_s[m] = time.perf_counter() - t
            if m in self.models:
                self.runs[m] = _score_model(self.fitted[m], prep, self.kmax, self.sampler, cfg.progress, f"rank {m}")
                self.runs[m].fit_s = fit_s[m]
        if self.hybrid_tuned is not None:
            self.log("ranking the hybrid (and its ablations)")
            best, tuned = self.hybrid_tuned.best, {n: r.best for n, r in self.tuned.items()}
            t = time.perf_counter()
            self.hybrid = build_hybrid(prep.lib, best, tuned, cfg.seed, self.fitted)
            reused = sum(fit_s.get(n, 0.0) for n in ("content", "popularity", best["cf_model"]))
            own = time.perf_counter() - t
            hook, self.ablation_runs = _ablation_hook(self.hybrid, best, tuned, prep, self.kmax, self.fitted, cfg.seed)
            self.runs["hybrid"] = _score_model(self.hybrid, prep, self.kmax, self.sampler, cfg.progress,
                                               "rank hybrid", hook)
            self.runs["hybrid"].fit_s = own + reused
        if "hybrid+llm" in self.models and self.hybrid is not None and self.hybrid_tuned is not None:
            self.log(f"hybrid+llm: LLM reranking for {cfg.llm_users} validation and {cfg.llm_users} test readers")
            t = time.perf_counter()
            val_hybrid = build_hybrid(self.ts.lib, self.hybrid_tuned.best, {n: r.best for n, r in self.tuned.items()},
                                      cfg.seed, {n: r.model for n, r in self.tuned.items() if r.model is not None})
            res = _llm_stage(prep, self.ts, self.hybrid, val_hybrid, cfg, self.kmax, self.notes)
            if res is not None:
                self.runs["hybrid+llm"], self.llm_info = _Run(main=res[0], score_s=time.perf_counter() - t), res[1]
        for m, r in self.runs.items():
            self.runtime["models"][m] = {"fit_s": round(r.fit_s, 2), "score_s": round(r.score_s, 2),
                                         "total_s": round(r.fit_s + r.score_s, 2)}
        for m in self.models:
            if m not in self.runs and m not in self.skipped:
                self.skipped[m] = next((n for n in self.notes if n.startswith(m)), "skipped")

    def score(self) -> dict[str, Any]:
        """Metrics with bootstrap CIs per slice, paired tests, ablations and sampled metrics."""
        self.log("metrics, bootstrap CIs and paired tests")
        t = time.perf_counter()
        cfg, prep, ks = self.cfg, self.prep, self.ks
        results: dict[str, RunResult] = {}
        cold: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for m, r in tqdm(list(self.runs.items()), desc="metrics + bootstrap", unit="model",
                         disable=not cfg.progress, leave=False):
            rel = prep.main_rel if m != "hybrid+llm" else {u: prep.main_rel[u] for u in r.main}
            results[m] = _metrics(r.main, rel, prep.lib, ks)
            models[m] = _summary(results[m], ks, cfg)
            if m != "hybrid+llm" and prep.cold:
                cold[m] = _summary(_metrics(r.cold, prep.cold_rel, prep.lib, ks), ks, cfg)
        comparisons = {}
        if "hybrid" in results:
            for m, res in results.items():
                if m == "hybrid+llm":
                    comparisons["hybrid+llm vs hybrid"] = _paired(res, results["hybrid"], self.key10, cfg)
                elif m != "hybrid":
                    comparisons[f"hybrid vs {m}"] = _paired(results["hybrid"], res, self.key10, cfg)
        ablation = {}
        for name, rk in self.ablation_runs.items():
            res = _metrics(rk, prep.main_rel, prep.lib, ks)
            keys = [k for k in (self.key10, f"recall@{self.kmax}") if k in res]
            ablation[name] = _clean(summarize(res, n_boot=cfg.n_boot, seed=cfg.seed, keys=keys))
        out: dict[str, Any] = {
            "models": models,
            "cold_start": {"threshold": cfg.cold_threshold, "readers": len(prep.cold), "models": cold},
            "significance": {"metric": self.key10, "comparisons": comparisons},
            "ablation": ablation,
            "bar": _bar(models, ks),
        }
        if self.sampler is not None:
            out["sampled"] = {"negatives": int(cfg.sampled or 0), "warning": SAMPLED_WARNING,
                              "reference": KRICHENE_RENDLE,
                              "models": {m: _summary(_metrics(r.sampled, prep.main_rel, prep.lib, ks), ks, cfg)
                                         for m, r in self.runs.items() if r.sampled}}
        self.runtime["metrics"] = round(time.perf_counter() - t, 2)
        return out

    def explain(self) -> dict[str, Any]:
        t = time.perf_counter()
        explanations: dict[str, Any] = {}
        if self.hybrid is not None:
            self.log(f"re-checking the evidence behind the hybrid's top {min(self.ks)}")
            explanations["hybrid"] = _faithfulness(self.hybrid, self.prep, self.runs["hybrid"].main, self.cfg,
                                                   min(self.ks))
        if self.llm_info is not None:
            explanations["hybrid+llm"] = self.llm_info.get("explanations")
        self.runtime["explanations"] = round(time.perf_counter() - t, 2)
        return explanations

    def tuning_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {m: r.to_dict() for m, r in self.tuned.items()}
        if self.hybrid_tuned is not None:
            out["hybrid"] = self.hybrid_tuned.to_dict()
        if self.llm_info is not None:
            out["hybrid+llm"] = {k: v for k, v in self.llm_info.items() if k not in ("explanations", "seconds")}
        return out


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Run the whole study and write ``cfg.out`` (metrics.json, report.md, plots, rankings); returns metrics."""
    study = _Study(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    study.prepare()
    study.tune()
    study.rank()
    scored = study.score()
    explanations = study.explain()
    study.runtime["total"] = round(time.perf_counter() - study.t0, 2)
    prep = study.prep
    metrics: dict[str, Any] = {
        "models": scored.pop("models"),
        "protocol": _protocol(cfg, prep, study.ks, study.val_desc, study.models, study.skipped, study.llm_info),
        "dataset": prep.info["dataset"] | {"evaluated_users": prep.info["users"]},
        "tuning": study.tuning_dict(),
        **scored,
        "explanations": explanations,
        "notes": study.notes,
        "hardware": _hardware(),
        "command": _command(cfg),
        "runtime_s": study.runtime,
    }
    metrics = _clean(metrics)
    study.log(f"writing {out}")
    _write(out, metrics, study.runs, prep, cfg)
    if study.hybrid_tuned is not None:
        (out / "tuned-config.toml").write_text(tuned_config_toml(
            study.hybrid_tuned.best, {n: r.best for n, r in study.tuned.items()}, prep.info["dataset"]["label"], cfg.seed))
    return metrics


def _ablation_hook(hybrid: HybridSource, params: Mapping[str, Any], tuned: Mapping[str, Mapping[str, Any]],
                   prep: Prepared, kmax: int, fitted: Mapping[str, CandidateSource], seed: int):
    """Ablations of the tuned hybrid, fused from the same per-source matrices (nothing re-tuned).

    Returns ``(hook, rankings)``: the hook (for :func:`_score_model`) fills ``rankings[variant]``
    for the main slice. Variants: each weighted source dropped, the CF source alone, the sequence
    source alone, the plain (unweighted) CF user vector, and the shipped defaults: what
    ``readnext ingest`` + ``recommend`` build on this training data with default settings
    (:func:`retrieval.sources.build_sources`, its own CF fit), so the report shows how far the
    untuned product is from the tuned hybrid.
    """
    from retrieval.sources import CFSource, build_sources

    weights = dict(params["weights"])
    method, rrf_k = params.get("method", "score"), float(params.get("rrf_k", 60.0))
    cf = hybrid.sources["cf"]
    plain = CFSource(prep.lib, cf.model_name, None, fitted=cf.model, max_ease_items=10**9)  # type: ignore[attr-defined]
    shipped = build_sources(prep.lib)["hybrid"]
    variants: dict[str, Any] = {}
    for n, w in weights.items():
        if w > 0 and n != "cf":
            variants[f"hybrid without {n}"] = {**weights, n: 0.0}
    variants["cf source alone (tuned user vector)"] = {"cf": 1.0}
    if weights.get("sequence", 0) > 0:
        variants["sequence source alone"] = {"sequence": 1.0}
    if getattr(cf, "weighted", False):
        variants["hybrid with a plain CF user vector"] = "plain"
    variants["shipped defaults (readnext's default settings, untuned)"] = "shipped"
    out: dict[str, dict[str, list[str]]] = {n: {} for n in variants}

    def hook(chunk, per, excl, slice_name):
        if slice_name != "main":
            return
        for name, w in variants.items():
            if w == "plain":
                S = fuse_matrices({**per, "cf": plain.score_batch(chunk)}, weights, excl, method, rrf_k)
            elif w == "shipped":
                S = shipped.score_batch(chunk)
            else:
                S = fuse_matrices(per, w, excl, method, rrf_k)
            for c, r in zip(chunk, _rank_rows(prep.lib, S, excl, kmax)):
                out[name][c.user_id] = r

    return hook, out


def _bar(models: Mapping[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """Does the hybrid beat every single-source model by >= 10% on ndcg@10 (relative)?"""
    key = f"ndcg@{10 if 10 in ks else ks[0]}"
    if "hybrid" not in models:
        return {"metric": key, "met": None, "reason": "hybrid not evaluated"}
    h = models["hybrid"][key]["mean"]
    rel = {m: (h / v["mean"] - 1.0 if v["mean"] else None) for m, v in
           ((m, models[m][key]) for m in SINGLE_MODELS if m in models)}
    if not rel:
        return {"metric": key, "met": None, "reason": "no single-source model evaluated"}
    worst = min(rel, key=lambda m: rel[m] if rel[m] is not None else math.inf)
    return _clean({"metric": key, "threshold": 0.10, "hybrid": h, "relative_gain": rel,
                   "closest_model": worst, "min_gain": rel[worst],
                   "met": all(v is not None and v >= 0.10 for v in rel.values())})


def _protocol(cfg: EvalConfig, prep: Prepared, ks: Sequence[int], val_desc: Mapping[str, Any],
              models: Sequence[str], skipped: Mapping[str, str], llm_info: Mapping[str, Any] | None) -> dict[str, Any]:
    ds = prep.dataset
    split = prep.split
    if split.method == "temporal":
        order = ("timestamps" if ds.has_timestamps else
                 "row order (documented as chronological; approximate, see the dataset README)")
        split_text = f"per-reader temporal holdout of the last {cfg.holdout:.0%} of ratings (min 1) by {order}"
    else:
        split_text = (f"per-reader seeded random holdout of {cfg.holdout:.0%} of ratings (min 1): the data has no "
                      "timestamps and no meaningful order")
    return _clean({
        "split": split.method, "split_text": split_text, "holdout": cfg.holdout, "seed": cfg.seed,
        "relevant_threshold": cfg.relevant, "ks": list(ks), "ranking": "full catalog",
        "catalog": ("books with at least one rating in the data" if cfg.catalog == "rated" else "every catalog book"),
        "exclude": "the reader's training books",
        "cold_start_threshold": cfg.cold_threshold,
        "main_slice": f"test readers with >= {cfg.cold_threshold} training ratings and >= 1 relevant held-out book",
        "users_subset": cfg.users, "models": list(models), "skipped_models": dict(skipped),
        "validation": dict(val_desc) | {"selection": "ndcg@10"},
        "quick": cfg.quick, "bootstrap": {"n_boot": cfg.n_boot, "level": 0.95, "kind": "percentile"},
        "significance_test": "paired sign-flip permutation test (two-sided), bootstrap CI of the mean difference",
        "sampled_negatives": cfg.sampled, "llm": (dict(readers=llm_info["readers"], backend=llm_info["backend"])
                                                  if llm_info else None),
        "to_read": "not used (to-read shelves carry no time, so they may reflect the held-out period)",
    })


def _write(out: Path, metrics: Mapping[str, Any], runs: Mapping[str, _Run], prep: Prepared, cfg: EvalConfig) -> None:
    from .plots import write_plots
    from .report import write_report

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if cfg.dump_rankings:
        for fname, rel, attr in (("rankings.jsonl", prep.main_rel, "main"),
                                 ("rankings_cold_start.jsonl", prep.cold_rel, "cold")):
            with open(out / fname, "w") as f:
                for u in rel:
                    line = {"user_id": u, "relevant": sorted(rel[u]),
                            "rankings": {m: getattr(r, attr)[u] for m, r in runs.items() if u in getattr(r, attr)}}
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
    plots = write_plots(metrics, out)
    write_report(metrics, out / "report.md", plots)


def config_dict(cfg: EvalConfig) -> dict[str, Any]:
    """The config as plain data (for logs)."""
    return asdict(cfg)
