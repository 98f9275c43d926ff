"""How fast is CANN with random grids? Index build time and query time per image of
RandomGridCann (the released CANN-RG, vectorised), its brute-force reference ExactCann, kNN
voting (faiss flat) and VLAD (faiss k-means, 64 words), at databases of ~10k, ~100k and ~1M
real SIFT features (views of the packaged photos' places, jobs.cann.places), with recall@1
(the top image shows the query's place) beside each.

Targets: CANN query / VLAD query at 100k <= 2, and brute-force CANN query / CANN query
>= 10. The database grows by adding views of the same places; the queries stay the same.
All searchers run in this one process on the same cores (--threads), one after another.
A brute-force searcher whose queries would pass --budget seconds answers only the queries
that fit (marked *, recall@1 on those).

    .venv/bin/python benchmarks/cann_speed.py [--quick] [--radius-scale 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
import numpy as np
import torch

from jobs.cann.features import Features, extract
from jobs.cann.places import Places, _tiles, make_places
from jobs.cann.retrieval import CannParams, ExactCann, KnnVote, RandomGridCann, Vlad

TARGET_VS_VLAD = 2.0
TARGET_VS_BRUTE = 10.0
SEARCHERS = ("RandomGridCann", "ExactCann", "KnnVote", "Vlad")
BRUTE = ("ExactCann", "KnnVote")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000, 1_000_000],
        help="database sizes, local features (10k 100k 1M)",
    )
    p.add_argument("--quick", action="store_true", help="the 10k database only")
    p.add_argument("--size", type=int, default=192, help="view side, px (192: 58 places)")
    p.add_argument("--features", type=int, default=500, help="SIFT features per view, at most")
    p.add_argument("--query-views", type=int, default=2, help="query views per place (2)")
    p.add_argument("--difficulty", default="easy", choices=["easy", "hard"])
    p.add_argument(
        "--radius-scale",
        type=float,
        default=10.0,
        help="RandomGridCann's radius_scale (10: the grids reach SIFT's true-match\n"
        "distances, ~30-120; see jobs/cann/retrieval.py)",
    )
    p.add_argument(
        "--exact-scale",
        type=float,
        default=1.0,
        help="ExactCann's radius_scale (1: radii 28-117 cover those distances)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds of queries per brute-force searcher and size (120)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and faiss threads")
    return p.parse_args(argv)  # fmt: skip


@dataclass
class Row:
    build_s: float
    query_ms: float  # per query image
    recall: float
    answered: int  # queries answered (fewer than all: over budget)


def views_per_place(target: int, places: int, per_view: float) -> int:
    return max(1, round(target / (places * per_view)))


def database(places: Places, args: argparse.Namespace, views: int) -> tuple[list, np.ndarray]:
    """Features and place of `views` database views per place (a fresh draw per size)."""
    grown = make_places(
        places=len(places.names), db_views=views, query_views=1, size=args.size,
        aliasing=0.0, difficulty=args.difficulty, tile_seed=0, view_seed=views,
    )  # fmt: skip
    return extract(grown.database.images, "sift", args.features), grown.database.place


def measure(
    build: Callable[[], object], queries: list[Features], truth: np.ndarray, db_place: np.ndarray,
    budget: float | None,
) -> Row:  # fmt: skip
    searcher = build()
    answered, started, scores = 0, time.perf_counter(), []
    step = 4 if budget else len(queries)  # brute force: a few queries at a time, to stop early
    while answered < len(queries):
        scores.append(searcher.scores_many(queries[answered : answered + step]))
        answered += len(scores[-1])
        if budget and time.perf_counter() - started > budget:
            break
    elapsed = time.perf_counter() - started
    top = db_place[np.concatenate(scores).argmax(1)]
    recall = float(np.mean(top == truth[:answered]))
    return Row(searcher.build_seconds, 1e3 * elapsed / answered, recall, answered)


def run_size(target: int, base: Places, queries: list, args: argparse.Namespace) -> dict:
    per_view = np.mean([len(q) for q in queries])
    db, db_place = database(base, args, views_per_place(target, len(base.names), per_view))
    n = sum(len(f) for f in db)
    print(f"\n{n:,} database features ({len(db)} views of {len(base.names)} places), "
          f"{len(queries)} queries of {per_view:.0f} features", flush=True)  # fmt: skip
    builders = {
        "RandomGridCann": lambda: RandomGridCann.build(db, CannParams(radius_scale=args.radius_scale)),
        "ExactCann": lambda: ExactCann.build(db, CannParams(radius_scale=args.exact_scale)),
        "KnnVote": lambda: KnnVote.build(db),
        "Vlad": lambda: Vlad.build(db),
    }  # fmt: skip
    rows = {}
    for name in SEARCHERS:
        budget = args.budget if name in BRUTE else None
        rows[name] = row = measure(builders[name], queries, base.val.place, db_place, budget)
        mark = "" if row.answered == len(queries) else f"*  ({row.answered} queries: budget)"
        print(f"  {name:>15} build {row.build_s:8.2f} s   query {row.query_ms:9.2f} ms/image   "
              f"R@1 {row.recall:.3f}{mark}", flush=True)  # fmt: skip
    return {"features": n, "rows": rows}


def report(results: list[dict]) -> None:
    print("\ngrowth with the database (query ms/image; build s), and ratios at each size:")
    head = f"{'features':>10} | " + " | ".join(f"{name:>24}" for name in SEARCHERS)
    print(head + " | CANN/VLAD query | brute/CANN query")
    for res in results:
        rows = res["rows"]
        cells = [f"{rows[n].query_ms:>10.2f} ms {rows[n].build_s:>8.2f} s" for n in SEARCHERS]
        rg = rows["RandomGridCann"].query_ms
        print(f"{res['features']:>10,} | " + " | ".join(cells)
              + f" | {rg / rows['Vlad'].query_ms:>15.1f} | {rows['ExactCann'].query_ms / rg:>16.1f}")  # fmt: skip
    if len(results) > 1:
        first, last = results[0], results[-1]
        grow = last["features"] / first["features"]
        print(f"x{grow:.0f} features -> query time x: " + ", ".join(
            f"{n} {last['rows'][n].query_ms / first['rows'][n].query_ms:.1f}" for n in SEARCHERS))  # fmt: skip
    near = min(results, key=lambda r: abs(np.log(r["features"] / 100_000)))
    rows, rg = near["rows"], near["rows"]["RandomGridCann"].query_ms
    vs_vlad, vs_brute = rg / rows["Vlad"].query_ms, rows["ExactCann"].query_ms / rg
    print(f"at {near['features']:,} features: CANN / VLAD query = {vs_vlad:.1f} (target <= "
          f"{TARGET_VS_VLAD:g}: {'met' if vs_vlad <= TARGET_VS_VLAD else 'MISSED'}); brute-force "
          f"CANN / CANN query = {vs_brute:.1f} (target >= {TARGET_VS_BRUTE:g}: "
          f"{'met' if vs_brute >= TARGET_VS_BRUTE else 'MISSED'})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = args.sizes[:1] if args.quick else args.sizes
    base = all_places(args)
    queries = extract(base.val.images, "sift", args.features)
    print(f"CPU, {args.threads} thread(s); SIFT on {args.size} px views, {args.difficulty} "
          f"queries; RandomGridCann radius_scale {args.radius_scale:g}, ExactCann "
          f"{args.exact_scale:g}")  # fmt: skip
    results = [run_size(target, base, queries, args) for target in sizes]
    report(results)
    return 0


def all_places(args: argparse.Namespace) -> Places:
    """Every place the photos give at this view size (places' usable tiles), with the
    query views."""
    return make_places(
        places=len(_tiles(args.size)), db_views=1, query_views=args.query_views,
        size=args.size, aliasing=0.0, difficulty=args.difficulty, tile_seed=0, view_seed=0,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
