"""The SASRec candidate source: next-book scores of a trained
:class:`~retrieval.sasrec.SASRecModel`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .library import Library
from .sasrec import SASRecModel, score_contexts
from .sources import CandidateSource
from .types import UserContext

__all__ = ["SASRecSource"]


class SASRecSource(CandidateSource):
    """Scores every rated book by how likely SASRec finds it as the reader's next one.

    Args:
        lib: the Library the model was trained on (or any with the same books).
        model: a trained model (``train_sasrec`` at ingest, ``SASRecModel.load`` when serving).

    Books the model never saw and readers without a known book get ``-inf`` (no opinion).
    """

    name = "sasrec"

    def __init__(self, lib: Library, model: SASRecModel) -> None:
        super().__init__(lib)
        self.model = model

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        return score_contexts(self.model, self.lib, ctxs)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]
