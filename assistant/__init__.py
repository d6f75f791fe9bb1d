"""readnext assistant: the recommendation pipeline, LLM backends, chat app and CLI.

The main entry point is :class:`Recommender`::

    from assistant import Recommender
    rec = Recommender.open()
    rec.recommend(user_id="u0001", k=5)
"""

from .recommender import Recommendation, Recommender, RecommendResult

__all__ = ["Recommender", "Recommendation", "RecommendResult"]
__version__ = "0.1.0"
