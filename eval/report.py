"""``report.md`` from the ``metrics.json`` structure of a run (so a report can be re-rendered from
disk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .metrics import ACCURACY_METRICS, BEYOND_METRICS

__all__ = ["render_report", "write_report"]

_DIGITS = {"novelty": 2, "arp": 1, "coverage": 3, "diversity": 3}


SHIPPED = "shipped defaults (readnext's default settings, untuned)"


def _shipped_ratio(abl: Mapping[str, Any], hybrid: Mapping[str, Any]) -> list[str]:
    """One line: the shipped defaults' ndcg@10 as a share of the tuned hybrid's (bar: >= 99%)."""
    row = abl.get(SHIPPED, {})
    key = "ndcg@10" if "ndcg@10" in row else next((k for k in row if k.startswith("ndcg@")), None)
    got = row.get(key, {}).get("mean") if key else None
    want = hybrid.get(key, {}).get("mean") if key else None
    if not got or not want:
        return []
    r = got / want
    verdict = "within" if r >= 0.99 else "NOT within"
    return [
        f"Shipped defaults / tuned hybrid ({key}): {got:.4f} / {want:.4f} = **{r:.3f}** "
        f"({verdict} 1% of the tuned hybrid).",
        "",
    ]


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def _cell(d: Mapping[str, Any] | None, metric: str) -> str:
    if not d:
        return "n/a"
    digits = _DIGITS.get(metric.split("@")[0], 4)
    m = _num(d.get("mean"), digits)
    if d.get("ci_low") is None or d.get("ci_high") is None:
        return m
    return f"{m} [{_num(d['ci_low'], digits)}, {_num(d['ci_high'], digits)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _metric_table(models: Mapping[str, Mapping[str, Any]], k: int) -> list[str]:
    cols = [f"{m}@{k}" for m in (*ACCURACY_METRICS, *BEYOND_METRICS)]
    cols = [c for c in cols if any(c in v for v in models.values())]
    rows = [
        [f"**{n}**" if n == "hybrid" else n] + [_cell(v.get(c), c) for c in cols]
        for n, v in models.items()
    ]
    return _table(["model", *cols], rows)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _gain_sources(m: Mapping[str, Any], key: str) -> list[str]:
    """Where the hybrid's margin comes from, read off the ablation (components scored alone)."""
    abl = m.get("ablation", {})
    h = m.get("models", {}).get("hybrid", {}).get(key, {}).get("mean")
    if not abl or h is None:
        return []
    b = m.get("tuning", {}).get("hybrid", {}).get("best", {})
    out = []
    cf = abl.get("cf source alone (tuned user vector)", {}).get(key, {}).get("mean")
    seq = abl.get("sequence source alone", {}).get(key, {}).get("mean")
    single = m.get("models", {}).get(b.get("cf_model"), {}).get(key, {}).get("mean")
    if cf is not None and single:
        hl, boost = b.get("cf_half_life"), b.get("cf_liked_boost") or 0.0
        how = ([f"recency-weighted (half-life {hl} events)"] if hl is not None else []) + (
            [f"rating-weighted (liked boost {boost})"]
            if boost and b.get("cf_model") in ("ease", "itemknn")
            else []
        )
        vector = (" and ".join(how) + " user vector") if how else "plain user vector"
        out += [
            "Where the margin comes from (see the ablation below): the hybrid's CF component "
            f"alone - `{b.get('cf_model')}`, the same fitted model with a {vector} - scores "
            f"{_num(cf)}, {_pct(cf / single - 1)} over plain `{b.get('cf_model')}`; the full "
            f"hybrid adds {_pct(h / cf - 1)} on top of it.",
            "",
        ]
    if seq is not None:
        out += [
            "The sequence source alone (sequential rules: what readers rated next) scores "
            f"{_num(seq)}; the hybrid is {_pct(h / seq - 1)} above it. The recency-weighted user "
            "vector and the sequence source both exploit the chronological order that the "
            "temporal split tests; neither is one of the required single-source baselines, which "
            "are reported as their usual implementations, tuned.",
            "",
        ]
    return out


def render_report(m: Mapping[str, Any], plots: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown report for metrics ``m``."""
    ds = m.get("dataset", {})
    p = m.get("protocol", {})
    ks = p.get("ks", [10, 20])
    k1 = min(ks)
    users = ds.get("evaluated_users", {})
    L: list[str] = [f"# readnext offline evaluation: {ds.get('label') or ds.get('name')}", ""]
    L += [f"Produced by: `{m.get('command', '')}`", ""]

    bar = m.get("bar", {})
    key = bar.get("metric", f"ndcg@{k1}")
    if bar.get("met") is not None:
        verdict = "**MET**" if bar["met"] else "**NOT MET**"
        L += [
            "## Does the hybrid beat every single-source model by >= 10%?",
            "",
            f"{verdict}. On {key} (main slice) the hybrid scores {_num(bar.get('hybrid'))}; the "
            f"closest single-source model is `{bar.get('closest_model')}`, which the hybrid beats "
            f"by {_pct(bar.get('min_gain'))} (relative). The bar asks for >= +10.0% against every "
            "one.",
            "",
        ]
        L += _table(
            ["single-source model", f"{key}", "hybrid gain (relative)"],
            [
                [n, _num(m["models"][n][key]["mean"]), _pct(g)]
                for n, g in bar.get("relative_gain", {}).items()
            ],
        )
        L += [""] + _gain_sources(m, key)

    L += ["## Protocol", ""]
    L += [
        f"- Split: {p.get('split_text')}; seed {p.get('seed')}.",
        f"- Relevant: a held-out rating >= {p.get('relevant_threshold')} (1-5 scale). Test readers "
        f"without a relevant held-out book are skipped: {_num(users.get('skipped_no_relevant'))} "
        f"of {_num(users.get('evaluated_pool'))}.",
        f"- Main slice: {p.get('main_slice')} ({_num(users.get('main'))} readers). Cold-start "
        f"slice: readers with fewer than {p.get('cold_start_threshold')} training ratings "
        f"({_num(users.get('cold_start'))} readers), reported separately.",
        f"- Ranking: {p.get('ranking')} ({p.get('catalog')}; {_num(ds.get('catalog_books'))} "
        f"books), excluding {p.get('exclude')}. No sampled negatives"
        + (" in the main tables." if p.get("sampled_negatives") else "."),
        f"- Cut-offs K = {', '.join(map(str, ks))}. 95% percentile bootstrap CIs over readers "
        f"({p.get('bootstrap', {}).get('n_boot')} resamples). Significance: "
        f"{p.get('significance_test')}.",
        "- Tuning: every model's grid is searched on a validation split carved from the training "
        "part only "
        + (
            f"(temporal holdout of the last {p.get('holdout', 0.2):.0%} of each training history; "
            if p.get("validation", {}).get("method") == "temporal"
            else f"(seeded random holdout of {p.get('holdout', 0.2):.0%} of each training history; "
        )
        + f"{_num(p.get('validation', {}).get('validation_readers'))} seeded warm validation "
        "readers), best ndcg@10. The test split is used once, for the tables below.",
        f"- To-read shelves: {p.get('to_read')}.",
    ]
    if p.get("series_order"):
        L += [f"- Series reading order: {p['series_order']}."]
    if p.get("users_subset"):
        L += [
            f"- Readers: a seeded random subset of {p['users_subset']:,} test readers (`--users`)."
        ]
    if p.get("quick"):
        L += [
            "- `--quick`: small grids and few validation readers; numbers are a smoke test, not "
            "the study."
        ]
    for n, why in p.get("skipped_models", {}).items():
        L += [f"- `{n}`: {why}"]
    L += [""]

    L += ["## Dataset", ""]
    sp = ds.get("split", {})
    L += _table(
        ["", "value"],
        [
            ["label", str(ds.get("label"))],
            ["catalog books (ranked)", _num(ds.get("catalog_books"))],
            ["books in the metadata", _num(ds.get("books"))],
            ["readers", _num(ds.get("users"))],
            ["ratings", _num(ds.get("ratings"))],
            ["timestamps", str(ds.get("has_timestamps"))],
            ["chronological row order", str(ds.get("ordered"))],
            [
                "train events / readers / books",
                f"{_num(sp.get('train', {}).get('events'))} / "
                f"{_num(sp.get('train', {}).get('users'))} / "
                f"{_num(sp.get('train', {}).get('items'))}",
            ],
            [
                "test events / readers / books",
                f"{_num(sp.get('test', {}).get('events'))} / "
                f"{_num(sp.get('test', {}).get('users'))} / "
                f"{_num(sp.get('test', {}).get('items'))}",
            ],
            [
                "evaluated readers: main / cold-start / skipped",
                f"{_num(users.get('main'))} / {_num(users.get('cold_start'))} / "
                f"{_num(users.get('skipped_no_relevant'))}",
            ],
        ],
    )
    L += [""]

    models = m.get("models", {})
    for k in ks:
        L += [f"## Results @ {k} (main slice, mean [95% CI])", ""]
        L += _metric_table(models, k) + [""]
    if "hybrid+llm" in models:
        L += [
            "`hybrid+llm` is measured on its "
            f"{_num(p.get('llm', {}).get('readers') if p.get('llm') else None)} seeded readers "
            "only (see below), so compare it with the paired test, not with this column.",
            "",
        ]

    cold = m.get("cold_start", {})
    if cold.get("models"):
        L += [
            f"## Cold-start slice ({_num(cold.get('readers'))} readers with < "
            f"{cold.get('threshold')} training ratings)",
            "",
        ]
        cols = [f"{x}@{k}" for k in ks for x in ("ndcg", "recall", "hitrate")]
        L += _table(
            ["model", *cols],
            [[n] + [_cell(v.get(c), c) for c in cols] for n, v in cold["models"].items()],
        )
        L += [""]

    sig = m.get("significance", {})
    if sig.get("comparisons"):
        L += [f"## Significance ({sig.get('metric')}, paired over the same readers)", ""]
        rows = []
        for name, d in sig["comparisons"].items():
            rows.append(
                [
                    name,
                    _num(d.get("n")),
                    _num(d.get("mean_a")),
                    _num(d.get("mean_b")),
                    f"{_num(d.get('mean_diff'))} [{_num(d.get('ci_low'))}, "
                    f"{_num(d.get('ci_high'))}]",
                    _pct(d.get("relative")),
                    _num(d.get("p_value"), 4),
                    _num(d.get("p_ttest"), 4),
                ]
            )
        L += _table(
            [
                "comparison",
                "readers",
                "A",
                "B",
                "A - B [95% CI]",
                "relative",
                "p (sign-flip)",
                "p (t-test)",
            ],
            rows,
        )
        L += [""]

    abl = m.get("ablation", {})
    if abl:
        L += [
            "## Hybrid ablation (main slice; same tuned settings, one change each, nothing "
            "re-tuned)",
            "",
            '"Shipped defaults" is what `readnext ingest` + `readnext recommend` build on this '
            "training data with no config file (`FusionConfig`, `CFConfig`, `SequenceConfig`, "
            "`SASRecConfig`, ... defaults; its own CF and SASRec fits).",
            "",
        ]
        L += _shipped_ratio(abl, models.get("hybrid", {}))
        keys = list(next(iter(abl.values())).keys())
        full = models.get("hybrid", {})
        rows = [["hybrid (as tuned)"] + [_cell(full.get(x), x) for x in keys]]
        rows += [[n] + [_cell(v.get(x), x) for x in keys] for n, v in abl.items()]
        L += _table(["variant", *keys], rows) + [""]

    sl = m.get("ablation_slices", {})
    if sl:
        L += [
            "## Where few books are known: the hybrid with and without each learned source",
            "",
            "Cold start = readers with fewer training ratings than the threshold; onboarding = "
            "readers with 3-5 training books (main or cold slice), like a new reader who named a "
            "few loved books. Same tuned hybrid, one source's weight set to 0; p from the paired "
            "sign-flip test against the full hybrid.",
            "",
        ]
        rows = []
        for name, d in sl.items():
            n = d.get("n_readers")
            if not isinstance(n, int):  # older metrics.json: the count is the paired tests' n
                n = next(
                    (
                        v["paired_vs_hybrid"].get("n")
                        for v in d.values()
                        if isinstance(v, dict) and "paired_vs_hybrid" in v
                    ),
                    None,
                )
            for variant, v in d.items():
                if not isinstance(v, dict):
                    continue
                pv = v.get("paired_vs_hybrid", {})
                rows.append(
                    [
                        name.replace("_", " "),
                        _num(n),
                        variant,
                        _num(v.get("mean")),
                        f"[{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]",
                        _pct(pv.get("relative")) if pv else "",
                        _num(pv.get("p_value"), 4) if pv else "",
                    ]
                )
        L += _table(
            ["slice", "readers", "model", "ndcg@10", "95% CI", "hybrid vs this", "p"], rows
        ) + [""]

    sas = m.get("sasrec", {})
    if sas:

        def fit(d):
            if not d:
                return "-"
            cached = " (trained earlier, loaded from the cache)" if d.get("from_cache") else ""
            return (
                f"{d.get('epochs')} epochs, best epoch {d.get('best_epoch')} (validation next-book "
                f"ndcg@10 {_num(d.get('best_val_ndcg'))}), {_num(d.get('seconds'), 1)} s = "
                f"{_num(d.get('seconds_per_epoch'), 1)} s/epoch on {_num(d.get('sequences'))} "
                f"sequences{cached}"
            )

        L += [
            "## SASRec training",
            "",
            f"Full cross-entropy over the catalog, config `{sas.get('config') or 'defaults'}` "
            "(`retrieval.config.SASRecConfig`: 2 blocks, hidden 64, 1 head, dropout 0.2, max "
            "length 50, Adam 1e-3, batch 128), early stop on the last event of 2,000 training "
            "readers held out from training.",
            "",
            f"- validation-split model (used for tuning): {fit(sas.get('validation_fit'))}",
            "- test model (trained from scratch on the whole training split, as `readnext ingest` "
            f"trains it with this config): {fit(sas.get('test_fit'))}",
        ]
        if sas.get("shuffled_fit"):
            L += [
                "- shuffled-order control (each reader's training sequence permuted): "
                f"{fit(sas.get('shuffled_fit'))}; its ndcg@10 is the ablation row "
                '"sasrec alone, trained on per-reader shuffled sequences".'
            ]
        L += [
            "",
            "Training times are wall-clock on a 2-core machine shared with other jobs: noisy, read "
            "them as an order of magnitude.",
            "",
        ]

    tun = m.get("tuning", {})
    if tun:
        L += ["## Tuned hyper-parameters (chosen on validation)", ""]
        rows = []
        for n, t in tun.items():
            if n in ("hybrid", "hybrid+llm"):
                continue
            rows.append(
                [
                    n,
                    f"`{t.get('best')}`",
                    _num(t.get("validation_ndcg@10")),
                    str(len(t.get("grid", []))),
                ]
            )
        L += _table(["model", "chosen", "validation ndcg@10", "grid points"], rows) + [""]
        if "hybrid" in tun:
            h = tun["hybrid"]
            b = h.get("best", {})
            L += [
                f"- **hybrid**: fusion `{b.get('method')}`"
                + (
                    f" (rrf_k={b.get('rrf_k')})"
                    if b.get("method") == "rrf"
                    else " (per-reader z-scores)"
                )
                + f", weights `{b.get('weights')}`, CF model `{b.get('cf_model')}` with "
                f"user-vector half-life {b.get('cf_half_life')} events and liked boost "
                f"{b.get('cf_liked_boost')}, sequence source `{b.get('sequence')}`; validation "
                f"ndcg@10 {_num(h.get('validation_ndcg@10'))}. These settings as a readnext "
                "config file: `tuned-config.toml` (the live `readnext recommend` runs the same "
                "`HybridSource` class eval ranks with)."
            ]
            L += _cold_fusion_lines(h)
        if "hybrid+llm" in tun:
            t = tun["hybrid+llm"]
            grid = ", ".join(
                f"{g.get('weight')}: {_num(g.get('ndcg@10'))}" for g in t.get("weight_grid", [])
            )
            L += [
                f"- **hybrid+llm** ({t.get('backend')}, {t.get('mode')} over the top "
                f"{t.get('top_n')}): LLM weight **{t.get('weight')}**, from validation ndcg@10 by "
                f"weight ({grid}) on {_num(t.get('validation_readers'))} validation readers; "
                f"{t.get('selection')}. A weight of 0 returns the hybrid's ranking exactly"
                + (" - which is what hybrid+llm then is." if t.get("weight") == 0 else ".")
            ]
        L += [""]

    ex = m.get("explanations", {})
    if ex.get("hybrid"):
        e = ex["hybrid"]
        verdict = (
            "as required"
            if e.get("faithfulness") == 1.0
            else "**below 1.0: a bug in evidence or verify**"
        )
        L += [
            "## Explanation faithfulness",
            "",
            f"Every evidence record behind the hybrid's top {e.get('k')} for "
            f"{_num(e.get('readers'))} seeded readers ({_num(e.get('items'))} recommendations, "
            f"{_num(e.get('evidence_records'))} records) was re-checked with "
            "`retrieval.evidence.verify` against the training data: faithfulness "
            f"**{_num(e.get('faithfulness'))}** ({verdict}). Recommendations with no evidence at "
            f"all: {_num(e.get('items_without_evidence'))}. Records by kind: {e.get('by_kind')}; "
            f"failed: {e.get('failed_by_kind') or 'none'}.",
            "",
        ]
    if ex.get("hybrid+llm"):
        e = ex["hybrid+llm"]
        if e.get("skipped"):
            L += [f"LLM explanations: {e['skipped']}", ""]
        else:
            L += [
                f"LLM explanations ({_num(e.get('explanations'))} top picks, "
                "`assistant.explainer.Explainer`): hallucinated-title rate "
                f"{_num(e.get('hallucinated_title_rate'))}, hallucinated-author rate "
                f"{_num(e.get('hallucinated_author_rate'))}, other unsupported names or years "
                f"{_num(e.get('unsupported_name_rate'))} (replies the grounding guard caught "
                "naming something outside the facts), guard fallback rate "
                f"{_num(e.get('guard_fallback_rate'))} (reasons: "
                f"{e.get('fallback_reasons') or 'none'}). Every rejected reply was replaced by the "
                "template text, so none of these reached a reader.",
                "",
            ]

    if m.get("sampled"):
        s = m["sampled"]
        L += [
            f"## Sampled metrics ({s.get('negatives')} random negatives per reader) - read the "
            "warning",
            "",
            f"> {s.get('warning')}",
            "",
        ]
        L += _metric_table(s.get("models", {}), k1) + [""]

    hw = m.get("hardware", {})
    rt = m.get("runtime_s", {})
    L += ["## Hardware and runtime", ""]
    L += [
        f"- CPU: {hw.get('cpu')} ({hw.get('cores')} cores), RAM {hw.get('ram_gib')} GiB; Python "
        f"{hw.get('python')}, numpy {hw.get('numpy')}, torch {hw.get('torch')}, scipy "
        f"{hw.get('scipy')}, implicit {hw.get('implicit')}.",
        f"- Total {rt.get('total')} s: prepare (load, split, embed) {rt.get('prepare')} s, tuning "
        f"{rt.get('tuning_total')} s, metrics + bootstrap {rt.get('metrics')} s, evidence checks "
        f"{rt.get('explanations')} s.",
        "",
    ]
    rows = [
        [
            n,
            _num(v.get("fit_s"), 2),
            _num(v.get("score_s"), 2),
            _num(v.get("total_s"), 2),
            _num(rt.get("tuning", {}).get(n), 2),
        ]
        for n, v in rt.get("models", {}).items()
        if "score_s" in v
    ]
    L += _table(
        ["model", "fit (s)", "score all readers (s)", "fit + score (s)", "tuning (s)"], rows
    )
    L += ["", "The hybrid's fit time includes the fits of the single models it reuses.", ""]

    if m.get("notes"):
        L += ["## Notes", ""] + [f"- {n}" for n in m["notes"]] + [""]
    if plots:
        L += ["## Plots", ""]
        for caption, fname in plots:
            L += [f"![{caption}]({fname})", ""]
    return "\n".join(L)


def write_report(
    metrics: Mapping[str, Any], path: Path, plots: Sequence[tuple[str, str]] = ()
) -> None:
    """Write :func:`render_report` to ``path``."""
    Path(path).write_text(render_report(metrics, plots))


def _cold_fusion_lines(h: Mapping[str, Any]) -> list[str]:
    """The cold slice's fusion weights (``eval.tuning.tune_cold_weights``), one bullet."""
    row = next((r for r in h.get("grid", []) if r.get("stage") == "cold_fusion"), None)
    if row is None:
        return []
    pv = row.get("paired_vs_warm_weights", {})
    cold = row.get("cold_weights") or {}
    alone = ", ".join(f"{n} {_num(v)}" for n, v in (row.get("alone") or {}).items())
    chosen = (
        f"weights `{row.get('weights')}` (differing from the warm ones: `{cold}`)"
        if cold
        else "the warm weights (no other set scored higher on them)"
    )
    return [
        f"- **hybrid, cold slice** (readers with fewer than {row.get('cold_below')} history "
        f"books, tuned on {_num(row.get('readers'))} cold validation readers only): {chosen}; "
        f"validation ndcg@10 {_num(row.get('ndcg@10'))} vs {_num(row.get('ndcg@10_warm_weights'))} "
        f"with the warm weights (difference {_num(pv.get('mean_diff'))}, 95% CI "
        f"{pv.get('ci')}, p {pv.get('p')}). Each source alone on them: {alone}."
    ]
