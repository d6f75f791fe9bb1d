"""Never a stall: deadlines, turn budget and circuit breaker against a real hung server on
127.0.0.1.

The "hung" server is a real TCP socket that accepts connections and never sends a byte, the
failure that used to make one chat request take 482 s and be reported as a grounding failure.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from assistant.chat_engine import ChatEngine
from assistant.llm import (
    CircuitBreaker,
    LLMBackend,
    LLMBadOutput,
    LLMError,
    LLMSkipped,
    LLMTimeout,
    LLMUnreachable,
    ResilientBackend,
    load_backend,
)
from assistant.llm.resilience import count_guard_rejections, honest_notes
from assistant.recommender import Recommender
from retrieval.config import Settings
from retrieval.index import Index


class HungServer:
    """Accepts every connection on 127.0.0.1 and never answers (until closed)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(20):
            try:
                self.sock.bind(("127.0.0.1", random.randint(20000, 60000)))
                break
            except OSError:
                continue
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)  # held open, never read from or written to
            except OSError:
                continue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()


@pytest.fixture()
def hung():
    s = HungServer()
    yield s
    s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the wrapper against a real socket -----------------------------------------------------------
def test_hung_endpoint_times_out_by_the_deadline_and_the_breaker_opens(hung):
    e = load_backend(hung.url, model="m", supports_logprobs=False)
    r = ResilientBackend(e, timeout_s=0.8, breaker=CircuitBreaker(failures=2, cooldown_s=1.0))
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        t0 = time.monotonic()
        with pytest.raises(LLMTimeout):
            r.generate(msgs, 8)
        assert time.monotonic() - t0 < 2.0  # not the 120 s read timeout of old
    assert r.breaker.state == "open" and hung.accepted  # the connection was really made
    t0 = time.monotonic()
    with pytest.raises(LLMSkipped, match="paused"):
        r.generate(msgs, 8)
    with pytest.raises(LLMSkipped):
        list(r.stream(msgs, 8))
    assert time.monotonic() - t0 < 0.2  # skipped at once while open
    time.sleep(1.05)
    assert r.breaker.state == "half-open"
    with pytest.raises(LLMTimeout):  # the one trial call goes out, fails, and re-opens the breaker
        r.generate(msgs, 8)
    assert r.breaker.state == "open"
    notes = honest_notes(r, 0)
    assert any("did not answer in time" in n for n in notes)
    assert any("paused" in n for n in notes)
    assert not any("grounding" in n for n in notes)
    assert not any("paused" in n for n in honest_notes(r, 0))  # said once per open period


def test_stream_from_hung_endpoint_ends_at_the_deadline(hung):
    r = ResilientBackend(load_backend(hung.url, model="m", supports_logprobs=False), timeout_s=0.7)
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout):
        list(r.stream([{"role": "user", "content": "hi"}], 8))
    assert time.monotonic() - t0 < 1.8


def test_unreachable_endpoint_is_named_as_such():
    e = load_backend(f"http://127.0.0.1:{_free_port()}/v1", model="m", supports_logprobs=False)
    r = ResilientBackend(e, timeout_s=3)
    with pytest.raises(LLMUnreachable, match="cannot connect"):
        r.generate([{"role": "user", "content": "hi"}], 4)
    notes = honest_notes(r, 0)
    assert notes and "could not be reached" in notes[0]


class Flaky(LLMBackend):
    """Fails (LLMError) while ``down`` is set, else answers; optionally sleeps without a
    deadline."""

    name = "flaky"
    model_id = "flaky"

    def __init__(self, sleep: float = 0.0) -> None:
        self.down = True
        self.sleep = sleep
        self.calls = 0
        self.replies: list[str] = []

    def yes_no_scores(self, prompts):
        return [0.0] * len(prompts)

    def generate(self, messages, max_new_tokens=160, stop=None):
        self.calls += 1
        time.sleep(self.sleep)
        if self.down:
            raise LLMError("server said 500")
        return self.replies.pop(0) if self.replies else "ok"

    def stream(self, messages, max_new_tokens=160, stop=None) -> Iterator[str]:
        yield self.generate(messages, max_new_tokens, stop)


def test_breaker_closes_after_a_good_trial_call():
    f = Flaky()
    r = ResilientBackend(f, timeout_s=5, breaker=CircuitBreaker(failures=3, cooldown_s=0.3))
    for _ in range(3):
        with pytest.raises(LLMError):
            r.generate([{"role": "user", "content": "x"}])
    assert r.breaker.state == "open"
    with pytest.raises(LLMSkipped):
        r.generate([{"role": "user", "content": "x"}])
    assert f.calls == 3  # the open breaker did not call the backend
    f.down = False
    time.sleep(0.35)
    assert r.generate([{"role": "user", "content": "x"}]) == "ok"
    assert r.breaker.state == "closed"


def test_a_backend_without_deadline_support_is_still_cut_off():
    f = Flaky(sleep=3.0)
    f.down = False
    r = ResilientBackend(f, timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout):
        r.generate([{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 < 1.0


def test_turn_budget_skips_later_calls():
    f = Flaky(sleep=0.4)
    f.down = False
    turn = ResilientBackend(f, timeout_s=5).for_turn(0.6)
    assert turn.generate([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(LLMTimeout):  # 0.2 s left: cut at the budget, not at timeout_s
        turn.generate([{"role": "user", "content": "x"}])
    with pytest.raises(LLMSkipped, match="budget"):
        turn.generate([{"role": "user", "content": "x"}])
    assert any("budget" in n for n in honest_notes(turn, 0))


def test_generate_json_validates_and_retries_once():
    schema = {
        "type": "object",
        "properties": {"why": {"type": "string", "maxLength": 40}},
        "required": ["why"],
        "additionalProperties": False,
    }
    f = Flaky()
    f.down = False
    f.replies = ['Sure: {"why": 3}', 'Here: {"why": "shared tags"} done']
    assert f.generate_json([{"role": "user", "content": "explain"}], schema) == {
        "why": "shared tags"
    }
    f.replies = ["no json", '{"because": "x"}']
    with pytest.raises(LLMBadOutput, match="schema"):
        f.generate_json([{"role": "user", "content": "explain"}], schema)
    r = ResilientBackend(f, timeout_s=5)
    f.replies = ["nope", "still nope"]
    with pytest.raises(LLMBadOutput):
        r.generate_json([{"role": "user", "content": "explain"}], schema)
    assert r.breaker.state == "closed"  # bad output is a quality problem, not an outage


def test_guard_rejections_are_counted_apart_from_backend_failures():
    reasons = [
        "names 'Dune', which is not in the evidence",
        "backend error: LLM endpoint timed out",
        None,
    ]
    assert count_guard_rejections(reasons) == 1
    assert honest_notes(object(), 2) == [
        "2 LLM text(s) failed the grounding check: showing template text instead"
    ]


# -- the product paths against the hung server -----------------------------------------------------
@pytest.fixture()
def hung_home(demo_home, tmp_path):
    h = tmp_path / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


def _settings(home, timeout=1.0, budget=2.5):
    s = Settings.load(home=home, env={})
    s.llm.timeout_s, s.llm.turn_budget_s, s.llm.breaker_failures, s.llm.breaker_cooldown_s = (
        timeout,
        budget,
        3,
        60,
    )
    s.llm.model = "m"
    return s


def test_recommend_full_with_hung_llm_returns_templates_within_budget(hung_home, hung):
    rec = Recommender(Index.open(hung_home), _settings(hung_home), llm=hung.url)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 20)
    t0 = time.monotonic()
    res = rec.recommend_full(user_id=u, k=3, explain_llm=3)
    took = time.monotonic() - t0
    assert took < 2.5 + 2.0, took
    assert [r.explanation_source for r in res.items] == ["template"] * 3
    assert all(r.explanation for r in res.items)
    assert any("did not answer in time" in n for n in res.notes), res.notes
    assert not any("grounding" in n for n in res.notes), res.notes


def test_chat_turns_with_hung_llm_stay_within_budget_and_do_not_hold_others(hung_home, hung):
    rec = Recommender(Index.open(hung_home), _settings(hung_home), llm=hung.url)
    rec.settings.chat.llm_intent = "off"
    eng = ChatEngine(rec, k=5, llm_picks=3)
    users = [x["user_id"] for x in rec.users() if x["n_ratings"] >= 20][:3]
    took: dict[str, float] = {}
    finals: dict[str, list[str]] = {}

    def turn(u: str) -> None:
        st, _ = eng.select_reader(u)
        t0 = time.monotonic()
        replies = list(eng.respond(st, "what should I read next?"))
        took[u] = time.monotonic() - t0
        assert replies[0].cards and replies[-1].streaming is False
        assert all(c.explanation_source == "template" for c in replies[-1].cards)
        finals[u] = replies[-1].notes

    threads = [threading.Thread(target=turn, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(took) == len(users), "a chat turn did not finish"
    assert max(took.values()) < 2.5 + 3.0, (
        took
    )  # concurrent readers are not queued behind each other
    notes = [n for ns in finals.values() for n in ns]
    assert not any("grounding" in n for n in notes), notes
    assert any("did not answer in time" in n or "budget" in n for n in notes), notes
    # The breaker is open now: the next turn skips the LLM at once and says so once.
    st, _ = eng.select_reader(users[0])
    t0 = time.monotonic()
    replies = list(eng.respond(st, "what should I read next?"))
    assert time.monotonic() - t0 < 2.0
    said = [n for n in replies[-1].notes if "paused" in n]
    st2, _ = eng.select_reader(users[1])
    again = list(eng.respond(st2, "what should I read next?"))
    assert len(said) + sum("paused" in n for n in notes) == 1, (said, notes)
    assert not any("paused" in n for n in again[-1].notes)


# -- the default model file's checksum ---------------------------------------------------------
def test_sha256_mismatch_is_one_clear_line(tmp_path, monkeypatch):
    from assistant.llm import model_files as mf

    monkeypatch.setenv("READNEXT_MODELS_DIR", str(tmp_path))
    bad = mf.default_gguf_path()
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LLMError) as e:
        mf.verify_gguf(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "delete it" in msg and "scripts/setup.sh" in msg
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LLMError, match="does not exist.*setup.sh"):
        mf.verify_gguf(missing)


def test_verified_stamp_is_used_until_the_file_changes(tmp_path):
    import hashlib

    from assistant.llm import model_files as mf

    f = tmp_path / "m.gguf"
    f.write_bytes(b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    mf.verify_gguf(f, sha)
    stamp = json.loads((tmp_path / "m.gguf.verified").read_text())
    assert stamp["sha256"] == sha and stamp["size"] == 11
    f.write_bytes(b"model bytez")  # same size, new content (and mtime): must be hashed again
    with pytest.raises(LLMError, match="sha256"):
        mf.verify_gguf(f, sha)
    assert not (tmp_path / "m.gguf.verified").exists()
