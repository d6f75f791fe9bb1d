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


def main(argv: Sequence[str] | None = None) -> int:
    from assistant.intent import IntentParser
    from assistant.recommender import Recommender

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="an index of the demo catalog (READNEXT_HOME by default)")
    p.add_argument("--requests", nargs="+", default=[str(DEFAULT_SET), str(HELDOUT_SET)])
    p.add_argument(
        "--llm", help="also score the LLM parser with this backend (local | HF id | URL)"
    )
    p.add_argument("--out", help="write intent_scores.json and report.md here")
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
    parsers = {"rules": IntentParser(books)}
    llm = None
    if a.llm:
        from assistant.llm import load_backend

        llm = load_backend(a.llm)
        parsers["llm"] = IntentParser(books, llm, deadline_s=a.llm_deadline)
    res: dict[str, Any] = {"sets": {}}
    for path in a.requests:
        reqs = load_requests(path)
        one: dict[str, Any] = {"path": str(Path(path).name), "n": len(reqs)}
        for name, parser in parsers.items():
            before = parser.fallbacks
            one[name] = score(parser.parse, reqs)
            if name == "llm":
                one[name].update(
                    model=llm.describe(),
                    fallbacks_to_rules=parser.fallbacks - before,
                    generate_json=callable(getattr(llm, "generate_json", None)),
                )
        res["sets"][Path(path).stem] = one
    text = report(res)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "intent_scores.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "report.md").write_text(text + "\n")
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
        for name in ("rules", "llm"):
            r = one.get(name)
            if not r:
                continue
            f = r["field_accuracy"]
            label = (
                name
                if name == "rules"
                else (f"LLM {r.get('model')} ({r.get('fallbacks_to_rules')} fell back to rules)")
            )
            lines.append(
                f"| {set_name} | {label} | {r['n']} | {r['fully_correct']:.3f} "
                f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {f['kind']:.2f} | "
                f"{f['include_tags']:.2f} / {f['exclude_tags']:.2f} | {f['title_ref']:.2f} | "
                f"{f['authors']:.2f} | {min(f['year_min'], f['year_max']):.2f} | "
                f"{r['seconds_per_request']} |"
            )
    for set_name, one in res["sets"].items():
        for name in ("rules", "llm"):
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
