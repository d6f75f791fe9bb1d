"""The offline default model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) through llama.cpp, end to end.

Kept short: a few greedy generations of a few dozen tokens each (about a minute on a quiet
2-core CPU, several on a busy one). Skipped where setup has not installed the runtime/model.
"""

from __future__ import annotations

import time

import pytest

from assistant.llm import LLMBadOutput, LLMError, LLMTimeout, ResilientBackend, load_backend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen():
    try:
        return load_backend("local")
    except LLMError as e:
        pytest.skip(f"default llama.cpp model unavailable: {e}")


def _yn(history: str, candidate: str) -> list[dict[str, str]]:
    return [
        {
            "role": "system",
            "content": "You judge whether a reader will enjoy a book. Reply with one word: Yes "
            "or No.",
        },
        {
            "role": "user",
            "content": f"Books the reader loved (5/5):\n{history}\n\n"
            f"Candidate book:\n{candidate}\n\n"
            "Will this reader enjoy the candidate book? Answer Yes or No.",
        },
    ]


SF = (
    "- Dune by Frank Herbert (science fiction)\n- Foundation by Isaac Asimov (science fiction)\n"
    "- Hyperion by Dan Simmons (science fiction)"
)
AUSTEN = (
    "- Pride and Prejudice by Jane Austen (classics, romance)\n"
    "- Emma by Jane Austen (classics, romance)"
)
PAIRS = [  # (history, candidate, relevant?)
    (SF, "The Left Hand of Darkness by Ursula K. Le Guin (science fiction)", True),
    (SF, "Essential Pasta: 100 Italian Recipes (cookbook)", False),
    (AUSTEN, "Sense and Sensibility by Jane Austen (classics, romance)", True),
    (AUSTEN, "Tax Accounting Manual 2019 (reference)", False),
    (SF, "The Forever War by Joe Haldeman (science fiction)", True),
    (AUSTEN, "Learn C++ in 21 Days (programming)", False),
]


def test_yes_no_separates_obvious_relevant_from_irrelevant(qwen):
    scores = qwen.yes_no_scores([_yn(h, c) for h, c, _ in PAIRS])
    pos = [s for s, (_, _, rel) in zip(scores, PAIRS) if rel]
    neg = [s for s, (_, _, rel) in zip(scores, PAIRS) if not rel]
    # AUC 1.0 on obvious pairs: every relevant pair scores above every irrelevant one.
    assert min(pos) > max(neg), (pos, neg)
    again = qwen.yes_no_scores([_yn(h, c) for h, c, _ in PAIRS[:2]])
    # Same scores when re-scored after other prompts: the KV prefix reuse changes how a prompt is
    # split across decode calls, which moves the float sums a little (seen: 0.025), never the order.
    assert again == pytest.approx(scores[:2], abs=0.1)


def test_constrained_json_always_parses_and_fits_the_schema(qwen):
    schema = {
        "type": "object",
        "properties": {
            "why": {"type": "string", "maxLength": 200},
            "mood": {"type": "string", "enum": ["dark", "light", "mixed"]},
            "pages_guess": {"type": "integer"},
        },
        "required": ["why", "mood", "pages_guess"],
        "additionalProperties": False,
    }
    msgs = [
        {
            "role": "user",
            "content": "In JSON: why might a fan of Dune enjoy Hyperion? Keys: why (one short "
            "sentence), mood, pages_guess.",
        }
    ]
    obj = qwen.generate_json(msgs, schema, max_new_tokens=90)
    assert list(obj) == ["why", "mood", "pages_guess"]  # schema order is the writing order
    assert obj["mood"] in ("dark", "light", "mixed") and isinstance(obj["pages_guess"], int)
    assert obj["why"].strip()
    intent_schema = {
        "type": "object",
        "properties": {
            "intent": {"type": "string", "enum": ["recommend", "more_like", "refine", "why"]},
            "exclude_tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        },
        "required": ["intent", "exclude_tags"],
        "additionalProperties": False,
    }
    got = qwen.generate_json(
        [
            {
                "role": "user",
                "content": "Reader says: 'more fantasy please, but no romance'. "
                "Give the intent and tags to exclude as JSON.",
            }
        ],
        intent_schema,
        max_new_tokens=40,
    )
    assert got["intent"] in ("recommend", "more_like", "refine", "why") and isinstance(
        got["exclude_tags"], list
    )


def test_json_cut_off_by_the_token_limit_is_a_clear_failure(qwen):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    with pytest.raises(LLMBadOutput, match="max_new_tokens=5"):
        qwen.generate_json(
            [{"role": "user", "content": "Tell a long story as JSON."}], schema, max_new_tokens=5
        )


def test_stream_equals_generate_and_prefill_is_continued(qwen):
    msgs = [{"role": "user", "content": "Name three primary colours, comma separated."}]
    text = qwen.generate(msgs, max_new_tokens=16)
    assert "".join(qwen.stream(msgs, max_new_tokens=16)) == text and text.strip()
    out = qwen.generate(
        [
            {"role": "user", "content": "Name a colour as JSON."},
            {"role": "assistant", "content": '{"colour": "'},
        ],
        max_new_tokens=8,
        stop=['"'],
    )
    assert out and '"' not in out and "{" not in out


def test_deadline_stops_a_local_generation(qwen):
    r = ResilientBackend(qwen, timeout_s=0.3)
    msgs = [{"role": "user", "content": "Write a very long essay about libraries."}]
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout):
        r.generate(msgs, max_new_tokens=400)
    assert time.monotonic() - t0 < 1.0
    # The model is free again soon after (the worker stopped at its own deadline check).
    assert qwen.generate(
        [{"role": "user", "content": "Say OK."}], max_new_tokens=2, deadline=time.monotonic() + 120
    )
    # the backend's own deadline check is reported as a timeout, not as "decode failed" (the
    # chat's note said "the LLM failed (llama.cpp decode failed: ... past its deadline)")
    with pytest.raises(LLMTimeout, match="past its deadline") as e:
        qwen.generate(msgs, max_new_tokens=400, deadline=time.monotonic() + 0.3)
    assert "decode failed" not in str(e.value)


def test_lazy_grammar_sampling_picks_what_full_filtering_picks(qwen):
    """stream_grammar tries the greedy candidates against the grammar one by one; the eager
    llama.cpp sampler filters the whole vocabulary first. Greedy under the same grammar, they
    must write the same text (the lazy one at a fraction of the CPU)."""
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    from assistant.explainer import words_grammar

    words = (
        "a fireman who burns books begins to question his work after meeting a curious young "
        "neighbour in a future where reading is banned"
    )
    gbnf = words_grammar(words.split(), 6, 14)
    msgs = [
        {
            "role": "user",
            "content": "Retell this description in one sentence: A fireman whose job is burning "
            "books begins to question his work after meeting a curious young neighbour.",
        }
    ]
    prefix = '{"blurb": "'
    lazy = "".join(
        qwen.stream_grammar(msgs, gbnf, prefix=prefix, max_new_tokens=30, no_repeat_ngram=0)
    )
    assert '"' not in lazy and len(lazy.split()) >= 6
    assert set(lazy.rstrip(".").replace(",", "").lower().split()) <= set(words.split())
    llm = qwen._m.llm
    toks = qwen._tokens([*msgs, {"role": "assistant", "content": prefix}])
    out = []
    for tok in llm.generate(toks, temp=0.0, grammar=LlamaGrammar.from_string(gbnf)):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(out) >= 30:
            break
        out.append(tok)
    assert llm.detokenize(out).decode() == lazy


def test_a_word_grammar_does_not_loop(qwen):
    """Without the text to retell, a word grammar let the model loop ("Future books, books,
    books, ..."); no token may repeat a 3-token run of the reply, so a run cannot repeat."""
    from assistant.explainer import words_grammar

    words = (
        "a fireman who burns books begins to question his work after meeting a curious young "
        "neighbour in a future where reading is banned"
    )
    gbnf = words_grammar(words.split(), 6, 14)
    msgs = [{"role": "user", "content": "Describe Fahrenheit 451 in one sentence."}]
    lead = '{"blurb": "'

    def repeats(pieces: list[str]) -> bool:  # one piece per token
        grams = [tuple(pieces[i : i + 3]) for i in range(len(pieces) - 2)]
        return len(grams) != len(set(grams))

    looped = list(qwen.stream_grammar(msgs, gbnf, lead, 30, no_repeat_ngram=0))
    pieces = list(qwen.stream_grammar(msgs, gbnf, lead, 30))
    assert repeats(looped) and "books, books, books" in "".join(looped)  # what it did
    assert not repeats(pieces) and len("".join(pieces).split()) >= 6


def test_a_grammar_that_does_not_parse_is_a_clear_error(qwen):
    with pytest.raises(ValueError, match="GBNF"):
        list(qwen.stream_grammar([{"role": "user", "content": "Hi"}], "root ::= (", "", 4))


def test_saved_prefix_states_are_restored_and_give_the_same_scores(qwen):
    """Two prompt families alternate (as the explanation and blurb prompts do in a turn): the
    second visit to a family restores its saved KV state instead of re-evaluating the shared
    head, and scores exactly as the live context does."""
    head = "You judge books. " * 20  # a long shared head (~100 tokens)
    sys_ = {"role": "system", "content": head}
    a1 = [sys_, {"role": "user", "content": "Is Dune good? Yes or No."}]
    a2 = [sys_, {"role": "user", "content": "Is Emma good? Yes or No."}]
    other = [
        {"role": "system", "content": "Something else entirely. " * 10},
        {"role": "user", "content": "Is Emma good? Yes or No."},
    ]
    qwen._m.states.clear()
    qwen.yes_no_scores([a2])
    # Re-scoring a prompt the context already holds re-runs only its last token (a batch of
    # one takes another float path: seen 0.11 off the cold batch), which a restore also does.
    live = qwen.yes_no_scores([a2])[0]
    qwen.yes_no_scores([a1])
    qwen.yes_no_scores([other])  # the live context now holds another family
    before = dict(qwen._m.stats)
    restored = qwen.yes_no_scores([a2])[0]
    assert qwen._m.stats["restored"] == before["restored"] + 1
    # nothing but the last token was evaluated, not the ~100-token head
    assert qwen._m.stats["evaluated_tokens"] - before["evaluated_tokens"] == 1
    assert restored == pytest.approx(live, abs=1e-6)
    # a prompt sharing only the head resumes from a saved state too
    before = dict(qwen._m.stats)
    qwen.yes_no_scores([a1[:1] + [{"role": "user", "content": "Is Ulysses good? Yes or No."}]])
    assert qwen._m.stats["evaluated_tokens"] - before["evaluated_tokens"] < 20


def test_slices_join_into_the_pinned_file(tmp_path):
    """The real join from the installed PyPI slices: atomic, verified, and a no-op the second
    time."""
    from assistant.llm import model_files as mf

    try:
        mf.part_files()
    except LLMError as e:
        pytest.skip(f"model slices not installed: {e}")
    dest = tmp_path / mf.GGUF_NAME
    assert mf.join_parts(dest, progress=False) == dest
    assert dest.stat().st_size == mf.GGUF_SIZE and dest.read_bytes()[:4] == b"GGUF"
    assert not list(tmp_path.glob("*.part-*"))  # no scratch file left behind
    mtime = dest.stat().st_mtime_ns
    t0 = time.monotonic()
    mf.join_parts(dest, progress=False)  # verified stamp: nothing to do
    assert dest.stat().st_mtime_ns == mtime and time.monotonic() - t0 < 2.0


def test_chat_turn_with_the_default_model_streams_checked_fact_sentences(qwen, demo_home):
    """End to end with the real default model: cards first, LLM text streams into them, and
    every shown model explanation is one of the fact sentences the grammar allows, checked."""
    import shutil

    from assistant import Recommender
    from assistant.chat_engine import ChatEngine
    from assistant.claims import check_claims
    from retrieval.config import Settings
    from retrieval.index import Index

    home = demo_home.parent / "llamacpp-chat"
    if not home.exists():
        shutil.copytree(demo_home, home, symlinks=True)
    s = Settings.load(home=home, env={})
    s.llm.rerank_weight = 0.0
    s.llm.timeout_s, s.llm.turn_budget_s = 600.0, 1800.0  # a busy shared CPU: test text, not speed
    rec = Recommender(Index.open(home), s, llm=qwen)
    assert rec.explainer().prime() > 100  # the system heads are cached at start-up
    eng = ChatEngine(rec, k=3, llm_picks=3)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    st, _ = eng.select_reader(u)
    sources = []
    replies = []
    for r in eng.respond(st, "what should I read next?"):
        replies.append(r)
        sources.append([c.explanation_source for c in r.cards])
    assert sources[0] == ["template"] * 3 and any("streaming" in x for x in sources)
    final = replies[-1]
    assert final.streaming is False
    ctx = rec.context(st.user_id)
    hist = rec._history_books(ctx)
    shown = [c for c in final.cards if c.explanation_source == "llm"]
    assert shown, [n for n in final.notes]
    heads = ("This book ", "You asked for", "You saved")
    for c in shown:
        assert c.explanation.startswith(heads) or "readers who liked" in c.explanation
        cc = rec.explainer().claim_context(rec.books[c.book_id], c.evidence, hist, rec.books)
        assert check_claims(c.explanation, c.blurb, cc, rules="claims") is None
