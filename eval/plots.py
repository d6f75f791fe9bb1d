"""PNG plots of a finished run (matplotlib, Agg backend: no display needed).

Every function reads the ``metrics.json`` structure written by :mod:`eval.runner`, so plots can
be redrawn from a saved file: ``write_plots(json.load(open("metrics.json")), Path("out"))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic output
import matplotlib.pyplot as plt

__all__ = ["accuracy_vs_popularity", "cold_start_bars", "metric_bars", "write_plots"]

_HYBRID = ("hybrid", "hybrid+llm")


def _colour(name: str) -> str:
    return "tab:red" if name in _HYBRID else "tab:blue"


def _triple(d: Mapping[str, Any] | None) -> tuple[float, float, float] | None:
    if not d or d.get("mean") is None:
        return None
    m = float(d["mean"])
    lo = d.get("ci_low")
    hi = d.get("ci_high")
    return m, float(lo) if lo is not None else m, float(hi) if hi is not None else m


def metric_bars(models: Mapping[str, Mapping[str, Any]], key: str, path: Path, title: str) -> bool:
    """Bars of ``key`` per model with 95% bootstrap CI whiskers; False when no model has it."""
    rows = [(n, t) for n, v in models.items() if (t := _triple(v.get(key))) is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    x = range(len(rows))
    means = [t[0] for _, t in rows]
    err = [[t[0] - t[1] for _, t in rows], [t[2] - t[0] for _, t in rows]]
    ax.bar(x, means, yerr=err, capsize=4, color=[_colour(n) for n, _ in rows], alpha=0.85)
    ax.set_xticks(list(x), [n for n, _ in rows], rotation=25, ha="right")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def accuracy_vs_popularity(
    models: Mapping[str, Mapping[str, Any]], path: Path, k: int = 10
) -> bool:
    """Scatter of ndcg@k against arp@k (average popularity of what a model recommends).

    hybrid+llm is left out: it is measured on a small reader subset, not comparable here.
    """
    pts = [
        (n, v[f"arp@{k}"]["mean"], v[f"ndcg@{k}"]["mean"])
        for n, v in models.items()
        if n != "hybrid+llm"
        if v.get(f"arp@{k}", {}).get("mean") is not None
        and v.get(f"ndcg@{k}", {}).get("mean") is not None
    ]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for n, x, y in pts:
        ax.scatter([x], [y], color=_colour(n), s=40)
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"arp@{k} (mean training popularity of recommended books)")
    ax.set_ylabel(f"ndcg@{k}")
    ax.set_title("Accuracy vs popularity of recommendations", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def cold_start_bars(
    main: Mapping[str, Mapping[str, Any]],
    cold: Mapping[str, Mapping[str, Any]],
    path: Path,
    key: str = "ndcg@10",
) -> bool:
    """Grouped bars: ``key`` on the main slice vs the cold-start slice, per model, with CIs."""
    names = [
        n for n in main if n in cold and _triple(cold[n].get(key)) and _triple(main[n].get(key))
    ]
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    w = 0.4
    for off, data, label, colour in (
        (-w / 2, main, "main slice", "tab:blue"),
        (w / 2, cold, "cold start", "tab:orange"),
    ):
        t = [_triple(data[n][key]) for n in names]
        ax.bar(
            [i + off for i in range(len(names))],
            [x[0] for x in t],
            w,
            yerr=[[x[0] - x[1] for x in t], [x[2] - x[0] for x in t]],  # type: ignore[index]
            capsize=3,
            label=label,
            color=colour,
            alpha=0.85,
        )
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel(key)
    ax.set_title(f"{key}: main slice vs cold-start readers", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_plots(metrics: Mapping[str, Any], out: Path) -> list[tuple[str, str]]:
    """Draw every plot the run supports into ``out``; returns ``(caption, file name)`` pairs."""
    models = metrics.get("models", {})
    ks = metrics.get("protocol", {}).get("ks", [10, 20])
    k1, k2 = min(ks), max(ks)
    made: list[tuple[str, str]] = []
    label = metrics.get("dataset", {}).get("label", "")
    for key, fname in (
        (f"ndcg@{k1}", f"ndcg_at_{k1}.png"),
        (f"recall@{k2}", f"recall_at_{k2}.png"),
    ):
        if metric_bars(models, key, out / fname, f"{key} with 95% bootstrap CI - {label}"):
            made.append((f"{key} per model (95% bootstrap CI)", fname))
    if accuracy_vs_popularity(models, out / "accuracy_vs_popularity.png", k1):
        made.append((f"ndcg@{k1} vs arp@{k1}", "accuracy_vs_popularity.png"))
    cold = metrics.get("cold_start", {}).get("models", {})
    if cold_start_bars(models, cold, out / "cold_start.png", f"ndcg@{k1}"):
        made.append((f"ndcg@{k1}: main slice vs cold-start slice", "cold_start.png"))
    return made
