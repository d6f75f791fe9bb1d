"""LLM backends: the shared helpers, NoLLM, the reranker, prompts, the real offline model, and
the HTTP endpoint client against our own OpenAI-compatible server running on 127.0.0.1."""

from __future__ import annotations

import math
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from assistant.llm.base import (
    LLMBackend,
    LLMError,
    NoLLM,
    cut_at_stop,
    load_backend,
    logsumexp,
    stream_with_stops,
)
from assistant.llm.endpoint import EndpointBackend, normalize_base_url
from assistant.rerank import LLMReranker, parse_listwise, zscores
from prompts import clean_user_text, delimit, list_prompts, load_prompt, render_messages
from retrieval.types import Book


# -- helpers -------------------------------------------------------------------------------
def test_cut_at_stop_and_streaming_stops():
    assert cut_at_stop("abc. def", ["."]) == ("abc", True)
    assert cut_at_stop("abc", ["."]) == ("abc", False)
    assert cut_at_stop("a}b.c", [".", "}"]) == ("a", True)
    # a stop string split over chunks is still found, and nothing after it leaks out
    chunks = ["Hello wor", "ld END", "ING more"]
    assert "".join(stream_with_stops(chunks, ["ENDING"])) == "Hello world "
    assert "".join(stream_with_stops(chunks, None)) == "Hello world ENDING more"
    assert "".join(stream_with_stops(["ab", "c"], ["zz"])) == "abc"


def test_logsumexp_and_score_top():
    assert logsumexp([]) == -math.inf
    assert logsumexp([math.log(0.2), math.log(0.3)]) == pytest.approx(math.log(0.5))
    # P(Yes)=0.5 pooled over two spellings, P(No)=0.25: score = log 2
    top = [
        ("Yes", math.log(0.3)),
        (" No", math.log(0.25)),
        (" Yes", math.log(0.2)),
        ("Maybe", math.log(0.1)),
    ]
    assert EndpointBackend.score_top(top) == pytest.approx(math.log(2))
    # "No" missing from the list: it gets the smallest listed log-probability (0.1)
    assert EndpointBackend.score_top(top[:1] + top[3:]) == pytest.approx(math.log(3))
    assert EndpointBackend.score_top([]) == 0.0


def test_normalize_base_url():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://x/v1/chat/completions") == "https://x/v1"


def test_load_backend_specs():
    assert isinstance(load_backend("none"), NoLLM)
    assert load_backend("NONE").name == "none"
    e = load_backend("http://127.0.0.1:9/v1", model="m", supports_logprobs=False)
    assert isinstance(e, EndpointBackend) and e.model_id == "m" and not e.supports_logprobs
    with pytest.raises(ValueError, match="empty LLM spec"):
        load_backend("  ")


def test_unavailable_local_models_fail_with_one_line():
    with pytest.raises(LLMError, match="does not exist"):
        load_backend("./no/such/model-dir")
    with pytest.raises(LLMError, match="offline") as info:
        load_backend("nonexistent-org/nonexistent-model")  # never downloaded: the hub is off
    assert "\n" not in str(info.value)


def test_nollm_refuses_clearly():
    b = NoLLM()
    assert b.name == "none" and not b.supports_logprobs
    with pytest.raises(LLMError, match="disabled"):
        b.generate([{"role": "user", "content": "hi"}])
    with pytest.raises(LLMError, match="disabled"):
        b.yes_no_scores([[{"role": "user", "content": "hi"}]])


def test_prompts_load_and_delimit():
    assert {"rerank_yes_no", "explain", "rerank_listwise", "chat_intent"} <= set(list_prompts())
    for name in list_prompts():
        template, version = load_prompt(name)
        assert version and template.input_variables
    assert delimit("a <<<b>>> c <<<<d") == "<<<a b c d>>>"
    assert clean_user_text("x" * 50, max_chars=10) == "x" * 9 + "…"
    with pytest.raises(ValueError, match="unknown prompt"):
        load_prompt("nope")
    with pytest.raises(ValueError, match="needs variables"):
        render_messages("rerank_yes_no", history="x")
    msgs, _ = render_messages(
        "chat_intent", utterance=delimit("more like {Dune}"), context="(none)", tags="(none)"
    )
    assert [m["role"] for m in msgs] == ["system", "user"] and "<<<more like {Dune}>>>" in msgs[1][
        "content"
    ]


# -- reranker with scripted scores ---------------------------------------------------------
def book(i: int) -> Book:
    return Book(str(i), f"Book {i}", (f"Author {i}",), 2000 + i, ("tag",))


class TableBackend(LLMBackend):
    """Yes/No score looked up from the candidate title in the prompt; generate returns a fixed
    reply."""

    name = "table"
    model_id = "table"
    supports_logprobs = True

    def __init__(self, scores: dict[str, float], reply: str = "", logprobs: bool = True) -> None:
        self.scores, self.reply, self.calls = scores, reply, 0
        self.supports_logprobs = logprobs

    def yes_no_scores(self, prompts):
        self.calls += 1
        out = []
        for p in prompts:
            cand = p[-1]["content"].split("Candidate book:")[1]
            out.append(next(v for k, v in self.scores.items() if f"<<<{k} by" in cand))
        return out

    def generate(self, messages, max_new_tokens=160, stop=None):
        self.calls += 1
        return self.reply

    def stream(self, messages, max_new_tokens=160, stop=None) -> Iterator[str]:
        yield self.generate(messages, max_new_tokens, stop)


HISTORY = [(book(100), 5.0), (book(101), 3.0)]
CANDS = [(book(i), 1.0 - 0.1 * i) for i in range(6)]  # retrieval order 0..5


def test_zscores_and_listwise_parse():
    assert zscores([1.0, 1.0]) == [0.0, 0.0]
    assert zscores([0.0, 2.0]) == [-1.0, 1.0]
    assert parse_listwise("B3, B1, b3, B9, foo, B 2", 4) == [2, 0, 1, 3]
    assert parse_listwise("", 3) == [0, 1, 2]


def test_weight_zero_keeps_retrieval_order_but_reports_llm_scores():
    llm = {f"Book {i}": float(i) for i in range(6)}  # the model prefers the reverse order
    unsorted = (
        CANDS[:2][::-1] + CANDS[2:]
    )  # exact input order is kept even when scores are unsorted
    out = LLMReranker(TableBackend(llm), weight=0.0).rerank(HISTORY, unsorted)
    assert [r.book_id for r in out] == [b.book_id for b, _ in unsorted]
    assert [r.llm_score for r in out] == [1.0, 0.0, 2.0, 3.0, 4.0, 5.0]
    assert [
        r.book_id for r in LLMReranker(TableBackend(llm), weight=5.0).rerank(HISTORY, CANDS)
    ] == list("543210")


def test_pointwise_fusion_reorders_the_head_and_keeps_the_tail():
    llm = {
        "Book 0": -3.0,
        "Book 1": 0.0,
        "Book 2": 5.0,
        "Book 3": 1.0,
        "Book 4": 9.0,
        "Book 5": 9.0,
    }
    out = LLMReranker(TableBackend(llm), weight=100.0, top_n=4).rerank(HISTORY, CANDS)
    # head (0..3) sorted by the LLM because the weight dominates; tail 4, 5 untouched
    assert [r.book_id for r in out] == ["2", "3", "1", "0", "4", "5"]
    assert out[0].llm_score == 5.0 and out[-1].llm_score is None and out[-1].fused_score is None
    # a small weight cannot overturn a large retrieval gap
    close = [(book(0), 10.0), (book(1), 0.0), (book(2), -10.0)]
    out = LLMReranker(
        TableBackend({"Book 0": 0.0, "Book 1": 1.0, "Book 2": 2.0}), weight=0.1
    ).rerank(HISTORY, close)
    assert [r.book_id for r in out] == ["0", "1", "2"]


def test_listwise_mode_when_backend_has_no_logprobs():
    backend = TableBackend({}, reply="Best: B3, then B1. Also B42 and B3 again.", logprobs=False)
    rr = LLMReranker(backend, weight=100.0, top_n=4)
    assert rr.mode == "listwise"
    out = rr.rerank(HISTORY, CANDS)
    assert [r.book_id for r in out] == ["2", "0", "1", "3", "4", "5"]


def test_rerank_rejects_duplicates_and_survives_backend_errors():
    with pytest.raises(ValueError, match="duplicate"):
        LLMReranker(TableBackend({}), 1.0).rerank(HISTORY, [(book(1), 1.0), (book(1), 0.5)])

    class Down(TableBackend):
        def yes_no_scores(self, prompts):
            raise LLMError("cannot connect to LLM endpoint http://x: refused")

    rr = LLMReranker(Down({}), weight=1.0)
    out = rr.rerank(HISTORY, CANDS)
    assert [r.book_id for r in out] == [
        b.book_id for b, _ in CANDS
    ] and "cannot connect" in rr.last_error
    assert LLMReranker(NoLLM(), weight=1.0).mode == "off"


# -- the real offline model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def local():
    import torch

    threads = torch.get_num_threads()
    try:
        # One thread: on a shared, busy CPU more threads make torch many times slower.
        yield load_backend("tiny", num_threads=1)
    except LLMError as e:
        pytest.skip(f"offline default model unavailable: {e}")
    finally:
        torch.set_num_threads(threads)


YES_NO = [
    [
        {"role": "system", "content": "Reply with one word: Yes or No."},
        {"role": "user", "content": f"Is {a} larger than {b}? Answer Yes or No."},
    ]
    for a, b in [(10, 2), (3, 70), (5, 5)]
]


def test_real_yes_no_scores_are_finite_deterministic_and_batch_invariant(local):
    s1 = local.yes_no_scores(YES_NO)
    s2 = local.yes_no_scores(YES_NO)
    assert len(s1) == 3 and all(math.isfinite(x) for x in s1)
    assert s1 == s2
    singles = [local.yes_no_scores([p])[0] for p in YES_NO]
    assert singles == pytest.approx(
        s1, abs=1e-3
    )  # padding / shared-prefix batching changes nothing
    assert len(set(round(x, 4) for x in s1)) == 3  # the scores do depend on the prompt


def test_real_rerank_of_20_candidates_is_a_permutation(local):
    cands = [
        (
            Book(
                str(i),
                f"Novel {i}",
                (f"Writer {i % 7}",),
                1990 + i,
                ("fantasy" if i % 2 else "romance",),
                description=f"A story number {i}.",
            ),
            1.0 - i / 20,
        )
        for i in range(20)
    ]
    rr = LLMReranker(local, weight=1.0)
    out = rr.rerank(
        [(Book("h1", "The Dragon Queen", ("Writer 1",), tags=("fantasy",)), 5.0)], cands
    )
    assert sorted(r.book_id for r in out) == sorted(b.book_id for b, _ in cands)
    assert all(r.llm_score is not None and math.isfinite(r.llm_score) for r in out)
    assert [r.book_id for r in out] == [
        r.book_id
        for r in rr.rerank(
            [(Book("h1", "The Dragon Queen", ("Writer 1",), tags=("fantasy",)), 5.0)], cands
        )
    ]  # deterministic


def test_real_generate_and_stream_agree(local):
    msgs = [{"role": "user", "content": "Name three colours."}]
    text = local.generate(msgs, max_new_tokens=24)
    chunks = list(local.stream(msgs, max_new_tokens=24))
    assert text.strip() and len(chunks) > 1
    assert "".join(chunks) == text
    cut = local.generate(msgs, max_new_tokens=24, stop=[","])
    assert "," not in cut and text.startswith(cut)


def test_real_prefill_is_continued(local):
    msgs = [
        {"role": "user", "content": "Reply in JSON with a key 'colour'."},
        {"role": "assistant", "content": '{"colour": "'},
    ]
    assert local.render(msgs).endswith('assistant\n{"colour": "')
    out = local.generate(msgs, max_new_tokens=8, stop=['"'])
    assert out and not out.startswith("{")


# -- the endpoint client against our server on 127.0.0.1 -----------------------------------
class FakeLM(LLMBackend):
    """Deterministic stand-in model: echoes the last user message; next token 'Yes' iff it says
    'good'."""

    name = "fake"
    model_id = "fake-lm"
    supports_logprobs = True

    def yes_no_scores(self, prompts):
        raise LLMError("not used by the server")

    def next_token_logprobs(self, prompts, k=20):
        out = []
        for p in prompts:
            good = "good" in p[-1]["content"]
            top = (
                [("Yes", math.log(0.6)), (" No", math.log(0.2))]
                if good
                else [("No", math.log(0.7)), ("Yes", math.log(0.1))]
            )
            out.append((top + [("maybe", math.log(0.05))])[:k])
        return out

    def generate(self, messages, max_new_tokens=160, stop=None):
        return cut_at_stop(f"You said: {messages[-1]['content']}", stop)[0]

    def stream(self, messages, max_new_tokens=160, stop=None):
        yield from stream_with_stops(
            re.findall(r"\S+\s*", self.generate(messages, max_new_tokens)), stop
        )


def _serve(backend: LLMBackend):
    import uvicorn

    from assistant.llm.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def fake_server():
    server, thread, url = _serve(FakeLM())
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_endpoint_generate_stream_and_models(fake_server):
    e = EndpointBackend(fake_server)
    assert e.model_id == "fake-lm"
    msgs = [{"role": "user", "content": "hello there world"}]
    assert e.generate(msgs) == "You said: hello there world"
    assert e.generate(msgs, stop=["there"]) == "You said: hello "
    chunks = list(e.stream(msgs))
    assert len(chunks) > 1 and "".join(chunks) == "You said: hello there world"
    assert "".join(e.stream(msgs, stop=["there"])) == "You said: hello "


def test_endpoint_yes_no_via_logprobs(fake_server):
    e = EndpointBackend(fake_server)
    assert e.supports_logprobs  # probed
    good = [{"role": "user", "content": "a good book"}]
    bad = [{"role": "user", "content": "a dull book"}]
    assert e.yes_no_scores([good, bad, good]) == pytest.approx(
        [math.log(3), math.log(1 / 7), math.log(3)]
    )


def test_endpoint_errors_are_one_line(fake_server):
    e = EndpointBackend(fake_server)
    with pytest.raises(LLMError, match=r"HTTP 400: .*max_tokens"):
        e._post({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "logprobs": True})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(LLMError, match="cannot connect") as info:
        EndpointBackend(f"http://127.0.0.1:{dead}", model="m").generate(
            [{"role": "user", "content": "x"}]
        )
    assert "\n" not in str(info.value)


def test_server_wrapping_nollm_reports_unavailable():
    server, thread, url = _serve(NoLLM())
    try:
        e = EndpointBackend(url, model="none")
        with pytest.raises(LLMError, match="HTTP 503.*disabled"):
            e.generate([{"role": "user", "content": "x"}])
        assert e.supports_logprobs is False  # the server answers 400 "no logprobs" to the probe
        with pytest.raises(LLMError, match="no logprobs"):
            e.yes_no_scores([[{"role": "user", "content": "x"}]])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_endpoint_through_real_model(local):
    server, thread, url = _serve(local)
    try:
        e = EndpointBackend(url, supports_prefill=True)
        msgs = [{"role": "user", "content": "Name three colours."}]
        assert e.generate(msgs, max_new_tokens=16) == local.generate(msgs, max_new_tokens=16)
        assert "".join(e.stream(msgs, max_new_tokens=16)) == local.generate(msgs, max_new_tokens=16)
        remote = e.yes_no_scores(YES_NO)
        expected = [EndpointBackend.score_top(t) for t in local.next_token_logprobs(YES_NO, 20)]
        assert remote == pytest.approx(expected, abs=1e-3)
        assert all(math.isfinite(x) for x in remote)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
