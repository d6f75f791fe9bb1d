"""Offline evaluation building blocks, kept separate so they compose (LensKit/RecBole style).

* :mod:`eval.splits`  - train/test/validation holdouts and evaluation slices.
* :mod:`eval.metrics` - top-K accuracy and beyond-accuracy metrics over ranked lists.
* :mod:`eval.stats`   - bootstrap confidence intervals, paired tests, summaries.

Nothing here trains or loads a model: a model produces rankings, these modules score them.
"""
