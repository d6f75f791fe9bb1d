"""Scoring request understanding on a labelled set of chat requests.

``eval/data/intent_requests.jsonl`` holds hand-written requests for the demo catalog (tags,
authors, "like X", negations, lengths, years, typos, list references) with the intent a reader
means. A parse is *fully correct* when every scored field equals the label (tag lists as sets;
fields a label leaves out must be at their defaults). ``query_text`` (free words for the
embedding) is not scored: it has no single right answer.

    python -m eval.intents --data-dir ~/.readnext [--llm MODEL] [--out eval/results/intent]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from assistant.intent import Intent

from .stats import bootstrap_ci

DEFAULT_SET = Path(__file__).resolve().parent / "data" / "intent_requests.jsonl"
SCORED = (
    "kind",
    "title_ref",
    "ref_index",
    "include_tags",
    "exclude_tags",
    "authors",
    "year_min",
    "year_max",
    "shorter",
    "lighter",
    "newer",
    "older",
)
_SETS = ("include_tags", "exclude_tags", "authors")


def load_requests(path: str | Path = DEFAULT_SET) -> list[dict[str, Any]]:
    """The labelled requests: ``[{"text", "expect": {field: value}}]``."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from e
    return out


def expected(label: dict[str, Any]) -> dict[str, Any]:
    """The full expected intent: the label's fields over the defaults."""
    d = {k: v for k, v in Intent().to_dict().items() if k in SCORED}
    d.update(label)
    return d


def field_errors(got: Intent, want: dict[str, Any]) -> list[str]:
    """Scored fields where ``got`` differs from the expected intent."""
    g = got.to_dict()
    bad = []
    for k in SCORED:
        a, b = g.get(k), want.get(k)
        if k in _SETS:
            a, b = set(a or []), set(b or [])
        if a != b:
            bad.append(k)
    return bad


def score(
    parse: Callable[[str], Intent],
    requests: Sequence[dict[str, Any]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Parse every request and score it.

    Returns:
        ``{"n", "fully_correct", "ci95", "field_accuracy", "failures", "seconds_per_request"}``.
    """
    ok, rows, per_field = [], [], {k: 0 for k in SCORED}
    t0 = time.perf_counter()
    for r in requests:
        want = expected(r["expect"])
        got = parse(r["text"])
        bad = field_errors(got, want)
        ok.append(0.0 if bad else 1.0)
        for k in SCORED:
            per_field[k] += k not in bad
        if bad:
            g = got.to_dict()
            rows.append(
                {
                    "text": r["text"],
                    "wrong": {k: {"got": g.get(k), "want": want.get(k)} for k in bad},
                }
            )
    dt = time.perf_counter() - t0
    n = len(requests)
    _, lo, hi = bootstrap_ci(ok, n_boot=n_boot, seed=seed) if n else (0.0, 0.0, 0.0)
    return {
        "n": n,
        "fully_correct": round(sum(ok) / max(n, 1), 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "field_accuracy": {k: round(v / max(n, 1), 4) for k, v in per_field.items()},
        "failures": rows,
        "seconds_per_request": round(dt / max(n, 1), 4),
    }


HELDOUT_SET = DEFAULT_SET.with_name("intent_requests_heldout.jsonl")


def run(
    books: Sequence[Any],
    requests: Sequence[str | Path] = (DEFAULT_SET, HELDOUT_SET),
    llm: Any = None,
    llm_deadline: float = 150.0,
    out: str | Path | None = None,
    cache: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Score the rules (and, with ``llm``, the LLM alone and LLM + rules) on labelled sets.

    Args:
        books: the demo catalog, most popular first.
        requests: JSONL files of labelled requests.
        llm: an LLM backend, or None for the rules only.
        llm_deadline: seconds the LLM gets per request.
        out: folder for ``intent_scores.json``, ``report.md`` and ``llm_answers.jsonl``.
        cache: LLM answers already computed for these requests (message -> JSON), e.g. by a
            driver that logs them as they come; missing ones are computed.
        timings: seconds each cached answer took to compute (message -> s), so the LLM rows
            report the model's time per request rather than a cache lookup's.

    Returns:
        ``{"sets": {name: {"n", parser: score(...)}}, "prompt_examples": [...]}``.
    """
    from assistant.intent import IntentParser, prompt_examples

    parsers = {"rules": IntentParser(books)}
    if llm is not None:
        # one model call per request: "llm+rules" reuses the "llm" parser's answers
        alone = IntentParser(books, llm, deadline_s=llm_deadline, mode="llm", cache=cache)
        parsers["llm"] = alone
        parsers["llm+rules"] = IntentParser(
            books, llm, deadline_s=llm_deadline, mode="llm+rules", cache=alone.cache
        )
    shots = {" ".join(e["text"].split()) for e in prompt_examples()}
    res: dict[str, Any] = {"sets": {}, "prompt_examples": sorted(shots)}
    sets: list[tuple[str, list[dict[str, Any]]]] = []
    for path in requests:
        reqs = load_requests(path)
        sets.append((Path(path).stem, reqs))
        unseen = [r for r in reqs if " ".join(r["text"].split()) not in shots]
        if llm is not None and len(unseen) < len(reqs):
            # the LLM prompt shows these requests as worked examples: score it without them too
            sets.append((Path(path).stem + "_minus_prompt_examples", unseen))
    for name_set, reqs in sets:
        one: dict[str, Any] = {"n": len(reqs)}
        for name, parser in parsers.items():
            before, calls_before = parser.fallbacks, parser.llm_calls
            one[name] = score(parser.parse, reqs)
            if name != "rules":
                calls = parser.llm_calls - calls_before
                one[name].update(
                    model=llm.describe(),
                    fallbacks_to_rules=parser.fallbacks - before,
                    model_calls=calls,
                    generate_json=callable(getattr(llm, "generate_json", None)),
                )
                took = [timings.get(" ".join(r["text"].split())) for r in reqs] if timings else []
                if took and all(t is not None for t in took):
                    one[name]["seconds_per_request"] = round(sum(took) / len(took), 2)
        res["sets"][name_set] = one
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "intent_scores.json").write_text(json.dumps(res, indent=2) + "\n")
        (o / "report.md").write_text(report(res) + "\n")
        if llm is not None:
            with open(o / "llm_answers.jsonl", "w") as f:
                for key, data in parsers["llm"].cache.items():
                    row = {"text": key, "answer": data}
                    if timings and key in timings:
                        row["seconds"] = timings[key]
                    f.write(json.dumps(row) + "\n")
    return res


class RecordedAnswers:
    """A stand-in backend that replays recorded LLM answers (``llm_answers.jsonl``), so the
    scores (e.g. of a changed combination) are recomputed without running the model again.

    Args:
        path: the JSONL file (``{"text", "answer", "seconds"?}`` per line).
        model: the model that produced the answers (for the report).
    """

    def __init__(self, path: str | Path, model: str) -> None:
        self.answers: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        for row in load_requests(path):
            self.answers[row["text"]] = row["answer"]
            if "seconds" in row:
                self.seconds[row["text"]] = row["seconds"]
        self.model = model

    def describe(self) -> str:
        """The recorded model's name, marked as replayed."""
        return f"{self.model} (recorded answers)"

    def generate_json(self, messages: Any, schema: Any, **kw: Any) -> Any:
        """Never called for a recorded message (the parsers' cache holds it): a message
        without a recorded answer is an error, so the rules answer it and it is counted."""
        raise LookupError("no recorded answer for this message")


def main(argv: Sequence[str] | None = None) -> int:
    from assistant.recommender import Recommender

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="an index of the demo catalog (READNEXT_HOME by default)")
    p.add_argument("--requests", nargs="+", default=[str(DEFAULT_SET), str(HELDOUT_SET)])
    p.add_argument(
        "--llm", help="also score the LLM parser with this backend (local | HF id | URL)"
    )
    p.add_argument("--out", help="write intent_scores.json, report.md, llm_answers.jsonl here")
    p.add_argument(
        "--answers",
        help="re-score the LLM answers recorded in this llm_answers.jsonl instead of running "
        "--llm (which then only names the model)",
    )
    p.add_argument(
        "--llm-deadline",
        type=float,
        default=150.0,
        help="seconds the LLM gets per request (CPU prompt evaluation is slow)",
    )
    a = p.parse_args(argv)
    rec = Recommender.open(a.data_dir, llm="none")
    lib = rec.lib
    books = [lib.books[i] for i in sorted(range(lib.n_items), key=lambda i: -int(lib.pop_count[i]))]
    llm, cache, timings = None, None, None
    if a.answers:
        llm = RecordedAnswers(a.answers, a.llm or "LLM")
        cache, timings = dict(llm.answers), llm.seconds
    elif a.llm:
        from assistant.llm import load_backend

        llm = load_backend(a.llm)
    res = run(books, a.requests, llm, a.llm_deadline, a.out, cache=cache, timings=timings)
    print(report(res))
    return 0


def report(res: dict[str, Any]) -> str:
    """Markdown: one row per (set, parser), then every failure."""
    lines = [
        "# Request understanding: labelled chat requests (demo catalog)",
        "",
        "| set | parser | n | fully correct [95% CI] | kind | tags want / refuse | title | "
        "authors | years | s/request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name, one in res["sets"].items():
        for name in ("rules", "llm", "llm+rules"):
            r = one.get(name)
            if not r:
                continue
            f = r["field_accuracy"]
            label = (
                name
                if name == "rules"
                else (
                    f"{'LLM alone' if name == 'llm' else 'LLM + rules'} {r.get('model')} "
                    f"({r.get('fallbacks_to_rules')} fell back to rules)"
                )
            )
            lines.append(
                f"| {set_name} | {label} | {r['n']} | {r['fully_correct']:.3f} "
                f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {f['kind']:.2f} | "
                f"{f['include_tags']:.2f} / {f['exclude_tags']:.2f} | {f['title_ref']:.2f} | "
                f"{f['authors']:.2f} | {min(f['year_min'], f['year_max']):.2f} | "
                f"{r['seconds_per_request']} |"
            )
    for set_name, one in res["sets"].items():
        for name in ("rules", "llm", "llm+rules"):
            r = one.get(name)
            if r and r["failures"]:
                lines += ["", f"## {set_name}, {name}: failures", ""]
                lines += [
                    f"- `{x['text']}`: "
                    + "; ".join(
                        f"{k} got {v['got']!r}, want {v['want']!r}" for k, v in x["wrong"].items()
                    )
                    for x in r["failures"]
                ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
