"""Independent audit of a text-quality dump: metrics recomputed from ``texts.jsonl`` alone.

    python -m eval.text_audit eval/results/text-quality/texts.jsonl

Nothing from the run that wrote the dump is reused: the books are re-read from each dataset's own
files (the ``dataset_spec`` in every row), the evidence and the reader's history from the row,
and every *shown* text (the model's where it passed, else the template) is checked again:

* claim support: :func:`assistant.claims.check_claims` (claim rules only) plus a name check
  written here, separately from the guard: every catalog title (2+ words) and author named must
  be the book's own, a history book's or an evidence book's;
* personalisation: the shown explanation names one of the reader's books (title or series, 2+
  words), one of their authors, or a content word of their request;
* distinctness: 1 - content-word Jaccard between every two shown texts of one reader's picks;
* guard pass rate (the model's text was shown), parse failures, backend errors, latency.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from assistant.claims import (
    ClaimContext,
    catalog_tag_vocab,
    check_claims,
    content_words,
    jaccard,
    stem,
    words,
)
from retrieval.types import Book, Evidence

_ARTICLES = {"the", "a", "an"}


def _key(name: str) -> tuple[str, ...]:
    ws = words(re.sub(r"\s*\([^()]*\)\s*$", "", name))
    while ws and ws[0] in _ARTICLES:
        ws = ws[1:]
    return tuple(ws)


def _has(seq: Sequence[str], key: tuple[str, ...]) -> bool:
    n = len(key)
    return n > 0 and any(tuple(seq[i : i + n]) == key for i in range(len(seq) - n + 1))


class Catalog:
    """One dataset's books and their name keys, read from the dataset's own files."""

    def __init__(self, books: Sequence[Book]) -> None:
        self.by_id = {b.book_id: b for b in books}
        self.tags = catalog_tag_vocab(books)
        self.titles: dict[tuple[str, ...], set[str]] = defaultdict(set)
        self.authors: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for b in books:
            for name in {b.title, b.series or ""}:
                k = _key(name)
                if len(k) >= 2:
                    self.titles[k].add(b.book_id)
            for a in b.authors:
                k = _key(a)
                if len(k) >= 2:
                    self.authors[k].add(a)


def names_ok(text: str, allowed_books: Sequence[Book], cat: Catalog) -> str | None:
    """The first catalog title/author in ``text`` that is not one of ``allowed_books``'."""
    toks = words(text)
    ok_ids = {b.book_id for b in allowed_books}
    ok_series = {_key(b.series) for b in allowed_books if b.series}
    ok_authors = {_key(a) for b in allowed_books for a in b.authors}
    for k, ids in cat.titles.items():
        if ids & ok_ids or k in ok_series or not _has(toks, k):
            continue
        if any(
            _has(words(f"{b.title} {b.series or ''}"), k) for b in allowed_books
        ):  # inside an allowed name
            continue
        return f"names title {' '.join(k)!r}"
    for k in cat.authors:
        if k not in ok_authors and _has(toks, k):
            return f"names author {' '.join(k)!r}"
    return None


def personal(explanation: str, history: Sequence[Book], query: str | None) -> bool:
    """Whether the text names a history book (2+ words of its title or series) or author, or the
    request."""
    toks = words(explanation)
    for b in history:
        for name in (b.title, b.series or "", *b.authors):
            k = _key(name)
            if len(k) >= 2 and _has(toks, k):
                return True
            if len(k) == 1 and len(k[0]) >= 5 and k[0] in toks:
                return True
    q = {stem(w) for w in content_words(query or "") if len(w) > 3}
    return bool(q & {stem(w) for w in toks})


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def audit_rows(rows: Sequence[dict[str, Any]], catalogs: Mapping[str, Catalog]) -> dict[str, Any]:
    """Per-backend metrics of dumped rows (see the module docstring)."""
    by_backend: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_backend[r["backend"]].append(r)
    out: dict[str, Any] = {}
    for backend, rs in by_backend.items():
        checked = []
        per_reader: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in rs:
            cat = catalogs[r["dataset"]]
            book = cat.by_id[r["book_id"]]
            hist = [(cat.by_id[b], rt) for b, rt in r["history"] if b in cat.by_id]
            evs = [
                Evidence(**{k: tuple(v) if isinstance(v, list) else v for k, v in e.items()})
                for e in r["evidence"]
            ]
            ev_books = [cat.by_id[i] for e in evs for i in e.book_ids if i in cat.by_id]
            ctx = ClaimContext(book, tuple(evs), hist, cat.by_id, r["query"], cat.tags)
            shown_llm = r["source"] == "llm"
            expl, blurb = r["explanation"], (r["blurb"] if shown_llm else None)
            claim = check_claims(expl, blurb, ctx, rules="claims")
            name = names_ok(f"{expl} {blurb or ''}", [book, *(h for h, _ in hist), *ev_books], cat)
            if shown_llm:
                name = name or names_ok(blurb or "", [book], cat)
            problem = claim or name
            checked.append(
                {
                    "llm": shown_llm,
                    "supported": problem is None,
                    "problem": problem,
                    "personal": personal(expl, [h for h, _ in hist], r["query"]),
                    "row": r,
                }
            )
            per_reader[(r["dataset"], r["user_id"])].append(f"{expl} {blurb or ''}")
        n = len(rs)
        llm = [c for c in checked if c["llm"]]
        reguard = _reguard(rs, catalogs)
        dist = [
            1 - jaccard(a, b) for texts in per_reader.values() for a, b in combinations(texts, 2)
        ]
        dup_readers = sum(
            any(jaccard(a, b) >= 0.6 for a, b in combinations(t, 2)) for t in per_reader.values()
        )
        ttft = [r["first_token_s"] for r in rs if r.get("first_token_s") is not None]
        secs = [r["seconds"] for r in rs if r.get("seconds") is not None]
        ttft_cpu = [r["first_token_cpu_s"] for r in rs if r.get("first_token_cpu_s") is not None]
        cpus = [r["cpu_s"] for r in rs if r.get("cpu_s") is not None]
        out[backend] = {
            "pairs": n,
            "readers": len(per_reader),
            "guard_pass_rate": _rate(len(llm), n),
            "guard_pass_rate_current_checker": _rate(reguard, n),
            "parse_failures": sum(bool(r.get("parse_failure")) for r in rs),
            "backend_errors": sum(bool(r.get("backend_error")) for r in rs),
            "claim_support_rate_shown": _rate(sum(c["supported"] for c in checked), n),
            "claim_support_rate_llm_shown": _rate(sum(c["supported"] for c in llm), len(llm)),
            "personalisation_rate_llm_shown": _rate(sum(c["personal"] for c in llm), len(llm)),
            "personalisation_rate_shown": _rate(sum(c["personal"] for c in checked), n),
            "mean_pairwise_distinctness": statistics.fmean(dist) if dist else None,
            "readers_with_near_duplicates": dup_readers,
            "first_token_s_p50": _pct(ttft, 0.5),
            "first_token_s_p95": _pct(ttft, 0.95),
            "per_pick_s_p50": _pct(secs, 0.5),
            "per_pick_s_p95": _pct(secs, 0.95),
            "first_token_cpu_s_p50": _pct(ttft_cpu, 0.5),
            "first_token_cpu_s_p95": _pct(ttft_cpu, 0.95),
            "per_pick_cpu_s_p50": _pct(cpus, 0.5),
            "per_pick_cpu_s_p95": _pct(cpus, 0.95),
            "rejections": _reasons([r.get("rejected_reason") for r in rs if r["source"] != "llm"]),
            "unsupported_shown": [
                {
                    "book_id": c["row"]["book_id"],
                    "user_id": c["row"]["user_id"],
                    "problem": c["problem"],
                }
                for c in checked
                if not c["supported"]
            ][:20],
        }
    return out


def _reguard(rows: Sequence[dict[str, Any]], catalogs: Mapping[str, Catalog]) -> int:
    """How many of the dumped model replies the *current* checks accept (the dump records the
    decision of the code that ran; this shows the effect of later fixes to the checker)."""
    from assistant.explainer import Explainer
    from assistant.llm.base import NoLLM

    ex = Explainer(NoLLM())
    shown: dict[tuple[str, str], list[str]] = defaultdict(list)
    ok = 0
    for r in rows:
        if r.get("backend_error") or not r.get("raw"):
            continue
        cat = catalogs[r["dataset"]]
        hist = [(cat.by_id[b], rt) for b, rt in r["history"] if b in cat.by_id]
        evs = [
            Evidence(**{k: tuple(v) if isinstance(v, list) else v for k, v in e.items()})
            for e in r["evidence"]
        ]
        msgs, version, check, ctx, *_ = ex._prepare(
            cat.by_id[r["book_id"]], evs, hist, cat.by_id, r["template"], r["query"]
        )
        prev = shown[(r["dataset"], r["user_id"])]
        res = ex._finish(r["raw"], None, check, ctx, version, r["template"], prev)
        if res.source == "llm":
            ok += 1
            prev += [res.why, res.blurb or ""]
    return ok


def _reasons(reasons: Sequence[str | None]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in reasons:
        r = re.sub(r""" '[^']*'| "[^"]*"| \(.*?\)| \d+\b|, e\.g\..*""", "", r or "unknown")
        counts[r.split(":")[0].strip()] += 1
    return dict(sorted(counts.items(), key=lambda x: -x[1]))


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.2f}"
    return str(v)


def report(metrics: Mapping[str, Any], runs: Sequence[Mapping[str, Any]] = ()) -> str:
    """The metrics as a Markdown table (one column per backend)."""
    names = list(metrics)
    rows = [
        ("(reader, pick) pairs", "pairs", False),
        ("readers", "readers", False),
        ("guard pass rate (model text shown)", "guard_pass_rate", True),
        ("same replies, current checker", "guard_pass_rate_current_checker", True),
        ("parse failures", "parse_failures", False),
        ("backend errors", "backend_errors", False),
        ("claim support, all shown texts", "claim_support_rate_shown", True),
        ("claim support, shown model texts", "claim_support_rate_llm_shown", True),
        ("personalised, shown model texts", "personalisation_rate_llm_shown", True),
        ("personalised, all shown texts", "personalisation_rate_shown", True),
        ("distinctness (1 - Jaccard, pick pairs)", "mean_pairwise_distinctness", True),
        ("readers with a near-duplicate pair", "readers_with_near_duplicates", False),
        ("first token p50 / p95 (s)", ("first_token_s_p50", "first_token_s_p95"), False),
        ("per pick p50 / p95 (s)", ("per_pick_s_p50", "per_pick_s_p95"), False),
        (
            "first token p50 / p95 (CPU-s)",
            ("first_token_cpu_s_p50", "first_token_cpu_s_p95"),
            False,
        ),
        ("per pick p50 / p95 (CPU-s)", ("per_pick_cpu_s_p50", "per_pick_cpu_s_p95"), False),
    ]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, pct in rows:
        cells = []
        for n in names:
            m = metrics[n]
            if isinstance(key, tuple):
                cells.append(" / ".join(_fmt(m.get(k), False) for k in key))
            else:
                cells.append(_fmt(m.get(key), pct))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        rej = metrics[n]["rejections"]
        if rej:
            lines.append(
                f"Why {n}'s texts were replaced by the template: "
                + "; ".join(f"{k} ({v})" for k, v in rej.items())
                + "."
            )
    return "\n".join(lines)


def audit(
    dump: str | Path, out: str | Path | None = None, runs: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Recompute the metrics of ``dump``; with ``out``, write ``metrics.json`` and ``table.md``
    there."""
    from eval.text_study import load_spec

    rows = [
        json.loads(line)
        for line in Path(dump).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    catalogs: dict[str, Catalog] = {}
    for r in rows:
        if r["dataset"] not in catalogs:
            catalogs[r["dataset"]] = Catalog(load_spec(r["dataset_spec"]).books)
    metrics = audit_rows(rows, catalogs)
    if out is not None:
        out = Path(out)
        (out / "metrics.json").write_text(
            json.dumps({"backends": metrics, "runs": list(runs)}, indent=2, ensure_ascii=False)
        )
        (out / "table.md").write_text(report(metrics, runs) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.text_audit DUMP [--out DIR]``: print the recomputed table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dump", help="texts.jsonl written by the text study")
    p.add_argument("--out", help="also write metrics.json and table.md here")
    a = p.parse_args(argv)
    print(report(audit(a.dump, a.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
