"""The shipped defaults are the values `readnext eval` tuned on goodbooks (the committed study)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retrieval.config import Settings

TUNED = (
    Path(__file__).resolve().parents[1]
    / "eval"
    / "results"
    / "goodbooks-partial-sequential"
    / "tuned-config.toml"
)


def test_defaults_equal_the_committed_goodbooks_tuning():
    tuned = Settings.load(config_file=TUNED, env={})
    shipped = Settings.load(env={})
    assert shipped.fusion.method == tuned.fusion.method
    assert {n: w for n, w in shipped.fusion.weights.items() if w > 0} == {
        n: w for n, w in tuned.fusion.weights.items() if w > 0
    }
    for section in ("sequence", "sasrec"):
        assert dataclasses.asdict(getattr(shipped, section)) == dataclasses.asdict(
            getattr(tuned, section)
        ), section
    assert (shipped.cf.half_life_events or 0.0) == (tuned.cf.half_life_events or 0.0)
    assert shipped.cf.liked_boost == tuned.cf.liked_boost
    # not defaults: cf.params (l2 fits EASE only; `auto` picks item-kNN on big catalogs),
    # [profile] and [popularity] (measured: the shipped-defaults row of the report)
