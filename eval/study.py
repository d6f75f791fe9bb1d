"""The study: prepare -> tune on validation -> fit -> rank -> score -> explain -> write.

:func:`run` is what ``readnext eval`` calls; each stage lives in its own module
(:mod:`eval.protocol`, :mod:`eval.tuning`, :mod:`eval.scoring`, :mod:`eval.llm_stage`,
:mod:`eval.faithfulness`, :mod:`eval.provenance`) and records its wall time in ``runtime_s``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.config import Settings
from retrieval.errors import ReadnextError
from retrieval.sources import CandidateSource, HybridSource

from . import models as _models
from .faithfulness import faithfulness
from .llm_stage import llm_stage
from .metrics import RunResult
from .models import (
    CF_MODELS,
    GRIDS,
    ORDERED_MODELS,
    QUICK_GRIDS,
    SASREC_SHUFFLED_EPOCHS,
    SINGLE_MODELS,
    build_hybrid,
    build_model,
    tuned_config_toml,
)
from .protocol import (
    KRICHENE_RENDLE,
    SAMPLED_WARNING,
    EvalConfig,
    Prepared,
    clean,
    prepare,
    protocol_dict,
    tuning_set,
)
from .provenance import command_line, hardware
from .scoring import (
    Run,
    Sampler,
    ablation_hook,
    bar_check,
    metrics_of,
    paired,
    score_model,
    summary,
)
from .stats import summarize
from .tuning import HYBRID_SPACE, QUICK_HYBRID_SPACE, TuningResult, tune_hybrid, tune_single

__all__ = ["run", "config_dict"]


class _Study:
    """One run, stage by stage; each stage records its wall time in ``runtime``."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.models = cfg.chosen_models()
        if not self.models:
            raise ReadnextError("--models: nothing to evaluate")
        self.ks = tuple(sorted(set(int(k) for k in cfg.ks)))
        if not self.ks or min(self.ks) < 1:
            raise ReadnextError(f"--k needs positive cut-offs such as 10,20; got {cfg.ks}")
        self.kmax = max(self.ks)
        self.key10 = f"ndcg@{10 if 10 in self.ks else self.ks[0]}"
        self.settings = Settings.load(config_file=cfg.config, home=cfg.data_dir)
        self.runtime: dict[str, Any] = {"models": {}, "tuning": {}}
        self.t0 = time.perf_counter()
        self.skipped: dict[str, str] = {}
        self.tuned: dict[str, TuningResult] = {}
        self.hybrid_tuned: TuningResult | None = None
        self.fitted: dict[str, CandidateSource] = {}
        self.runs: dict[str, Run] = {}
        self.hybrid: HybridSource | None = None
        self.ablation_runs: dict[str, dict[str, list[str]]] = {}
        self.ablation_cold: dict[str, dict[str, list[str]]] = {}
        self.sasrec_info: dict[str, Any] = {}
        self.llm_info: dict[str, Any] | None = None
        self.sampler: Sampler | None = None

    def log(self, msg: str) -> None:
        if self.cfg.verbose:
            print(
                f"[eval {time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True
            )

    def prepare(self) -> None:
        self.log("loading and splitting the data, embedding the catalog")
        self.prep = prepare(self.cfg, self.settings)
        self.runtime["prepare"] = round(self.prep.info.pop("prepare_s"), 2)
        self.notes = self.prep.notes
        if not self.prep.main:
            raise ReadnextError(
                "no test reader has a relevant held-out rating and enough training ratings; "
                "lower --relevant or use more data"
            )
        u = self.prep.info["users"]
        self.log(
            f"{self.prep.lib.n_items:,} catalog books; {u['main']:,} main and {u['cold_start']:,} "
            f"cold-start readers ({u['skipped_no_relevant']:,} skipped: no relevant held-out book)"
        )

    def tune(self) -> None:
        t = time.perf_counter()
        self.ts, self.val_desc = tuning_set(self.prep, self.cfg)
        grids = dict(QUICK_GRIDS if self.cfg.quick else GRIDS)
        if self.prep.split.method != "temporal":
            # No order: a profile's recency decay would follow file order (Book-Crossing: ISBN
            # order).
            grids["content"] = [
                {"half_life_events": 1e9, "pivot": p}
                for p in sorted({g["pivot"] for g in grids["content"]})
            ]
            self.notes.append(
                "data without order: the content profile uses no recency decay, the hybrid no "
                "recency-weighted CF user vector and no sequence source"
            )
        elif self.prep.dataset.has_timestamps:
            # Profiles decay by days when there are timestamps (ProfileConfig.half_life_days).
            pivots = sorted({g["pivot"] for g in grids["content"]})
            days = (90.0, 365.0) if self.cfg.quick else (30.0, 180.0, 730.0)
            grids["content"] = [{"half_life_days": d, "pivot": p} for d in days for p in pivots]
        # the hybrid needs every single model it may fuse; with --models, the CF models it may
        # pick from are the listed ones (a slow peer left out is left out of the hybrid's choice
        # too)
        listed = self.cfg.models is not None
        need = [
            m
            for m in SINGLE_MODELS
            if m in self.models or ("hybrid" in self.models and not (listed and m in CF_MODELS))
        ]
        if "hybrid" in self.models and not any(m in need for m in CF_MODELS):
            need.append("ease")
        cache_dir = (
            Path(self.cfg.cache_dir).expanduser()
            if self.cfg.cache_dir
            else self.settings.home / "cache"
        )
        _models.SASREC_CACHE.update(dir=cache_dir / "sasrec", progress=self.cfg.progress)
        if self.prep.split.method != "temporal":
            for m in ORDERED_MODELS:
                if m in need:
                    need.remove(m)
                    self.skipped[m] = (
                        "skipped: the data has no order of events (no timestamps, no documented "
                        "chronological file), and this model learns from the order"
                    )
                    self.notes.append(f"{m} {self.skipped[m]}")
        limit = self.settings.cf.max_ease_items
        if self.prep.lib.n_items > limit and "ease" in need:
            need.remove("ease")
            self.skipped["ease"] = (
                f"skipped: {self.prep.lib.n_items:,} catalog books exceed EASE's limit of "
                f"{limit:,} (cf.max_ease_items: its dense item x item inverse would not fit)"
            )
            self.notes.append(f"ease {self.skipped['ease']}")
        for m in need:
            if m == "readers" and "content" in self.tuned:
                # the readers' taste vectors are the profiles the content source uses (what ingest
                # writes to Chroma `users` with the same [profile] settings)
                grids[m] = [{**g, **self.tuned["content"].best} for g in grids[m]]
            self.log(
                f"tuning {m} ({len(grids[m])} grid points, {len(self.ts):,} validation readers)"
            )
            self.tuned[m] = tune_single(m, grids[m], self.ts, self.cfg.seed, self.cfg.progress)
            self.runtime["tuning"][m] = round(self.tuned[m].seconds, 2)
        if "hybrid" in self.models:
            self.log(
                "tuning the hybrid (CF model + user vector, sequence source, fusion method and "
                "weights)"
            )
            space = QUICK_HYBRID_SPACE if self.cfg.quick else HYBRID_SPACE
            self.hybrid_tuned = tune_hybrid(
                self.ts,
                self.tuned,
                self.prep.split.method == "temporal",
                self.cfg.seed,
                space,
                self.cfg.progress,
            )
            self.runtime["tuning"]["hybrid"] = round(self.hybrid_tuned.seconds, 2)
        self.runtime["tuning_total"] = round(time.perf_counter() - t, 2)

    def rank(self) -> None:
        """Refit each tuned model on the whole training split and rank the catalog for every
        reader."""
        cfg, prep = self.cfg, self.prep
        if cfg.sampled:
            test_items = prep.split.test.groupby("user_id")["book_id"].agg(set).to_dict()
            self.sampler = Sampler(prep.lib, int(cfg.sampled), cfg.seed, test_items)
            print(f"warning: --sampled {cfg.sampled}: {SAMPLED_WARNING}", file=sys.stderr)
        fit_s: dict[str, float] = {}
        for m in [m for m in SINGLE_MODELS if m in self.tuned]:
            self.log(f"fitting and ranking {m}")
            t = time.perf_counter()
            # Every model, SASRec included, is fitted from scratch on the whole training split
            # with its tuned settings: SASRec exactly as `readnext ingest` trains it with the
            # `[sasrec]` of tuned-config.toml (same call, data, config and seed; training is
            # deterministic), so the hybrid measured here is the one the product serves. (A
            # warm start from the validation fit would be faster, but no ingest can repeat it.)
            self.fitted[m] = build_model(m, prep.lib, self.tuned[m].best, cfg.seed)
            fit_s[m] = time.perf_counter() - t
            if m in self.models:
                self.runs[m] = score_model(
                    self.fitted[m], prep, self.kmax, self.sampler, cfg.progress, f"rank {m}"
                )
                self.runs[m].fit_s = fit_s[m]
        if self.hybrid_tuned is not None:
            self.log("ranking the hybrid (and its ablations)")
            best, tuned = self.hybrid_tuned.best, {n: r.best for n, r in self.tuned.items()}
            t = time.perf_counter()
            self.hybrid = build_hybrid(prep.lib, best, tuned, cfg.seed, self.fitted)
            reused = sum(fit_s.get(n, 0.0) for n in ("content", "popularity", best["cf_model"]))
            own = time.perf_counter() - t
            hook, self.ablation_runs, self.ablation_cold = ablation_hook(
                self.hybrid, best, tuned, prep, self.kmax, self.fitted, cfg.seed
            )
            self.runs["hybrid"] = score_model(
                self.hybrid,
                prep,
                self.kmax,
                self.sampler,
                cfg.progress,
                "rank hybrid",
                hook,
                series_order=True,
            )
            self.runs["hybrid"].fit_s = own + reused
        self._sasrec_checks()
        if (
            "hybrid+llm" in self.models
            and self.hybrid is not None
            and self.hybrid_tuned is not None
        ):
            self.log(
                f"hybrid+llm: LLM reranking for {cfg.llm_users} validation and {cfg.llm_users} "
                "test readers"
            )
            t = time.perf_counter()
            val_hybrid = build_hybrid(
                self.ts.lib,
                self.hybrid_tuned.best,
                {n: r.best for n, r in self.tuned.items()},
                cfg.seed,
                {n: r.model for n, r in self.tuned.items() if r.model is not None},
            )
            res = llm_stage(
                prep, self.ts, self.hybrid, val_hybrid, cfg, self.kmax, self.notes, self.settings
            )
            if res is not None:
                self.runs["hybrid+llm"], self.llm_info = (
                    Run(main=res[0], score_s=time.perf_counter() - t),
                    res[1],
                )
        for m, r in self.runs.items():
            self.runtime["models"][m] = {
                "fit_s": round(r.fit_s, 2),
                "score_s": round(r.score_s, 2),
                "total_s": round(r.fit_s + r.score_s, 2),
            }
        for m in self.models:
            if m not in self.runs and m not in self.skipped:
                self.skipped[m] = next((n for n in self.notes if n.startswith(m)), "skipped")

    def _sasrec_checks(self) -> None:
        """SASRec's training record and the shuffled-order control (does the order carry
        signal?)."""
        cfg, prep = self.cfg, self.prep
        if "sasrec" not in self.fitted:
            return
        val_model = getattr(self.tuned["sasrec"].model, "model", None)
        self.sasrec_info = {
            "validation_fit": val_model.report.to_dict() if val_model is not None else None,
            "test_fit": self.fitted["sasrec"].model.report.to_dict(),  # type: ignore[attr-defined]
            "config": self.tuned["sasrec"].best,
        }
        if not cfg.sasrec_shuffled:
            return
        self.log("SASRec trained on per-reader shuffled sequences (the order-matters control)")
        t = time.perf_counter()
        # on the validation split, so its curve compares epoch by epoch with the ordered model's
        shuf = build_model(
            "sasrec",
            self.ts.lib,
            {**self.tuned["sasrec"].best, "shuffled_seed": cfg.seed},
            cfg.seed,
        )
        run = score_model(shuf, prep, self.kmax, None, cfg.progress, "rank sasrec (shuffled)")
        self.ablation_runs[
            "sasrec alone, trained on per-reader shuffled sequences (validation split, "
            f"<= {SASREC_SHUFFLED_EPOCHS} epochs)"
        ] = run.main
        if self.tuned["sasrec"].model is not None:
            ordered = score_model(
                self.tuned["sasrec"].model, prep, self.kmax, None, cfg.progress, "rank sasrec (val)"
            )
            self.ablation_runs[
                "sasrec alone, validation-split fit "
                "(ordered; before the refit on the whole training split)"
            ] = ordered.main
        self.sasrec_info["shuffled_fit"] = shuf.model.report.to_dict()  # type: ignore[attr-defined]
        self.sasrec_info["shuffled_s"] = round(time.perf_counter() - t, 2)

    def _ablation_slices(self, results: Mapping[str, RunResult]) -> dict[str, Any]:
        """The hybrid with and without each source where readers have little history.

        Slices: the cold-start slice (< ``cold_threshold`` training ratings) and "onboarding"
        readers with 3-5 training books (a new reader who named a few loved books), drawn from
        both the main and the cold slice. Paired tests against the full hybrid.
        """
        cfg, prep, key = self.cfg, self.prep, self.key10
        rel_all = {**prep.main_rel, **prep.cold_rel}
        n_books = {c.user_id: len(c.history) for c in (*prep.main, *prep.cold)}
        onboard = {u for u, n in n_books.items() if 3 <= n <= 5}
        full = {**self.runs["hybrid"].main, **self.runs["hybrid"].cold}
        out: dict[str, Any] = {}
        for slice_name, users in (
            ("cold_start", set(prep.cold_rel)),
            ("onboarding_3_5_books", onboard),
        ):
            if not users:
                continue
            rel = {u: rel_all[u] for u in sorted(users)}
            base = metrics_of({u: full[u] for u in rel}, rel, prep.lib, self.ks)
            rows: dict[str, Any] = {
                "n_readers": len(rel),
                "hybrid": summary(base, self.ks, cfg).get(key),
            }
            for name in [n for n in self.ablation_cold if n.startswith("hybrid without")]:
                rk = {**self.ablation_runs.get(name, {}), **self.ablation_cold[name]}
                res = metrics_of({u: rk[u] for u in rel if u in rk}, rel, prep.lib, self.ks)
                rows[name] = {
                    **(summary(res, self.ks, cfg).get(key) or {}),
                    "paired_vs_hybrid": paired(base, res, key, cfg),
                }
            for m in ("readers", "userknn", "sasrec", "ease", "popularity"):
                if m in self.runs:
                    rk = {**self.runs[m].main, **self.runs[m].cold}
                    rows[m] = summary(
                        metrics_of({u: rk[u] for u in rel}, rel, prep.lib, self.ks), self.ks, cfg
                    ).get(key)
            out[slice_name] = clean(rows)
        return out

    def score(self) -> dict[str, Any]:
        """Metrics with bootstrap CIs per slice, paired tests, ablations and sampled metrics."""
        self.log("metrics, bootstrap CIs and paired tests")
        t = time.perf_counter()
        cfg, prep, ks = self.cfg, self.prep, self.ks
        results: dict[str, RunResult] = {}
        cold: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for m, r in tqdm(
            list(self.runs.items()),
            desc="metrics + bootstrap",
            unit="model",
            disable=not cfg.progress,
            leave=False,
        ):
            rel = prep.main_rel if m != "hybrid+llm" else {u: prep.main_rel[u] for u in r.main}
            results[m] = metrics_of(r.main, rel, prep.lib, ks)
            models[m] = summary(results[m], ks, cfg)
            if m != "hybrid+llm" and prep.cold:
                cold[m] = summary(metrics_of(r.cold, prep.cold_rel, prep.lib, ks), ks, cfg)
        comparisons = {}
        if "hybrid" in results:
            for m, res in results.items():
                if m == "hybrid+llm":
                    comparisons["hybrid+llm vs hybrid"] = paired(
                        res, results["hybrid"], self.key10, cfg
                    )
                elif m != "hybrid":
                    comparisons[f"hybrid vs {m}"] = paired(results["hybrid"], res, self.key10, cfg)
        ablation = {}
        for name, rk in self.ablation_runs.items():
            res = metrics_of(rk, prep.main_rel, prep.lib, ks)
            keys = [k for k in (self.key10, f"recall@{self.kmax}") if k in res]
            ablation[name] = clean(summarize(res, n_boot=cfg.n_boot, seed=cfg.seed, keys=keys))
        slices = self._ablation_slices(results) if "hybrid" in self.runs else {}
        out: dict[str, Any] = {
            "models": models,
            "cold_start": {
                "threshold": cfg.cold_threshold,
                "readers": len(prep.cold),
                "models": cold,
            },
            "significance": {"metric": self.key10, "comparisons": comparisons},
            "ablation": ablation,
            "ablation_slices": slices,
            "bar": bar_check(models, ks),
        }
        if self.sasrec_info:
            out["sasrec"] = self.sasrec_info
        if self.sampler is not None:
            out["sampled"] = {
                "negatives": int(cfg.sampled or 0),
                "warning": SAMPLED_WARNING,
                "reference": KRICHENE_RENDLE,
                "models": {
                    m: summary(metrics_of(r.sampled, prep.main_rel, prep.lib, ks), ks, cfg)
                    for m, r in self.runs.items()
                    if r.sampled
                },
            }
        self.runtime["metrics"] = round(time.perf_counter() - t, 2)
        return out

    def explain(self) -> dict[str, Any]:
        t = time.perf_counter()
        explanations: dict[str, Any] = {}
        if self.hybrid is not None:
            self.log(f"re-checking the evidence behind the hybrid's top {min(self.ks)}")
            explanations["hybrid"] = faithfulness(
                self.hybrid, self.prep, self.runs["hybrid"].main, self.cfg, min(self.ks)
            )
        if self.llm_info is not None:
            explanations["hybrid+llm"] = self.llm_info.get("explanations")
        self.runtime["explanations"] = round(time.perf_counter() - t, 2)
        return explanations

    def tuning_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {m: r.to_dict() for m, r in self.tuned.items()}
        if self.hybrid_tuned is not None:
            out["hybrid"] = self.hybrid_tuned.to_dict()
        if self.llm_info is not None:
            out["hybrid+llm"] = {
                k: v for k, v in self.llm_info.items() if k not in ("explanations", "seconds")
            }
        return out


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Run the whole study and write ``cfg.out`` (metrics.json, report.md, plots, rankings).

    Args:
        cfg: the run's config.

    Returns:
        The metrics (what metrics.json holds).

    Raises:
        ReadnextError: bad config or unreadable data (one line).
    """
    study = _Study(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    study.prepare()
    study.tune()
    study.rank()
    scored = study.score()
    explanations = study.explain()
    study.runtime["total"] = round(time.perf_counter() - study.t0, 2)
    prep = study.prep
    metrics: dict[str, Any] = {
        "models": scored.pop("models"),
        "protocol": protocol_dict(
            cfg, prep, study.ks, study.val_desc, study.models, study.skipped, study.llm_info
        ),
        "dataset": prep.info["dataset"] | {"evaluated_users": prep.info["users"]},
        "tuning": study.tuning_dict(),
        **scored,
        "explanations": explanations,
        "notes": study.notes,
        "hardware": hardware(),
        "command": command_line(cfg),
        "runtime_s": study.runtime,
    }
    metrics = clean(metrics)
    study.log(f"writing {out}")
    _write(out, metrics, study.runs, prep, cfg)
    sas = getattr(study.fitted.get("sasrec"), "model", None)
    if cfg.dump_rankings and sas is not None:
        # With tuned-config.toml this is what the live product needs to rank as eval did (its
        # ingest would train its own SASRec on all the data instead).
        sas.save(out / "sasrec.pt")
    if study.hybrid_tuned is not None:
        (out / "tuned-config.toml").write_text(
            tuned_config_toml(
                study.hybrid_tuned.best,
                {n: r.best for n, r in study.tuned.items()},
                prep.info["dataset"]["label"],
                cfg.seed,
            )
        )
    return metrics


def _write(
    out: Path, metrics: Mapping[str, Any], runs: Mapping[str, Run], prep: Prepared, cfg: EvalConfig
) -> None:
    from .plots import write_plots
    from .report import write_report

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if cfg.dump_rankings:
        for fname, rel, attr in (
            ("rankings.jsonl", prep.main_rel, "main"),
            ("rankings_cold_start.jsonl", prep.cold_rel, "cold"),
        ):
            with open(out / fname, "w") as f:
                for u in rel:
                    line = {
                        "user_id": u,
                        "relevant": sorted(rel[u]),
                        "rankings": {
                            m: getattr(r, attr)[u] for m, r in runs.items() if u in getattr(r, attr)
                        },
                    }
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
    plots = write_plots(metrics, out)
    write_report(metrics, out / "report.md", plots)


def config_dict(cfg: EvalConfig) -> dict[str, Any]:
    """The config as plain data (for logs).

    Args:
        cfg: the run's config.

    Returns:
        Field -> value.
    """
    return asdict(cfg)
