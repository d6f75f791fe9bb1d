"""readnext retrieval: data loading, embeddings, Chroma stores, profiles, candidate sources.

This layer never imports ``assistant`` or ``eval``.
"""

from .config import Settings
from .errors import DataError, NotFoundError, ReadnextError
from .types import Book, Candidate, Evidence, Rating, UserContext

__all__ = [
    "Settings",
    "Book",
    "Candidate",
    "Evidence",
    "Rating",
    "UserContext",
    "ReadnextError",
    "DataError",
    "NotFoundError",
]
