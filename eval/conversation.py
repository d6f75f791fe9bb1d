"""The conversation a reader has, measured offline: a seeded simulated reader talks to ChatEngine.

Protocol (``readnext eval --conversation``):

1. Readers with at least ``min_ratings`` ratings are sampled (seeded); for each, one book they
   rated >= 4 becomes the *target* and its rating is removed. The index is built from the
   remaining ratings (a fresh ``ingest`` in a temporary data dir), so neither CF nor any profile
   has seen a target.
2. Each simulated reader opens with "what should I read next?" and then, after every list of 10,
   answers with feedback drawn from what they know: the target's tags ("more <tag>" for a tag the
   list lacks, "not <tag>" for a frequent tag the target does not carry), its author ("something
   by <author>", only when the author wrote other books here), their own history ("something like
   <a liked book>", the one whose tags are closest to the target's) and length ("shorter" when
   the target is tagged short and the list runs long). They never name the target: every message
   is checked and the *leak rate* (turns whose text names the target) is reported; it must be 0.
3. Every turn goes through the same :class:`~assistant.chat_engine.ChatEngine` the chat UI uses
   (parsing, follow-up refinement, retrieval, constraints), with rules-only or LLM parsing.
4. After each turn, Recall@10 (the target in the list) and NDCG@10 (1/log2(rank+1)); a reader who
   found the target stops and their last list counts for the remaining turns. Also: the share of
   targets found within the turns, the mean turns to a hit, and bootstrap CIs over readers.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.matcher import fold, title_key
from retrieval.types import Book

from .stats import bootstrap_ci

__all__ = ["SimulatedReader", "run_conversation_eval", "names_target"]


def names_target(text: str, target: Book) -> bool:
    """Whether ``text`` names the target book (its title without the series part)."""
    key = title_key(target.title)
    if len(key) < 3:
        return False
    return re.search(rf"(?<!\w){re.escape(key)}(?!\w)", fold(text)) is not None


@dataclass
class SimulatedReader:
    """One reader who knows a target book and answers lists with feedback about it.

    Args:
        user_id: the reader in the index (the target's rating removed).
        target: the book they are looking for (never named).
        liked: books they rated >= 4 (from their remaining history).
        books: the catalog by id.
        rng: their own random generator (seeded per reader).
    """

    user_id: str
    target: Book
    liked: list[Book]
    books: dict[str, Book]
    rng: random.Random
    asked_tags: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)

    def opening(self) -> str:
        return "what should I read next?"

    def options(self, shown: Sequence[Book]) -> list[tuple[float, str, str]]:
        """(weight, kind, message) of each feedback this reader could give now."""
        t = self.target
        tags = [x for x in t.tags]
        counts = Counter(x for b in shown for x in b.tags)
        out: list[tuple[float, str, str]] = []
        want = [x for x in tags if x not in self.asked_tags and x not in ("short", "long")]
        if want:
            # the target's tag the list shows least: what a reader would say is missing
            tag = min(want, key=lambda x: (counts.get(x, 0), tags.index(x)))
            phrase = tag.replace("-", " ")
            msg = self.rng.choice(
                [
                    f"more {phrase}",
                    f"more {phrase} please",
                    f"can you show me more {phrase}?",
                    f"I want something {phrase}",
                ]
            )
            out.append((3.0, "more_tag:" + tag, msg))
        refuse = [
            x
            for x, n in counts.most_common()
            if n >= 3 and x not in tags and x not in self.refused and x not in ("short", "long")
        ]
        if refuse:
            phrase = refuse[0].replace("-", " ")
            msg = self.rng.choice([f"not {phrase}", f"no {phrase} please", f"less {phrase}"])
            out.append((2.0, "not_tag:" + refuse[0], msg))
        if "like" not in self.used and self.liked:
            tset = set(tags)
            best = max(
                self.liked,
                key=lambda b: (
                    len(tset & set(b.tags)) / max(len(tset | set(b.tags)), 1),
                    b.book_id,
                ),
            )
            if set(best.tags) & tset:
                name = re.sub(r"\s*\([^)]*#[^)]*\)\s*$", "", best.title)
                out.append(
                    (
                        2.0,
                        "like",
                        self.rng.choice(
                            [
                                f"something like {name}",
                                f"more like {name}",
                                f"books similar to {name}",
                            ]
                        ),
                    )
                )
        others = [
            b
            for b in self.books.values()
            if b.book_id != t.book_id and set(b.authors) & set(t.authors)
        ]
        if "author" not in self.used and t.authors and len(others) >= 2:
            out.append((1.0, "author", f"something by {t.authors[0]}"))
        if (
            "shorter" not in self.used
            and "short" in tags
            and sum("long" in b.tags for b in shown) >= 3
        ):
            out.append((1.5, "shorter", self.rng.choice(["shorter", "something shorter please"])))
        return [o for o in out if not names_target(o[2], t)]

    def answer(self, shown: Sequence[Book]) -> tuple[str, str] | None:
        """(kind, message) for the next turn, or None when this reader has nothing left to say."""
        opts = self.options(shown)
        if not opts:
            return None
        total = sum(w for w, _, _ in opts)
        x = self.rng.random() * total
        for w, kind, msg in opts:
            x -= w
            if x <= 0:
                break
        if kind.startswith("more_tag:"):
            self.asked_tags.add(kind.split(":", 1)[1])
        elif kind.startswith("not_tag:"):
            self.refused.add(kind.split(":", 1)[1])
        else:
            self.used.add(kind)
        return kind, msg


def _pick_readers(ds, n: int, seed: int, min_ratings: int) -> list[tuple[str, str]]:
    """(user_id, target book id): readers with enough ratings and one liked target each."""
    r = ds.ratings
    counts = r.groupby("user_id").size()
    users = sorted(u for u, c in counts.items() if c >= min_ratings)
    rng = random.Random(seed)
    rng.shuffle(users)
    out = []
    for u in users[:n]:
        liked = sorted(r[(r["user_id"] == u) & (r["rating"] >= 4)]["book_id"].astype(str))
        if liked:
            out.append((str(u), rng.choice(liked)))
    return out


def _ndcg(rank: int | None) -> float:
    return 0.0 if rank is None else 1.0 / math.log2(rank + 1)


def run_conversation_eval(
    dataset: str = "demo",
    readers: int = 100,
    turns: int = 5,
    seed: int = 42,
    parsers: Sequence[str] = ("rules",),
    llm: Any = None,
    llm_readers: int | None = None,
    llm_budget_s: float | None = None,
    llm_mode: str = "llm",
    llm_deadline_s: float = 150.0,
    config: str | Path | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    min_ratings: int = 10,
    k: int = 10,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the simulated-reader study and return (and optionally write) its metrics.

    Args:
        dataset: "demo" or a dataset folder (goodbooks / generic / bookcrossing layout).
        readers: how many simulated readers (seeded sample).
        turns: the most turns per reader (the first is the opening request).
        seed: seed of the reader sample, the targets and each reader's choices.
        parsers: any of "rules", "llm" (LLM intent parsing in ``llm_mode``; needs ``llm``) and
            "llm+rules" (the LLM in mode ``llm+rules``); the LLM parsers share one answer cache.
        llm: the LLM backend for the "llm" parser: a spec (local | HF id | URL) or a backend
            object (e.g. a scripted one in tests).
        llm_readers: the LLM parser talks to the first this many sampled readers only (the
            rules to all; the side-by-side comparison is on these same readers). None: all.
        llm_budget_s: no LLM reader starts after this many seconds of the LLM parser's run
            (a CPU-bound study sized to the time it has): the LLM side then covers the first
            readers that fit, the count is recorded, and the comparison is on those readers.
        llm_mode: the LLM parser's mode, ``"llm"`` (its validated answer alone) or
            ``"llm+rules"`` (:func:`assistant.intent.combine_intents`).
        llm_deadline_s: seconds the LLM gets per message before the rules answer instead.
        config: a TOML config file for the study's index and recommender (e.g. a dataset's own
            tuned fusion weights from ``readnext eval --quick``); None: the shipped defaults.
        out: folder for ``metrics.json``, ``report.md`` and ``conversations.jsonl``.
        cache_dir: embedding cache to reuse (content-addressed), e.g. ``~/.readnext/cache``.
        min_ratings: readers need this many ratings to be sampled.
        k: list length shown and the metric cut-off.
        n_boot: bootstrap resamples for the CIs.
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    from assistant.chat_engine import ChatEngine
    from assistant.intent import IntentParser
    from assistant.recommender import Recommender
    from retrieval.config import Settings
    from retrieval.data import detect_format, load_dataset, load_demo
    from retrieval.index import ingest

    ds = (
        load_demo()
        if dataset == "demo"
        else load_dataset(detect_format(dataset), directory=dataset)
    )
    picks = _pick_readers(ds, readers, seed, min_ratings)
    held = {(u, b) for u, b in picks}
    r = ds.ratings
    keep = [(str(u), str(b)) not in held for u, b in zip(r["user_id"], r["book_id"], strict=True)]
    ds.ratings = r[keep].reset_index(drop=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="readnext-conv-") as tmp:
        home = Path(tmp)
        if cache_dir is not None and Path(cache_dir).expanduser().is_dir():
            (home / "cache").symlink_to(Path(cache_dir).expanduser(), target_is_directory=True)
        settings = Settings.load(home=home, config_file=config, env={})
        settings.llm.backend = "none"
        ingest(ds, settings, progress=False, quiet=True)
        results: dict[str, Any] = {}
        convs: list[dict[str, Any]] = []
        answers: dict[str, Any] = {}  # LLM answers per message, shared by the LLM parsers
        backend = None
        for parser_name in parsers:
            rec = Recommender.open(home, settings=settings, llm="none")
            eng = ChatEngine(rec, k=k, llm_picks=0)
            is_llm = parser_name in _LLM_PARSERS
            if is_llm:
                if not llm:
                    raise ValueError("the llm parser needs --llm MODEL")
                from assistant.llm import load_backend

                if backend is None:
                    backend = load_backend(llm) if isinstance(llm, str) else llm
                lib = rec.lib
                books = [
                    lib.books[i]
                    for i in sorted(range(lib.n_items), key=lambda i: -int(lib.pop_count[i]))
                ]
                eng.intents = IntentParser(
                    books,
                    backend,
                    deadline_s=llm_deadline_s,
                    mode=llm_mode if parser_name == "llm" else parser_name,
                    cache=answers,
                )
            talkers = picks if not is_llm or llm_readers is None else picks[:llm_readers]
            t_parser = time.perf_counter()
            per_turn_hit = np.zeros((len(talkers), turns))
            per_turn_ndcg = np.zeros((len(talkers), turns))
            hit_turn: list[int | None] = []
            leaks = n_turns = 0
            kinds: Counter = Counter()
            it = tqdm(talkers, desc=f"conversation ({parser_name})", disable=not progress)
            done = 0
            for ri, (uid, target_id) in enumerate(it):
                if (
                    is_llm
                    and llm_budget_s is not None
                    and time.perf_counter() - t_parser > llm_budget_s
                ):
                    break
                done += 1
                target = rec.books[target_id]
                hist = rec.history(uid)
                liked = [
                    rec.books[h.book_id] for h in hist if h.rating >= 4 and h.book_id in rec.books
                ]
                sim = SimulatedReader(uid, target, liked, rec.books, random.Random(f"{seed}:{uid}"))
                st, _ = eng.select_reader(uid)
                msg, kind = sim.opening(), "opening"
                found, log = None, []
                last_rank = None
                ids: list[str] = []
                for t in range(turns):
                    n_turns += 1
                    leaks += names_target(msg, target)
                    kinds[kind.split(":")[0]] += 1
                    reply = list(eng.respond(st, msg))[-1]
                    st = reply.state
                    if reply.cards is not None:  # None: no new list, the reader's cards stay
                        ids = [c.book_id for c in reply.cards][:k]
                    rank = ids.index(target_id) + 1 if target_id in ids else None
                    last_rank = rank
                    log.append(
                        {
                            "turn": t + 1,
                            "kind": kind,
                            "message": msg,
                            "understood": reply.text[:300],
                            "parser": eng.intents.last_source,
                            "rank": rank,
                        }
                    )
                    per_turn_hit[ri, t] = rank is not None
                    per_turn_ndcg[ri, t] = _ndcg(rank)
                    if rank is not None:
                        found = t + 1
                        per_turn_hit[ri, t + 1 :] = 1.0
                        per_turn_ndcg[ri, t + 1 :] = _ndcg(rank)
                        break
                    nxt = sim.answer([rec.books[b] for b in ids])
                    if nxt is None:  # nothing left to say: the last list stands
                        per_turn_hit[ri, t + 1 :] = 0.0
                        per_turn_ndcg[ri, t + 1 :] = _ndcg(last_rank)
                        break
                    kind, msg = nxt
                hit_turn.append(found)
                convs.append(
                    {
                        "parser": parser_name,
                        "user_id": uid,
                        "target": target_id,
                        "found_at": found,
                        "turns": log,
                    }
                )
            per_turn_hit, per_turn_ndcg = per_turn_hit[:done], per_turn_ndcg[:done]
            talkers = talkers[:done]
            res: dict[str, Any] = {
                "readers": len(talkers),
                "turns": turns,
                "leak_rate": leaks / max(n_turns, 1),
                "turns_total": n_turns,
                "feedback_kinds": dict(kinds),
                "intent_fallbacks": eng.intents.fallbacks,
                "seconds": round(time.perf_counter() - t_parser, 1),
                "per_turn": [],
            }
            if is_llm:
                res.update(
                    mode=eng.intents.mode,
                    model_calls=eng.intents.llm_calls,
                    cached_parses=eng.intents.cache_hits,
                )
            for t in range(turns):
                m1, lo1, hi1 = bootstrap_ci(per_turn_hit[:, t], n_boot=n_boot, seed=seed)
                m2, lo2, hi2 = bootstrap_ci(per_turn_ndcg[:, t], n_boot=n_boot, seed=seed)
                res["per_turn"].append(
                    {
                        "turn": t + 1,
                        "recall@10": round(m1, 4),
                        "recall_ci": [round(lo1, 4), round(hi1, 4)],
                        "ndcg@10": round(m2, 4),
                        "ndcg_ci": [round(lo2, 4), round(hi2, 4)],
                    }
                )
            hits = [h for h in hit_turn if h is not None]
            res["found_within"] = round(len(hits) / max(len(talkers), 1), 4)
            res["mean_turns_to_hit"] = round(float(np.mean(hits)), 3) if hits else None
            r1 = res["per_turn"][0]["recall@10"]
            r3 = res["per_turn"][min(2, turns - 1)]["recall@10"]
            res["recall3_over_recall1"] = round(r3 / r1, 3) if r1 > 0 else None
            # paired bootstrap of recall after turn 3 minus turn 1 (same readers)
            d = per_turn_hit[:, min(2, turns - 1)] - per_turn_hit[:, 0]
            md, lod, hid = bootstrap_ci(d, n_boot=n_boot, seed=seed)
            res["recall3_minus_recall1"] = {
                "mean": round(md, 4),
                "ci": [round(lod, 4), round(hid, 4)],
            }
            res["_hits"] = per_turn_hit.tolist()
            results[parser_name] = res
            rec.close()
    for name in _LLM_PARSERS:
        if "rules" not in results or name not in results:
            continue
        # paired, on the readers both parsers talked to (the LLM's are the first of the sample)
        la = np.array(results[name]["_hits"]).reshape(-1, turns)
        ra = np.array(results["rules"]["_hits"])[: len(la)].reshape(-1, turns)
        results[_same_key(name)] = _summary(ra, n_boot, seed)
        diff: dict[str, Any] = {}
        for what, col in (("turn1", 0), ("turn3", min(2, turns - 1)), ("found", turns - 1)):
            m, lo, hi = bootstrap_ci(la[:, col] - ra[:, col], n_boot=n_boot, seed=seed)
            diff[what] = {"mean": round(m, 4), "ci": [round(lo, 4), round(hi, 4)]}
        results[f"{name}_minus_rules"] = diff
    if "llm_minus_rules" in results:
        results["llm_minus_rules_found"] = results["llm_minus_rules"]["found"]
    for v in results.values():
        if isinstance(v, dict):
            v.pop("_hits", None)
    meta = {
        "dataset": dataset if dataset == "demo" else Path(dataset).name,
        "readers": len(picks),
        "turns": turns,
        "seed": seed,
        "k": k,
        "min_ratings": min_ratings,
        "llm": llm if isinstance(llm, str) or llm is None else getattr(llm, "model_id", "llm"),
        "llm_readers": {n: results[n]["readers"] for n in _LLM_PARSERS if n in results} or None,
        "config": str(config) if config else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out_obj = {"meta": meta, "results": results}
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "metrics.json").write_text(json.dumps(out_obj, indent=2) + "\n")
        (o / "report.md").write_text(report(out_obj) + "\n")
        with open(o / "conversations.jsonl", "w") as f:
            for c in convs:
                f.write(json.dumps(c) + "\n")
    return out_obj


_LLM_PARSERS = ("llm", "llm+rules")


def _same_key(name: str) -> str:
    """Results key of the rules' numbers on the readers LLM parser ``name`` talked to."""
    return f"rules_on_{name}_readers"


def _summary(hits: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Recall@10 per turn with CIs (and the found share) of a readers x turns hit matrix."""
    out: dict[str, Any] = {"readers": int(hits.shape[0]), "recall_per_turn": []}
    for t in range(hits.shape[1]):
        m, lo, hi = bootstrap_ci(hits[:, t], n_boot=n_boot, seed=seed)
        out["recall_per_turn"].append(
            {"turn": t + 1, "recall@10": round(m, 4), "ci": [round(lo, 4), round(hi, 4)]}
        )
    out["found_within"] = round(float(hits[:, -1].mean()), 4) if len(hits) else 0.0
    return out


def report(obj: dict[str, Any]) -> str:
    """Markdown table: Recall@10 / NDCG@10 per turn and the summary numbers, per parser."""
    m = obj["meta"]
    lines = [
        f"# Simulated-reader conversations ({m['dataset']}, {m['readers']} readers, seed "
        f"{m['seed']})",
        "",
        "Each reader's target (a book they rated >= 4) was removed before the index was built; the "
        'reader opens with "what should I read next?" and then gives feedback from the target\'s '
        "tags and author and from their own history, never naming it, through `ChatEngine`.",
        "",
    ]
    for name, r in obj["results"].items():
        if not isinstance(r, dict) or "per_turn" not in r:
            continue
        lines += [
            f"## {name} parsing ({r['readers']} readers)",
            "",
            "| turn | Recall@10 [95% CI] | NDCG@10 [95% CI] |",
            "|---|---|---|",
        ]
        for p in r["per_turn"]:
            lines.append(
                f"| {p['turn']} | {p['recall@10']:.3f} [{p['recall_ci'][0]:.3f}, "
                f"{p['recall_ci'][1]:.3f}] | {p['ndcg@10']:.3f} [{p['ndcg_ci'][0]:.3f}, "
                f"{p['ndcg_ci'][1]:.3f}] |"
            )
        d = r["recall3_minus_recall1"]
        lines += [
            "",
            f"- found within {r['turns']} turns: {r['found_within']:.3f}; mean turns to a hit: "
            f"{r['mean_turns_to_hit']}",
            f"- Recall@10 after turn 3 / turn 1: {r['recall3_over_recall1']} (difference "
            f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}])",
            f"- leak rate (turns naming the target): {r['leak_rate']:.3f} of {r['turns_total']} "
            "turns",
            f"- feedback given: {r['feedback_kinds']}; LLM parses that fell back to rules: "
            f"{r['intent_fallbacks']}",
            "",
        ]
    res = obj["results"]
    for pname in _LLM_PARSERS:
        if _same_key(pname) not in res or pname not in res:
            continue
        same, llm = res[_same_key(pname)], res[pname]
        n = same["readers"]
        lines += [
            f"## Side by side on the same {n} readers (parser `{pname}`)",
            "",
            f"LLM: {m.get('llm')}, mode `{llm.get('mode', pname)}`; "
            f"{llm.get('model_calls', '?')} model calls, {llm.get('cached_parses', '?')} "
            "repeated messages answered from the parse cache (greedy decoding: same answer), "
            f"{llm['intent_fallbacks']} fell back to rules; {llm.get('seconds', '?')} s.",
            "",
            "| turn | rules Recall@10 [95% CI] | LLM Recall@10 [95% CI] |",
            "|---|---|---|",
        ]
        for a, b in zip(same["recall_per_turn"], llm["per_turn"], strict=True):
            lines.append(
                f"| {a['turn']} | {a['recall@10']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | "
                f"{b['recall@10']:.3f} [{b['recall_ci'][0]:.3f}, {b['recall_ci'][1]:.3f}] |"
            )
        lines.append("")
        for what, d in res[f"{pname}_minus_rules"].items():
            lines.append(
                f"- `{pname}` minus rules, {what} (paired): {d['mean']:+.3f} "
                f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
            )
        lines.append("")
    return "\n".join(lines)
