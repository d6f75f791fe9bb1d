"""The LLM stage: rerank the hybrid's head with the live assistant reranker, weight tuned on
validation readers, and measure the grounding guard on LLM explanations."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.config import Settings
from retrieval.library import Library
from retrieval.ranking import rank
from retrieval.sources import CandidateSource, HybridSource
from retrieval.types import UserContext

from .metrics import ndcg_at_k
from .protocol import EvalConfig, Prepared, clean, subset
from .tuning import TuningSet


def llm_stage(
    prep: Prepared,
    ts: TuningSet,
    hybrid: CandidateSource,
    val_hybrid: CandidateSource,
    cfg: EvalConfig,
    kmax: int,
    notes: list[str],
    settings: Settings | None = None,
) -> tuple[dict[str, list[str]], dict[str, Any]] | None:
    """Rerank the hybrid's head with the LLM for a seeded subset of readers (weight tuned on
    validation).

    The live pieces, not a copy: the head is the product's ranking (:func:`retrieval.ranking.rank`,
    series order included), the prompt history is :func:`assistant.recommender.prompt_history`,
    the model is asked by :class:`assistant.rerank.LLMReranker` and each weight's order is its
    :func:`assistant.rerank.fuse_head`; the head size is ``settings.llm.top_n``.

    Returns the reranked rankings of the test subset and a report dict, or None (with a note)
    when the LLM layer is unavailable.
    """
    try:
        from assistant.llm import load_backend
        from assistant.recommender import prompt_history
        from assistant.rerank import LLMReranker, fuse_head
    except ImportError as e:
        notes.append(f"hybrid+llm skipped: the LLM layer is not importable ({e})")
        return None
    t0 = time.perf_counter()
    try:
        backend = load_backend(cfg.llm or "local")
    except Exception as e:
        notes.append(f"hybrid+llm skipped: cannot load LLM backend {cfg.llm or 'local'!r} ({e})")
        return None
    if backend.name == "none":
        notes.append("hybrid+llm skipped: --llm none")
        return None
    top_n = (settings or Settings()).llm.top_n
    # weight 0: the reranker asks the model and keeps the order; each weight is fused below
    reranker = LLMReranker(backend, weight=0.0, top_n=top_n)
    grid = (0.0, 0.25, 0.5, 1.0, 2.0)

    def llm_scores(lib: Library, model: CandidateSource, ctxs: Sequence[UserContext], desc: str):
        """The product's head (ids, scores) and the LLM's score of each head book, per reader."""
        out = []
        heads = rank(model, ctxs, max(top_n, kmax))
        for c, head in zip(
            tqdm(ctxs, desc=desc, unit="reader", disable=not cfg.progress, leave=False), heads
        ):
            cands = [(lib.books[j], float(s)) for j, s in zip(head.items, head.scores)]
            res = reranker.rerank(prompt_history(c.history, lib.by_id), cands)
            llm = {r.book_id: r.llm_score for r in res if r.llm_score is not None}
            out.append(([b.book_id for b, _ in cands], [s for _, s in cands], llm))
        return out

    def fuse(head_ids, head_scores, llm, w: float) -> list[str]:
        n = min(top_n, len(head_ids))
        if w == 0 or n < 2 or len(llm) < n:
            return list(head_ids)  # weight 0 (or no LLM signal): the hybrid order, exactly
        order, _ = fuse_head(head_scores[:n], [llm[b] for b in head_ids[:n]], w)
        return [head_ids[i] for i in order] + list(head_ids[n:])

    # Tune the weight on validation readers (a seeded subset of the tuning readers).
    val_users = subset([c.user_id for c in ts.ctxs], cfg.llm_users, cfg.seed, 5)
    vpos = {c.user_id: i for i, c in enumerate(ts.ctxs)}
    vctx = [ts.ctxs[vpos[u]] for u in val_users]
    vscores = llm_scores(ts.lib, val_hybrid, vctx, "LLM rerank (validation)")
    vrel = [
        {ts.lib.books[j].book_id for j in np.flatnonzero(ts.relevant[vpos[c.user_id]])}
        for c in vctx
    ]
    per_w: dict[float, np.ndarray] = {}
    for w in grid:
        per_w[w] = np.asarray(
            [
                ndcg_at_k(fuse(ids, sc, llm, w), rel, 10)
                for (ids, sc, llm), rel in zip(vscores, vrel)
            ]
        )
    best_w, best, table = pick_weight(per_w)
    # Test readers.
    users = subset([c.user_id for c in prep.main], cfg.llm_users, cfg.seed, 6)
    by_id = {c.user_id: c for c in prep.main}
    tctx = [by_id[u] for u in users]
    if best_w == 0:  # the hybrid's ranking exactly: no need to ask the model on the test readers
        rankings = {r.ctx.user_id: r.book_ids(prep.lib) for r in rank(hybrid, tctx, kmax)}
    else:
        tscores = llm_scores(prep.lib, hybrid, tctx, "LLM rerank (test)")
        rankings = {
            c.user_id: fuse(ids, sc, llm, best_w)[:kmax] for c, (ids, sc, llm) in zip(tctx, tscores)
        }
    info: dict[str, Any] = {
        "backend": backend.describe(),
        "mode": "pointwise" if backend.supports_logprobs else "listwise",
        "top_n": top_n,
        "readers": len(users),
        "validation_readers": len(vctx),
        "weight_grid": table,
        "weight": best_w,
        "validation_ndcg@10": clean(best),
        "selection": "best validation ndcg@10, kept only if its gain over weight 0 exceeds one "
        "standard error",
        "errors": reranker.last_error,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    info["explanations"] = _llm_explanations(backend, prep, hybrid, tctx, rankings, cfg)
    return rankings, info


def pick_weight(per_w: Mapping[float, np.ndarray]) -> tuple[float, float, list[dict[str, Any]]]:
    """The LLM weight by validation ndcg@10 with the one-standard-error rule toward weight 0.

    With a few dozen readers the best weight often wins by noise, so a weight > 0 is kept only
    when its paired gain over weight 0 exceeds one standard error of that gain (Hastie et al.,
    "Elements of Statistical Learning", 7.10). Returns ``(weight, its mean ndcg, table)``.
    """
    means = {
        w: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for w, v in per_w.items()
    }
    base = per_w[0.0]
    table = []
    for w, v in per_w.items():
        d = (v - base)[~(np.isnan(v) | np.isnan(base))]
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
        table.append(
            {
                "weight": w,
                "ndcg@10": clean(means[w]),
                "gain_vs_0": clean(float(d.mean()) if len(d) else math.nan),
                "gain_se": clean(se),
            }
        )
    best = max(per_w, key=lambda w: (means[w], -w))
    d = next(t for t in table if t["weight"] == best)
    if best != 0.0 and not (
        d["gain_vs_0"] is not None and d["gain_se"] is not None and d["gain_vs_0"] > d["gain_se"]
    ):
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


def _llm_explanations(
    backend,
    prep: Prepared,
    hybrid: HybridSource,
    ctxs: Sequence[UserContext],
    rankings: Mapping[str, list[str]],
    cfg: EvalConfig,
) -> dict[str, Any]:
    """LLM explanations for the top pick of the first ``cfg.llm_explain`` LLM readers: guard
    stats."""
    try:
        from assistant.explain import template_explanation
        from assistant.explainer import Explainer
        from assistant.recommender import prompt_history
    except ImportError as e:
        return {"skipped": f"assistant.explainer.Explainer not importable ({e})"}
    ex = Explainer(backend)
    lib = prep.lib
    kinds: Counter = Counter()
    n = 0
    for c in tqdm(
        list(ctxs)[: cfg.llm_explain],
        desc="LLM explanations",
        unit="text",
        disable=not cfg.progress,
        leave=False,
    ):
        top = rankings.get(c.user_id, [])[:1]
        if not top:
            continue
        item = lib.index[top[0]]
        evs = hybrid.evidence_for(c, [item])[0]
        rated = {r.book_id: r.rating for r in c.history}
        text = template_explanation(evs, lib.by_id, rated)
        hist = [b for b, _ in prompt_history(c.history, lib.by_id)]  # as the live explainer prompts
        res = ex.explain(lib.books[item], evs, hist, lib.by_id, text)
        n += 1
        kinds[_hallucination(res.rejected_reason or "")] += 1
    counts = ex.counter.as_dict()
    rate = lambda k: kinds[k] / n if n else math.nan
    return clean(
        {
            "explanations": n,
            "hallucinated_title_rate": rate("title"),
            "hallucinated_author_rate": rate("author"),
            "unsupported_name_rate": rate("other name"),
            "guard_fallback_rate": counts["fallback_rate"],
            "fallback_reasons": counts["reasons"],
            "llm_accepted": counts["llm"],
        }
    )
