"""Benchmark the LLM layer, the same way for any backend: load and warm-up time, tokens/s,
first streamed token, Yes/No rerank over N candidates (p50/p95), three short JSON replies
(explanation + blurb for the top 3, p50/p95), the guard on real explanations, and peak RSS.

    python bench/bench_llm.py                          # offline default
                                                         (Qwen2.5-Coder-1.5B, llama.cpp)
    python bench/bench_llm.py --llm tiny               # SmolLM2-135M via transformers
    python bench/bench_llm.py --compare tiny local     # both, each in a fresh process, side by side
    python bench/bench_llm.py --llm Qwen/Qwen2.5-1.5B-Instruct --books path/to/books.csv --json
    python bench/bench_llm.py --llm http://127.0.0.1:8000 --users 30

Timings on a CPU shared with other busy processes are noisy: report the load average with them.

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
    ds = (
        data.load_goodbooks(path)
        if "original_publication_year" in header
        else data.load_generic(path)
    )
    return ds.books


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def synthetic_readers(books: list[Book], n: int, seed: int, n_hist: int = 8, n_cand: int = 20):
    """(history [(Book, rating)], candidates [(Book, score)]) per reader; deterministic given
    seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picked = rng.sample(books, n_hist + n_cand)
        hist = [(b, float(rng.choice([3, 4, 4, 5, 5]))) for b in picked[:n_hist]]
        cands = [
            (b, 1.0 - i / n_cand + rng.uniform(0, 0.01)) for i, b in enumerate(picked[n_hist:])
        ]
        out.append((hist, cands))
    return out


def evidence_for(book: Book, hist: list[tuple[Book, float]], rng: random.Random) -> list[Evidence]:
    """Plausible evidence: similarity to a liked book, real tag/author overlaps, popularity."""
    liked = [b for b, r in hist if r >= 4] or [hist[0][0]]
    ev = [
        Evidence(
            "similar_to",
            book_ids=(rng.choice(liked).book_id,),
            value=round(rng.uniform(0.5, 0.9), 2),
        )
    ]
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
    ev.append(
        Evidence("popular", count=rng.randint(200, 5000), value=round(rng.uniform(3.6, 4.5), 2))
    )
    return ev


def template_for(ev: list[Evidence], by_id: dict[str, Book], hist: list[tuple[Book, float]]) -> str:
    try:
        from assistant.explain import template_explanation

        return template_explanation(ev, by_id, {b.book_id: r for b, r in hist})
    except ImportError:  # the template module belongs to another part of the app
        return f"Because you liked {by_id[ev[0].book_ids[0]].title}."


EXPLAIN_SCHEMA = {
    "type": "object",
    "properties": {
        "why": {"type": "string", "maxLength": 400},
        "blurb": {"type": "string", "maxLength": 600},
    },
    "required": ["why", "blurb"],
    "additionalProperties": False,
}


def _cpu() -> float:
    """CPU seconds used by this process so far (user + system, all threads).

    On a CPU shared with other busy processes wall time says more about the neighbours than
    about the model; CPU seconds / threads estimates the wall time on a quiet machine.
    """
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load_avg() -> float | None:
    try:
        import os

        return round(os.getloadavg()[0], 1)
    except OSError:
        return None


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """All measurements for one backend, in this process."""
    path = args.books or (DEMO if DEMO.is_file() else SAMPLE)
    books = load_books(path)
    by_id = {b.book_id: b for b in books}
    readers = synthetic_readers(
        books,
        max(args.users, args.json_users, args.explain, args.turns, 1),
        args.seed,
        n_cand=args.candidates,
    )
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    from assistant.explainer import Explainer
    from assistant.llm import load_backend
    from assistant.rerank import LLMReranker
    from prompts import delimit, render_messages
    from prompts.format import format_book, format_evidence, format_history

    opts: dict[str, Any] = (
        {"num_threads": args.threads} if args.threads and not args.llm.startswith("http") else {}
    )
    res: dict[str, Any] = {
        "spec": args.llm,
        "books_csv": str(path),
        "load_avg_1m_start": _load_avg(),
    }
    t0 = time.perf_counter()
    backend = load_backend(args.llm, **opts)
    res["load_s"] = round(time.perf_counter() - t0, 2)
    res["llm"] = backend.describe()
    res["warm_up_s"] = round(backend.warm_up(), 2)
    res["threads"] = getattr(backend, "threads", None) or opts.get("num_threads")
    log(
        f"[{args.llm}] loaded {backend.describe()} in {res['load_s']}s, warmed in "
        f"{res['warm_up_s']}s"
    )

    # Tokens/s: one unconstrained greedy generation.
    msgs = [{"role": "user", "content": "Describe your favourite novel in a long paragraph."}]
    t, c = time.perf_counter(), _cpu()
    text = backend.generate(msgs, 48)
    gen_s, gen_cpu = time.perf_counter() - t, _cpu() - c
    n_tok = getattr(backend, "last_generation", {}).get("new_tokens")
    res["tokens_per_s"] = round(n_tok / gen_s, 1) if n_tok else None
    res["tokens_per_cpu_s"] = round(n_tok / gen_cpu, 1) if n_tok and gen_cpu else None
    log(
        f"[{args.llm}] generation: {res['tokens_per_s']} tokens/s ({len(text)} chars in "
        f"{gen_s:.1f}s)"
    )

    def explain_msgs(hist, book, rng):
        ev = evidence_for(book, hist, rng)
        m, _ = render_messages(
            "explain",
            history=format_history([b for b, _ in hist], 5),
            candidate=format_book(book, 300),
            evidence=format_evidence(ev, by_id),
            query="(none)",
            template=delimit(template_for(ev, by_id, hist), 400),
        )
        return m, ev

    # First streamed token of a real explanation prompt (a new reader each time: no warm prefix).
    rng = random.Random(args.seed)
    ftl, ftl_cpu = [], []
    for hist, cands in readers[: max(1, args.json_users)]:
        m, _ = explain_msgs(hist, cands[0][0], rng)
        t, c = time.perf_counter(), _cpu()
        for _chunk in backend.stream(m, 4):
            ftl.append(time.perf_counter() - t)
            ftl_cpu.append(_cpu() - c)
            break
    res["first_token_s"] = {
        "n": len(ftl),
        "p50": round(percentile(ftl, 50), 2),
        "p95": round(percentile(ftl, 95), 2),
        "cpu_s_p50": round(percentile(ftl_cpu, 50), 2),
        "prompt_tokens": getattr(backend, "last_generation", {}).get("prompt_tokens"),
    }
    log(
        f"[{args.llm}] first streamed token: p50 {res['first_token_s']['p50']}s p95 "
        f"{res['first_token_s']['p95']}s"
    )

    # Real chat turns: the Explainer's top-3 (explanation + blurb each, streamed) per reader,
    # after the start-up prime of the prompts' shared heads, as the chat runs them.
    if args.turns:
        ex = Explainer(backend, max_new_tokens=80)
        t = time.perf_counter()
        res["prime_tokens"] = ex.prime()
        res["prime_s"] = round(time.perf_counter() - t, 2)
        rng = random.Random(args.seed + 2)
        turn_s, turn_cpu, first, pick_s, gens = [], [], [], [], []
        sources: dict[str, int] = {}
        for hist, cands in readers[: args.turns]:
            shown: list[str] = []
            t0, c0, first_t = time.perf_counter(), _cpu(), None
            for book, _ in cands[:3]:
                ev = evidence_for(book, hist, rng)
                tp = time.perf_counter()
                final = None
                for part in ex.stream_explain(
                    book, ev, hist, by_id, template_for(ev, by_id, hist), shown=shown
                ):
                    if isinstance(part, str):
                        if first_t is None and part.strip():
                            first_t = time.perf_counter() - t0
                    else:
                        final = part
                pick_s.append(time.perf_counter() - tp)
                gens.append(dict(getattr(backend, "last_generation", {}) or {}))
                assert final is not None
                sources[final.source] = sources.get(final.source, 0) + 1
                if final.source == "llm":
                    shown += [final.why, final.blurb or ""]
            turn_s.append(time.perf_counter() - t0)
            turn_cpu.append(_cpu() - c0)
            if first_t is not None:
                first.append(first_t)
        res["turns"] = {
            "n": len(turn_s),
            "top3_p50_s": round(percentile(turn_s, 50), 2),
            "top3_p95_s": round(percentile(turn_s, 95), 2),
            "top3_cpu_s_p50": round(percentile(turn_cpu, 50), 2),
            "first_token_p50_s": round(percentile(first, 50), 2) if first else None,
            "first_token_p95_s": round(percentile(first, 95), 2) if first else None,
            "per_pick_p50_s": round(percentile(pick_s, 50), 2),
            "per_pick_p95_s": round(percentile(pick_s, 95), 2),
            "sources": sources,
            "explainer": ex.counter.as_dict(),
            "last_call": gens[-1] if gens else None,
        }
        m = getattr(getattr(backend, "_m", None), "stats", None)
        if m:
            res["kv_prefix"] = dict(m)
        log(f"[{args.llm}] top-3 turns: {res['turns']}")

    # Yes/No rerank over N candidates per reader.
    reranker = LLMReranker(backend, weight=1.0, top_n=args.candidates)
    res["rerank_mode"] = reranker.mode
    lat, lat_cpu = [], []
    for hist, cands in readers[: args.users]:
        t, c = time.perf_counter(), _cpu()
        reranker.rerank(hist, cands)
        lat.append(time.perf_counter() - t)
        lat_cpu.append(_cpu() - c)
        if reranker.last_error:
            log(f"rerank error: {reranker.last_error}")
            break
    if lat:
        res["rerank"] = {
            "candidates": args.candidates,
            "users": len(lat),
            "p50_s": round(percentile(lat, 50), 2),
            "p95_s": round(percentile(lat, 95), 2),
            "per_candidate_s": round(statistics.median(lat) / args.candidates, 3),
            "cpu_s_p50": round(percentile(lat_cpu, 50), 2),
            "per_candidate_cpu_s": round(statistics.median(lat_cpu) / args.candidates, 3),
        }
        log(
            f"[{args.llm}] rerank {args.candidates}: p50 {res['rerank']['p50_s']}s p95 "
            f"{res['rerank']['p95_s']}s"
        )

    # Top-3 explanation + blurb as constrained JSON (what the chat needs per turn).
    rng = random.Random(args.seed + 1)
    turns, turns_cpu, parse_fail = [], [], 0
    for hist, cands in readers[: args.json_users]:
        t, c = time.perf_counter(), _cpu()
        for book, _ in cands[:3]:
            m, _ = explain_msgs(hist, book, rng)
            try:
                backend.generate_json(m, EXPLAIN_SCHEMA, max_new_tokens=args.max_new_tokens)
            except Exception as e:  # counted: the point is that this should not happen
                parse_fail += 1
                log(f"json failed: {e}")
        turns.append(time.perf_counter() - t)
        turns_cpu.append(_cpu() - c)
    if turns:
        res["top3_json"] = {
            "turns": len(turns),
            "p50_s": round(percentile(turns, 50), 2),
            "p95_s": round(percentile(turns, 95), 2),
            "failures": parse_fail,
            "cpu_s_p50": round(percentile(turns_cpu, 50), 2),
            "max_new_tokens": args.max_new_tokens,
        }
        log(
            f"[{args.llm}] top-3 JSON texts: p50 {res['top3_json']['p50_s']}s p95 "
            f"{res['top3_json']['p95_s']}s, "
            f"{parse_fail} failures"
        )

    if args.explain:
        ex = Explainer(backend, max_new_tokens=args.max_new_tokens)
        rng = random.Random(args.seed)
        samples = []
        for hist, cands in readers[: args.explain]:
            book = cands[0][0]
            ev = evidence_for(book, hist, rng)
            r = ex.explain(book, ev, [b for b, _ in hist], by_id, template_for(ev, by_id, hist))
            samples.append(
                {
                    "title": book.title,
                    "source": r.source,
                    "reason": r.rejected_reason,
                    "why": r.why,
                    "blurb": r.blurb,
                }
            )
        res["explainer"] = ex.counter.as_dict()
        res["samples"] = samples
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    res["load_avg_1m_end"] = _load_avg()
    log(f"[{args.llm}] peak RSS {res['peak_rss_mb']} MB")
    return res


ROWS = [
    ("load (s)", lambda r: r.get("load_s")),
    ("warm-up (s)", lambda r: r.get("warm_up_s")),
    ("threads", lambda r: r.get("threads")),
    (
        "tokens/s (wall) / per CPU-second",
        lambda r: f"{r.get('tokens_per_s')} / {r.get('tokens_per_cpu_s')}",
    ),
    ("first streamed token p50 / p95 (s)", lambda r: _pair(r.get("first_token_s"), "p50", "p95")),
    (
        "  CPU-s p50 (prompt tokens)",
        lambda r: _pair(r.get("first_token_s"), "cpu_s_p50", "prompt_tokens"),
    ),
    (
        "Explainer top-3 turn p50 / p95 (s)",
        lambda r: _pair(r.get("turns"), "top3_p50_s", "top3_p95_s"),
    ),
    (
        "  first streamed token p50 / p95 (s)",
        lambda r: _pair(r.get("turns"), "first_token_p50_s", "first_token_p95_s"),
    ),
    (
        "  per pick p50 / p95 (s)",
        lambda r: _pair(r.get("turns"), "per_pick_p50_s", "per_pick_p95_s"),
    ),
    ("yes/no rerank p50 / p95 (s)", lambda r: _pair(r.get("rerank"), "p50_s", "p95_s")),
    (
        "  candidates; CPU-s per candidate",
        lambda r: _pair(r.get("rerank"), "candidates", "per_candidate_cpu_s"),
    ),
    ("top-3 JSON why+blurb p50 / p95 (s)", lambda r: _pair(r.get("top3_json"), "p50_s", "p95_s")),
    ("  CPU-s p50", lambda r: (r.get("top3_json") or {}).get("cpu_s_p50")),
    ("  JSON failures", lambda r: (r.get("top3_json") or {}).get("failures")),
    ("peak RSS (MB)", lambda r: r.get("peak_rss_mb")),
    (
        "load average (1 min) start / end",
        lambda r: f"{r.get('load_avg_1m_start')} / {r.get('load_avg_1m_end')}",
    ),
]


def _pair(d: dict | None, a: str, b: str) -> str | None:
    return f"{d[a]} / {d[b]}" if d else None


def markdown(results: list[dict[str, Any]]) -> str:
    """A side-by-side table of several runs."""
    head = "| | " + " | ".join(f"`{r['spec']}` ({r['llm']})" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for name, get in ROWS:
        lines.append(f"| {name} | " + " | ".join(str(get(r)) for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--llm",
        default="local",
        help="local (default), tiny, a .gguf, a HF model id/path, or http(s)://",
    )
    ap.add_argument(
        "--compare",
        nargs="+",
        metavar="SPEC",
        help="run each spec in a fresh process, print a table",
    )
    ap.add_argument(
        "--books",
        type=Path,
        default=None,
        help=f"books CSV (default {DEMO}, else the goodbooks sample)",
    )
    ap.add_argument("--users", type=int, default=5, help="synthetic readers for rerank latency")
    ap.add_argument("--candidates", type=int, default=20, help="candidates per rerank")
    ap.add_argument(
        "--json-users", type=int, default=5, help="readers for the top-3 JSON texts and first token"
    )
    ap.add_argument(
        "--turns",
        type=int,
        default=3,
        help="readers whose top-3 explanations + blurbs go through the real Explainer, streamed",
    )
    ap.add_argument(
        "--explain", type=int, default=0, help="explanations through the Explainer (guard stats)"
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the model")
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument(
        "--out", type=Path, default=None, help="also write the JSON (and a .md table) here"
    )
    args = ap.parse_args(argv)
    path = args.books or (DEMO if DEMO.is_file() else SAMPLE)
    if not path.is_file():
        ap.error(f"books CSV not found: {path}; pass --books")
    if args.compare:
        import subprocess

        results = []
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = passthrough.index("--compare")
        j = i + 1
        while j < len(passthrough) and not passthrough[j].startswith("--"):
            j += 1
        rest = passthrough[:i] + passthrough[j:]
        rest = [
            a for k, a in enumerate(rest) if a != "--out" and (k == 0 or rest[k - 1] != "--out")
        ]
        for spec in args.compare:
            p = subprocess.run(
                [sys.executable, __file__, "--llm", spec, "--json", *rest],
                capture_output=True,
                text=True,
            )
            sys.stderr.write(p.stderr[-3000:])
            if p.returncode != 0:
                print(f"{spec}: failed (exit {p.returncode})", file=sys.stderr)
                continue
            results.append(json.loads(p.stdout))
        out: Any = results
        table = markdown(results)
    else:
        out = run_one(args)
        table = markdown([out])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")
    print(json.dumps(out, indent=2, ensure_ascii=False) if args.json else table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
