"""Growth curve: synthetic catalogs at 10k, 100k and 1M books through ingest and `recommend`.

    .venv/bin/python bench/bench_growth.py --sizes 10k,100k [--readers 300] [--json]
    nohup nice -n 10 .venv/bin/python bench/bench_growth.py --sizes 1m --merge LATEST.json &

For each size, in a fresh temporary home: ``readnext synth`` (seeded: Zipf popularity,
log-normal readers, series, authors, genres), then ``readnext ingest --synthetic-vectors``
(seeded stand-in vectors: embedding 1M texts on 2 cores takes hours, so the embedder's
throughput is measured separately on ``--embed-sample`` real texts and extrapolated), then
``recommend`` p50/p95 over ``--readers`` readers. Every stage runs in its own child process so
its peak RSS is its own (``os.wait4``); a watchdog stops a child when the machine's free memory
drops under ``--min-free-gib`` and the result says which stage it reached. Ingest stages are
timed from inside the child (the index's per-step hook), so a stopped run still has the
times of the stages it finished. Sizes: 10k = 10k books / 100k ratings, 100k = 100k / 1M,
1m = 1M / 10M (``--ratings-per-book`` changes the ratio).

SASRec trains over the whole catalog with a full softmax; it is on up to ``--sasrec-max-books``
(default 2k) and off above: at 10k books (7.4k rated, 5k readers) one epoch took ~62 s on
the shared machine, up to 60 epochs, so its CPU training alone would take about an hour.
REST throughput (1 and 8 clients, ``--rest-seconds`` each) comes from ``bench/bench_rest.py
--home HOME --only rest`` when that script exists (helper rest's); else the result says skipped.

Writes ``bench/results/growth-<date>.json``. Timing figures on a shared 2-core machine are
noisy (other jobs run beside it): compare orders of magnitude, not percent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"1k": 1_000, "10k": 10_000, "100k": 100_000, "1m": 1_000_000}
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "OMP_WAIT_POLICY": "PASSIVE",
    "READNEXT_LLM_BACKEND": "none",
}


def _free_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _child(
    cmd: list[str], log: Path, env: dict, min_free_gib: float, limit_s: float
) -> tuple[dict, str]:
    """Run one stage; returns its measures and its stdout. Peak RSS from the child's rusage."""
    t = time.perf_counter()
    with open(log, "ab") as err, tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        why: list[str] = []
        low = [float("inf")]

        def watch() -> None:
            while p.poll() is None:
                free = _free_gib()
                low[0] = min(low[0], free)
                if free < min_free_gib:
                    why.append(f"stopped: free memory {free:.1f} GiB < {min_free_gib} GiB")
                elif time.perf_counter() - t > limit_s:
                    why.append(f"stopped: over the time limit of {limit_s:.0f} s")
                if why:
                    p.send_signal(signal.SIGKILL)
                    return
                time.sleep(1.0)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        w.join(timeout=5)
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    res = {
        "wall_s": round(time.perf_counter() - t, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "min_free_gib": round(low[0], 2) if low[0] != float("inf") else None,
        "rc": p.returncode,
    }
    if why:
        res["stopped"] = why[0]
    return res, stdout


def _stages(log: Path) -> dict:
    """Per-step seconds the ingest child printed (``growth-stage LABEL SECONDS RSS_MIB``)."""
    import re

    out = {}  # tqdm's bars share the lines: find the marks anywhere
    for m in re.finditer(r"growth-stage (\S+) ([\d.]+) ([\d.]+)", log.read_text(errors="replace")):
        out[m.group(1)] = {"s": float(m.group(2)), "rss_mib_after": float(m.group(3))}
    return out


def run_size(name: str, args, base: Path) -> dict:
    n_books = SIZES[name]
    n_ratings = n_books * args.ratings_per_book
    d, home, log = base / f"set-{name}", base / f"home-{name}", base / f"{name}.log"
    py = [sys.executable]
    env = {**os.environ, **ENV}
    res: dict = {"books": n_books, "ratings_target": n_ratings, "log": str(log)}
    print(f"[{name}] synth {n_books:,} books / {n_ratings:,} ratings", flush=True)
    gen, out = _child(
        [*py, "-m", "assistant.cli", "synth", "--books", str(n_books), "--ratings", str(n_ratings)]
        + ["--seed", str(args.seed), "--out", str(d), "--json"],
        log,
        env,
        args.min_free_gib,
        args.limit_s,
    )
    res["synth"] = gen
    if gen["rc"] != 0:
        return res
    summary = json.loads(out)
    res["dataset"] = {k: summary[k] for k in summary if k not in ("spec", "out")}
    res["dataset_mib"] = round(_du(d) / 2**20, 1)
    sasrec = n_books <= args.sasrec_max_books
    env_i = {**env, "READNEXT_SASREC_ENABLED": "true" if sasrec else "false"}
    res["sasrec"] = "trained" if sasrec else f"off (> --sasrec-max-books={args.sasrec_max_books:,})"
    print(f"[{name}] ingest (synthetic vectors, sasrec {res['sasrec']})", flush=True)
    ing, _ = _child(
        [*py, str(Path(__file__).resolve()), "--child-ingest", str(d), str(home)],
        log,
        env_i,
        args.min_free_gib,
        args.limit_s,
    )
    ing["stages"] = _stages(log)
    res["ingest"] = ing
    if ing["rc"] != 0:
        res["reached"] = list(ing["stages"])[-1] if ing["stages"] else "load"
        return res
    idx = next((home / "indexes").glob("*/meta.json")).parent
    meta = json.loads((idx / "meta.json").read_text())
    res["ingest"].update(
        timings_s=meta["timings_s"],
        cf_model=meta["cf_model"],
        cf_choice=meta["cf_choice"],
        vectors=meta["vectors"],
        readers=meta["stats"]["users"],
    )
    parts = {p.name: _du(p) if p.is_dir() else p.stat().st_size for p in idx.iterdir()}
    res["index_mib"] = round(sum(parts.values()) / 2**20, 1)
    res["index_parts_mib"] = {k: round(v / 2**20, 1) for k, v in sorted(parts.items())}
    print(f"[{name}] recommend x {args.readers}", flush=True)
    rec, out = _child(
        [*py, str(Path(__file__).resolve()), "--child-recommend", str(home), str(args.readers)],
        log,
        env,
        args.min_free_gib,
        args.limit_s,
    )
    if rec["rc"] == 0:
        rec.update(json.loads(out.strip().splitlines()[-1]))
    res["recommend"] = rec
    rest = ROOT / "bench" / "bench_rest.py"
    if rest.exists() and args.rest_seconds > 0:
        print(f"[{name}] REST throughput (bench_rest.py, 1 and 8 clients)", flush=True)
        r, out = _child(
            [*py, str(rest), "--home", str(home), "--seconds", str(args.rest_seconds)]
            + ["--clients", "1,8", "--only", "rest"],
            log,
            env,
            args.min_free_gib,
            args.limit_s,
        )
        if r["rc"] == 0:
            try:
                r["result"] = json.loads(out)
            except ValueError:
                r["result"] = out[-2000:]
        res["rest"] = r
    else:
        res["rest"] = "skipped: no bench/bench_rest.py in this tree (helper rest)"
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    return res


def child_ingest(d: str, home: str) -> int:
    """In the child: ingest with synthetic vectors, printing each finished step to stderr."""
    import resource

    import retrieval.index as index
    from retrieval.config import Settings
    from retrieval.data import load_dataset

    t = [time.perf_counter()]

    def mark(label: str) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        now = time.perf_counter()
        print(f"growth-stage {label} {now - t[0]:.2f} {rss:.0f}", file=sys.stderr, flush=True)
        t[0] = now

    ds = load_dataset("generic", directory=d)
    mark("load")
    index._hold = mark  # the per-step hook (a kill-test aid) is where each step ends
    settings = Settings.load(home=Path(home))
    index.ingest(ds, settings, progress=True, quiet=False, synthetic_vectors=True)
    return 0


def child_recommend(home: str, n: int) -> int:
    """In the child: open the index, then time ``recommend`` for ``n`` seeded readers."""
    import resource

    import numpy as np

    from assistant import Recommender
    from retrieval.config import Settings
    from retrieval.index import Index

    t = time.perf_counter()
    s = Settings.load(home=Path(home))
    rec = Recommender(Index.open(s.home), s)
    users = [u["user_id"] for u in rec.users()]
    open_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    pick = [users[i] for i in rng.choice(len(users), size=min(n, len(users)), replace=False)]
    t = time.perf_counter()
    rec.recommend(user_id=pick[0], k=10)  # first call (lazy parts), reported apart
    first_ms = (time.perf_counter() - t) * 1e3
    times, cpu = [], []
    for u in pick:
        t, c = time.perf_counter(), time.process_time()
        rec.recommend(user_id=u, k=10)
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    a, b = np.array(times), np.array(cpu)
    print(
        json.dumps(
            {
                "open_s": round(open_s, 2),
                "first_ms": round(first_ms, 1),
                "readers": len(pick),
                "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p95_ms": round(float(np.percentile(a, 95)), 1),
                "mean_ms": round(float(a.mean()), 1),
                # CPU time of the call (all threads): less hostage to a busy machine than wall
                "cpu_p50_ms": round(float(np.percentile(b, 50)), 1),
                "cpu_p95_ms": round(float(np.percentile(b, 95)), 1),
                "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        ),
        flush=True,
    )
    return 0


def child_embed(n: int) -> int:
    """In the child: the real embedder's throughput on ``n`` synthetic book texts (no cache)."""
    import numpy as np

    from retrieval.config import Settings
    from retrieval.embed import Embedder
    from retrieval.synthetic import SyntheticSpec, books_frame, make_catalog

    spec = SyntheticSpec(books=max(n, 10), ratings=1, seed=1)
    rng = np.random.default_rng(1)
    df = books_frame(make_catalog(spec, rng), rng)
    texts = [
        f"{t}. by {a}. ({y}). Tags: {g.replace('|', ', ')}. {d}"
        for t, a, y, g, d in zip(df.title, df.authors, df.year, df.tags, df.description)
    ][:n]
    s = Settings.load(env={})
    emb = Embedder(s.embedder.model, s.embedder.device, s.embedder.batch_size)
    emb.encode(texts[:64], cache=False)  # model load and warm-up
    t = time.perf_counter()
    emb.encode(texts, cache=False)
    dt = time.perf_counter() - t
    import torch

    print(
        json.dumps(
            {
                "texts": n,
                "seconds": round(dt, 2),
                "texts_per_s": round(n / dt, 1),
                "torch_threads": torch.get_num_threads(),
                "hours_for_1m": round(1e6 / (n / dt) / 3600, 2),
                "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
            }
        ),
        flush=True,
    )
    return 0


def table(result: dict) -> str:
    """The growth curve as a markdown table (docs/scaling.md)."""
    cols = ["load", "catalog", "embed*", "chroma-books", "profiles", "cf"]
    head = (
        "| size | books / ratings / readers | ingest s | "
        + " | ".join(f"{c} s" for c in cols)
        + " | CF | peak RSS ingest | index on disk | recommend p50 / p95 | RSS serving |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in result.get("sizes", {}).items():
        ing = r.get("ingest", {})
        st = ing.get("stages", {})
        t = {**{k: v["s"] for k, v in st.items()}, **ing.get("timings_s", {})}
        d = r.get("dataset", {})
        rec = r.get("recommend", {})
        who = f"{d.get('books', r['books']):,} / {d.get('ratings', 0):,} / {d.get('users', 0):,}"
        total = f"{ing['wall_s']:.0f}" if ing.get("rc") == 0 else f"stopped ({r.get('reached')})"
        vals = [t.get(c.rstrip("*")) for c in cols]
        cells = [f"{v:.1f}" if isinstance(v, (int, float)) else "-" for v in vals]
        p = f"{rec['p50_ms']:.0f} / {rec['p95_ms']:.0f} ms" if "p50_ms" in rec else "-"
        if "cpu_p50_ms" in rec:
            p += f" (CPU {rec['cpu_p50_ms']:.0f} / {rec['cpu_p95_ms']:.0f})"
        idx = f"{r['index_mib']:,.0f} MiB" if "index_mib" in r else "-"
        lines.append(
            f"| {name} | {who} | {total} | "
            + " | ".join(cells)
            + f" | {ing.get('cf_model', '-')} | {ing.get('peak_rss_mib', 0) / 1024:.1f} GiB | "
            + f"{idx} | {p} | "
            + (f"{rec['rss_mib'] / 1024:.1f} GiB |" if "rss_mib" in rec else "- |")
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10k,100k", help="comma list of 10k, 100k, 1m")
    ap.add_argument("--ratings-per-book", type=int, default=10)
    ap.add_argument("--readers", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--embed-sample", type=int, default=2000, help="0 = skip")
    ap.add_argument("--sasrec-max-books", type=int, default=2_000)
    ap.add_argument("--rest-seconds", type=float, default=5.0, help="0 = skip REST")
    ap.add_argument("--min-free-gib", type=float, default=4.0)
    ap.add_argument("--limit-s", type=float, default=4 * 3600, help="per stage")
    ap.add_argument("--keep", help="keep datasets and homes under this folder")
    ap.add_argument("--out", help="result file (default bench/results/growth-<date>.json)")
    ap.add_argument("--merge", help="add these sizes to an existing result file")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child-ingest", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-recommend", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-embed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--table", help="print a result file as a markdown table and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if args.child_ingest:
        return child_ingest(*args.child_ingest)
    if args.child_recommend:
        return child_recommend(args.child_recommend[0], int(args.child_recommend[1]))
    if args.child_embed:
        return child_embed(args.child_embed)

    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown size(s) {', '.join(bad)}; use {', '.join(SIZES)}")
    path = Path(
        args.merge
        or args.out
        or ROOT / "bench" / "results" / f"growth-{time.strftime('%Y-%m-%d')}.json"
    )
    result = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    result.setdefault("sizes", {})
    result["machine"] = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "note": "shared 2-core machine, other jobs running: timings are noisy",
    }
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="readnext-growth-"))
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV}
    if args.embed_sample:
        print(f"embedder throughput on {args.embed_sample} texts", flush=True)
        emb, out = _child(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child-embed",
                str(args.embed_sample),
            ],
            base / "embed.log",
            env,
            args.min_free_gib,
            args.limit_s,
        )
        if emb["rc"] == 0:
            emb.update(json.loads(out.strip().splitlines()[-1]))
        result["embedder"] = emb
    for name in sizes:
        result["sizes"][name] = run_size(name, args, base)
        result["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))  # after each size: partial runs count
    path.write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
