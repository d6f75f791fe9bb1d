"""Explanation faithfulness: re-check every evidence record behind the hybrid's top k against the
training data (:func:`retrieval.evidence.verify`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from retrieval.sources import HybridSource

from .protocol import EvalConfig, Prepared, clean, subset


def faithfulness(
    hybrid: HybridSource, prep: Prepared, rankings: Mapping[str, list[str]], cfg: EvalConfig, k: int
) -> dict[str, Any]:
    """Re-check every evidence record behind the hybrid's top ``k`` against the training data."""
    from retrieval.evidence import verify

    users = subset([c.user_id for c in prep.main], cfg.explain_users, cfg.seed, 4)
    by_id = {c.user_id: c for c in prep.main}
    kinds: Counter = Counter()
    bad_kinds: Counter = Counter()
    failures: list[dict[str, Any]] = []
    n_items = no_evidence = 0
    for u in tqdm(
        users, desc="verify evidence", unit="reader", disable=not cfg.progress, leave=False
    ):
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
    return clean(
        {
            "readers": len(users),
            "items": n_items,
            "evidence_records": total,
            "verified": ok,
            "faithfulness": ok / total if total else math.nan,
            "items_without_evidence": no_evidence,
            "by_kind": dict(sorted(kinds.items())),
            "failed_by_kind": dict(sorted(bad_kinds.items())),
            "failures": failures,
            "k": k,
        }
    )
