"""The text-quality study: LLM explanations and blurbs for (reader, pick) pairs, model by model.

    readnext eval --text-study --dataset ../shared/data/goodbooks-sample \\
        --text-llms smollm2,local --out eval/results/text-quality

For each dataset (the one given and the demo) a seeded sample of readers gets its top picks from
the shipped hybrid (``Recommender.recommend``, template text only); every backend then writes
the text for the same picks with the same prompt through :class:`assistant.explainer.Explainer`
(streamed, so the first token is timed). Every row goes to ``texts.jsonl`` with everything
needed to re-check it; :mod:`eval.text_audit` then recomputes the metrics from that dump and the
datasets' own book files, independently of this run, and writes ``metrics.json``/``report.md``.
About half of the demo readers also give a request, so the request path is covered.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.config import Settings
from retrieval.data import DEMO_DIR, load_dataset, load_demo

# Requests a reader might type; used for every other demo reader (the demo's tags cover them).
REQUESTS = (
    "something funny",
    "a dark, tense thriller",
    "a moving story about family",
    "an epic fantasy adventure",
    "space and science",
    "a cosy mystery",
)


def dataset_spec(path: str | None) -> dict[str, str]:
    """How the audit re-reads a dataset: ``{"format", "directory"}``."""
    if path is None:
        return {"format": "demo", "directory": str(DEMO_DIR)}
    p = Path(path).resolve()
    fmt = "goodbooks" if "goodbooks" in p.name else "generic"
    return {"format": fmt, "directory": str(p)}


def load_spec(spec: dict[str, str]):
    """The :class:`retrieval.data.Dataset` a :func:`dataset_spec` names."""
    if spec["format"] == "demo":
        return load_demo(spec["directory"])
    return load_dataset(spec["format"], directory=spec["directory"])


def _index_home(work: Path, name: str, spec: dict[str, str], cache: Path, progress: bool) -> Path:
    """A private index of the dataset (built once, then reused), sharing the embedding cache."""
    from retrieval.index import ingest

    home = work / name
    if not (home / "CURRENT").is_file():
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "cache").exists():
            cache.mkdir(parents=True, exist_ok=True)
            (home / "cache").symlink_to(cache.resolve(), target_is_directory=True)
        ingest(
            load_spec(spec), Settings.load(home=home, env={}), progress=progress, quiet=not progress
        )
    return home


def pick_pairs(
    home: Path, n_readers: int, picks: int, seed: int, with_requests: bool
) -> list[dict[str, Any]]:
    """Top ``picks`` of ``n_readers`` seeded readers (5+ ratings), with what the explainer needs."""
    from assistant.recommender import Recommender

    rec = Recommender.open(home, settings=Settings.load(home=home, env={}), llm="none")
    try:
        users = sorted(u["user_id"] for u in rec.users() if u["n_ratings"] >= 5)
        chosen = random.Random(seed).sample(users, min(n_readers, len(users)))
        rows = []
        for n, user in enumerate(chosen):
            query = REQUESTS[n // 2 % len(REQUESTS)] if with_requests and n % 2 == 1 else None
            recs = rec.recommend(user, query=query, k=picks)
            ctx = rec.context(user, query=query)
            hist = [(b.book_id, r) for b, r in rec._history_books(ctx)]
            for r in recs:
                rows.append(
                    {
                        "user_id": user,
                        "query": query,
                        "rank": r.rank,
                        "book_id": r.book_id,
                        "history": hist,
                        "evidence": [e.to_dict() for e in r.evidence],
                        "template": r.explanation,
                    }
                )
        return rows
    finally:
        rec.close()


def _evidence(d: dict[str, Any]):
    from retrieval.types import Evidence

    kw = dict(d)
    for k in ("book_ids", "tags", "authors"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return Evidence(**kw)


def _load(spec: Any, threads: int):
    from assistant.llm.base import LLMBackend, LLMError, load_backend

    if isinstance(spec, LLMBackend):
        return spec, spec.describe(), None
    opts: dict[str, Any] = {"num_threads": threads} if threads > 0 else {}
    try:
        b = load_backend(spec, **opts)
    except (LLMError, TypeError) as e:
        try:
            b = load_backend(spec)
        except LLMError:
            return None, str(spec), str(e)
    return b, b.describe(), None


def interleave(
    datasets: Sequence[tuple[str, dict[str, str], list[dict[str, Any]]]],
) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Pairs in round-robin order of readers across datasets, so any prefix covers every dataset."""
    queues = []
    for name, spec, rows in datasets:
        by_reader: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_reader.setdefault(r["user_id"], []).append(r)
        queues.append([(name, spec, list(v)) for v in by_reader.values()])
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if i < len(q):
                name, spec, rows = q[i]
                out += [(name, spec, r) for r in rows]
    return out


def write_texts(
    backend_specs: Sequence[Any],
    datasets: Sequence[tuple[str, dict[str, str], list[dict[str, Any]]]],
    dump: Path,
    max_new_tokens: int,
    progress: bool,
    threads: int,
    skip_labels: Sequence[str] = (),
    compare_every: int = 1,
) -> list[dict[str, Any]]:
    """Every pair through the first backend, and every ``compare_every``-th reader's picks through
    the others, interleaved pair by pair (same prompts, same load on a shared CPU); rows are
    appended to ``dump`` as they are written, so a stopped run keeps its rows.

    Args:
        backend_specs: ``load_backend`` specs or ``LLMBackend`` instances.
        datasets: (name, dataset spec, pairs) per dataset.
        dump: the JSONL file rows are appended to.
        max_new_tokens: per field.
        progress: a progress bar.
        threads: CPU threads of local models (0: default).
        skip_labels: backends (``describe()``) already in the dump, not run again.
        compare_every: run backends after the first on every n-th reader only.

    Returns:
        One summary per backend (label, pairs written, load time, JSON mode).
    """
    from assistant.explainer import Explainer, ExplanationResult
    from assistant.grounding import parse_explanation

    runs, active = [], []
    for i, spec in enumerate(backend_specs):
        t0 = time.perf_counter()
        backend, label, err = _load(spec, threads)
        if backend is None:
            runs.append({"backend": label, "backend_spec": str(spec), "skipped": err})
            continue
        mode = (
            "constrained JSON (grammar)"
            if getattr(backend, "constrained_json", False)
            else "field-by-field prefill, strict parse"
            if backend.supports_prefill
            else "plain, strict parse"
        )
        run = {
            "backend": label,
            "backend_spec": str(spec),
            "json_mode": mode,
            "pairs": 0,
            "load_s": round(time.perf_counter() - t0, 2),
            "every_nth_reader": 1 if i == 0 else compare_every,
        }
        runs.append(run)
        if label not in skip_labels:
            ex = Explainer(backend, max_new_tokens=max_new_tokens)
            # as the chat does at start-up: the prompts' shared heads cached (llama.cpp only)
            t0 = time.perf_counter()
            run["primed_tokens"] = ex.prime()
            run["prime_s"] = round(time.perf_counter() - t0, 2)
            active.append((i, backend, ex, run))
    catalogs = {name: {b.book_id: b for b in load_spec(spec).books} for name, spec, _ in datasets}
    shown: dict[tuple[str, str, str], list[str]] = {}
    readers: dict[tuple[str, str], int] = {}
    with dump.open("a", encoding="utf-8") as f:
        for name, spec, row in tqdm(
            interleave(datasets), desc="text study", unit="pick", disable=not progress
        ):
            n_reader = readers.setdefault((name, row["user_id"]), len(readers))
            books = catalogs[name]
            book = books[row["book_id"]]
            hist = [(books[b], r) for b, r in row["history"] if b in books]
            evs = [_evidence(e) for e in row["evidence"]]
            for i, backend, ex, run in active:
                if i > 0 and n_reader % compare_every:
                    continue
                prev = shown.setdefault((run["backend"], name, row["user_id"]), [])
                t, c = time.perf_counter(), time.process_time()
                first = first_cpu = None
                final: ExplanationResult | None = None
                for part in ex.stream_explain(
                    book, evs, hist, books, row["template"], query=row["query"], shown=prev
                ):
                    if isinstance(part, str):
                        if first is None and part.strip():
                            first = time.perf_counter() - t
                            first_cpu = time.process_time() - c
                    else:
                        final = part
                secs, cpu = time.perf_counter() - t, time.process_time() - c
                assert final is not None
                reason = final.rejected_reason
                error = bool(
                    reason and (reason.startswith("backend error") or reason == "LLM disabled")
                )
                parsed = None if error else parse_explanation(final.raw or "")[0]
                if final.source == "llm":
                    prev += [final.why, final.blurb or ""]
                out = {
                    "dataset": name,
                    "dataset_spec": spec,
                    "backend": run["backend"],
                    "backend_spec": run["backend_spec"],
                    "json_mode": run["json_mode"],
                    **row,
                    "prompt_version": final.prompt_version,
                    "raw": final.raw,
                    "source": final.source,
                    "explanation": final.why,
                    "blurb": final.blurb,
                    "rejected_reason": reason,
                    "model_explanation": parsed["why"] if parsed else None,
                    "model_blurb": parsed["blurb"] if parsed else None,
                    "parse_failure": (not error) and parsed is None,
                    "backend_error": error,
                    "first_token_s": None if first is None else round(first, 3),
                    "seconds": round(secs, 3),
                    # CPU-seconds of this process (all its threads): less noisy than wall time
                    # on a CPU shared with other jobs
                    "first_token_cpu_s": None if first_cpu is None else round(first_cpu, 3),
                    "cpu_s": round(cpu, 3),
                }
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
                f.flush()
                run["pairs"] += 1
    return runs


def run_text_study(
    dataset: str | None,
    out: str | Path,
    llms: Sequence[str],
    readers: int = 20,
    demo_readers: int = 15,
    picks: int = 3,
    seed: int = 42,
    max_new_tokens: int = 80,
    data_dir: str | Path | None = None,
    progress: bool = True,
    threads: int = 1,
    resume: bool = False,
    compare_every: int = 1,
) -> dict[str, Any]:
    """Run the study and its independent audit; returns the audit's metrics.

    Args:
        dataset: a dataset folder (e.g. ``../shared/data/goodbooks-sample``), studied with the demo;
            ``None``: the demo only.
        out: output folder (``texts.jsonl``, ``pairs.jsonl``, ``metrics.json``, ``report.md``).
        llms: backend specs (``load_backend``), all run on the same pairs and prompt.
        readers: readers sampled from ``dataset``; ``demo_readers``: from the demo.
        picks: top picks per reader.
        seed: the reader sample's seed.
        max_new_tokens: per field (explanation, blurb).
        data_dir: where the study's private indexes live (default ``~/.readnext/text-study``).
        progress: progress bars.
        threads: CPU threads of a local model (0: the backend's default).
        resume: keep the rows of backends already in ``out/texts.jsonl`` (same pairs: same seed)
            and run only the others.
        compare_every: backends after the first run on every n-th reader's picks only (the
            first, the default model, on all), interleaved with it pair by pair.

    Returns:
        The metrics of :func:`eval.text_audit.audit`.
    """
    from .text_audit import audit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings.load(home=data_dir)
    work = Path(settings.home) / "text-study"
    cache = Path(settings.home) / "cache"
    sets = []
    todo = (
        [
            (
                "goodbooks-sample"
                if dataset and "goodbooks-sample" in str(dataset)
                else Path(dataset).name,
                dataset_spec(dataset),
                readers,
                False,
            )
        ]
        if dataset
        else []
    ) + [("demo", dataset_spec(None), demo_readers, True)]
    for name, spec, n, with_req in todo:
        home = _index_home(work, name, spec, cache, progress)
        sets.append((name, spec, pick_pairs(home, n, picks, seed, with_req)))
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for name, spec, rows in sets:
            for r in rows:
                f.write(json.dumps({"dataset": name, **r}, ensure_ascii=False) + "\n")
    dump = out / "texts.jsonl"
    done: set[str] = set()
    runs: list[dict[str, Any]] = []
    if resume and dump.is_file():
        done = {
            json.loads(x)["backend"]
            for x in dump.read_text(encoding="utf-8").splitlines()
            if x.strip()
        }
        if (out / "runs.json").is_file():
            runs = [
                r
                for r in json.loads((out / "runs.json").read_text())["runs"]
                if r.get("backend") in done
            ]
    else:
        dump.write_text("")
    runs += write_texts(
        llms,
        sets,
        dump,
        max_new_tokens,
        progress,
        threads,
        skip_labels=sorted(done),
        compare_every=compare_every,
    )
    (out / "runs.json").write_text(
        json.dumps(
            {"runs": runs, "seed": seed, "picks": picks, "max_new_tokens": max_new_tokens}, indent=2
        )
    )
    return audit(dump, out, runs=runs)
