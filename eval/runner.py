"""The offline study: load -> split -> tune on validation -> fit -> rank the full catalog -> score
-> write.

This module is the stable entry point; the stages live in :mod:`eval.protocol` (config, data,
split, readers), :mod:`eval.tuning`, :mod:`eval.scoring` (rank path, metrics, ablations),
:mod:`eval.llm_stage`, :mod:`eval.faithfulness`, :mod:`eval.provenance` and :mod:`eval.study`.

>>> from eval.runner import EvalConfig, run
>>> results = run(EvalConfig(dataset="../shared/data/goodbooks-sample", quick=True, users=300,
out="out"))

Everything is deterministic for a seed: the split, the user subsets, the tuning, the models
(ALS/BPR are seeded) and the bootstrap. ``metrics.json`` differs between two identical runs only
in ``runtime_s``. Protocol (each step is recorded in ``metrics.json["protocol"]``):

* per-user holdout of the last ``holdout`` share (min 1) of each reader's ratings by time or by
  documented row order; data without an order get a seeded random per-user holdout;
* relevant = held-out rating >= ``relevant``; readers without a relevant held-out book are
  skipped and counted; readers with fewer than ``cold_threshold`` training ratings form the
  cold-start slice, reported apart from the main table;
* every model ranks every catalog book (default: every book with a rating) not in the reader's
  training history; no sampled negatives unless ``sampled`` is set, which adds a separate,
  warned-about section;
* hyper-parameters come from a validation split carved out of the training part only.
"""

from __future__ import annotations

from .protocol import (
    KRICHENE_RENDLE,
    SAMPLED_WARNING,
    EvalConfig,
    Prepared,
    load_eval_dataset,
    prepare,
    tuning_set,
)
from .scoring import metric_keys
from .study import config_dict, run

__all__ = [
    "EvalConfig",
    "KRICHENE_RENDLE",
    "Prepared",
    "SAMPLED_WARNING",
    "config_dict",
    "load_eval_dataset",
    "metric_keys",
    "prepare",
    "run",
    "tuning_set",
]
