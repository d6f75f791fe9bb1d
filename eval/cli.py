"""``readnext eval``: options and entry point (the ``readnext`` CLI delegates here).

    readnext eval --dataset ../shared/data/goodbooks --out eval/results/goodbooks-partial
    readnext eval --quick --users 300 --dump-rankings --out /tmp/ev     # the demo, in about a
    minute

The parser passed in already has ``--data-dir``, ``--config`` and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from retrieval.errors import ReadnextError

from .models import ALL_MODELS

__all__ = ["add_arguments", "config_from_args", "run_from_args"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 10,20, got {text!r}"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive cut-offs such as 10,20, got {text!r}")
    return vals


def _models(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in ALL_MODELS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(bad) or text!r}; choose from {', '.join(ALL_MODELS)}"
        )
    return names


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``p``.

    ``--data-dir``/``--config``/``--json`` come from the caller (``readnext eval``).

    Args:
        p: the ``eval`` sub-command's parser.
    """
    p.add_argument(
        "--dataset",
        metavar="DIR",
        help="dataset folder to evaluate (goodbooks / generic / bookcrossing, "
        "auto-detected); default: --data-dir's index, else the demo",
    )
    p.add_argument(
        "--models",
        type=_models,
        help=f"comma-separated subset of {','.join(ALL_MODELS)} (default: all; "
        "hybrid+llm only with --llm or without --quick)",
    )
    p.add_argument(
        "--users", type=_positive, help="evaluate a seeded random subset of N test readers"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of every random choice (default 42)")
    p.add_argument("--k", type=_ints, default=(10, 20), help="cut-offs, e.g. 10,20 (default)")
    p.add_argument("--out", default="eval-results", help="output folder (default ./eval-results)")
    p.add_argument(
        "--dump-rankings",
        action="store_true",
        help="also write rankings.jsonl (+ rankings_cold_start.jsonl)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small grids, few validation readers, no LLM unless --llm",
    )
    p.add_argument(
        "--llm",
        metavar="MODEL",
        help="LLM backend for hybrid+llm: local | HF id or path | http://host/v1",
    )
    p.add_argument(
        "--llm-users", type=_positive, default=30, help="readers reranked by the LLM (default 30)"
    )
    p.add_argument(
        "--llm-explain",
        type=int,
        default=10,
        help="LLM explanations to check (default 10; 0: none)",
    )
    p.add_argument(
        "--sampled",
        type=_positive,
        metavar="N",
        help="ALSO report sampled metrics with N random negatives (discouraged: Krichene & Rendle "
        "2020)",
    )
    p.add_argument(
        "--relevant",
        type=float,
        default=4.0,
        help="held-out rating that counts as relevant (default 4)",
    )
    p.add_argument(
        "--catalog",
        choices=["rated", "all"],
        default="rated",
        help="rank the books with >= 1 rating (default) or every catalog book",
    )
    p.add_argument(
        "--explain-users", type=_positive, default=200, help="readers whose evidence is re-checked"
    )
    p.add_argument(
        "--val-users",
        type=_positive,
        help="cap on validation readers for tuning (default 3000, quick 600)",
    )
    p.add_argument(
        "--n-boot", type=_positive, default=1000, help="bootstrap resamples (default 1000)"
    )
    p.add_argument(
        "--min-item-ratings",
        type=_positive,
        help="k-core filter on books (Book-Crossing default 5)",
    )
    p.add_argument(
        "--min-user-ratings",
        type=_positive,
        help="k-core filter on readers (Book-Crossing default 5)",
    )
    p.add_argument(
        "--cache-dir", help="embedding cache (default DATA_DIR/cache, i.e. ~/.readnext/cache)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("text-quality study (--text-study)")
    t.add_argument(
        "--text-study",
        action="store_true",
        help="instead of the ranking study: LLM explanations/blurbs for (reader, pick) pairs of "
        "--dataset and the demo, per --text-llms, audited from the dump (eval/text_audit.py)",
    )
    t.add_argument(
        "--text-llms",
        default="local,tiny",
        help="comma-separated LLM specs run on the same pairs and prompt, the default model "
        "first (default local,tiny: Qwen via llama.cpp, SmolLM2 via transformers)",
    )
    t.add_argument(
        "--text-readers", type=_positive, default=20, help="readers from --dataset (default 20)"
    )
    t.add_argument(
        "--text-demo-readers", type=_positive, default=15, help="readers from the demo (default 15)"
    )
    t.add_argument(
        "--text-picks", type=_positive, default=3, help="top picks per reader (default 3)"
    )
    t.add_argument(
        "--text-compare-every",
        type=_positive,
        default=1,
        help="run the 2nd.. LLM on every N-th reader's picks only (default 1: all)",
    )
    t.add_argument(
        "--text-threads", type=int, default=2, help="CPU threads of a local LLM (default 2)"
    )
    t.add_argument(
        "--text-resume",
        action="store_true",
        help="keep rows of backends already in OUT/texts.jsonl and run only the missing ones",
    )
    p.add_argument(
        "--conversation",
        action="store_true",
        help="the simulated-reader conversation study through ChatEngine (eval/conversation.py) "
        "instead of the ranking study; uses --dataset (default: the demo), --users, --seed, "
        "--llm (adds LLM intent parsing beside rules, for the first --llm-users readers), "
        "--config (e.g. the dataset's own tuned-config.toml), --out",
    )
    p.add_argument(
        "--turns", type=_positive, default=5, help="conversation turns per reader (default 5)"
    )
    p.add_argument(
        "--llm-budget",
        type=float,
        default=None,
        help="with --conversation --llm: start no LLM reader after this many seconds (the "
        "LLM side covers the first readers that fit; default: no limit)",
    )
    p.add_argument(
        "--intent-mode",
        choices=("llm", "llm+rules", "both"),
        default="llm",
        help="with --conversation --llm: the LLM parser alone (validated), the rules' parse "
        "with the LLM filling what they left out, or both side by side (default llm)",
    )
    p.add_argument(
        "--no-sasrec-shuffled",
        action="store_true",
        help="skip the SASRec shuffled-order control (one more training)",
    )


def _command(args: argparse.Namespace) -> str:
    """The command line that produced this run: verbatim under the ``readnext`` script, else
    rebuilt."""
    if Path(sys.argv[0]).name == "readnext" and len(sys.argv) > 1 and sys.argv[1] == "eval":
        return shlex.join(["readnext", *sys.argv[1:]])
    parts = ["readnext", "eval"]
    flags = [
        ("dataset", "--dataset"),
        ("data_dir", "--data-dir"),
        ("config", "--config"),
        ("users", "--users"),
        ("seed", "--seed"),
        ("out", "--out"),
        ("llm", "--llm"),
        ("llm_users", "--llm-users"),
        ("llm_explain", "--llm-explain"),
        ("sampled", "--sampled"),
        ("relevant", "--relevant"),
        ("catalog", "--catalog"),
        ("explain_users", "--explain-users"),
        ("val_users", "--val-users"),
        ("n_boot", "--n-boot"),
        ("min_item_ratings", "--min-item-ratings"),
        ("min_user_ratings", "--min-user-ratings"),
    ]
    for attr, flag in flags:
        v = getattr(args, attr, None)
        if v is not None:
            parts += [flag, str(v)]
    if getattr(args, "models", None):
        parts += ["--models", ",".join(args.models)]
    if getattr(args, "k", None):
        parts += ["--k", ",".join(map(str, args.k))]
    for attr, flag in (("quick", "--quick"), ("dump_rankings", "--dump-rankings")):
        if getattr(args, attr, False):
            parts.append(flag)
    return shlex.join(parts)


def config_from_args(args: argparse.Namespace):
    """An :class:`eval.runner.EvalConfig` from parsed arguments.

    Args:
        args: the parsed ``readnext eval`` arguments.

    Returns:
        The config.
    """
    from .runner import EvalConfig

    return EvalConfig(
        dataset=args.dataset,
        data_dir=getattr(args, "data_dir", None),
        config=getattr(args, "config", None),
        models=args.models,
        users=args.users,
        seed=args.seed,
        ks=tuple(args.k),
        out=args.out,
        dump_rankings=args.dump_rankings,
        quick=args.quick,
        llm=args.llm,
        llm_users=args.llm_users,
        llm_explain=args.llm_explain,
        sampled=args.sampled,
        relevant=args.relevant,
        catalog=args.catalog,
        explain_users=args.explain_users,
        val_users=args.val_users,
        n_boot=args.n_boot,
        min_item_ratings=args.min_item_ratings,
        min_user_ratings=args.min_user_ratings,
        cache_dir=args.cache_dir,
        progress=not (args.no_progress or getattr(args, "json", False)),
        sasrec_shuffled=not args.no_sasrec_shuffled,
        verbose=not getattr(args, "json", False),
        command=_command(args),
    )


def _summary(m: dict[str, Any], out: str) -> str:
    ks = m["protocol"]["ks"]
    k1, k2 = min(ks), max(ks)
    lines = [
        f"{m['dataset'].get('label')}: {m['dataset']['evaluated_users']['main']:,} readers (main "
        f"slice), {m['dataset']['evaluated_users']['cold_start']:,} cold-start"
    ]
    lines.append(f"{'model':<12} {'ndcg@' + str(k1):>9} {'recall@' + str(k2):>10}")
    for n, v in m["models"].items():
        lines.append(f"{n:<12} {v[f'ndcg@{k1}']['mean']:>9.4f} {v[f'recall@{k2}']['mean']:>10.4f}")
    bar = m.get("bar", {})
    if bar.get("met") is not None:
        lines.append(
            f"hybrid vs best single-source ({bar['closest_model']}): {bar['min_gain']:+.1%} on "
            f"{bar['metric']} -> bar {'met' if bar['met'] else 'NOT met'}"
        )
    if m.get("sampled"):
        lines.append(f"warning: {m['sampled']['warning']}")
    lines.append(f"wrote {out}/metrics.json, {out}/report.md and plots")
    return "\n".join(lines)


def _run_text_study(args: argparse.Namespace) -> int:
    from .text_audit import report
    from .text_study import run_text_study

    out = args.out if args.out != "eval-results" else "eval-results/text-quality"
    llms = [x.strip() for x in args.text_llms.split(",") if x.strip()]
    if not llms:
        raise ReadnextError("--text-llms: give at least one LLM spec, e.g. smollm2,local")
    metrics = run_text_study(
        args.dataset,
        out,
        llms,
        readers=args.text_readers,
        demo_readers=args.text_demo_readers,
        picks=args.text_picks,
        seed=args.seed,
        data_dir=getattr(args, "data_dir", None),
        resume=args.text_resume,
        compare_every=args.text_compare_every,
        threads=args.text_threads,
        progress=not (args.no_progress or getattr(args, "json", False)),
    )
    if getattr(args, "json", False):
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
    else:
        print(report(metrics))
        print(f"wrote {out}/texts.jsonl, {out}/metrics.json and {out}/table.md")
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """Run the study for parsed ``args``; prints a summary (or metrics.json with ``--json``).

    ``--text-study`` and ``--conversation`` run those studies instead.

    Args:
        args: the parsed ``readnext eval`` arguments.

    Returns:
        The exit status (0).

    Raises:
        ReadnextError: the study failed (one line).
    """
    if getattr(args, "text_study", False):
        return _run_text_study(args)
    if getattr(args, "conversation", False):
        from .conversation import report, run_conversation_eval

        obj = run_conversation_eval(
            dataset=args.dataset or "demo",
            readers=args.users or 100,
            turns=args.turns,
            seed=args.seed,
            parsers=(
                ("rules",)
                if not args.llm
                else ("rules", "llm", "llm+rules")
                if args.intent_mode == "both"
                else ("rules", "llm")
            ),
            llm=args.llm,
            llm_readers=args.llm_users if args.llm else None,
            llm_budget_s=args.llm_budget,
            llm_mode="llm" if args.intent_mode == "both" else args.intent_mode,
            config=args.config,
            out=args.out,
            cache_dir=args.cache_dir,
            n_boot=args.n_boot,
            progress=not (args.no_progress or getattr(args, "json", False)),
        )
        print(json.dumps(obj, indent=2) if getattr(args, "json", False) else report(obj))
        return 0
    from .runner import run

    cfg = config_from_args(args)
    try:
        metrics = run(cfg)
    except (FileNotFoundError, MemoryError) as e:
        raise ReadnextError(f"eval failed: {e}") from e
    if getattr(args, "json", False):
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
    else:
        print(_summary(metrics, cfg.out))
    return 0
