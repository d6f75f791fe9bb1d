"""Does SASRec gain from a bigger epoch budget? A bounded check on one dataset (issue #13).

On goodbooks the committed study's SASRec had its best validation epoch at the cap (60). This
trains SASRec on eval's training split (same protocol, split, readers and seed as
``readnext eval``) once per budget, each from scratch as ``readnext ingest`` trains it, and
reports the early-stop record and SASRec's own test ndcg@10 (main slice, 95% bootstrap CI),
plus the paired difference of each budget against the first. The budget is
``SASRecConfig.max_epochs`` / ``patience`` (``[sasrec]`` in the TOML,
``READNEXT_SASREC_MAX_EPOCHS``).

    python -m eval.sasrec_budget --dataset ../shared/data/goodbooks-sample --users 700 \\
        --budgets 60:4,120:12 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from retrieval.config import Settings

from . import models as _models
from .models import build_model
from .protocol import EvalConfig, clean, prepare
from .scoring import metrics_of, score_model
from .stats import paired_test, summarize

__all__ = ["main", "run_budgets"]


def run_budgets(
    cfg: EvalConfig, budgets: list[tuple[int, int]], threads: int = 2
) -> list[dict[str, Any]]:
    """One row per ``(max_epochs, patience)``: training record and test ndcg@10 of SASRec alone.

    Args:
        cfg: eval's config (dataset, seed, users, cache_dir); only the split is used.
        budgets: ``(max_epochs, patience)`` pairs; the first is the reference of the paired tests.
        threads: torch threads for training and scoring (``SASRecConfig.threads``).

    Returns:
        Rows with ``max_epochs``, ``patience``, the ``TrainReport`` fields, ``ndcg@10`` (mean,
        CI) and, from the second row on, ``vs_first`` (paired difference and p-value).
    """
    settings = Settings.load(env={})
    prep = prepare(cfg, settings)
    if cfg.cache_dir:
        from pathlib import Path

        _models.SASREC_CACHE.update(dir=Path(cfg.cache_dir) / "sasrec", progress=cfg.progress)
    rows, first = [], None
    for epochs, patience in budgets:
        params = {"max_epochs": epochs, "patience": patience, "threads": threads}
        src = build_model("sasrec", prep.lib, params, cfg.seed)
        run = score_model(src, prep, 10, None, cfg.progress, f"rank sasrec ({epochs} epochs)")
        res = metrics_of(run.main, prep.main_rel, prep.lib, [10])
        row: dict[str, Any] = {
            "max_epochs": epochs,
            "patience": patience,
            "train": src.model.report.to_dict(),  # type: ignore[attr-defined]
            "ndcg@10": summarize(res, n_boot=1000, seed=cfg.seed, keys=["ndcg@10"])["ndcg@10"],
            "readers": len(res.users),
        }
        if first is None:
            first = res
        else:
            t = paired_test(res["ndcg@10"], first["ndcg@10"], seed=cfg.seed)
            row["vs_first"] = {"diff": t.mean_diff, "p": t.p_value}
        rows.append(clean(row))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.sasrec_budget``: print one line per budget (or ``--json``)."""
    ap = argparse.ArgumentParser(prog="python -m eval.sasrec_budget", description=__doc__)
    ap.add_argument("--dataset", required=True, help="a goodbooks-format folder")
    ap.add_argument("--users", type=int, default=None, help="seeded subset of test readers")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--budgets", default="60:4,120:12", help="max_epochs:patience,...")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=None, help="embedding + SASRec cache (as eval's)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        budgets = [(int(e), int(p)) for e, p in (b.split(":") for b in a.budgets.split(","))]
    except ValueError:
        print(f"--budgets {a.budgets!r}: use max_epochs:patience pairs, e.g. 60:4,120:12")
        return 2
    cfg = EvalConfig(
        dataset=a.dataset,
        seed=a.seed,
        users=a.users,
        cache_dir=a.cache_dir,
        progress=not a.no_progress,
        verbose=False,
    )
    rows = run_budgets(cfg, budgets, a.threads)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        t, n = r["train"], r["ndcg@10"]
        vs = r.get("vs_first")
        print(
            f"max_epochs {r['max_epochs']:>4} patience {r['patience']:>3}: {t['epochs']} epochs, "
            f"best {t['best_epoch']} (val {t['best_val_ndcg']:.4f}), {t['seconds']:.0f} s; "
            f"test ndcg@10 {n['mean']:.4f} [{n['ci_low']:.4f}, {n['ci_high']:.4f}]"
            + (f"; vs first {vs['diff']:+.4f} (p {vs['p']:.3f})" if vs else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
