"""Benchmark the LLM layer: load time, Yes/No batch and rerank latency, explanation time,
tokens/s and the grounding guard's fallback rate, on synthetic readers drawn from a catalog.

    python bench/bench_llm.py                          # offline default model, demo catalog
    python bench/bench_llm.py --llm Qwen/Qwen2.5-1.5B-Instruct --books path/to/books.csv --json
    python bench/bench_llm.py --llm http://127.0.0.1:8000 --users 30

Synthetic readers: each gets 8 random rated books (3-5 stars) and 20 random candidates with
decreasing retrieval scores. Candidate and reader are unrelated, so this measures speed and
guard behaviour, not recommendation quality (that is eval's job).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.types import Book, Evidence  # noqa: E402

DEMO = ROOT / "data" / "demo" / "books.csv"
SAMPLE = ROOT.parent / "shared" / "data" / "goodbooks-sample" / "books.csv"


def load_books(path: Path) -> list[Book]:
    """Read a books CSV in the goodbooks or the generic (demo) layout."""
    from retrieval import data

    header = path.open(encoding="utf-8").readline()
    ds = data.load_goodbooks(path) if "original_publication_year" in header else data.load_generic(path)
    return ds.books


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def synthetic_readers(books: list[Book], n: int, seed: int, n_hist: int = 8, n_cand: int = 20):
    """(history [(Book, rating)], candidates [(Book, score)]) per reader; deterministic given seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picked = rng.sample(books, n_hist + n_cand)
        hist = [(b, float(rng.choice([3, 4, 4, 5, 5]))) for b in picked[:n_hist]]
        cands = [(b, 1.0 - i / n_cand + rng.uniform(0, 0.01)) for i, b in enumerate(picked[n_hist:])]
        out.append((hist, cands))
    return out


def evidence_for(book: Book, hist: list[tuple[Book, float]], rng: random.Random) -> list[Evidence]:
    """Plausible evidence: similarity to a liked book, real tag/author overlaps, popularity."""
    liked = [b for b, r in hist if r >= 4] or [hist[0][0]]
    ev = [Evidence("similar_to", book_ids=(rng.choice(liked).book_id,), value=round(rng.uniform(0.5, 0.9), 2))]
    for b in liked:
        shared = tuple(t for t in book.tags if t in b.tags)[:3]
        if shared:
            ev.append(Evidence("shared_tags", tags=shared, book_ids=(b.book_id,)))
            break
    for b in liked:
        same = tuple(a for a in book.authors if a in b.authors)
        if same:
            ev.append(Evidence("same_author", authors=same, book_ids=(b.book_id,)))
            break
    ev.append(Evidence("popular", count=rng.randint(200, 5000), value=round(rng.uniform(3.6, 4.5), 2)))
    return ev


def template_for(ev: list[Evidence], by_id: dict[str, Book], hist: list[tuple[Book, float]]) -> str:
    try:
        from assistant.explain import template_explanation

        return template_explanation(ev, by_id, {b.book_id: r for b, r in hist})
    except ImportError:  # the template module belongs to another part of the app
        return f"Because you liked {by_id[ev[0].book_ids[0]].title}."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llm", default="local", help="local (default), a HF model id/path, or an http(s):// endpoint")
    ap.add_argument("--books", type=Path, default=None, help=f"books CSV (default {DEMO}, else the goodbooks sample)")
    ap.add_argument("--users", type=int, default=30, help="synthetic readers for rerank latency (>= 30 for p95)")
    ap.add_argument("--explain", type=int, default=10, help="explanations to generate (one per reader)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    path = args.books or (DEMO if DEMO.is_file() else SAMPLE)
    if not path.is_file():
        ap.error(f"books CSV not found: {path}; pass --books")
    books = load_books(path)
    by_id = {b.book_id: b for b in books}
    readers = synthetic_readers(books, max(args.users, args.explain), args.seed)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    from assistant.llm import load_backend
    from assistant.explainer import Explainer
    from assistant.rerank import LLMReranker
    from prompts import render_messages

    opts: dict[str, Any] = {"num_threads": args.threads} if args.threads and not args.llm.startswith("http") else {}
    t0 = time.perf_counter()
    backend = load_backend(args.llm, **opts)
    load_s = time.perf_counter() - t0
    log(f"loaded {backend.describe()} in {load_s:.1f}s from {path} ({len(books)} books)")
    res: dict[str, Any] = {"llm": backend.describe(), "books_csv": str(path), "load_s": round(load_s, 2)}
    try:
        import torch

        res["torch_threads"] = torch.get_num_threads()
        res["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass

    # Tokens/s: one unconstrained greedy generation (after a warm-up).
    msgs = [{"role": "user", "content": "Describe your favourite novel in a long paragraph."}]
    backend.generate(msgs, 8)
    t = time.perf_counter()
    text = backend.generate(msgs, 96)
    gen_s = time.perf_counter() - t
    n_tok = getattr(backend, "last_generation", {}).get("new_tokens")
    res["tokens_per_s"] = round(n_tok / gen_s, 1) if n_tok else None
    res["tokens_per_s_note"] = "model tokens" if n_tok else "unknown for endpoints (no token count returned)"
    log(f"generation: {res['tokens_per_s']} tokens/s ({len(text)} chars in {gen_s:.1f}s)")

    reranker = LLMReranker(backend, weight=1.0, top_n=20)
    if reranker.mode == "pointwise":
        from prompts.format import format_book, format_history

        hist, cands = readers[0]
        prompts = [render_messages("rerank_yes_no", history=format_history(hist), candidate=format_book(b))[0]
                   for b, _ in cands]
        times = []
        for _ in range(3):
            t = time.perf_counter()
            backend.yes_no_scores(prompts)
            times.append(time.perf_counter() - t)
        res["yes_no_batch20_s"] = round(statistics.median(times), 2)
        log(f"one Yes/No batch of 20: {res['yes_no_batch20_s']}s (median of 3)")
    res["rerank_mode"] = reranker.mode
    lat = []
    for i, (hist, cands) in enumerate(readers[: args.users]):
        t = time.perf_counter()
        reranker.rerank(hist, cands)
        lat.append(time.perf_counter() - t)
        if reranker.last_error:
            log(f"rerank error: {reranker.last_error}")
            break
    if lat:
        res["rerank20"] = {"users": len(lat), "p50_s": round(percentile(lat, 50), 2),
                           "p95_s": round(percentile(lat, 95), 2), "mean_s": round(statistics.mean(lat), 2)}
        log(f"rerank of 20 over {len(lat)} readers: p50 {res['rerank20']['p50_s']}s, p95 {res['rerank20']['p95_s']}s")

    ex = Explainer(backend, max_new_tokens=args.max_new_tokens)
    rng = random.Random(args.seed)
    ex_times, samples = [], []
    for hist, cands in readers[: args.explain]:
        book = cands[0][0]
        ev = evidence_for(book, hist, rng)
        t = time.perf_counter()
        r = ex.explain(book, ev, [b for b, _ in hist], by_id, template_for(ev, by_id, hist))
        ex_times.append(time.perf_counter() - t)
        samples.append({"title": book.title, "source": r.source, "reason": r.rejected_reason,
                        "why": r.why, "blurb": r.blurb})
    if ex_times:
        res["explain"] = {"n": len(ex_times), "mean_s": round(statistics.mean(ex_times), 2),
                          "p50_s": round(percentile(ex_times, 50), 2), "max_s": round(max(ex_times), 2),
                          **ex.counter.as_dict()}
        log(f"explanations: {len(ex_times)} in mean {res['explain']['mean_s']}s; "
            f"guard fallback rate {ex.counter.fallback_rate:.0%} {dict(ex.counter.reasons)}")
        for s in samples[:5]:
            log(f"  [{s['source']}] {s['title']}: {s['why']}" + (f" | {s['blurb']}" if s["blurb"] else "")
                + (f"  (rejected: {s['reason']})" if s["reason"] else ""))
    res["samples"] = samples
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    log(f"peak RSS {res['peak_rss_mb']} MB")
    if args.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
