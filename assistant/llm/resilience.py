"""Never a stall: deadlines, a per-turn LLM budget and a circuit breaker around any backend.

:class:`ResilientBackend` wraps any :class:`~assistant.llm.base.LLMBackend`:

* every call gets a deadline: ``timeout_s`` from now, or sooner when the turn's budget ends;
  the call runs in a worker thread and the caller gets :class:`LLMTimeout` at the deadline
  even if the backend cannot be interrupted (backends that accept ``deadline=`` also stop by
  themselves, freeing the model or the connection);
* :meth:`ResilientBackend.for_turn` gives a view with a budget for one chat turn / request
  (``[llm] turn_budget_s``); when it is spent, remaining calls fail fast with
  :class:`LLMSkipped` and the caller keeps the template text;
* a :class:`CircuitBreaker` shared by all views: after ``failures`` consecutive failures
  (timeout, unreachable, backend error; not a guard rejection) it opens for ``cooldown_s``,
  during which calls are skipped at once; then one trial call decides whether it closes;
* each view records what happened (:attr:`ResilientBackend.outcomes`), and :func:`honest_notes`
  turns that into notes that say it: timed out, unreachable, budget spent, paused, or rejected
  by the grounding check.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from assistant.llm.base import (
    LLMBackend,
    LLMError,
    LLMSkipped,
    LLMTimeout,
    Message,
)

log = logging.getLogger(__name__)
_DONE = object()


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; stays open ``cooldown_s``; one trial closes
    it."""

    def __init__(
        self,
        failures: int = 3,
        cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"breaker failures must be >= 1, got {failures}")
        if cooldown_s < 0:
            raise ValueError(f"breaker cooldown must be >= 0 s, got {cooldown_s}")
        self.failures, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self._lock = threading.Lock()
        self._streak = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is in flight
        self._announced = False
        self.last_failure = ""

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (cool-down over, next call is a trial)."""
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() - self._opened_at < self.cooldown_s else "half-open"

    def allow(self) -> bool:
        """Whether a call may go ahead now (in half-open state: only one trial at a time)."""
        with self._lock:
            st = self._state()
            if st == "closed":
                return True
            if st == "half-open" and not self._trial:
                self._trial = True
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until the cool-down ends (0 when closed)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        with self._lock:
            self._streak, self._opened_at, self._trial, self._announced = 0, None, False, False

    def record_failure(self, why: str = "") -> None:
        with self._lock:
            self._streak += 1
            self.last_failure = why
            if self._trial or self._streak >= self.failures:
                if self._trial or self._opened_at is None:
                    self._announced = False
                self._opened_at = self._clock()
                self._trial = False

    def take_announcement(self) -> bool:
        """True once per open period: the caller should say that the LLM is paused."""
        with self._lock:
            if self._opened_at is not None and not self._announced:
                self._announced = True
                return True
            return False


class ResilientBackend(LLMBackend):
    """Any backend with deadlines, a turn budget and a shared circuit breaker (see module doc)."""

    supports_deadline = True

    def __init__(
        self,
        inner: LLMBackend,
        timeout_s: float = 10.0,
        breaker: CircuitBreaker | None = None,
        turn_budget_s: float | None = None,
        _stage_deadline: float | None = None,
    ) -> None:
        """Wrap ``inner``.

        Args:
            inner: the backend doing the work.
            timeout_s: the deadline of one call, in seconds from its start.
            breaker: shared circuit breaker (a new one with the defaults when ``None``).
            turn_budget_s: default budget of :meth:`for_turn` views.
        """
        if isinstance(inner, ResilientBackend):
            inner = inner.inner
        if not timeout_s > 0:
            raise ValueError(f"LLM timeout must be > 0 s, got {timeout_s}")
        self.inner = inner
        self.timeout_s = float(timeout_s)
        self.breaker = breaker or CircuitBreaker()
        self.turn_budget_s = turn_budget_s
        self.stage_deadline = _stage_deadline
        self.outcomes: Counter[str] = Counter()
        self.failure_messages: list[str] = []
        self._lock = threading.Lock()

    # -- identity: look like the wrapped backend ------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self.inner.model_id

    @property
    def supports_logprobs(self) -> bool:  # type: ignore[override]
        # An endpoint probes this with a request: give the probe a deadline and the breaker too.
        # A failed or skipped probe reads as "no logprobs" (listwise), and is asked again next time.
        if "supports_logprobs" in type(self.inner).__dict__ and not isinstance(
            type(self.inner).__dict__["supports_logprobs"], property
        ):
            return bool(self.inner.supports_logprobs)
        try:
            return bool(self._call(lambda dl: self.inner.supports_logprobs, None, "probe"))
        except LLMError:
            return False

    @property
    def supports_prefill(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "supports_prefill", False))

    @property
    def constrained_json(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "constrained_json", False))

    @property
    def supports_grammar(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "supports_grammar", False))

    def __getattr__(self, attr: str) -> Any:  # render, last_generation, load_seconds, ...
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def describe(self) -> str:
        d = getattr(self.inner, "describe", None)
        return d() if callable(d) else str(getattr(self.inner, "name", "llm"))

    # -- budget views -------------------------------------------------------------------
    def for_turn(self, budget_s: float | None = None) -> ResilientBackend:
        """A view for one turn: same model and breaker, all its calls end by ``budget_s`` from
        now."""
        b = self.turn_budget_s if budget_s is None else budget_s
        dl = None if b is None else time.monotonic() + max(0.0, b)
        view = ResilientBackend(self.inner, self.timeout_s, self.breaker, b, dl)
        return view

    def budget_left(self) -> float | None:
        """Seconds left in this view's turn budget (``None``: no budget)."""
        return None if self.stage_deadline is None else self.stage_deadline - time.monotonic()

    def _note(self, kind: str, message: str = "") -> None:
        with self._lock:
            self.outcomes[kind] += 1
            if message and kind not in ("ok", "bad_output"):
                self.failure_messages.append(message)

    # -- the guarded call -------------------------------------------------------------------
    def _deadline(self, deadline: float | None) -> float:
        dl = time.monotonic() + self.timeout_s
        for other in (self.stage_deadline, deadline):
            if other is not None:
                dl = min(dl, other)
        return dl

    def _admit(self) -> None:
        if self.stage_deadline is not None and time.monotonic() >= self.stage_deadline:
            self._note("budget")
            raise LLMSkipped(f"the turn's LLM budget of {self.turn_budget_s:g} s is spent")
        if not self.breaker.allow():
            self._note("paused")
            raise LLMSkipped(
                f"LLM paused after {self.breaker.failures} failures in a row "
                f"(retry in {self.breaker.retry_in():.0f} s): {self.breaker.last_failure}"
            )

    def _failed(self, e: LLMError) -> None:
        kind = e.kind if e.kind in ("timeout", "unreachable", "bad_output") else "error"
        self._note(kind, str(e))
        if kind != "bad_output":  # a bad reply is the model's quality, not the service's health
            self.breaker.record_failure(f"{kind}: {e}")
        else:
            self.breaker.record_success()

    def _call(self, fn: Callable[[float], Any], deadline: float | None, what: str) -> Any:
        """Run ``fn(deadline)`` in a worker thread; give up at the deadline."""
        self._admit()
        dl = self._deadline(deadline)
        box: queue.Queue = queue.Queue(maxsize=1)

        def work() -> None:
            try:
                box.put((True, fn(dl)))
            except BaseException as e:  # handed to the caller
                box.put((False, e))

        threading.Thread(target=work, name=f"llm-{what}", daemon=True).start()
        try:
            ok, value = box.get(timeout=max(0.0, dl - time.monotonic()) + 0.05)
        except queue.Empty:
            err = LLMTimeout(
                f"{self.describe()} gave no answer within {self._limit_text(deadline)} ({what})"
            )
            self._failed(err)
            raise err from None
        if not ok:
            if isinstance(value, LLMError):
                self._failed(value)
                raise value
            if isinstance(value, Exception):
                err = LLMError(f"{what} failed: {type(value).__name__}: {value}")
                self._failed(err)
                raise err from value
            raise value
        self.breaker.record_success()
        self._note("ok")
        return value

    def _limit_text(self, deadline: float | None) -> str:
        if self.stage_deadline is not None and self.stage_deadline <= time.monotonic() + 0.1:
            return f"the turn's budget of {self.turn_budget_s:g} s"
        return f"{self.timeout_s:g} s"

    def _kw(self, dl: float) -> dict[str, Any]:
        return {"deadline": dl} if getattr(self.inner, "supports_deadline", False) else {}

    # -- LLMBackend ------------------------------------------------------------------------
    def yes_no_scores(
        self, prompts: list[list[Message]], deadline: float | None = None
    ) -> list[float]:
        return self._call(
            lambda dl: self.inner.yes_no_scores(prompts, **self._kw(dl)), deadline, "yes/no"
        )

    def next_token_logprobs(
        self, prompts: list[list[Message]], k: int = 20, deadline: float | None = None
    ) -> list[list[tuple[str, float]]]:
        return self._call(
            lambda dl: self.inner.next_token_logprobs(prompts, k, **self._kw(dl)),
            deadline,
            "logprobs",
        )

    def generate(
        self,
        messages: list[Message],
        max_new_tokens: int = 160,
        stop: list[str] | None = None,
        deadline: float | None = None,
    ) -> str:
        return self._call(
            lambda dl: self.inner.generate(messages, max_new_tokens, stop, **self._kw(dl)),
            deadline,
            "generate",
        )

    def generate_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        if not hasattr(
            self.inner, "generate_json"
        ):  # a duck-typed backend: validate-and-retry on generate
            return LLMBackend.generate_json(self, messages, schema, max_new_tokens, deadline)
        return self._call(
            lambda dl: self.inner.generate_json(messages, schema, max_new_tokens, **self._kw(dl)),
            deadline,
            "json",
        )

    def warm_up(self) -> float:
        """Warm the wrapped model (no deadline: this runs once, at start-up)."""
        w = getattr(self.inner, "warm_up", None)
        return w() if callable(w) else 0.0

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 160,
        stop: list[str] | None = None,
        deadline: float | None = None,
    ) -> Iterator[str]:
        """Chunks from a worker thread; :class:`LLMTimeout` when the next chunk misses the
        deadline."""
        return self._stream(
            lambda dl: self.inner.stream(messages, max_new_tokens, stop, **self._kw(dl)), deadline
        )

    def stream_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> Iterator[str]:
        """The raw text of a constrained JSON reply as it is decoded (the inner ``stream_json``),
        else the whole :meth:`generate_json` object as one chunk; same deadlines as
        :meth:`stream`."""
        inner = getattr(self.inner, "stream_json", None)
        if not callable(inner):
            return iter(
                [json.dumps(self.generate_json(messages, schema, max_new_tokens, deadline))]
            )
        return self._stream(
            lambda dl: inner(messages, schema, max_new_tokens, **self._kw(dl)), deadline
        )

    def stream_grammar(
        self,
        messages: list[Message],
        grammar: str,
        prefix: str = "",
        max_new_tokens: int = 64,
        deadline: float | None = None,
    ) -> Iterator[str]:
        """The inner backend's GBNF-constrained stream (see
        :meth:`assistant.llm.llamacpp.LlamaCppBackend.stream_grammar`), same deadlines as
        :meth:`stream`."""
        inner = getattr(self.inner, "stream_grammar", None)
        if not callable(inner):
            raise LLMError(f"{self.describe()} cannot decode under a GBNF grammar")
        return self._stream(
            lambda dl: inner(messages, grammar, prefix, max_new_tokens, **self._kw(dl)), deadline
        )

    def prime(self, messages: list[Message]) -> int:
        """Cache the KV state of a shared prompt head (no deadline: start-up work)."""
        p = getattr(self.inner, "prime", None)
        return p(messages) if callable(p) else 0

    def _stream(
        self, make: Callable[[float], Iterator[str]], deadline: float | None
    ) -> Iterator[str]:
        self._admit()
        dl = self._deadline(deadline)
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            it = iter(make(dl))
            try:
                for chunk in it:
                    if cancel.is_set():
                        break
                    q.put((True, chunk))
                q.put((True, _DONE))
            except BaseException as e:
                q.put((False, e))
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()

        threading.Thread(target=work, name="llm-stream", daemon=True).start()
        try:
            while True:
                try:
                    ok, value = q.get(timeout=max(0.0, dl - time.monotonic()) + 0.05)
                except queue.Empty:
                    err = LLMTimeout(
                        f"{self.describe()} did not finish within "
                        f"{self._limit_text(deadline)} (stream)"
                    )
                    self._failed(err)
                    raise err from None
                if not ok:
                    err = (
                        value
                        if isinstance(value, LLMError)
                        else LLMError(f"stream failed: {value}")
                    )
                    self._failed(err)
                    raise err
                if value is _DONE:
                    break
                yield value
        finally:
            cancel.set()
        self.breaker.record_success()
        self._note("ok")


def honest_notes(
    turn: ResilientBackend | Any, guard_rejected: int, what: str = "LLM text(s)"
) -> list[str]:
    """Notes saying what really happened to a turn's LLM calls (empty when all went well).

    Args:
        turn: the view the turn's calls went through (``ResilientBackend``), or any backend
            (then only the guard count is reported).
        guard_rejected: texts the model wrote that failed the grounding check.
        what: what the texts are, for the wording.
    """
    notes = []
    o: Counter[str] = getattr(turn, "outcomes", Counter())
    if guard_rejected:
        notes.append(
            f"{guard_rejected} {what} failed the grounding check: showing template text instead"
        )
    if o["timeout"]:
        notes.append(
            f"the LLM did not answer in time ({o['timeout']} call(s) timed out): showing "
            f"template text"
        )
    if o["unreachable"]:
        msg = next((m for m in turn.failure_messages if "connect" in m), "")
        notes.append(
            "the LLM could not be reached"
            + (f" ({msg[:120]})" if msg else "")
            + ": showing template text"
        )
    if o["error"]:
        notes.append(f"the LLM failed ({turn.failure_messages[-1][:120]}): showing template text")
    if o["budget"]:
        notes.append(
            f"this turn's LLM time budget ({turn.turn_budget_s:g} s) ran out: "
            f"{o['budget']} pick(s) keep template text"
        )
    breaker = getattr(turn, "breaker", None)
    if (
        breaker is not None
        and (o["paused"] or breaker.state != "closed")
        and breaker.take_announcement()
    ):
        notes.append(
            f"LLM paused for {breaker.cooldown_s:g} s after {breaker.failures} failures in a row: "
            "showing template text"
        )
    return notes


def count_guard_rejections(reasons: Sequence[str | None]) -> int:
    """How many fallback reasons are grounding-check rejections (not backend failures)."""
    return sum(1 for r in reasons if r and not r.startswith(("backend error", "LLM disabled")))
