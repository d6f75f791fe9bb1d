"""Readers like you: Chroma ``users`` neighbour queries vs exact numpy, ANN recall, cost per
request.

    python bench/bench_readers.py --dataset ../shared/data/goodbooks [--queries 300]
        [--json out.json]

Builds what ingest builds for the readers-like-you path (taste vectors of every reader, from the
rated part of the catalog, in a fresh Chroma ``users`` collection in a temporary folder), then
for a seeded sample of readers measures:

* latency of one neighbour query: Chroma (HNSW, cosine) vs brute-force numpy over all vectors;
* recall@K of Chroma's neighbours against the exact ones (K = the readers source's size);
* the source's cost inside a recommend: ``ReadersSource.candidates`` on the live path (Chroma)
  and the exact path, and the hybrid's ``score`` with and without the readers source.

Timings depend on the machine and its load; the figures in the README were taken on a shared
2-core machine (noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="../shared/data/goodbooks")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--neighbours", type=int, default=None, help="K (default: ReadersConfig.neighbours)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    from retrieval.config import ProfileConfig, ReadersConfig, Settings
    from retrieval.data import detect_format, load_dataset
    from retrieval.embed import Embedder
    from retrieval.library import Library
    from retrieval.profiles import build_profiles
    from retrieval.readers import SLACK, ReadersSource
    from retrieval.sources import build_sources
    from retrieval.store import VectorStore
    from retrieval.types import UserContext

    settings = Settings.load()
    cfg = ReadersConfig(**({"neighbours": args.neighbours} if args.neighbours else {}))
    ds = load_dataset(detect_format(args.dataset), directory=args.dataset)
    rated = set(ds.ratings["book_id"].unique())
    books = [b for b in ds.books if b.book_id in rated]
    e = settings.embedder
    emb = Embedder(e.model, e.device, e.batch_size, cache_dir=settings.home / "cache")
    vectors = emb.encode(
        [b.embedding_text() for b in books], show_progress=True, desc="embed catalog"
    )
    lib = Library(books, vectors, ds.ratings, ds.has_timestamps, None, ds.name, ds.ordered)
    t = time.perf_counter()
    users, uvecs, umeta = build_profiles(
        ds.ratings, lib.index, vectors, ProfileConfig(), ds.has_timestamps
    )
    profile_s = time.perf_counter() - t
    out: dict = {
        "dataset": ds.label or ds.name,
        "readers": len(users),
        "dim": int(uvecs.shape[1]),
        "neighbours": cfg.neighbours,
        "queries": args.queries,
        "profiles_s": round(profile_s, 2),
    }
    with tempfile.TemporaryDirectory(prefix="readnext-bench-") as tmp:
        store = VectorStore(Path(tmp) / "chroma", emb)
        t = time.perf_counter()
        store.upsert("users", users, uvecs, umeta, progress=True)
        out["chroma_upsert_s"] = round(time.perf_counter() - t, 2)
        rng = np.random.default_rng(args.seed)
        sample = [
            users[i]
            for i in rng.choice(len(users), size=min(args.queries, len(users)), replace=False)
        ]
        pos = {u: i for i, u in enumerate(users)}
        K = cfg.neighbours
        chroma_t, chroma_v_t, numpy_t, recall = [], [], [], []
        store.query("users", uvecs[0], K + 1)  # warm the index
        for u in tqdm(sample, desc="neighbour queries", unit="query"):
            v = uvecs[pos[u]]
            t = time.perf_counter()
            hits = [i for i, _ in store.query("users", v, K + 1) if i != u][:K]
            chroma_t.append(time.perf_counter() - t)
            t = time.perf_counter()  # what the readers source asks: ids and stored vectors
            store.query_vectors("users", v, K + 1 + SLACK)
            chroma_v_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            s = uvecs @ v
            s[pos[u]] = -np.inf
            top = np.argpartition(-s, K)[:K]
            numpy_t.append(time.perf_counter() - t)
            exact = {users[i] for i in top}
            recall.append(len(exact & set(hits)) / K)
        out["chroma_query"] = _pct(chroma_t)
        out["chroma_query_with_vectors"] = _pct(chroma_v_t)
        out["numpy_query"] = _pct(numpy_t)
        out["ann_recall_at_k"] = round(float(np.mean(recall)), 4)
        out["ann_recall_min"] = round(float(np.min(recall)), 4)

        # the source inside a recommend: the live (Chroma) and exact paths, and the hybrid's score
        live = ReadersSource(lib, cfg, ProfileConfig(), store)
        exact_src = ReadersSource(lib, cfg, ProfileConfig())
        exact_src.index  # build once, as a long-running server would
        srcs = build_sources(lib)
        with_r, without_r = srcs["hybrid"], None
        from retrieval.sources import HybridSource

        w = dict(with_r.weights)
        w["readers"] = max(w.get("readers", 0.0), 0.5)
        with_r = HybridSource(lib, srcs, w)
        without_r = HybridSource(lib, srcs, {**w, "readers": 0.0})
        live_t, exact_t, hyb_t, hyb0_t, same, same_nb, same_bits = [], [], [], [], [], [], []
        for u in tqdm(sample[:100], desc="readers source in recommend", unit="reader"):
            ctx = UserContext(u, lib.history(u))
            t = time.perf_counter()
            a = [c.book_id for c in live.candidates(ctx, 10)]
            live_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            exact_src.index._cache.clear()
            b = [c.book_id for c in exact_src.candidates(ctx, 10)]
            exact_t.append(time.perf_counter() - t)
            same.append(a == b)
            live._last = None
            r1, s1 = live.neighbours([ctx])
            r2, s2 = exact_src.neighbours([ctx])
            same_nb.append(set(r1[0].tolist()) == set(r2[0].tolist()))
            same_bits.append(r1.tolist() == r2.tolist() and bool(np.array_equal(s1, s2)))
            t = time.perf_counter()
            with_r.score(ctx)
            hyb_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            without_r.score(ctx)
            hyb0_t.append(time.perf_counter() - t)
        out["readers_candidates_live_chroma"] = _pct(live_t)
        out["readers_candidates_exact_numpy"] = _pct(exact_t)
        out["live_top10_equals_exact_share"] = round(float(np.mean(same)), 4)
        # the source's neighbours (k of the k + SLACK nearest, by the exact cosine): the same set
        # as the exact path's, and then the same rows and cosines bit for bit
        out["live_neighbour_set_equals_exact_share"] = round(float(np.mean(same_nb)), 4)
        out["live_neighbours_bit_identical_share"] = round(float(np.mean(same_bits)), 4)
        out["hybrid_score_with_readers"] = _pct(hyb_t)
        out["hybrid_score_without_readers"] = _pct(hyb0_t)
        store.close()
    out["threads"] = os.environ.get("OMP_NUM_THREADS")
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
