"""Instant personalisation: Recall@20 of fold-in against the popular items for users the served
model has never seen, after 1, 3 and 10 of their events.

    ccd bench foldin [--datasets movielens,yelp] [--learners ccd,als] [--holdout 0.1]

Per dataset, a random tenth of the users with at least 13 interactions is held out; a learner
(as the trainer builds it, ``CCD_LEARNER``) trains on every other user's interactions, and its
student is loaded into the server's ``ServingModel``. Each held-out user then reveals n of their
interactions (random order): the server ranks the catalogue for them without their revealed items,
by fold-in (``service.fold_in``, strategy "fold_in") and by popularity (strategy "popular"), and
Recall@20 is measured on their remaining interactions. Fold-in's alpha and lambda are chosen on
half of the held-out users (validation) from a small grid; the figures are from the other half
(test), through ``ServingModel.recommend_many`` exactly as the server calls it.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from bench.common import add_output_args, markdown_table, new_result
from bench.report import print_and_save
from contracts.model_store import ModelSnapshot
from service.fold_in import FOLD_IN_ALPHA, FOLD_IN_REGULARIZATION, fold_in_vector
from service.ranking import ServingModel

NAME = "foldin"
TITLE = "Fold-in of new users against the popular items (Recall@20, held-out users)"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REVEALED = (1, 3, 10)
MIN_EVENTS = 13  # 10 revealed + at least 3 to find
K = 20
ALPHAS = (1.0, 10.0, 100.0)
REGULARIZATIONS = (0.1, 1.0, 10.0)
HEADERS = [
    "dataset",
    "learner",
    "events",
    "users",
    "fold-in R@20",
    "popular R@20",
    "fold-in / popular",
]


def load_pairs(dataset: str) -> np.ndarray:
    """(n, 2) int64 distinct (user, item) index pairs of ``dataset`` (Yelp: block D0 of the
    paper's blocks; MovieLens: every rating; synthetic:N: N events of ``trainer.synthetic``), or
    FileNotFoundError naming the missing file."""
    if dataset == "yelp":
        path = SHARED_DATA / "ccd-yelp" / "interactions.tsv"
        with open(path) as file:
            rows = [(int(r[2]), int(r[3])) for r in csv.reader(file, delimiter="\t") if r[0] == "0"]
    elif dataset == "movielens":
        path = SHARED_DATA / "ml-latest-small" / "ratings.csv"
        with open(path) as file:
            reader = csv.reader(file)
            next(reader)
            rows = [(int(r[0]), int(r[1])) for r in reader]
    elif dataset.startswith("synthetic"):  # e.g. synthetic:5000 (events): no files needed
        from trainer.synthetic import SyntheticStream

        n_events = int(dataset.partition(":")[2] or 20_000)
        stream = SyntheticStream(n_users=n_events // 40, n_items=n_events // 40, n_events=n_events)
        rows = [
            (u, i)
            for batch in stream.batches()
            for u, i in zip(batch.users.tolist(), batch.items.tolist(), strict=True)
        ]
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected movielens, yelp or synthetic[:N]")
    pairs = np.unique(np.asarray(rows, dtype=np.int64), axis=0)
    _, users = np.unique(pairs[:, 0], return_inverse=True)
    _, items = np.unique(pairs[:, 1], return_inverse=True)
    return np.stack([users.ravel(), items.ravel()], axis=1)


def split_users(pairs: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out users (a ``fraction`` of those with >= MIN_EVENTS pairs), shuffled, and a mask of
    the pairs the learner may see."""
    counts = np.bincount(pairs[:, 0])
    eligible = np.flatnonzero(counts >= MIN_EVENTS)
    rng = np.random.default_rng(seed)
    held = rng.choice(eligible, max(2, int(fraction * eligible.size)), replace=False)
    return held, ~np.isin(pairs[:, 0], held)


def train_student(learner: str, pairs: np.ndarray, n_items: int, seed: int) -> ModelSnapshot:
    """The student ``learner`` (as ``trainer.process.build_learner`` builds it) learns on ``pairs``
    (one block, split into train/valid as the trainer splits), as a snapshot the server loads."""
    import torch

    from contracts.settings import Settings
    from models.data import split_block
    from trainer.process import build_learner

    torch.set_num_threads(1)
    users, dense_users = np.unique(pairs[:, 0], return_inverse=True)
    block = split_block(
        torch.from_numpy(dense_users.ravel()),
        torch.from_numpy(pairs[:, 1].copy()),
        users.size,
        n_items,
        0,
        seed,
        with_test=False,
    )
    model, _ = build_learner(Settings(learner=learner, seed=seed))
    model.learn_block(block)
    student = model.student()
    popularity = np.bincount(pairs[:, 1], minlength=n_items).astype(np.float32)
    return ModelSnapshot(
        [f"u{u}" for u in users],
        [f"i{i}" for i in range(n_items)],
        student.users.numpy(),
        student.items.numpy(),
        popularity,
    )


def recall(ranked: list[int], targets: set[int]) -> float:
    return len(set(ranked) & targets) / len(targets)


def user_splits(
    pairs: np.ndarray, held: np.ndarray, seed: int
) -> dict[int, list[tuple[list[int], set[int]]]]:
    """Per n in REVEALED: (revealed items, items to find) of each held-out user."""
    rng = np.random.default_rng(seed + 1)
    order = np.argsort(pairs[:, 0], kind="stable")
    starts = np.searchsorted(pairs[order, 0], held)
    ends = np.searchsorted(pairs[order, 0], held, side="right")
    histories = [
        rng.permutation(pairs[order[s:e], 1]).tolist() for s, e in zip(starts, ends, strict=True)
    ]
    return {n: [(h[:n], set(h[n:])) for h in histories] for n in REVEALED}


def grid_recall(
    model: ServingModel, users: list[tuple[list[int], set[int]]], alpha: float, reg: float
) -> float:
    """Mean Recall@20 of fold-in with (alpha, reg) on ``users``, revealed items excluded."""
    scores = []
    for revealed, targets in users:
        vector = fold_in_vector(
            model.item_matrix, model.item_gramian, np.asarray(revealed), alpha, reg
        )
        row = model.item_matrix @ vector.astype(np.float32)
        row[revealed] = -np.inf
        scores.append(recall(np.argpartition(-row, K)[:K].tolist(), targets))
    return mean(scores)


def served_recall(
    model: ServingModel, users: list[tuple[list[int], set[int]]], fold_in: bool
) -> float:
    """Mean Recall@20 through ``ServingModel.recommend_many`` as the server calls it for users it
    does not know: with their events as histories (fold-in) or without (popular)."""
    ids = [f"new{n}" for n in range(len(users))]
    revealed = [[f"i{i}" for i in items] for items, _ in users]
    ranked = model.recommend_many(ids, K, revealed, histories=revealed if fold_in else None)
    expected = "fold_in" if fold_in else "popular"
    assert all(r.strategy == expected for r in ranked)
    return mean(
        recall([int(item[1:]) for item in r.item_ids], targets)
        for r, (_, targets) in zip(ranked, users, strict=True)
    )


def run_one(dataset: str, learner: str, args: argparse.Namespace) -> dict[str, Any]:
    pairs = load_pairs(dataset)
    n_items = int(pairs[:, 1].max()) + 1
    held, visible = split_users(pairs, args.holdout, args.seed)
    started = time.perf_counter()
    model = ServingModel.from_snapshot(train_student(learner, pairs[visible], n_items, args.seed))
    trained_s = time.perf_counter() - started
    splits = user_splits(pairs, held, args.seed)
    half = len(held) // 2
    grid = {
        f"alpha={a:g},reg={r:g}": grid_recall(model, splits[3][:half], a, r)
        for a, r in itertools.product(ALPHAS, REGULARIZATIONS)
    }
    chosen = max(grid, key=grid.get)
    rows = {}
    for n in REVEALED:
        test = splits[n][half:]
        rows[n] = {
            "users": len(test),
            "fold_in": served_recall(model, test, fold_in=True),
            "popular": served_recall(model, test, fold_in=False),
        }
    return {
        "dataset": dataset,
        "learner": learner,
        "users": int(np.unique(pairs[:, 0]).size),
        "items": n_items,
        "pairs": int(len(pairs)),
        "held_out_users": int(len(held)),
        "served_dim": model.dim,
        "train_seconds": round(trained_s, 1),
        "validation_grid_3_events": grid,
        "validation_choice": chosen,
        "served_setting": f"alpha={FOLD_IN_ALPHA:g},reg={FOLD_IN_REGULARIZATION:g}",
        "by_events": rows,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: v for k, v in vars(args).items() if k != "out"}
    result = new_result(NAME, TITLE, params)
    for dataset, learner in itertools.product(args.datasets.split(","), args.learners.split(",")):
        try:
            entry = run_one(dataset, learner, args)
        except FileNotFoundError as error:
            print(f"{dataset}: skipped, {error.filename} is not here (../shared/data)")
            continue
        result["results"][f"{dataset}/{learner}"] = entry
        print(f"{dataset}/{learner}: trained in {entry['train_seconds']} s", flush=True)
    result["notes"].append(
        "Held-out users never reach the learner; each reveals n events in random order. fold-in: "
        "iALS's closed-form user step over the served student's item vectors (service.fold_in); "
        "alpha and lambda chosen on half of the held-out users with 3 events, figures from the "
        "other half. popular: the most popular items the user has not had."
    )
    return result


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for entry in result["results"].values():
        for n, row in entry["by_events"].items():
            gain = row["fold_in"] / row["popular"] if row["popular"] else None
            learner = f"{entry['learner']} (d={entry['served_dim']})"
            rows.append([
                entry["dataset"], learner, n, row["users"], round(row["fold_in"], 4),
                round(row["popular"], 4), round(gain, 2) if gain else None,
            ])  # fmt: skip
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [markdown_table(HEADERS, table_rows(result)), ""]
    for name, entry in result["results"].items():
        lines.append(
            f"- {name}: validation picked {entry['validation_choice']}, the server uses "
            f"{entry['served_setting']}; {entry['held_out_users']} held-out of "
            f"{entry['users']} users, {entry['items']} items."
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench foldin", description=__doc__)
    parser.add_argument(
        "--datasets", default="movielens,yelp", help="movielens, yelp, synthetic[:EVENTS]"
    )
    parser.add_argument("--learners", default="ccd,als", help="CCD_LEARNER values to serve")
    parser.add_argument("--holdout", type=float, default=0.1, help="share of eligible users")
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    return print_and_save(result, HEADERS, table_rows(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
