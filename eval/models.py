"""The models under evaluation, each a :class:`~retrieval.sources.CandidateSource` over a training
Library.

Names (exactly these, they key ``metrics.json``): ``popularity``, ``itemknn``, ``als``, ``bpr``,
``ease``, ``content`` (single-source models), ``hybrid`` (our fusion) and ``hybrid+llm`` (the
hybrid reranked by the LLM; built by :mod:`eval.llm_stage`, not here).

Every model has a small documented hyper-parameter grid (:data:`GRIDS`, :data:`QUICK_GRIDS`)
searched on a validation split by :mod:`eval.tuning`. The hybrid is built from the tuned
single-source settings plus its own fusion parameters (:func:`build_hybrid`).

Every model is built by the registry's factory (:mod:`retrieval.registry`), the one the
product uses; the hybrid is :class:`retrieval.sources.HybridSource` over every registered source
that applies, built from the tuned settings (:func:`hybrid_configs`), and ranked through the
product's rank path: what the report measures is what ``readnext recommend`` runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from retrieval.config import (
    CFConfig,
    FusionConfig,
    PopularityConfig,
    ProfileConfig,
    ReadersConfig,
    SASRecConfig,
    SequenceConfig,
)
from retrieval.library import Library
from retrieval.registry import SOURCES, BuildDeps, build_source, section_configs, source_names
from retrieval.registry import build_hybrid as registry_hybrid
from retrieval.registry import build_sources as registry_sources
from retrieval.sources import CandidateSource, HybridSource

__all__ = [
    "ALL_MODELS",
    "CF_MODELS",
    "GRIDS",
    "QUICK_GRIDS",
    "SINGLE_MODELS",
    "build_hybrid",
    "build_model",
    "hybrid_configs",
    "hybrid_sources",
    "tuned_config_toml",
]

SINGLE_MODELS = (
    "popularity",
    "itemknn",
    "als",
    "bpr",
    "ease",
    "content",
    "userknn",
    "readers",
    "sasrec",
)
CF_MODELS = ("itemknn", "als", "bpr", "ease")
ALL_MODELS = (*SINGLE_MODELS, "hybrid", "hybrid+llm")
# Models that need an order of events (skipped, with the reason, on data without one).
ORDERED_MODELS = ("sasrec",)
# Where trained SASRec models are cached (content-addressed by data + config; set by the study).
SASREC_CACHE: dict[str, Any] = {"dir": None, "progress": True}
# The shuffled-order control trains from scratch on the validation split within this budget and
# is compared with the ordered model's validation curve at the same epochs (and on test).
SASREC_SHUFFLED_EPOCHS = 15
_PROFILE_KEYS = ("half_life_events", "half_life_days", "pivot")
# The hybrid's sources are the registry's (retrieval.registry.source_names()), not a list here.

# Hyper-parameter grids, searched exhaustively on the validation split (best ndcg@10).
# Ranges follow each model's usual good region; EASE's l2 and ALS's ridge scale with the number
# of readers, hence the wide spans. Each grid was widened until the goodbooks optimum was not
# on its edge (a peer tuned at the edge of its grid is not fairly tuned).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{"damping": d} for d in (5.0, 20.0, 100.0)],
    "itemknn": [{"k": k, "shrink": s} for k in (20, 50, 200) for s in (0.0, 10.0)],
    "ease": [{"l2": l2} for l2 in (10.0, 30.0, 100.0, 300.0, 1000.0)],
    "als": [
        {"factors": f, "regularization": r, "alpha": 10.0, "iterations": 15}
        for f in (64, 128)
        for r in (50.0, 200.0, 800.0)
    ],
    "bpr": [
        {"factors": f, "learning_rate": lr, "regularization": 0.01, "iterations": 100}
        for f in (128, 256, 512)
        for lr in (0.1, 0.2)
    ],
    "content": [
        {"half_life_events": h, "pivot": p} for h in (1.0, 2.0, 5.0, 20.0) for p in (2.5, 3.5)
    ],
    "userknn": [
        {"neighbours": k, "shrink": s, "centred_weight": c}
        for k in (25, 50, 100, 200)
        for s in (0.0, 10.0)
        for c in (0.0, 0.5)
    ],
    "readers": [
        {"neighbours": k, "shrinkage": 2.0, "centred_weight": c}
        for k in (25, 50, 100, 200)
        for c in (0.0, 0.2, 1.0)
    ],
    # One point: each costs a full training (~40 epochs; most of a minute each on 2 shared
    # cores). The configuration of issue #13's check; training early-stops on its own validation.
    "sasrec": [{}],
}
# --quick: two or three points per model, so the whole study runs in a couple of minutes.
QUICK_GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{"damping": 20.0}],
    "itemknn": [{"k": 100, "shrink": s} for s in (0.0, 10.0)],
    "ease": [{"l2": l2} for l2 in (30.0, 300.0)],
    "als": [
        {"factors": 32, "regularization": r, "alpha": 10.0, "iterations": 8} for r in (10.0, 50.0)
    ],
    "bpr": [{"factors": 32, "learning_rate": 0.05, "regularization": 0.01, "iterations": 30}],
    "content": [{"half_life_events": h, "pivot": 2.5} for h in (5.0, 40.0)],
    "userknn": [{"neighbours": k, "shrink": 10.0, "centred_weight": 0.0} for k in (50, 200)],
    "readers": [{"neighbours": k, "shrinkage": 2.0, "centred_weight": 0.2} for k in (50, 200)],
    "sasrec": [{"max_epochs": 30}],
}


# --------------------------------------------------------------------------- builders


def _profile_config(p: Mapping[str, Any]) -> ProfileConfig:
    d = ProfileConfig()  # a grid point leaves the rest at the product's defaults
    cfg = ProfileConfig(
        half_life_events=float(p.get("half_life_events", d.half_life_events)),
        pivot=float(p.get("pivot", d.pivot)),
    )
    if "half_life_days" in p:
        cfg.half_life_days = float(p["half_life_days"])
    return cfg


def _cf_params(name: str, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    p = dict(params)
    if name in ("als", "bpr"):
        p.setdefault("seed", seed)
    return p


def _readers_configs(p: Mapping[str, Any]) -> tuple[ReadersConfig, ProfileConfig]:
    prof = ProfileConfig(**{k: float(v) for k, v in p.items() if k in _PROFILE_KEYS})
    return ReadersConfig(**{k: v for k, v in p.items() if k not in _PROFILE_KEYS}), prof


def train_sasrec_model(lib: Library, params: Mapping[str, Any]):
    """Train (or load from :data:`SASREC_CACHE`) the SASRec of grid point ``params`` on ``lib``.

    Without ``shuffled_seed`` this is the call ``readnext ingest`` makes
    (:func:`retrieval.sasrec.train_sasrec` with the config, from scratch, early stop on its own
    validation readers): on the same training data and config it returns the same model.
    """
    from retrieval.sasrec import train_sasrec

    p = dict(params)
    shuffle = p.pop("shuffled_seed", None)
    return train_sasrec(
        lib,
        SASRecConfig(**p),
        progress=bool(SASREC_CACHE["progress"]),
        cache_dir=SASREC_CACHE["dir"],
        shuffle_seed=shuffle,
        desc="train sasrec" + (" (shuffled)" if shuffle is not None else ""),
        max_epochs=SASREC_SHUFFLED_EPOCHS if shuffle is not None else None,
    )


def build_model(
    name: str,
    lib: Library,
    params: Mapping[str, Any],
    seed: int = 0,
) -> CandidateSource:
    """A single-source model ``name`` (one of :data:`SINGLE_MODELS`) fitted on ``lib``.

    ``params`` is one point of the model's grid; ALS and BPR also get ``seed``. Built by the
    registry's factory (:func:`retrieval.registry.build_source`), as the product builds sources;
    a CF peer scores the plain confidence row (no recency weighting), as published; SASRec is
    trained from scratch, as ingest trains it (:func:`train_sasrec_model`). ``userknn`` is an
    eval peer only (the textbook method the readers source is compared with), not a product
    source.
    """
    if name == "popularity":
        src = build_source(
            "popularity",
            lib,
            PopularityConfig(damping=float(params.get("damping", PopularityConfig().damping))),
        )
    elif name == "content":
        src = build_source("content", lib, _profile_config(params))
    elif name in CF_MODELS:
        cfg = CFConfig(
            model=name,
            params=_cf_params(name, params, seed),
            max_ease_items=10**9,
            half_life_events=None,
            liked_boost=0.0,
        )
        src = build_source("cf", lib, cfg)
    elif name == "userknn":
        from retrieval.readers import UserKNNSource

        src = UserKNNSource(
            lib,
            int(params.get("neighbours", 50)),
            float(params.get("shrink", 10.0)),
            float(params.get("centred_weight", 0.2)),
        )
    elif name == "readers":
        rcfg, prof = _readers_configs(params)
        src = build_source("readers", lib, rcfg, BuildDeps(profile=prof))
    elif name == "sasrec":
        p = {k: v for k, v in params.items() if k != "shuffled_seed"}
        model = train_sasrec_model(lib, params)
        src = build_source("sasrec", lib, SASRecConfig(**p), BuildDeps(fitted={"sasrec": model}))
    else:
        raise ValueError(
            f"build_model: unknown model {name!r}; choose one of {', '.join(SINGLE_MODELS)}"
        )
    src.name = name
    return src


def hybrid_configs(
    params: Mapping[str, Any], tuned: Mapping[str, Mapping[str, Any]], seed: int = 0
) -> tuple[dict[str, Any], FusionConfig]:
    """The per-source configs and fusion config of the hybrid for tuned ``params``.

    One translation from eval's tuned values to the product's settings: :func:`build_hybrid`
    builds from it and :func:`tuned_config_toml` writes it, so the live hybrid ranks as eval's.
    ``params`` keys: ``cf_model``, ``cf_half_life``, ``cf_liked_boost`` (the CF user vector, see
    :class:`~retrieval.sources.CFSource`), ``sequence`` (:class:`~retrieval.config.SequenceConfig`
    fields, or None to leave it out), ``method``, ``rrf_k``, ``depth``, ``weights``, and the cold
    slice's ``cold_weights`` / ``cold_below`` (optional).
    """
    cf_name = params["cf_model"]
    configs = section_configs(None)
    configs["cf"] = CFConfig(
        model=cf_name,
        params=_cf_params(cf_name, tuned.get(cf_name, {}), seed),
        max_ease_items=10**9,
        half_life_events=params.get("cf_half_life"),
        liked_boost=float(params.get("cf_liked_boost", 0.0)),
    )
    configs["content"] = _profile_config(tuned.get("content", {}))
    if "damping" in tuned.get("popularity", {}):
        configs["popularity"] = PopularityConfig(damping=float(tuned["popularity"]["damping"]))
    if params.get("sequence"):
        configs["sequence"] = SequenceConfig(**params["sequence"])
    if "readers" in tuned:
        configs["readers"], _ = _readers_configs(tuned["readers"])
    if "sasrec" in tuned:
        configs["sasrec"] = SASRecConfig(**tuned["sasrec"])
    # the hybrid ignores weights of sources it does not have (no sequence variant chosen)
    fusion = FusionConfig(
        method=params.get("method", "score"),
        weights={n: float(w) for n, w in params.get("weights", {"cf": 1.0}).items()},
        rrf_k=float(params.get("rrf_k", 60.0)),
        depth=int(params.get("depth", 200)),
        cold_weights={n: float(w) for n, w in (params.get("cold_weights") or {}).items()},
        cold_below=int(params.get("cold_below", 5)),
    )
    return configs, fusion


def hybrid_sources(
    lib: Library,
    params: Mapping[str, Any],
    tuned: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
    fitted: Mapping[str, CandidateSource] | None = None,
) -> dict[str, CandidateSource]:
    """The hybrid's component sources for hybrid ``params`` and the tuned single-model settings.

    Every registered source that applies to ``lib`` (the sequence source when ``params`` names
    one), built by the registry's factory. ``fitted`` may supply already-fitted single models
    (by model name) to reuse their CF fit.
    """
    configs, _ = hybrid_configs(params, tuned, seed)
    pre = (fitted or {}).get(params["cf_model"])
    sas = (fitted or {}).get("sasrec")
    prof = _readers_configs(tuned["readers"])[1] if "readers" in tuned else None
    deps = BuildDeps(
        fitted={"cf": getattr(pre, "model", None), "sasrec": getattr(sas, "model", None)},
        seed=seed,
        profile=prof,
    )
    # every source on (weight 1) so each gets built; the weights that count are the fusion's
    on = FusionConfig(
        weights={n: 1.0 for n in source_names() if n != "sequence" or params.get("sequence")}
    )
    srcs = registry_sources(lib, configs=configs, fusion=on, deps=deps)
    srcs.pop("hybrid")
    # eval has no chat requests: request-only sources have no opinion there, so they are left out
    return {n: s for n, s in srcs.items() if not SOURCES[n].request_only}


def build_hybrid(
    lib: Library,
    params: Mapping[str, Any],
    tuned: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
    fitted: Mapping[str, CandidateSource] | None = None,
) -> HybridSource:
    """The live :class:`~retrieval.sources.HybridSource` for tuned ``params`` (see
    :func:`hybrid_configs`)."""
    _, fusion = hybrid_configs(params, tuned, seed)
    return registry_hybrid(lib, hybrid_sources(lib, params, tuned, seed, fitted), fusion)


def tuned_config_toml(
    params: Mapping[str, Any], tuned: Mapping[str, Mapping[str, Any]], label: str, seed: int = 0
) -> str:
    """A ``readnext`` config file (TOML) that makes the live hybrid the tuned one.

    Written from :func:`hybrid_configs`, the configs :func:`build_hybrid` builds from: ``[fusion]``
    and one section per registered source the hybrid uses (``[cf]`` with the model, its
    parameters, ``seed`` for ALS/BPR and the user vector; ``[profile]``, ``[popularity]``,
    ``[series]``, ``[sequence]``, and any source registered later), every field spelled out.
    """

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return repr(float(v)) if isinstance(v, float) else str(v)

    configs, fusion = hybrid_configs(params, tuned, seed)
    weights = {n: float(w) for n, w in fusion.weights.items() if float(w) > 0}
    cold = fusion.slice_weights(True)
    cf = configs["cf"]
    lines = [
        f"# readnext settings tuned by `readnext eval` on {label}.",
        "# Use: READNEXT_CONFIG=this-file readnext recommend ...  (or copy to "
        "~/.readnext/config.toml)",
        "# [cf] takes effect at the next `readnext ingest` (the model is fitted there), "
        "[profile] for stored",
        "# reader vectors too. With these settings the live hybrid ranks exactly as eval's "
        "`hybrid`.",
        "",
        "[fusion]",
        f"method = {val(fusion.method)}",
        f"weights = {val(weights)}",
        f"rrf_k = {val(float(fusion.rrf_k))}",
        f"depth = {int(fusion.depth)}",
        "# readers with fewer than cold_below history books: these weights instead ({} = none)",
        f"cold_weights = {val({n: float(w) for n, w in fusion.cold_weights.items()})}",
        f"cold_below = {int(fusion.cold_below)}",
        "",
        "[cf]",
        f"model = {val(cf.model)}",
        f"params = {val(cf.params)}",
        f"half_life_events = {val(float(cf.half_life_events or 0.0))}  # 0 = off",
        f"liked_boost = {val(float(cf.liked_boost))}",
        f"confidence = {val(cf.confidence)}",
    ]
    for name, spec in SOURCES.items():
        used = max(weights.get(name, 0), cold.get(name, 0))
        if name == "cf" or spec.request_only or (spec.optional and used <= 0):
            continue  # not built live either (optional, unweighted), or not in eval (request-only)
        fields = {k: v for k, v in dataclasses.asdict(configs[name]).items() if v is not None}
        lines += ["", f"[{spec.section}]"] + [f"{k} = {val(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"
