"""A readers-writer lock that lets requests in flight finish before an index switch.

Requests hold it shared (re-entrantly: a request may call another public method); an index
switch holds it exclusively for the few microseconds of swapping attributes. A waiting switch
blocks new requests (so a steady stream of readers cannot starve it) but never a thread that
already holds the lock, which would deadlock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ServingLock:
    """Shared for requests, exclusive for swapping the served index."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def shared(self) -> Iterator[bool]:
        """Hold the lock for one request; yields True for the outermost entry of this thread."""
        depth = self._depth()
        if depth == 0:
            with self._cond:
                while self._writer or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield depth == 0
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Wait for the requests in flight to finish, then hold off new ones."""
        if self._depth():
            raise RuntimeError("cannot switch the index from inside a request")
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
