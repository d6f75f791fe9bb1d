"""A seeded synthetic catalog and reader population, for growth curves at 10k-1M books.

Writes the documented ``generic`` layout that ``readnext ingest --dataset DIR`` reads
(``retrieval.data.load_generic``): ``books.csv`` (``book_id,title,authors,year,tags,
description,series,series_index``) and ``ratings.csv`` (``user_id,book_id,rating,timestamp``,
rows in chronological order), plus ``synthetic.json`` with the parameters and measured shape.

What makes it look like real reading data (each one a stage that must scale):

* **popularity skew**: item weights follow a Zipf law (``1 / rank ** zipf_a``) over a random
  order of the books, so a few hundred books take a large share of the ratings and most of the
  long tail has a handful or none (goodbooks and Book-Crossing look like this);
* **reader activity** is log-normal (median ~ a third of the mean, a long tail of heavy
  readers), capped so that nobody rates a large fraction of a small catalog;
* **genres**: each author writes in one main genre; each reader has one or two favourite genres
  and picks ``genre_affinity`` of their books there (popularity-weighted), the rest anywhere;
* **authors** write several books (geometric book counts, mean ~ ``books_per_author``);
* **series**: some authors' books form a series (name + position); a reader who reads ``c``
  books of a series reads volumes ``1..c`` in that order, so volume 1 is the most read;
* **ratings** = book quality + reader bias + genre match + noise, rounded to 1-5 stars;
* **time**: each reader starts at a random date and reads with exponential gaps; the file is
  sorted by timestamp (a chronological row order, as the sequence and SASRec sources expect).

Everything is drawn from one ``numpy.random.default_rng(seed)``: the same arguments give the
same files byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def _words(text: str) -> list[str]:
    return text.split()


GENRES = (
    "fantasy",
    "science-fiction",
    "mystery",
    "thriller",
    "romance",
    "historical-fiction",
    "literary-fiction",
    "horror",
    "young-adult",
    "middle-grade",
    "biography",
    "history",
    "science",
    "self-help",
    "poetry",
    "graphic-novels",
    "humor",
    "travel",
    "philosophy",
    "crime",
    "dystopian",
    "classics",
    "cookbooks",
    "short-stories",
)
MOODS = (
    "dark",
    "funny",
    "heartwarming",
    "slow-burn",
    "fast-paced",
    "atmospheric",
    "thought-provoking",
    "cozy",
    "epic",
    "quiet",
    "twisty",
    "lyrical",
)
THEMES = (
    "family",
    "friendship",
    "war",
    "magic",
    "space",
    "grief",
    "revenge",
    "coming-of-age",
    "politics",
    "love",
    "survival",
    "identity",
    "music",
    "the-sea",
    "cities",
    "artificial-intelligence",
    "dragons",
    "detectives",
    "time-travel",
    "islands",
    "exile",
    "inheritance",
    "empire",
    "small-towns",
)
_WORDS = _words(
    "shadow crown river glass winter iron silent lost hidden last night garden stone star "
    "salt ember hollow northern storm paper golden broken distant wild bright letter house "
    "mountain ocean city forest song secret road empire daughter king tower moon fire ash "
    "orchard harbor lantern compass mirror thread island summer bridge clock archive raven"
)
_FIRST = _words(
    "Ada Ben Clara Dev Elena Farid Grace Hugo Iris Jonas Kira Leo Maya Nils Omar Priya Quinn "
    "Rosa Sami Tara Uma Viktor Wen Xena Yusuf Zoe Ines Malik Noor Oskar"
)
_LAST = _words(
    "Abbott Baker Castillo Dubois Eriksen Fischer Garcia Haddad Ito Jensen Kowalski Laurent "
    "Moreau Nakamura Okafor Petrov Quiroga Rossi Santos Tanaka Ueda Varga Weber Xu Yilmaz "
    "Zeller Novak Bianchi Lindqvist Mbeki"
)


@dataclass
class SyntheticSpec:
    """What to generate. ``users=0`` picks ``ratings / mean_activity`` readers.

    Attributes:
        books: catalog size.
        ratings: target number of ratings (the result is within a fraction of a percent).
        users: number of readers (0 = ``ratings // mean_activity``).
        seed: the only source of randomness.
        zipf_a: popularity exponent (about 1 for book data).
        activity_sigma: sigma of the log-normal ratings-per-reader.
        mean_activity: mean ratings per reader when ``users`` is 0.
        genre_affinity: share of a reader's books picked in their favourite genres.
        books_per_author: mean books per author.
        series_share: probability that an author with >= 2 books writes them as a series.
        max_series_len: longest series.
    """

    books: int = 10_000
    ratings: int = 100_000
    users: int = 0
    seed: int = 7
    zipf_a: float = 1.0
    activity_sigma: float = 1.0
    mean_activity: float = 20.0
    genre_affinity: float = 0.7
    books_per_author: float = 3.0
    series_share: float = 0.5
    max_series_len: int = 7

    def validate(self) -> None:
        """Refuse sizes the generator cannot honour, with a one-line reason."""
        if self.books < 10:
            raise ValueError(f"synthetic: books must be >= 10, got {self.books}")
        if self.ratings < 1:
            raise ValueError(f"synthetic: ratings must be >= 1, got {self.ratings}")
        if self.users < 0 or self.mean_activity < 1:
            raise ValueError("synthetic: users must be >= 0 and mean_activity >= 1")
        if not 0 <= self.genre_affinity <= 1 or not 0 <= self.series_share <= 1:
            raise ValueError("synthetic: genre_affinity and series_share must be in 0..1")
        if self.zipf_a < 0 or self.activity_sigma < 0 or self.books_per_author < 1:
            raise ValueError(
                "synthetic: need zipf_a >= 0, activity_sigma >= 0, books_per_author >= 1"
            )
        if self.max_series_len < 2:
            raise ValueError("synthetic: max_series_len must be >= 2")

    @property
    def n_users(self) -> int:
        """The number of readers this spec asks for."""
        return self.users or max(1, int(self.ratings // self.mean_activity))


@dataclass
class SyntheticCatalog:
    """The generated books, as columns (``book_id`` ``i`` is ``b{i:07d}``).

    Attributes:
        author: author index per book.
        genre: main genre index per book.
        series: series index per book, -1 for standalone books.
        series_pos: 1-based position in its series (0 for standalone books).
        series_first: index of volume 1 of the book's series (the book itself if standalone).
        series_len: length of the book's series (1 for standalone books).
        popularity: sampling weight per book (Zipf over a random order, later volumes lower).
        quality: the book's mean rating before reader effects.
        year: publication year.
    """

    author: np.ndarray
    genre: np.ndarray
    series: np.ndarray
    series_pos: np.ndarray
    series_first: np.ndarray
    series_len: np.ndarray
    popularity: np.ndarray
    quality: np.ndarray
    year: np.ndarray

    @property
    def n(self) -> int:
        """Catalog size."""
        return len(self.author)


def book_ids(idx: np.ndarray) -> pd.Series:
    """Book ids for book indexes: ``b0000042``."""
    return "b" + pd.Series(np.asarray(idx)).astype(str).str.zfill(7)


def user_ids(idx: np.ndarray) -> pd.Series:
    """Reader ids for reader indexes: ``u0000042``."""
    return "u" + pd.Series(np.asarray(idx)).astype(str).str.zfill(7)


def make_catalog(spec: SyntheticSpec, rng: np.random.Generator) -> SyntheticCatalog:
    """Draw authors, genres, series and popularity for ``spec.books`` books.

    Books of one author are contiguous, and a series' volumes are contiguous in order, so
    "volume ``p`` of the series starting at ``f``" is book ``f + p - 1``.
    """
    n = spec.books
    # authors: geometric book counts with mean books_per_author, until the catalog is full
    sizes = rng.geometric(1.0 / spec.books_per_author, size=n)
    cut = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:cut]
    sizes[-1] -= int(sizes.sum()) - n
    sizes = sizes[sizes > 0]
    n_authors = len(sizes)
    author = np.repeat(np.arange(n_authors), sizes)
    # genres are skewed too (fantasy/romance shelves are longer than poetry's)
    g_weight = 1.0 / np.arange(1, len(GENRES) + 1) ** 0.6
    a_genre = rng.choice(len(GENRES), size=n_authors, p=g_weight / g_weight.sum())
    genre = a_genre[author].copy()
    drift = rng.random(n) < 0.1  # an author's odd book out
    genre[drift] = rng.integers(0, len(GENRES), int(drift.sum()))
    # series: an author with >= 2 books writes the first min(size, L) as one series
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    lens = np.minimum(sizes, rng.integers(2, spec.max_series_len + 1, size=n_authors))
    has = (sizes >= 2) & (rng.random(n_authors) < spec.series_share)
    series = np.full(n, -1, np.int64)
    series_pos = np.zeros(n, np.int64)
    series_first = np.arange(n, dtype=np.int64)
    series_len = np.ones(n, np.int64)
    for s, (a0, ln) in enumerate(zip(starts[has], lens[has])):
        sl = slice(a0, a0 + ln)
        series[sl] = s
        series_pos[sl] = np.arange(1, ln + 1)
        series_first[sl] = a0
        series_len[sl] = ln
    # popularity: Zipf over a random order of the books; later volumes are read less
    rank = np.empty(n, np.int64)
    rank[rng.permutation(n)] = np.arange(1, n + 1)
    popularity = 1.0 / rank.astype(np.float64) ** spec.zipf_a
    popularity = np.where(
        series >= 0, popularity * 0.8 ** np.maximum(series_pos - 1, 0), popularity
    )
    first_pop = popularity[series_first]
    popularity = np.where(
        series >= 0, np.maximum(popularity, first_pop * 0.5**series_pos), popularity
    )
    quality = np.clip(rng.normal(3.9, 0.35, n), 2.0, 4.8)
    a_year = rng.integers(1950, 2021, size=n_authors)
    year = a_year[author] + np.where(series >= 0, series_pos, rng.integers(0, 6, n))
    return SyntheticCatalog(
        author=author,
        genre=genre,
        series=series,
        series_pos=series_pos,
        series_first=series_first,
        series_len=series_len,
        popularity=popularity,
        quality=quality,
        year=np.minimum(year, 2025),
    )


def _sample_books(
    cat: SyntheticCatalog, user: np.ndarray, fav: np.ndarray, spec: SyntheticSpec, rng
) -> np.ndarray:
    """One popularity-weighted book per event: in a favourite genre or anywhere."""
    n_events = len(user)
    order = np.argsort(cat.genre, kind="stable")  # books grouped by genre
    cum = np.cumsum(cat.popularity[order])
    total = cum[-1]
    bounds = np.searchsorted(cat.genre[order], np.arange(len(GENRES) + 1))
    lo = np.concatenate([[0.0], cum])[bounds]  # cumulative weight before each genre's block
    in_genre = rng.random(n_events) < spec.genre_affinity
    g = fav[user, rng.integers(0, fav.shape[1], n_events)]
    start = np.where(in_genre, lo[g], 0.0)
    stop = np.where(in_genre, lo[g + 1], total)
    empty = stop <= start  # a favourite genre no author writes in: anywhere instead
    start, stop = np.where(empty, 0.0, start), np.where(empty, total, stop)
    u = start + rng.random(n_events) * (stop - start)
    pos = np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)
    return order[pos]


def make_ratings(
    spec: SyntheticSpec, cat: SyntheticCatalog, rng: np.random.Generator, progress: bool = False
) -> pd.DataFrame:
    """Draw the reader population's ratings: columns user, book (indexes), rating, timestamp.

    Rows are sorted by timestamp. Each reader rates a book at most once; series books are
    rewritten so that a reader's ``c`` books of a series are its volumes ``1..c`` in time order.
    """
    from tqdm.auto import tqdm

    n_users = spec.n_users
    # log-normal activity with the requested mean: E = exp(mu + sigma^2 / 2)
    sigma = spec.activity_sigma
    mean = spec.ratings / n_users
    mu = math.log(max(mean, 1.0)) - sigma**2 / 2
    act = np.maximum(1, np.round(rng.lognormal(mu, sigma, n_users))).astype(np.int64)
    act = np.minimum(act, max(1, min(2000, spec.books // 3)))
    act = np.maximum(1, np.round(act * spec.ratings / act.sum())).astype(np.int64)
    act = np.minimum(act, max(1, spec.books // 2))
    fav = rng.integers(0, len(GENRES), size=(n_users, 2))
    fav[:, 1] = np.where(rng.random(n_users) < 0.4, fav[:, 0], fav[:, 1])  # 40%: one genre
    bias = rng.normal(0.0, 0.4, n_users)
    # oversample, drop repeats, keep each reader's first `act` distinct books
    chunks, want = [], int(act.sum())
    bar = tqdm(total=want, desc="synth ratings", unit="rating", disable=not progress)
    users_all = np.repeat(np.arange(n_users), act)
    step = 2_000_000
    for s in range(0, len(users_all), step):
        u = users_all[s : s + step]
        reps = np.repeat(u, 2)  # two draws per slot: repeats of popular books are common
        b = _sample_books(cat, reps, fav, spec, rng)
        df = pd.DataFrame({"user": reps, "book": b}).drop_duplicates(["user", "book"])
        df = df[df.groupby("user").cumcount().to_numpy() < act[df["user"].to_numpy()]]
        chunks.append(df)
        bar.update(len(u))
    bar.close()
    df = pd.concat(chunks, ignore_index=True)
    if len(chunks) > 1:  # a reader split across chunks: repeats across chunks
        df = df.drop_duplicates(["user", "book"])
        df = df[df.groupby("user").cumcount().to_numpy() < act[df["user"].to_numpy()]]
    user = df["user"].to_numpy()
    book = df["book"].to_numpy()
    # time: a start date per reader, exponential gaps (mean 12 days) between their events
    t0 = 1_262_304_000  # 2010-01-01
    span = 13 * 365 * 86400
    start = rng.integers(t0, t0 + span, n_users)
    gaps = rng.exponential(12 * 86400, len(df))
    order = np.argsort(user, kind="stable")
    user, book, gaps = user[order], book[order], gaps[order]
    csum = np.cumsum(gaps)
    first = np.searchsorted(user, user, side="left")
    base = csum[first] - gaps[first]
    ts = start[user] + (csum - base)
    # series in order: a reader's c books of a series become volumes 1..c, earliest first
    ser = cat.series[book]
    m = ser >= 0
    if m.any():
        sdf = pd.DataFrame({"user": user[m], "ser": ser[m], "ts": ts[m], "i": np.flatnonzero(m)})
        sdf = sdf.sort_values(["user", "ser", "ts"], kind="stable")
        r = sdf.groupby(["user", "ser"]).cumcount().to_numpy()
        idx = sdf["i"].to_numpy()
        book[idx] = cat.series_first[book[idx]] + r
    g_match = (cat.genre[book] == fav[user, 0]) | (cat.genre[book] == fav[user, 1])
    raw = cat.quality[book] + bias[user] + 0.3 * g_match + rng.normal(0.0, 0.8, len(book))
    rating = np.clip(np.round(raw), 1, 5).astype(np.int64)
    out = pd.DataFrame(
        {"user": user, "book": book, "rating": rating, "timestamp": ts.astype(np.int64)}
    )
    return out.sort_values(["timestamp", "user"], kind="stable").reset_index(drop=True)


def _title(rng: np.random.Generator, n: int) -> list[str]:
    words = np.array([w.capitalize() for w in _WORDS])
    k = rng.integers(2, 4, n)
    picks = rng.integers(0, len(words), size=(n, 3))
    lead = np.array(["The", "A", "", "", "Of"])[rng.integers(0, 5, n)]
    out = []
    for i in range(n):
        w = " ".join(words[picks[i, : k[i]]])
        out.append(f"{lead[i]} {w}".strip() if lead[i] != "Of" else f"{w} of {words[picks[i, 2]]}")
    return out


def author_names(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct author names (mixed-radix over name parts, in a seeded order)."""
    idx = rng.permutation(n)
    first = np.array(_FIRST)[idx % 30]
    initial = np.array(list("ABCDEFGHJKLMNPRSTVW"))[(idx // 30) % 19]
    last = np.array(_LAST)[(idx // 570) % 30]
    names = np.char.add(np.char.add(np.char.add(first, " "), initial), np.char.add(". ", last))
    second = (idx // 17100) % 31  # 0: none, else a double-barrelled surname
    barrel = np.char.add("-", np.array(_LAST)[np.maximum(second - 1, 0)])
    names = np.where(second > 0, np.char.add(names, barrel), names)
    more = idx // (17100 * 31)  # beyond 530k authors: a generation suffix
    return np.where(more > 0, np.char.add(names, np.char.add(" ", more.astype(str))), names)


def books_frame(cat: SyntheticCatalog, rng: np.random.Generator) -> pd.DataFrame:
    """The ``books.csv`` columns of the generic layout for a catalog."""
    n = cat.n
    n_authors = int(cat.author.max()) + 1
    names = author_names(n_authors, rng)
    titles = _title(rng, n)
    n_series = int(cat.series.max()) + 1 if (cat.series >= 0).any() else 0
    s_names = pd.Series(_title(rng, max(n_series, 1)))
    dup = s_names.groupby(s_names).cumcount().to_numpy()  # same words twice: "... Cycle 2"
    s_names = np.where(dup > 0, s_names + " Cycle " + (dup + 1).astype(str), s_names + " Cycle")
    moods = rng.integers(0, len(MOODS), size=(n, 2))
    themes = rng.integers(0, len(THEMES), size=(n, 2))
    g = np.array(GENRES)
    tags, desc, series, sidx = [], [], [], []
    for i in range(n):
        gi = g[cat.genre[i]]
        m1, m2 = MOODS[moods[i, 0]], MOODS[moods[i, 1]]
        t1, t2 = THEMES[themes[i, 0]], THEMES[themes[i, 1]]
        tags.append("|".join(dict.fromkeys((gi, m1, t1, t2))))
        art = "An" if m1[0] in "aeiou" else "A"
        desc.append(
            f"{art} {m1} {gi.replace('-', ' ')} book about {t1.replace('-', ' ')} and "
            f"{t2.replace('-', ' ')}, {m2.replace('-', ' ')} to the last page."
        )
        s = int(cat.series[i])
        if s >= 0:
            series.append(f"The {s_names[s]}")
            sidx.append(str(int(cat.series_pos[i])))
            titles[i] = f"{titles[i]} ({series[-1]}, #{sidx[-1]})"
        else:
            series.append("")
            sidx.append("")
    return pd.DataFrame(
        {
            "book_id": book_ids(np.arange(n)),
            "title": titles,
            "authors": names[cat.author],
            "year": cat.year,
            "tags": tags,
            "description": desc,
            "series": series,
            "series_index": sidx,
        }
    )


def generate(
    spec: SyntheticSpec, out: str | Path, progress: bool = False, chunk_rows: int = 1_000_000
) -> dict:
    """Write ``books.csv``, ``ratings.csv`` and ``synthetic.json`` for ``spec`` into ``out``.

    Args:
        spec: sizes, seed and shape parameters.
        out: the dataset folder (created; existing files there are replaced).
        progress: show tqdm bars.
        chunk_rows: ratings rows written per chunk (bounds the memory of the id strings).

    Returns:
        The summary written to ``synthetic.json``: the spec, counts, and skew figures.
    """
    from tqdm.auto import tqdm

    spec.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    cat = make_catalog(spec, rng)
    ratings = make_ratings(spec, cat, rng, progress=progress)
    books = books_frame(cat, rng)
    books.to_csv(out / "books.csv.tmp", index=False)
    (out / "books.csv.tmp").replace(out / "books.csv")
    tmp = out / "ratings.csv.tmp"
    with open(tmp, "w", newline="") as f:
        f.write("user_id,book_id,rating,timestamp\n")
        rows = range(0, len(ratings), chunk_rows)
        for s in tqdm(rows, desc="write ratings.csv", unit="chunk", disable=not progress):
            part = ratings.iloc[s : s + chunk_rows]
            pd.DataFrame(
                {
                    "user_id": user_ids(part["user"].to_numpy()).to_numpy(),
                    "book_id": book_ids(part["book"].to_numpy()).to_numpy(),
                    "rating": part["rating"].to_numpy(),
                    "timestamp": part["timestamp"].to_numpy(),
                }
            ).to_csv(f, header=False, index=False)
    tmp.replace(out / "ratings.csv")
    summary = {"spec": asdict(spec), **describe(cat, ratings)}
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2))
    return summary


def describe(cat: SyntheticCatalog, ratings: pd.DataFrame) -> dict:
    """Counts and skew of a generated set (also what the tests check)."""
    counts = np.bincount(ratings["book"].to_numpy(), minlength=cat.n)
    per_user = np.bincount(ratings["user"].to_numpy())
    per_user = per_user[per_user > 0]
    top = np.sort(counts)[::-1]
    n_top = max(1, cat.n // 100)
    return {
        "books": int(cat.n),
        "authors": int(cat.author.max()) + 1,
        "series": int(cat.series.max()) + 1 if (cat.series >= 0).any() else 0,
        "books_in_series": int((cat.series >= 0).sum()),
        "ratings": int(len(ratings)),
        "users": int(len(per_user)),
        "rated_books": int((counts > 0).sum()),
        "top1pct_share": round(float(top[:n_top].sum() / max(1, top.sum())), 4),
        "ratings_per_user": {
            "median": float(np.median(per_user)),
            "mean": round(float(per_user.mean()), 2),
            "max": int(per_user.max()),
        },
        "mean_rating": round(float(ratings["rating"].mean()), 3),
    }


def synthetic_vectors(
    books: list, dim: int = 384, seed: int = 0, progress: bool = False, chunk: int = 100_000
) -> np.ndarray:
    """Seeded stand-in book vectors for growth runs where embedding the catalog takes hours.

    Not the embedder's vectors: each tag and each author gets a seeded random direction, and a
    book's vector is the unit-length sum of its tags' directions, its author's (weight 1) and
    its own noise (weight 0.5). So books sharing tags or an author are close, as with the real
    embedder, and the index, Chroma and every source see realistic shapes and sizes; but a text
    query matches nothing meaningful. ``ingest(..., synthetic_vectors=True)`` records that it
    used these (``meta.json`` ``vectors``), and nothing picks them by default.

    Args:
        books: the catalog (:class:`retrieval.types.Book`).
        dim: vector width (the embedder's, so queries still have the right shape).
        seed: the seed; the same books and seed give the same vectors.
        progress: show a tqdm bar.
        chunk: books per block (bounds the scratch memory).

    Returns:
        ``(len(books), dim)`` float32 unit rows.
    """
    import scipy.sparse as sp
    from tqdm.auto import tqdm

    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for i, b in enumerate(books):
        keys = [f"t:{t}" for t in b.tags] + [f"a:{a}" for a in b.authors]
        for k in keys:
            rows.append(i)
            cols.append(vocab.setdefault(k, len(vocab)))
            vals.append(1.0)
    m = sp.csr_matrix(
        (vals, (rows, cols)), shape=(len(books), max(1, len(vocab))), dtype=np.float32
    )
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((max(1, len(vocab)), dim)).astype(np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    out = np.empty((len(books), dim), np.float32)
    noise = 0.5 / np.sqrt(dim)  # a noise vector of length ~0.5 against unit directions
    for s in tqdm(range(0, len(books), chunk), desc="synthetic vectors", disable=not progress):
        e = min(s + chunk, len(books))
        v = np.asarray(m[s:e] @ basis) + noise * rng.standard_normal((e - s, dim)).astype(
            np.float32
        )
        out[s:e] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return out
