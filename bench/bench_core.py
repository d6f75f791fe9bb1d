"""Core benchmark (no LLM): ingest times and recommend latency, with peers side by side.

    .venv/bin/python bench/bench_core.py [--goodbooks ../shared/data/goodbooks] [--users 200]
        [--json]

Prints: demo ingest time, goodbooks ingest time (10k books + 572k ratings, embedding cache
cold and warm), and `recommend` latency p50/p95 over N readers for each source (hybrid, content,
cf, popularity), with ratios to the popularity baseline, plus batch scoring throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def _ingest(ds, home: Path) -> float:
    from retrieval.config import Settings
    from retrieval.index import ingest

    t = time.perf_counter()
    ingest(ds, Settings.load(home=home, env={}), progress=False, quiet=True)
    return time.perf_counter() - t


def _latency(rec, users, source: str, **kw) -> dict:
    times = []
    for u in users:
        t = time.perf_counter()
        rec.recommend(user_id=u, k=10, source=source, **kw)
        times.append((time.perf_counter() - t) * 1e3)
    a = np.array(times)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--goodbooks", default=str(ROOT.parent / "shared" / "data" / "goodbooks"))
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", help="keep the built data dirs under this folder")
    args = ap.parse_args()

    from assistant import Recommender
    from retrieval.data import load_dataset, load_demo

    base = Path(args.keep or tempfile.mkdtemp(prefix="readnext-bench-"))
    out: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        }
    }
    cache = base / "emb-cache"
    cache.mkdir(parents=True, exist_ok=True)

    def home(name: str) -> Path:
        h = base / name
        shutil.rmtree(h, ignore_errors=True)
        h.mkdir(parents=True)
        (h / "cache").symlink_to(cache, target_is_directory=True)
        return h

    t = time.perf_counter()
    demo = load_demo()
    out["demo_load_s"] = round(time.perf_counter() - t, 2)
    out["demo_ingest_cold_s"] = round(_ingest(demo, home("demo")), 2)
    out["demo_ingest_warm_s"] = round(_ingest(demo, home("demo")), 2)
    datasets = [("demo", base / "demo")]
    gb = Path(args.goodbooks)
    if gb.exists():
        t = time.perf_counter()
        ds = load_dataset("goodbooks", directory=gb)
        out["goodbooks_load_s"] = round(time.perf_counter() - t, 2)
        out["goodbooks_label"] = ds.label
        out["goodbooks_ingest_cold_s"] = round(_ingest(ds, home("goodbooks")), 2)
        out["goodbooks_ingest_warm_s"] = round(_ingest(ds, home("goodbooks")), 2)
        meta = json.loads(
            next((base / "goodbooks" / "indexes").iterdir()).joinpath("meta.json").read_text()
        )
        out["goodbooks_ingest_steps_s"] = meta["timings_s"]
        datasets.append(("goodbooks", base / "goodbooks"))
    else:
        print(f"note: {gb} not found, skipping the goodbooks ingest", file=sys.stderr)

    for name, h in datasets:
        rec = Recommender.open(h)
        t = time.perf_counter()
        users = [u["user_id"] for u in rec.users() if u["n_ratings"] >= 5]
        rng = np.random.default_rng(0)
        users = list(rng.choice(users, size=min(args.users, len(users)), replace=False))
        rec.recommend(user_id=users[0], k=10)  # warm caches
        lat = {src: _latency(rec, users, src) for src in ("popularity", "cf", "content", "hybrid")}
        base_p50 = lat["popularity"]["p50_ms"]
        for src in lat:
            lat[src]["p50_vs_popularity"] = round(lat[src]["p50_ms"] / max(base_p50, 1e-9), 2)
        rec.store  # open Chroma, then the live query path (embeds the query)
        lat["hybrid+query"] = _latency(
            rec, users[:50], "hybrid", query="a dark fantasy with dragons"
        )
        t = time.perf_counter()
        batch = rec.recommend_batch(users, k=10, source="hybrid")
        bt = time.perf_counter() - t
        out[f"{name}_recommend"] = {
            "users": len(users),
            **lat,
            "batch_hybrid_users_per_s": round(len(batch) / bt, 1),
        }
        rec.close()

    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"readnext core benchmark ({out['machine']['cores']} cores, Python "
            f"{out['machine']['python']})"
        )
        print(
            f"  demo ingest        cold {out['demo_ingest_cold_s']:>7.1f} s   "
            f"warm (embedding cache) {out['demo_ingest_warm_s']:.1f} s"
        )
        if "goodbooks_ingest_cold_s" in out:
            print(
                f"  goodbooks ingest   cold {out['goodbooks_ingest_cold_s']:>7.1f} s   warm "
                f"{out['goodbooks_ingest_warm_s']:.1f} s   [{out['goodbooks_label']}]"
            )
            print(f"    steps (warm): {out['goodbooks_ingest_steps_s']}")
        for name, _ in datasets:
            r = out[f"{name}_recommend"]
            print(f"  recommend latency on {name}, {r['users']} readers, k=10 (no LLM):")
            for src in ("popularity", "cf", "content", "hybrid", "hybrid+query"):
                x = r[src]
                ratio = (
                    f"  x{x['p50_vs_popularity']:.2f} vs popularity"
                    if "p50_vs_popularity" in x
                    else ""
                )
                print(
                    f"    {src:<13} p50 {x['p50_ms']:>7.2f} ms   p95 {x['p95_ms']:>7.2f} ms{ratio}"
                )
            print(f"    batch hybrid scoring: {r['batch_hybrid_users_per_s']} readers/s")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
