"""Generate the synthetic reader population for the readnext demo catalog.

Reads ``books.csv`` next to this file and writes ``ratings.csv`` (user_id, book_id, rating,
timestamp) and ``to_read.csv`` (user_id, book_id). Everything is drawn from one seeded
``numpy.random.default_rng``, so the same seed and user count give byte-identical files.

The model, in short:

* every book gets a latent quality and a long-tailed popularity (log-normal, boosted for
  household-name titles; later series volumes inherit the first volume's popularity);
* every reader gets an initial taste (tags and authors of a few "seed" books they love) and a
  second taste it drifts towards over their reading life, so recent history is more telling;
* a reader picks the next book with probability ~ popularity^beta * exp(gamma * affinity), reads
  series volumes in order most of the time and likes to continue a series they enjoyed;
* the rating is affinity + author match + quality + reader bias + noise, cut into 1..5 at
  global quantiles chosen for a realistic distribution (mean about 3.8).

Usage: ``python data/demo/generate_readers.py [--seed N] [--users N] [--out DIR]``
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_SEED = 2026
DEFAULT_USERS = 600
MIN_RATINGS, MAX_RATINGS = 20, 150
T_START = int(datetime(2015, 1, 1, tzinfo=timezone.utc).timestamp())
T_END = int(datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp())
# Share of ratings at 1..5; mean 3.84, close to Goodreads-style data.
RATING_SHARES = np.array([0.03, 0.08, 0.22, 0.36, 0.31])
# Raw score above which a reader "enjoyed" a volume and is keen on the next one; with the
# current weights it sits near the 4-star cut (the 33rd percentile of raw scores).
ENJOYED_SCORE = 1.0
# Length tags describe a book, not a taste; they may be a mild preference but never a seed.
LENGTH_TAGS = {"short", "long"}
# Popularity hints so the demo's "popular" lists look plausible: titles (without the series
# suffix) that are household names get a large boost, well-known ones a smaller one. Titles
# missing from the catalog are ignored, so editing books.csv never breaks the generator.
FAMOUS_TITLES = frozenset({
    "Harry Potter and the Sorcerer's Stone", "The Hunger Games", "To Kill a Mockingbird", "1984",
    "Pride and Prejudice", "The Great Gatsby", "Twilight", "The Fellowship of the Ring", "The Hobbit",
    "The Catcher in the Rye", "Animal Farm", "The Fault in Our Stars", "The Da Vinci Code",
    "The Girl with the Dragon Tattoo", "Gone Girl", "A Game of Thrones", "Divergent", "The Book Thief",
    "The Kite Runner", "Lord of the Flies", "The Alchemist", "Little Women", "Jane Eyre",
    "Sapiens: A Brief History of Humankind", "The Lion, the Witch and the Wardrobe", "Dune",
    "The Martian", "Ender's Game", "The Help", "Fahrenheit 451", "Brave New World", "Of Mice and Men",
    "Charlotte's Web", "The Giver", "Where the Crawdads Sing", "Educated", "Atomic Habits",
})
WELL_KNOWN_TITLES = frozenset({
    "Wuthering Heights", "Frankenstein", "Dracula", "Crime and Punishment", "The Name of the Wind",
    "The Final Empire", "Project Hail Mary", "Circe", "The Song of Achilles", "The Night Circus",
    "The Road", "The Handmaid's Tale", "Life of Pi", "Memoirs of a Geisha",
    "All the Light We Cannot See", "The Nightingale", "Outlander", "Me Before You", "It Ends with Us",
    "The Seven Husbands of Evelyn Hugo", "Normal People", "The Silent Patient", "The Girl on the Train",
    "Big Little Lies", "The Shining", "It", "The Stand", "Thinking, Fast and Slow", "Becoming",
    "Born a Crime", "The Glass Castle", "Unbroken", "Into the Wild", "A Man Called Ove",
    "Eleanor Oliphant Is Completely Fine", "The Midnight Library", "The Perks of Being a Wallflower",
    "Looking for Alaska", "Wonder", "Holes", "Matilda", "The Hitchhiker's Guide to the Galaxy",
    "Good Omens", "American Gods", "The Lightning Thief", "The Golden Compass", "Six of Crows",
    "A Court of Thorns and Roses", "Red Rising", "The Three-Body Problem", "Leviathan Wakes",
    "The Eye of the World", "The Way of Kings", "Foundation", "Slaughterhouse-Five", "Catch-22",
    "Anne of Green Gables", "Murder on the Orient Express", "And Then There Were None", "Rebecca",
    "The Secret History", "The Goldfinch", "A Little Life", "One Hundred Years of Solitude",
    "Les Misérables", "The Count of Monte Cristo", "Anna Karenina", "Gone with the Wind",
    "The Diary of a Young Girl", "Night", "The Little Prince", "Persepolis: The Story of a Childhood",
    "Watchmen", "The Notebook", "Angels & Demons", "The Silence of the Lambs", "Jurassic Park",
    "Jonathan Strange & Mr Norrell", "Never Let Me Go", "The Time Traveler's Wife", "Station Eleven",
})
# Readers of some genres are more numerous than others (log-popularity offsets).
GENRE_POPULARITY = {"young-adult": 0.4, "fantasy": 0.3, "romance": 0.3, "thriller": 0.3, "mystery": 0.2,
                    "poetry": -0.6, "drama": -0.4, "philosophy": -0.5, "essays": -0.4,
                    "economics": -0.3, "short-stories": -0.3}
REQUIRED_COLUMNS = ["book_id", "title", "authors", "year", "tags", "description", "isbn", "series", "series_index"]


@dataclass(frozen=True)
class Catalog:
    """The catalog arrays the generator works on (row i is book ``book_ids[i]``)."""

    book_ids: list[str]
    tag_names: list[str]
    tag_matrix: np.ndarray  # (n_books, n_tags) 0/1
    author_names: list[str]
    author_matrix: np.ndarray  # (n_books, n_authors) 0/1
    predecessor: np.ndarray  # index of the previous volume in the same series, or -1
    successor: np.ndarray  # index of the next volume in the same series, or -1
    fame: np.ndarray  # 2 = household name, 1 = well known, 0 = other (from the title lists above)


def load_catalog(path: Path) -> Catalog:
    """Read ``books.csv`` and build the tag/author matrices and series links.

    Raises ``ValueError`` naming the file and line for a malformed row.
    """
    if not path.is_file():
        raise ValueError(f"{path}: books file not found; run from a readnext checkout or pass --out")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}:1: missing columns {missing}; expected {','.join(REQUIRED_COLUMNS)}")
    for i, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        if not row.book_id or not row.tags:
            raise ValueError(f"{path}:{i}: book_id and tags must be non-empty; fix the row")
        if row.series and not _is_number(row.series_index):
            raise ValueError(f"{path}:{i}: series {row.series!r} needs a numeric series_index")
    if df["book_id"].duplicated().any():
        dup = df.loc[df["book_id"].duplicated(), "book_id"].iloc[0]
        raise ValueError(f"{path}: duplicate book_id {dup!r}; ids must be unique")

    tags = [t.split("|") for t in df["tags"]]
    authors = [[a.strip() for a in s.split(",") if a.strip()] for s in df["authors"]]
    tag_names = sorted({t for ts in tags for t in ts})
    author_names = sorted({a for aus in authors for a in aus})
    tag_pos = {t: j for j, t in enumerate(tag_names)}
    author_pos = {a: j for j, a in enumerate(author_names)}
    n = len(df)
    tag_matrix = np.zeros((n, len(tag_names)))
    author_matrix = np.zeros((n, len(author_names)))
    for i, (ts, aus) in enumerate(zip(tags, authors)):
        tag_matrix[i, [tag_pos[t] for t in ts]] = 1.0
        author_matrix[i, [author_pos[a] for a in aus]] = 1.0

    predecessor = np.full(n, -1)
    successor = np.full(n, -1)
    for _, group in df[df["series"] != ""].groupby("series", sort=True):
        order = sorted(group.index, key=lambda i: float(df.at[i, "series_index"]))
        for prev, nxt in zip(order, order[1:]):
            predecessor[nxt] = prev
            successor[prev] = nxt
    bare_titles = df["title"].str.replace(r"\s*\([^()]*#[\d.]+\)$", "", regex=True)
    fame = np.where(bare_titles.isin(FAMOUS_TITLES), 2, np.where(bare_titles.isin(WELL_KNOWN_TITLES), 1, 0))
    return Catalog(list(df["book_id"]), tag_names, tag_matrix, author_names, author_matrix,
                   predecessor, successor, fame)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _taste(rng: np.random.Generator, cat: Catalog, seeds: np.ndarray) -> np.ndarray:
    """A tag-weight vector (sums to 1) built from the tags of a few seed books."""
    counts = cat.tag_matrix[seeds].sum(axis=0)
    for t in LENGTH_TAGS:
        counts[cat.tag_names.index(t)] *= 0.3
    weights = counts * rng.gamma(2.0, 1.0, size=counts.size)
    return weights / weights.sum()


def _strictly_increasing_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` increasing unix times inside [T_START, T_END] spread over one reader's active span."""
    span = int(rng.uniform(0.08, 1.0) * (T_END - T_START - MAX_RATINGS))
    start = int(rng.integers(T_START, T_END - MAX_RATINGS - span))
    gaps = rng.exponential(1.0, size=n)
    times = (start + np.cumsum(gaps) / gaps.sum() * span).astype(np.int64)
    # Several books can fall on the same second after rounding; push ties forward so the
    # sequence is strictly increasing (the MAX_RATINGS margin above keeps it before T_END).
    steps = np.arange(n)
    return np.maximum.accumulate(times - steps) + steps


def generate(cat: Catalog, n_users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (ratings, to_read) DataFrames for ``n_users`` synthetic readers."""
    if n_users < 1:
        raise ValueError(f"--users must be at least 1, got {n_users}")
    rng = np.random.default_rng(seed)
    n_books = len(cat.book_ids)
    if n_books < MAX_RATINGS + 20:
        raise ValueError(f"catalog has {n_books} books; need at least {MAX_RATINGS + 20}")

    quality = rng.normal(0.0, 0.5, size=n_books) + 0.15 * cat.fame
    genre_offset = cat.tag_matrix @ np.array([GENRE_POPULARITY.get(t, 0.0) for t in cat.tag_names])
    log_pop = (0.6 * quality + rng.normal(0.0, 0.7, size=n_books) + 1.5 * cat.fame
               + np.clip(genre_offset, -0.8, 0.6))
    # A later volume is about as findable as the series' first one; readers reach it mostly
    # through the series-continuation boost below.
    first = np.arange(n_books)
    for _ in range(n_books):  # follow predecessor links to the series start
        nxt = np.where(cat.predecessor[first] >= 0, cat.predecessor[first], first)
        if np.array_equal(nxt, first):
            break
        first = nxt
    log_pop = np.where(first != np.arange(n_books), log_pop[first] - 0.5, log_pop)
    popularity = np.exp(log_pop)
    popularity /= popularity.sum()
    tag_norm = cat.tag_matrix / np.sqrt(cat.tag_matrix.sum(axis=1, keepdims=True))

    rating_rows: list[tuple[str, str, float, int]] = []
    to_read_rows: list[tuple[str, str]] = []
    for u in range(n_users):
        user_id = f"u{u + 1:04d}"
        n_ratings = int(min(MAX_RATINGS, MIN_RATINGS + rng.gamma(1.3, 28.0)))
        seeds_a = rng.choice(n_books, size=3, replace=False, p=popularity)
        # The drift target keeps one old favourite and adds two new seeds.
        seeds_b = np.concatenate([seeds_a[:1], rng.choice(n_books, size=2, replace=False, p=popularity)])
        taste_a, taste_b = _taste(rng, cat, seeds_a), _taste(rng, cat, seeds_b)
        fav_authors = np.flatnonzero(cat.author_matrix[seeds_a].sum(axis=0))
        if rng.random() < 0.5:  # a late-discovered favourite author
            fav_authors = np.union1d(fav_authors, np.flatnonzero(cat.author_matrix[seeds_b[1]]))
        author_pref = np.zeros(len(cat.author_names))
        author_pref[fav_authors] = 1.0
        author_match = np.minimum(cat.author_matrix @ author_pref, 1.0)
        drift = rng.uniform(0.2, 1.0)  # how far the taste moves by the end of the span
        beta = rng.uniform(0.7, 1.1)  # how much this reader follows popularity
        gamma = rng.uniform(6.0, 10.0)  # how much this reader follows taste
        bias = rng.normal(0.0, 0.35)
        strict_order = rng.random() < 0.9

        times = _strictly_increasing_times(rng, n_ratings)
        read = np.zeros(n_books, dtype=bool)
        liked_next = np.zeros(n_books)  # boost for the next volume of a series the reader enjoyed
        for k in range(n_ratings):
            alpha = drift * k / max(1, n_ratings - 1)
            taste = (1 - alpha) * taste_a + alpha * taste_b
            affinity = tag_norm @ taste
            affinity = affinity / affinity.max()
            logits = beta * np.log(popularity) + gamma * affinity + 1.5 * author_match + liked_next
            blocked = read.copy()
            if strict_order:
                has_prev = cat.predecessor >= 0
                blocked |= has_prev & ~read[np.maximum(cat.predecessor, 0)]
            logits[blocked] = -np.inf
            p = np.exp(logits - logits[~blocked].max())
            b = int(rng.choice(n_books, p=p / p.sum()))
            read[b] = True
            score = (2.2 * affinity[b] + 0.6 * author_match[b] + quality[b] + bias
                     + rng.normal(0.0, 0.55))
            rating_rows.append((user_id, cat.book_ids[b], score, int(times[k])))
            if cat.successor[b] >= 0:
                # ENJOYED_SCORE is about where the 4-star cut lands (checked against the quantiles).
                liked_next[cat.successor[b]] = 3.0 if score > ENJOYED_SCORE else 0.5

        # To-read: unread books that fit the reader's current taste, a few per reader.
        affinity = tag_norm @ ((1 - drift) * taste_a + drift * taste_b)
        weights = np.exp(0.5 * np.log(popularity) + 10.0 * affinity / affinity.max()
                         + 1.5 * author_match)
        weights[read] = 0.0
        n_marks = int(rng.integers(2, 9))
        for b in rng.choice(n_books, size=n_marks, replace=False, p=weights / weights.sum()):
            to_read_rows.append((user_id, cat.book_ids[int(b)]))

    ratings = pd.DataFrame(rating_rows, columns=["user_id", "book_id", "score", "timestamp"])
    # Global quantile cut so the whole population has the target rating shares.
    cuts = np.quantile(ratings["score"], np.cumsum(RATING_SHARES)[:-1])
    ratings["rating"] = np.searchsorted(cuts, ratings["score"].to_numpy(), side="right") + 1
    ratings = (ratings[["user_id", "book_id", "rating", "timestamp"]]
               .sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True))
    to_read = pd.DataFrame(to_read_rows, columns=["user_id", "book_id"])
    return ratings, to_read


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write with fixed formatting so repeated runs are byte-identical."""
    df.to_csv(path, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"RNG seed (default {DEFAULT_SEED})")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"number of readers (default {DEFAULT_USERS})")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: next to this script)")
    parser.add_argument("--books", type=Path, default=HERE / "books.csv", help="catalog to read")
    args = parser.parse_args(argv)
    cat = load_catalog(args.books)
    ratings, to_read = generate(cat, n_users=args.users, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(ratings, args.out / "ratings.csv")
    write_csv(to_read, args.out / "to_read.csv")
    print(f"wrote {len(ratings)} ratings from {ratings['user_id'].nunique()} readers and "
          f"{len(to_read)} to-read marks to {args.out}")


if __name__ == "__main__":
    main()
