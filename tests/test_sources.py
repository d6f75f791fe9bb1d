"""The contract every candidate source keeps, run against every source in the registry.

In the spirit of implicit's ``RecommenderBaseTestMixin`` and LensKit's scorer tests: the
parametrisation reads :func:`retrieval.registry.source_names` at collection time, so a source
registered later (SASRec, readers-like-you...) is held to the same contract without editing
this file. Everything runs on the real demo index (real embedder, real Chroma, the CF model the
ingest fitted).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from retrieval.config import Settings
from retrieval.evidence import verify
from retrieval.index import Index
from retrieval.ranking import rank, rank_one
from retrieval.registry import SOURCES, BuildDeps, build_source, build_sources, source_names
from retrieval.series import series_filter
from retrieval.sources import SequenceSource
from retrieval.types import Rating, UserContext

from .test_fusion import _toy_library

NAMES = [*source_names(), "hybrid"]


@pytest.fixture(scope="module")
def world(demo_home):
    """(library, settings, deps, readers): the demo index and a mix of readers, cold ones too."""
    idx = Index.open(demo_home)
    lib = idx.library()
    settings = Settings.load(home=demo_home, env={})
    from retrieval.embed import Embedder

    emb = Embedder(settings.embedder.model, cache_dir=demo_home / "cache")
    deps = BuildDeps(
        embed_query=lambda t: emb.encode([t])[0],
        fitted={"cf": idx.cf_model(), "sasrec": idx.sasrec_model()},
    )
    users = lib.user_ids[:: max(1, len(lib.user_ids) // 25)][:25]
    readers = [UserContext(u, lib.history(u)) for u in users]
    first = readers[0]
    readers += [
        UserContext("cold"),  # nothing read, no request
        UserContext("asks", query="a funny fantasy with dragons"),  # a request only
        UserContext("like-x", anchors=(lib.books[5].book_id,)),  # "something like X"
        UserContext("short", [Rating("short", lib.books[3].book_id, 5.0, 0.0)]),  # one book
        UserContext(
            first.user_id, first.history, exclude={lib.books[0].book_id, lib.books[1].book_id}
        ),
    ]
    return lib, settings, deps, readers


def _build(name: str, world):
    lib, settings, deps, _ = world
    if name == "hybrid":
        return build_sources(lib, settings, deps=deps)["hybrid"]
    spec = SOURCES[name]
    if spec.available(lib) is not None:
        pytest.skip(spec.available(lib))
    return build_source(name, lib, getattr(settings, spec.section), deps)


@pytest.mark.parametrize("name", NAMES)
def test_scores_have_the_catalog_shape_and_are_finite_or_no_opinion(name, world):
    lib, _, _, readers = world
    src = _build(name, world)
    S = src.score_batch(readers)
    assert S.shape == (len(readers), lib.n_items)
    assert not np.isnan(S).any() and not np.isposinf(S).any()  # a score, or -inf = no opinion
    assert np.isfinite(S).any(), f"{name} has no opinion on any reader of the demo"
    assert src.score(readers[0]).shape == (lib.n_items,)


@pytest.mark.parametrize("name", NAMES)
def test_batch_scores_equal_single_scores(name, world):
    _, _, _, readers = world
    src = _build(name, world)
    S = src.score_batch(readers)
    for i, c in enumerate(readers):
        one = src.score(c)
        np.testing.assert_array_equal(np.isfinite(one), np.isfinite(S[i]))
        # atol 1e-5: the hybrid sums z-scores of float32 sources with weights up to 5 (sasrec,
        # series), so float32 batch-vs-single noise (~1e-7 relative) reaches ~2e-6 absolute
        np.testing.assert_allclose(
            one[np.isfinite(one)], S[i][np.isfinite(S[i])], rtol=1e-5, atol=1e-5
        )
    batched = rank(src, readers, 20)
    for c, r in zip(readers, batched):
        assert rank_one(src, c, 20).items.tolist() == r.items.tolist()


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_deterministic_across_builds(name, world):
    _, _, _, readers = world
    a, b = _build(name, world), _build(name, world)
    np.testing.assert_array_equal(a.score_batch(readers), b.score_batch(readers))
    np.testing.assert_array_equal(a.score_batch(readers), a.score_batch(readers))


@pytest.mark.parametrize("name", NAMES)
def test_rankings_exclude_rated_and_dismissed_books_and_keep_series_order(name, world):
    lib, _, _, readers = world
    src = _build(name, world)
    for c, r in zip(readers, rank(src, readers, 30)):
        ids = r.book_ids(lib)
        assert len(ids) == len(set(ids))
        assert not set(ids) & ({h.book_id for h in c.history} | c.exclude), (name, c.user_id)
        read = [h.book_id for h in c.history]
        blocked = series_filter(ids, read, lib.by_id, index=lib.series_index)
        assert not blocked, f"{name} offers {sorted(blocked)} to {c.user_id} out of series order"
        assert np.all(np.diff(r.scores) <= 0)  # best first


@pytest.mark.parametrize("name", NAMES)
def test_evidence_of_the_top_picks_verifies_against_the_data(name, world):
    lib, _, _, readers = world
    src = _build(name, world)
    checked = 0
    for c, r in zip(readers, rank(src, readers, 5)):
        for cand in r.candidates(src, c):
            assert cand.source, f"{name}: {cand.book_id} has no 'found by' source"
            for e in cand.evidence:
                assert verify(lib, cand.book_id, e, c.history), (name, c.user_id, cand.book_id, e)
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", source_names())
def test_config_is_a_validated_dataclass_with_defaults(name, world):
    lib = world[0]
    spec = SOURCES[name]
    assert dataclasses.is_dataclass(spec.config)
    assert callable(getattr(spec.config, "validate", None))
    spec.config().validate(spec.section)  # the defaults are valid
    assert isinstance(getattr(Settings(), spec.section), spec.config)  # overridable in the TOML
    with pytest.raises(ValueError, match="config must be"):
        build_source(name, lib, object())


@pytest.mark.parametrize(
    "name,field,bad",
    [
        ("cf", "model", "svd"),
        ("cf", "liked_boost", -1.0),
        ("popularity", "damping", -5.0),
        ("series", "liked_threshold", 9.0),
        ("sequence", "window", 0),
        ("content", "query_weight", 1.5),
    ],
)
def test_a_bad_source_setting_is_refused_on_construction_and_in_the_toml(
    name, field, bad, world, tmp_path
):
    lib = world[0]
    spec = SOURCES[name]
    cfg = dataclasses.replace(spec.config(), **{field: bad})
    with pytest.raises(ValueError, match=f"{spec.section}.{field}"):
        build_source(name, lib, cfg)
    from retrieval.errors import ReadnextError

    value = f'"{bad}"' if isinstance(bad, str) else bad
    (tmp_path / "config.toml").write_text(f"[{spec.section}]\n{field} = {value}\n")
    with pytest.raises(ReadnextError, match=f"config.toml: {spec.section}.{field}"):
        Settings.load(home=tmp_path, env={})


def test_the_hybrid_declares_indicators_from_its_sources(world):
    lib, settings, deps, _ = world
    h = build_sources(lib, settings, deps=deps)["hybrid"]
    assert h.indicators == tuple(n for n, s in h.sources.items() if type(s).indicator)
    assert "series" in h.indicators and "cf" not in h.indicators
    assert set(h.sources) <= set(source_names())


def test_sequence_source_counts_successors_by_hand():
    lib = _toy_library()
    src = SequenceSource(lib, window=1, norm=1.0, last=1)
    # successors of b0: b1 (u1, u2) -> row b0 = {b1: 2/2}; of b1: b2 twice -> {b2: 1.0}
    s = src.score(UserContext("new", [Rating("new", "b0", 5.0, 0.0)]))
    assert s[lib.index["b1"]] == pytest.approx(1.0)
    assert np.count_nonzero(s) == 1
    s = src.score(
        UserContext("new", [Rating("new", "b0", 5.0, 0.0), Rating("new", "b5", 4.0, 1.0)])
    )
    # last=1: only the newest book (b5) counts, and u4 read b0 right after b5
    assert s[lib.index["b0"]] == pytest.approx(1.0) and np.count_nonzero(s) == 1
    assert np.all(
        np.isneginf(src.score(UserContext("new", [Rating("new", "b2", 5.0, 0.0)])))
    )  # no successor
