"""The one registry of candidate sources: names, config sections, and the factory.

Every source is listed once, in :data:`SOURCES`, with

* ``section``: the :class:`~retrieval.config.Settings` attribute holding its config dataclass
  (defaults in code, ``[section]`` in the TOML, ``READNEXT_<SECTION>_<KEY>`` env vars), which the
  source validates on construction;
* ``build(lib, config, deps)``: the factory (``deps`` carries what some sources need beyond the
  Library: the query embedder, the Chroma store, a model fitted at ingest, a seed);
* ``needs_order``: the source only makes sense when the ratings carry an event order;
* ``optional``: built only when the fusion gives it a weight (costly to build, no standalone use).

:func:`build_sources` builds the product's set (``Recommender``) and eval's (``eval.models``)
from the same specs, so a source added here is served, tuned, ablated and contract-tested
(``tests/test_sources.py`` runs against every name in :func:`source_names`) without another list
to update. To add one: write the source (a :class:`~retrieval.sources.CandidateSource`), its
config dataclass in ``retrieval.config`` (with a ``validate``; add it to ``Settings``), a
``SourceSpec`` below, and a fusion weight default if it should be on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import (
    CFConfig,
    FusionConfig,
    PopularityConfig,
    ProfileConfig,
    ReadersConfig,
    RequestConfig,
    SASRecConfig,
    SequenceConfig,
    SeriesConfig,
)
from .library import Library

__all__ = [
    "BuildDeps",
    "SOURCES",
    "SourceSpec",
    "build_hybrid",
    "build_source",
    "build_sources",
    "section_configs",
    "source_names",
]


@dataclass(frozen=True)
class BuildDeps:
    """What a source factory may need besides the Library and its config.

    Attributes:
        embed_query: text -> unit vector, for the content source's requests (``None``: no
            request embedding).
        store: the Chroma store (content's nearest neighbours, the readers source's ``users``).
        fitted: source name -> a model already fitted on this Library (the CF model the ingest
            saved, or one eval fitted while tuning) so it is not fitted twice.
        seed: the seed for sources with randomness.
        profile: how histories become taste vectors (the readers source's neighbours);
            :func:`build_sources` fills it from the content source's ``ProfileConfig``.
    """

    embed_query: Callable[[str], Any] | None = None
    store: Any = None
    fitted: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    # how histories become taste vectors (the readers source's neighbours); build_sources fills
    # it from the content source's ProfileConfig, the settings ingest wrote Chroma `users` with
    profile: Any = None


@dataclass(frozen=True)
class SourceSpec:
    """One registered candidate source (see the module docstring).

    Attributes:
        name: the source's name (fusion weights, ``found_by``, eval tables).
        section: the ``Settings`` attribute / TOML section holding its config.
        config: the config dataclass type.
        build: the factory ``(lib, config, deps) -> source``.
        needs_order: the source only makes sense when the ratings carry an event order.
        optional: built only when the fusion gives it a weight.
        summary: one line for ``readnext doctor``, docs and eval reports.
        request_only: no opinion without a chat request (eval leaves it out of the hybrid).
        default_weight: the fusion weight (from its config) when ``[fusion] weights`` does not
            name the source.
        needs_fitted: needs a model trained at ingest (``deps.fitted[name]``).
    """

    name: str
    section: str
    config: type
    build: Callable[[Library, Any, BuildDeps], Any]
    needs_order: bool = False
    optional: bool = False
    summary: str = ""
    # no opinion without a chat request (eval, which has none, leaves it out of the hybrid)
    request_only: bool = False
    # the fusion weight when ``[fusion] weights`` does not name the source (from its config)
    default_weight: Callable[[Any], float] | None = None
    needs_fitted: bool = False  # needs a model trained at ingest (``deps.fitted[name]``)

    def available(self, lib: Library) -> str | None:
        """``None`` when the source can be built on ``lib``, else why not (one line).

        Args:
            lib: the Library to build on.

        Returns:
            ``None``, or the reason the source cannot run on this data.
        """
        if self.needs_order and not lib.ordered:
            return (
                f"{self.name}: the ratings carry no event order "
                "(no timestamps, no documented row order)"
            )
        return None


def _content(lib: Library, cfg: ProfileConfig, deps: BuildDeps):
    from .sources import ContentSource

    return ContentSource(lib, cfg, deps.embed_query, deps.store)


def _cf(lib: Library, cfg: CFConfig, deps: BuildDeps):
    from .sources import CFSource

    # Without an order "recent" means nothing: the row's recency half-life needs ordered data.
    if not lib.ordered and cfg.half_life_events:
        cfg = dataclasses.replace(cfg, half_life_events=None)
    return CFSource(lib, fitted=deps.fitted.get("cf"), config=cfg)


def _popularity(lib: Library, cfg: PopularityConfig, deps: BuildDeps):
    from .sources import PopularitySource

    return PopularitySource(lib, config=cfg)


def _series(lib: Library, cfg: SeriesConfig, deps: BuildDeps):
    from .sources import SeriesSource

    return SeriesSource(lib, config=cfg)


def _sequence(lib: Library, cfg: SequenceConfig, deps: BuildDeps):
    from .sources import SequenceSource

    return SequenceSource(lib, config=cfg)


def _lexical(lib: Library, cfg: RequestConfig, deps: BuildDeps):
    from .sources import LexicalSource

    return LexicalSource(lib)


def _anchor(lib: Library, cfg: RequestConfig, deps: BuildDeps):
    from .sources import AnchorSource

    return AnchorSource(lib)


def _sasrec(lib: Library, cfg: SASRecConfig, deps: BuildDeps):
    from .sasrec_source import SASRecSource

    model = deps.fitted.get("sasrec")
    if model is None:
        raise ValueError(
            "sasrec: no trained model (SASRec is trained at `readnext ingest` on ordered data; "
            "re-ingest, or set sasrec.enabled and check the data has an order)"
        )
    cfg.validate("sasrec")
    # an index's model comes with its readers' kept states (FittedSASRec); eval's, without
    return SASRecSource(lib, getattr(model, "model", model), getattr(model, "states", None))


def _readers(lib: Library, cfg: ReadersConfig, deps: BuildDeps):
    from .readers import ReadersSource

    cfg.validate("readers")
    return ReadersSource(lib, cfg, deps.profile or ProfileConfig(), deps.store)


SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec(
            "content",
            "profile",
            ProfileConfig,
            _content,
            summary="embedding similarity of the reader's profile (and request) to each book",
        ),
        SourceSpec(
            "cf",
            "cf",
            CFConfig,
            _cf,
            summary="collaborative filtering (EASE, ALS, item-kNN, BPR), weighted row",
        ),
        SourceSpec(
            "popularity",
            "popularity",
            PopularityConfig,
            _popularity,
            summary="most-rated books, damped mean rating as a tie-breaker",
        ),
        SourceSpec(
            "series",
            "series",
            SeriesConfig,
            _series,
            summary="the next unread volume of each series the reader liked",
        ),
        SourceSpec(
            "sequence",
            "sequence",
            SequenceConfig,
            _sequence,
            needs_order=True,
            optional=True,
            summary="what readers rated next after the reader's latest books",
        ),
        SourceSpec(
            "lexical",
            "request",
            RequestConfig,
            _lexical,
            request_only=True,
            default_weight=lambda c: c.lexical_weight,
            summary="BM25 over tags, authors, titles, descriptions for the request's words",
        ),
        SourceSpec(
            "anchor",
            "request",
            RequestConfig,
            _anchor,
            request_only=True,
            default_weight=lambda c: c.anchor_weight,
            summary='books like the request\'s anchors ("something like X")',
        ),
        SourceSpec(
            "sasrec",
            "sasrec",
            SASRecConfig,
            _sasrec,
            needs_order=True,
            optional=True,
            needs_fitted=True,
            summary="SASRec self-attention over the reading order (trained at ingest)",
        ),
        SourceSpec(
            "readers",
            "readers",
            ReadersConfig,
            _readers,
            summary="books rated by the readers whose taste vector is closest (Chroma `users`)",
        ),
    )
}


def source_names() -> tuple[str, ...]:
    """Every registered source name, in registry order (the hybrid is not one of them)."""
    return tuple(SOURCES)


def section_configs(settings: Any = None) -> dict[str, Any]:
    """``{source name: its config}`` from a ``Settings`` (or defaults for each, when None).

    Args:
        settings: a :class:`~retrieval.config.Settings`, or ``None`` for defaults.

    Returns:
        Source name -> config dataclass.
    """
    return {
        n: (getattr(settings, s.section) if settings is not None else s.config())
        for n, s in SOURCES.items()
    }


def build_source(name: str, lib: Library, config: Any = None, deps: BuildDeps | None = None):
    """Build registered source ``name`` on ``lib`` with ``config``.

    Args:
        name: a name from :func:`source_names`.
        lib: the Library.
        config: the source's config dataclass (``None``: defaults).
        deps: embedder, store, fitted models, seed (``None``: none).

    Returns:
        The built source, named ``name``.

    Raises:
        ValueError: an unknown name, a config of the wrong type, a bad value, or a source that
            cannot run on this data (see :meth:`SourceSpec.available`).
    """
    spec = SOURCES.get(name)
    if spec is None:
        raise ValueError(f"unknown source {name!r}; sources are {', '.join(SOURCES)}")
    cfg = spec.config() if config is None else config
    if not isinstance(cfg, spec.config):
        raise ValueError(
            f"source {name}: config must be a {spec.config.__name__}, got {type(cfg).__name__}"
        )
    why = spec.available(lib)
    if why:
        raise ValueError(why)
    src = spec.build(lib, cfg, deps or BuildDeps())
    src.name = name
    return src


def build_hybrid(lib: Library, sources: Mapping[str, Any], fusion: FusionConfig | None = None):
    """The hybrid over ``sources`` with ``fusion`` (weights, method, rrf_k, depth).

    Args:
        lib: the Library.
        sources: the component sources by name.
        fusion: the fusion config (defaults when ``None``); weights of names not in ``sources``
            are dropped.

    Returns:
        The :class:`~retrieval.sources.HybridSource`, named ``"hybrid"``.

    Raises:
        ValueError: no source has a positive weight.
    """
    from .sources import HybridSource

    f = fusion or FusionConfig()
    weights = {n: w for n, w in f.weights.items() if n in sources}
    cold = {n: w for n, w in f.cold_weights.items() if n in sources}
    config = dataclasses.replace(f, weights=weights, cold_weights=cold)
    h = HybridSource(lib, sources, weights, config=config)
    h.name = "hybrid"
    return h


def build_sources(
    lib: Library,
    settings: Any = None,
    *,
    configs: Mapping[str, Any] | None = None,
    fusion: FusionConfig | None = None,
    deps: BuildDeps | None = None,
    embed_query=None,
    store=None,
    fitted: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every source that applies to ``lib``, and ``"hybrid"`` fusing them: the product's and eval's.

    Configs come from ``configs`` (by source name), else ``settings`` (a ``Settings``), else the
    defaults; ``fusion`` likewise. A source that needs an event order is left out on data without
    one; an ``optional`` source is built only when the fusion weights it.

    Args:
        lib: the Library.
        settings: a :class:`~retrieval.config.Settings` (``None``: defaults).
        configs: per source name, a config that wins over ``settings``.
        fusion: the fusion config that wins over ``settings.fusion``.
        deps: everything the factories need; when given, ``embed_query``, ``store``, ``fitted``
            and ``seed`` are ignored.
        embed_query: text -> unit vector, for requests.
        store: the Chroma store.
        fitted: source name -> a model fitted on ``lib`` (ingest's CF and SASRec).
        seed: the seed for sources with randomness.

    Returns:
        Source name -> source, with ``"hybrid"`` last.

    Raises:
        ValueError: a config is invalid, or no built source has a positive fusion weight.
    """
    fusion = fusion or (settings.fusion if settings is not None else FusionConfig())
    cfgs = {**section_configs(settings), **dict(configs or {})}
    weights = dict(fusion.weights)
    for name, spec in SOURCES.items():
        if spec.default_weight is not None and spec.available(lib) is None:
            weights.setdefault(name, float(spec.default_weight(cfgs[name])))
    fusion = dataclasses.replace(fusion, weights=weights)
    deps = deps or BuildDeps(embed_query, store, dict(fitted or {}), seed)
    if deps.profile is None:
        deps = dataclasses.replace(deps, profile=cfgs["content"])
    srcs: dict[str, Any] = {}
    for name, spec in SOURCES.items():
        weighted = max(fusion.weights.get(name, 0), fusion.slice_weights(True).get(name, 0))
        if spec.available(lib) is not None or (spec.optional and weighted <= 0):
            continue
        if spec.needs_fitted and deps.fitted.get(name) is None:
            continue  # nothing trained at ingest (older index, disabled): the fusion does without
        srcs[name] = build_source(name, lib, cfgs[name], deps)
    srcs["hybrid"] = build_hybrid(lib, srcs, fusion)
    request = getattr(settings, "request", None) if settings is not None else None
    srcs["hybrid"].request_pool = int(request.pool if request is not None else RequestConfig().pool)
    # a described word weighs less than a named tag (the square root of its boost): "a funny
    # fantasy with dragons" ranks funny fantasies with dragons first, then funny fantasies,
    # never a dragon thriller above them
    srcs["hybrid"].request_word_boost = (
        float(request.tag_boost if request is not None else RequestConfig().tag_boost) ** 0.5
    )
    return srcs
