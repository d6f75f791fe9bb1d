"""The shipped defaults are the values `readnext eval` tuned on goodbooks (the committed study)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retrieval.cf import make_model
from retrieval.config import Settings

TUNED = (
    Path(__file__).resolve().parents[1]
    / "eval"
    / "results"
    / "goodbooks-partial"
    / "tuned-config.toml"
)


def test_defaults_equal_the_committed_goodbooks_tuning():
    tuned = Settings.load(config_file=TUNED, env={})
    shipped = Settings.load(env={})
    assert shipped.fusion.method == tuned.fusion.method
    # popularity is the one exception: tuned 0 for warm readers (0.1 in the cold slice), shipped
    # 0.1 so that a reader with no books and no query still gets the popular books
    assert shipped.fusion.weights["popularity"] == 0.1
    assert tuned.fusion.weights.get("popularity", 0.0) == 0.0
    assert {n: w for n, w in shipped.fusion.weights.items() if w > 0 and n != "popularity"} == {
        n: w for n, w in tuned.fusion.weights.items() if w > 0
    }
    for section in ("sequence", "sasrec"):
        assert dataclasses.asdict(getattr(shipped, section)) == dataclasses.asdict(
            getattr(tuned, section)
        ), section
    assert (shipped.cf.half_life_events or 0.0) == (tuned.cf.half_life_events or 0.0)
    assert shipped.cf.liked_boost == tuned.cf.liked_boost
    # every other section the hybrid uses there, so the shipped-defaults row equals the tuned
    # hybrid on goodbooks (it scored 0.1507 vs 0.1553 while these differed)
    assert shipped.profile.half_life_events == tuned.profile.half_life_events
    assert shipped.profile.pivot == tuned.profile.pivot
    assert shipped.popularity.damping == tuned.popularity.damping
    # cf: `auto` is EASE on goodbooks' 1,188 books, and `params = {}` means EASE's own defaults
    assert shipped.cf.model == "auto" and tuned.cf.model == "ease"
    assert shipped.cf.max_ease_items >= 1188
    assert make_model("ease", **shipped.cf.params).params["l2"] == tuned.cf.params["l2"]
