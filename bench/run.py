"""Every benchmark from one command (``make bench``): figures, targets, peers, one results file.

    .venv/bin/python bench/run.py [--quick] [--goodbooks DIR] [--home DATA_DIR] [--json]

Runs, bounded and on 127.0.0.1 only, each heavy part in its own child process (so each has its
own peak RSS and nothing warms the next one by accident):

1. **ingest** of ``../shared/data/goodbooks`` (10k books, 572k ratings) into a temporary data
   dir: *cold* (empty embedding cache) and *warm* (the same data again: cached embeddings, the
   previous index's Chroma collections reused). SASRec is trained once per machine and data
   version and then comes from ``~/.cache/readnext/bench/sasrec`` (a first run trains it: long);
   the step timings say which.
2. **retrieval** on that index, in a fresh process as a server starts (open, warm, then the first
   request): ``recommend`` p50/p95 (hybrid; hybrid with a request; popularity), 1 and 8 threads,
   throughput; **peers in the same run**: implicit's ALS ``recommend`` for one reader, a raw
   Chroma query of the books collection, a numpy popularity top-k; **feedback visibility**: a
   reader dismisses the top pick through the service layer, how long until a recommendation
   no longer shows it; peak RSS.
3. **REST and chat API** throughput with 1 and 8 clients (``bench/bench_rest.py``'s ``run``).
4. **LLM** and **growth** figures: the latest committed ``bench/results/llm-cpu.json`` and
   ``bench/results/growth-*.json`` (named with their dates; rerun those scripts to refresh).

Writes ``bench/results/<YYYY-MM-DD>.json`` (with the machine: cores, load average at the start,
versions) and prints a table of each target, the measured value, met or missed. On a busy
machine every latency is inflated by the neighbours: the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
GOODBOOKS = ROOT.parent / "shared" / "data" / "goodbooks"
SASREC_CACHE = Path.home() / ".cache" / "readnext" / "bench" / "sasrec"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
    "READNEXT_LLM_BACKEND": "none",  # the targets are for retrieval + templates, no LLM
}
QUERY = "a dark fantasy with dragons"

# (key in the results, what, target, unit, comparison)
TARGETS = [
    ("retrieval.hybrid.p95_ms", "recommend p95 in-process (hybrid, 1 thread)", 20.0, "ms", "<"),
    ("ingest.cold.total_s", "goodbooks ingest, cold (empty embedding cache)", 60.0, "s", "<"),
    ("ingest.warm.total_s", "goodbooks ingest, warm", 15.0, "s", "<"),
    (
        "retrieval.feedback.visible_p95_ms",
        "feedback visible in next recommend, p95",
        100.0,
        "ms",
        "<",
    ),
    ("retrieval.first_request_ms", "warm server: first request (fresh process)", 1000.0, "ms", "<"),
    ("rest.rest.first_request_ms", "warm REST server: first request", 1000.0, "ms", "<"),
    ("rest.rest.clients_8.requests_per_s", "REST, 8 clients: requests/s", 150.0, "req/s", ">="),
    ("rest.rest.clients_8.p95_ms", "REST, 8 clients: p95", 100.0, "ms", "<"),
    (
        "rest.chat_api.clients_8.requests_per_s",
        "chat API, 8 clients: requests/s",
        50.0,
        "req/s",
        ">=",
    ),
    (
        "growth.largest.recommend_p95_ms",
        "growth: recommend p95 at the largest size",
        100.0,
        "ms",
        "<",
    ),
]


def _env() -> dict[str, str]:
    return {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)), 2) if xs else float("nan")


def _lat(xs_ms: list[float]) -> dict:
    return {"n": len(xs_ms), "p50_ms": _pct(xs_ms, 50), "p95_ms": _pct(xs_ms, 95)}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- children -----------------------------------------------------------------------------------


def child_ingest(home: Path, goodbooks: Path) -> dict:
    """Load goodbooks and ingest it into ``home``; timings, embedding stats, peak RSS."""
    t0 = time.perf_counter()
    from retrieval.config import Settings
    from retrieval.data import load_dataset
    from retrieval.index import ingest

    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    ds = load_dataset("goodbooks", directory=goodbooks)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    out = ingest(ds, Settings.load(home=home), progress=False, quiet=True)
    t_ingest = time.perf_counter() - t
    meta = json.loads((out / "meta.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "label": meta["label"],
        "import_s": round(t_import, 2),
        "load_s": round(t_load, 2),
        "ingest_s": round(t_ingest, 2),
        "total_s": round(t_load + t_ingest, 2),
        "steps_s": meta["timings_s"],
        "embeddings": meta.get("embeddings", {}),
        "chroma": meta.get("chroma_reuse", {}),
        "sasrec_from_cache": bool(meta.get("sasrec", {}).get("from_cache")),
        "index_mb": round(size / 2**20, 1),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _readers(rec, n: int, seed: int = 0) -> list[str]:
    import numpy as np

    users = [u["user_id"] for u in rec.users() if u["n_ratings"] >= 5]
    rng = np.random.default_rng(seed)
    return [str(u) for u in rng.choice(users, size=min(n, len(users)), replace=False)]


def _timed(fn, items) -> list[float]:
    out = []
    for x in items:
        t = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _throughput(fn, users: list[str], threads: int, seconds: float) -> dict:
    """``threads`` workers call ``fn(user)`` round-robin for ``seconds``: requests/s, latency."""
    import threading

    stop = time.perf_counter() + seconds
    lats: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def work(w: int) -> None:
        i = w
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                fn(users[i % len(users)])
            except Exception:
                with lock:
                    errors[0] += 1
            with lock:
                lats.append((time.perf_counter() - t) * 1e3)
            i += threads

    t0 = time.perf_counter()
    ws = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    wall = time.perf_counter() - t0
    return {
        "threads": threads,
        "rps": round(len(lats) / wall, 1),
        **_lat(lats),
        "errors": errors[0],
    }


def child_retrieval(home: Path, users_n: int, seconds: float, als_iters: int) -> dict:
    """A fresh process as a server starts: open, warm, first request; then the steady state."""

    out: dict = {}
    t0 = time.perf_counter()
    from assistant import Recommender
    from assistant.service import ReaderService

    rec = Recommender.open(home)
    out["open_s"] = round(time.perf_counter() - t0, 2)
    t = time.perf_counter()
    rec.warm()
    out["warm_s"] = round(time.perf_counter() - t, 2)
    users = _readers(rec, users_n)
    t = time.perf_counter()
    rec.recommend(user_id=users[0], k=10)
    out["first_request_ms"] = round((time.perf_counter() - t) * 1e3, 1)

    for name, kw in (
        ("hybrid", {}),
        ("hybrid_query", {"query": QUERY}),
        ("popularity", {"source": "popularity"}),
    ):
        cpu = time.process_time()
        lat = _timed(lambda u, kw=kw: rec.recommend(user_id=u, k=10, **kw), users)
        out[name] = {
            **_lat(lat),
            "cpu_ms_mean": round((time.process_time() - cpu) / len(users) * 1e3, 2),
        }
    out["threads"] = {
        str(n): _throughput(lambda u: rec.recommend(user_id=u, k=10), users, n, seconds)
        for n in (1, 8)
    }
    out["threads_query"] = {
        str(n): _throughput(
            lambda u: rec.recommend(user_id=u, k=10, query=QUERY), users, n, seconds
        )
        for n in (1, 8)
    }
    out["batch_users_per_s"] = _batch_rate(rec, users)
    out["peers"] = _peers(rec, users, als_iters)
    out["feedback"] = _feedback(rec, ReaderService(rec, None), users[: min(20, len(users))])
    out["peak_rss_mb"] = _peak_rss_mb()
    rec.close()
    return out


def _batch_rate(rec, users: list[str]) -> float:
    t = time.perf_counter()
    rec.recommend_batch(users, k=10)
    return round(len(users) / (time.perf_counter() - t), 1)


def _peers(rec, users: list[str], als_iters: int) -> dict:
    """Peers on the same data, same readers, same process: ALS, raw Chroma, popularity top-k."""
    import numpy as np

    lib = rec.lib
    peers: dict = {}
    rows = [lib.user_index[u] for u in users if u in lib.user_index]
    # implicit ALS: fit once (confidence = rating), then its own recommend for one reader
    try:
        from implicit.cpu.als import AlternatingLeastSquares

        X = lib.R.tocsr().astype(np.float32)
        als = AlternatingLeastSquares(
            factors=64, iterations=als_iters, random_state=0, num_threads=1
        )
        t = time.perf_counter()
        als.fit(X, show_progress=False)
        fit_s = time.perf_counter() - t
        lat = _timed(lambda r: als.recommend(r, X[r], N=10), rows)
        peers["als_recommend"] = {**_lat(lat), "fit_s": round(fit_s, 1), "iterations": als_iters}
    except ImportError as e:
        peers["als_recommend"] = {"error": f"implicit not available: {e}"}
    # a raw Chroma query of the books collection with the reader's taste vector (no rank path)
    content = rec.sources["content"]
    vecs = [content.user_vector(rec.context(u)) for u in users]
    vecs = [v for v in vecs if v is not None]
    col = rec.store.books
    lat = _timed(lambda v: col.query(query_embeddings=[v.astype(np.float32)], n_results=10), vecs)
    peers["chroma_query_books"] = _lat(lat)
    ucol = rec.store.users
    lat = _timed(
        lambda v: ucol.query(
            query_embeddings=[v.astype(np.float32)], n_results=100, include=["distances"]
        ),
        vecs,
    )
    peers["chroma_query_users_100"] = _lat(lat)
    # popularity top-k in numpy, the reader's books left out
    pop = rec.sources["popularity"]._scores

    def pop_topk(r: int) -> None:
        s = pop.copy()
        s[lib.R.indices[lib.R.indptr[r] : lib.R.indptr[r + 1]]] = -np.inf
        np.argpartition(-s, 10)[:10]

    peers["popularity_topk_numpy"] = _lat(_timed(pop_topk, rows))
    return peers


def _feedback(rec, svc, users: list[str]) -> dict:
    """Time from a dismissal through the service layer to a recommendation without the book."""
    caller = svc.caller(None)
    fb, nxt, total, seen = [], [], [], 0
    for u in users:
        top = rec.recommend(user_id=u, k=10)[0].book_id
        t = time.perf_counter()
        svc.feedback(caller, u, top, "not_interested")
        t1 = time.perf_counter()
        ids = [r.book_id for r in rec.recommend(user_id=u, k=10)]
        t2 = time.perf_counter()
        seen += top in ids
        fb.append((t1 - t) * 1e3)
        nxt.append((t2 - t1) * 1e3)
        total.append((t2 - t) * 1e3)
    # a rating changes the taste vector: the profile is rebuilt and written to Chroma `users`
    rate = []
    for u in users:
        top = rec.recommend(user_id=u, k=10)[0].book_id
        t = time.perf_counter()
        svc.feedback(caller, u, top, 5)
        ids = [r.book_id for r in rec.recommend(user_id=u, k=10)]
        rate.append((time.perf_counter() - t) * 1e3)
        seen += top in ids
    return {
        "readers": len(users),
        "feedback_p50_ms": _pct(fb, 50),
        "next_recommend_p50_ms": _pct(nxt, 50),
        "visible_p50_ms": _pct(total, 50),
        "visible_p95_ms": _pct(total, 95),
        "rating_visible_p50_ms": _pct(rate, 50),
        "rating_visible_p95_ms": _pct(rate, 95),
        "still_shown": seen,  # must be 0: the dismissed / rated book is gone at once
    }


# -- the parent -----------------------------------------------------------------------------------


def _child(stage: str, args: list[str], timeout: float) -> dict:
    """Run ``bench/run.py --child stage ...`` and return its JSON (or an error entry)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, *args]
    t = time.perf_counter()
    try:
        p = subprocess.run(
            cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{stage}: timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"{stage}: exit {p.returncode}: {' | '.join(tail)[:400]}"}
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"{stage}: no JSON on stdout"}
    res["wall_s"] = round(time.perf_counter() - t, 1)
    return res


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for p in (
        "numpy",
        "scipy",
        "torch",
        "chromadb",
        "sentence-transformers",
        "implicit",
        "fastapi",
    ):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    try:
        out["readnext_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        out["readnext_commit"] = None
    return out


def _committed(pattern: str) -> dict | None:
    """The newest ``bench/results/<pattern>`` and the date git (or the file) gives it."""
    files = sorted(RESULTS.glob(pattern), key=lambda f: f.stat().st_mtime)
    if not files:
        return None
    f = files[-1]
    date = subprocess.run(
        ["git", "log", "-1", "--format=%cs", "--", str(f.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        data = json.loads(f.read_text())
    except ValueError:
        return {"file": str(f.relative_to(ROOT)), "error": "not valid JSON"}
    return {
        "file": str(f.relative_to(ROOT)),
        "date": date or time.strftime("%Y-%m-%d", time.localtime(f.stat().st_mtime)),
        "committed": bool(date),
        "data": data,
    }


def _growth_largest(g: dict | None) -> dict | None:
    """The largest size of a growth file, whatever its exact layout (a list of sizes)."""
    if not g or "data" not in g:
        return None
    data = g["data"]
    rows = (
        data.get("sizes") or data.get("results") or data.get("curve")
        if isinstance(data, dict)
        else data
    )
    if not isinstance(rows, list) or not rows:
        return None
    rows = [r for r in rows if isinstance(r, dict)]

    def size(r: dict) -> float:
        return float(r.get("books") or r.get("n_books") or r.get("size") or 0)

    big = max(rows, key=size) if rows else None
    if big is None:
        return None
    p95 = big.get("recommend_p95_ms")
    if p95 is None and isinstance(big.get("recommend"), dict):
        p95 = big["recommend"].get("p95_ms")
    return {"books": size(big), "recommend_p95_ms": p95, "row": big}


def _rest(home: Path, seconds: float) -> dict:
    """helper rest's ``bench/bench_rest.py`` ``run``, when this checkout has it."""
    f = ROOT / "bench" / "bench_rest.py"
    if not f.is_file():
        return {"error": "not available: bench/bench_rest.py is not in this checkout"}
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_rest", f)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod.run(home, clients=(1, 8), seconds=seconds)
    except Exception as e:  # a broken REST run must not lose the other figures
        return {"error": f"bench_rest.run failed: {type(e).__name__}: {e}"[:400]}


def _get(d: dict, path: str):
    cur = d
    for p in path.split("."):
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            return None
    return cur if isinstance(cur, (int, float)) else None


def table(res: dict) -> list[dict]:
    out = []
    for key, what, target, unit, cmp in TARGETS:
        v = _get(res, key)
        met = None if v is None else (v < target if cmp == "<" else v >= target)
        out.append(
            {
                "key": key,
                "what": what,
                "target": f"{cmp} {target:g} {unit}",
                "value": v,
                "unit": unit,
                "met": met,
            }
        )
    return out


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.1f}" if isinstance(v, float) else str(v)


def print_report(res: dict) -> None:
    m = res["machine"]
    print(
        f"\nreadnext bench {res['date']} — {m['cores']} cores, load average at start "
        f"{m['load_avg_start']}, at end {m.get('load_avg_end')}, Python {m['versions']['python']}, "
        f"commit {m['versions'].get('readnext_commit')}"
    )
    print(f"{'target':<50} {'wanted':>14} {'measured':>12}  result")
    for row in res["targets"]:
        flag = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        print(f"{row['what']:<50} {row['target']:>14} {_fmt(row['value']):>12}  {flag}")
    ing = res.get("ingest", {})
    for kind in ("cold", "warm"):
        x = ing.get(kind, {})
        if "error" in x:
            print(f"ingest {kind}: {x['error']}")
        elif x:
            print(
                f"ingest {kind}: {x['total_s']} s (load {x['load_s']} s + ingest "
                f"{x['ingest_s']} s; "
                f"steps {x['steps_s']}; SASRec from cache: {x['sasrec_from_cache']}; "
                f"peak RSS {x['peak_rss_mb']} MB)"
            )
    r = res.get("retrieval", {})
    if "error" in r:
        print(f"retrieval: {r['error']}")
    elif r:
        print(
            f"server start: open {r['open_s']} s, warm {r['warm_s']} s, first request "
            f"{r['first_request_ms']} ms; peak RSS {r['peak_rss_mb']} MB"
        )
        p = r["peers"]
        pe = {k: v.get("p50_ms") for k, v in p.items() if isinstance(v, dict)}
        h = r["hybrid"]["p50_ms"]
        print("latency p50 / p95 ms (1 thread)                       vs peer p50")
        for name in ("hybrid", "hybrid_query", "popularity"):
            x = r[name]
            print(f"  readnext {name:<14} {x['p50_ms']:>8} / {x['p95_ms']:<8}")
        for name, v in p.items():
            if "p50_ms" in v:
                ratio = h / v["p50_ms"] if v["p50_ms"] else float("nan")
                print(
                    f"  peer {name:<22} {v['p50_ms']:>8} / {v['p95_ms']:<8} hybrid is x{ratio:,.1f}"
                )
            else:
                print(f"  peer {name}: {v.get('error')}")
        for n, x in r["threads"].items():
            q = r["threads_query"][n]
            print(
                f"  {n} thread(s): {x['rps']} req/s (p95 {x['p95_ms']} ms); with a request "
                f"{q['rps']} req/s (p95 {q['p95_ms']} ms)"
            )
        f = r["feedback"]
        print(
            f"  feedback -> next recommend: p50 {f['visible_p50_ms']} ms, p95 "
            f"{f['visible_p95_ms']} ms (a rating: p50 {f['rating_visible_p50_ms']} ms); "
            f"still shown: {f['still_shown']}"
        )
        del pe
    rest = res.get("rest", {})
    if "error" in rest:
        print(f"REST / chat API: {rest['error']}")
    for k in ("llm", "growth"):
        g = res.get(k)
        if g is None:
            print(f"{k}: not available (no bench/results file yet)")
        else:
            print(f"{k}: from {g['file']} dated {g['date']} (not rerun here)")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--goodbooks", type=Path, default=GOODBOOKS)
    ap.add_argument("--home", type=Path, help="benchmark this ingested data dir (no ingest)")
    ap.add_argument("--quick", action="store_true", help="fewer readers, shorter runs (~4 min)")
    ap.add_argument("--users", type=int, help="readers per latency figure (default 200, quick 60)")
    ap.add_argument("--seconds", type=float, help="per throughput run (default 10, quick 3)")
    ap.add_argument("--no-rest", action="store_true", help="skip REST / chat API throughput")
    ap.add_argument("--sasrec-cache", type=Path, default=SASREC_CACHE)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true", help="print the results JSON only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", nargs="*", default=[], help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()

    if args.child:
        os.environ.update(ENV)
        a = extra
        if args.child == "ingest":
            res = child_ingest(Path(a[0]), Path(a[1]))
        else:
            res = child_retrieval(Path(a[0]), int(a[1]), float(a[2]), int(a[3]))
        print(json.dumps(res))
        return 0

    users = args.users or (60 if args.quick else 200)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    als_iters = 5 if args.quick else 15
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "versions": _versions(),
        },
        "notes": [
            "Each figure is wall-clock on this machine; a load average above the core count "
            "means other work shared the CPU and inflated the latencies.",
        ],
    }
    base = Path(tempfile.mkdtemp(prefix="readnext-bench-"))
    try:
        home = args.home
        if home is None:
            if not args.goodbooks.is_dir():
                print(f"bench: {args.goodbooks} not found: pass --goodbooks DIR", file=sys.stderr)
                return 2
            home = base / "goodbooks"
            (home / "cache").mkdir(parents=True)
            args.sasrec_cache.mkdir(parents=True, exist_ok=True)
            (home / "cache" / "sasrec").symlink_to(args.sasrec_cache, target_is_directory=True)
            res["ingest"] = {}
            for kind in ("cold", "warm"):
                print(f"bench: ingest {kind} ...", file=sys.stderr, flush=True)
                res["ingest"][kind] = _child(
                    "ingest", [str(home), str(args.goodbooks)], timeout=3600
                )
            res["notes"].append(
                "ingest cold = an empty embedding cache; SASRec comes from its cache in "
                f"{args.sasrec_cache} once trained (sasrec_from_cache says so per run)"
            )
        print("bench: retrieval ...", file=sys.stderr, flush=True)
        res["retrieval"] = _child(
            "retrieval", [str(home), str(users), str(seconds), str(als_iters)], timeout=1800
        )
        if args.no_rest:
            res["rest"] = {"error": "skipped (--no-rest)"}
        else:
            print("bench: REST and chat API ...", file=sys.stderr, flush=True)
            res["rest"] = _rest(home, seconds)
        res["llm"] = _committed("llm-cpu.json")
        growth = _committed("growth-*.json")
        res["growth"] = growth
        if growth is not None:
            res["growth_largest"] = _growth_largest(growth)
            if res["growth_largest"]:
                res["growth"] = {**growth, "largest": res["growth_largest"]}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["targets"] = table(res)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{res['date']}.json"
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        print_report(res)
        print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
