"""The streaming learners side by side on one synthetic stream: what each would have served.

    ccd bench learners [--blocks 8] [--base-events 20000] [--block-events 5000] [--scale F]

Every learner of the trainer (``ccd`` in both variants, ``bpr``, ``als``) runs the real trainer
(embedded log and store) over the same synthetic events, one after the other, and the report
compares the prequential Recall@20 / NDCG@20 of the model each one deployed (measured on every
block before the learner trains on it, as ``ccd up`` shows it) and the seconds each spent per
block. Quality is compared as a difference in the same run; times as ratios to ``bpr``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from bench.common import add_output_args, markdown_table, new_result
from bench.report import print_and_save
from contracts.event_log import SqliteEventLog
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from trainer.process import run_trainer
from trainer.synthetic import SyntheticStream

NAME = "learners"
TITLE = "Streaming learners: prequential quality and time on one synthetic stream"
LEARNERS = (("ccd", "best"), ("ccd", "paper"), ("bpr", "best"), ("als", "best"))
HEADERS = [
    "learner",
    "served dim",
    "prequential R@20 (mean over blocks)",
    "N@20",
    "R@20 last block",
    "s per block",
    "time / bpr",
]


def label(learner: str, variant: str) -> str:
    return f"ccd ({variant})" if learner == "ccd" else learner


def run_learner(
    learner: str, variant: str, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    """The trainer with this learner over the stream; its versions' prequential metrics."""
    settings = Settings(
        data_dir=folder,
        learner=learner,
        learner_variant=variant,
        base_block_size=args.base_events,
        block_size=args.block_events,
        block_interval_s=3600.0,
        min_block_size=10,
        torch_threads=1,
        seed=args.seed,
    )
    stream = SyntheticStream(
        n_users=args.users, n_items=args.items, seed=args.seed,
        n_events=args.base_events + args.blocks * args.block_events,
    )  # fmt: skip
    log = SqliteEventLog(settings.event_log_path)
    log.append(list(stream))
    log.close()
    started = time.perf_counter()
    run_trainer(settings, max_blocks=args.blocks + 1)
    seconds = time.perf_counter() - started
    store = FileModelStore(settings.model_store_dir)
    metas = [store.load(v).meta for v in store.versions()]
    blocks = [m["prequential"] for m in metas if m.get("prequential")]
    return {
        "learner": learner,
        "variant": variant,
        "served_dim": int(store.load().user_embeddings.shape[1]),
        "recall@20": [b["recall@20"] for b in blocks],
        "ndcg@20": [b["ndcg@20"] for b in blocks],
        "seconds": seconds,
        "seconds_per_block": seconds / (args.blocks + 1),
    }


def warm_up_imports() -> None:
    """The first torch optimiser imports torch's compiler stack (~10-25 s here); pay it before
    any learner is timed, or the first learner's time would carry it."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: v for k, v in vars(args).items() if k != "out"}
    result = new_result(NAME, TITLE, params)
    warm_up_imports()
    for learner, variant in LEARNERS:
        with tempfile.TemporaryDirectory(prefix="ccd-bench-learners-") as folder:
            entry = run_learner(learner, variant, args, Path(folder))
        result["results"][label(learner, variant)] = entry
        print(f"{label(learner, variant)}: {entry['seconds']:.0f} s", flush=True)
    result["notes"].append(
        "Prequential: each block's events score the model deployed before the block (full "
        "ranking, items of earlier blocks excluded), on at most CCD_EVAL_USERS users."
    )
    return result


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    entries = result["results"]
    base = entries.get("bpr", {}).get("seconds_per_block")
    rows = []
    for name, entry in entries.items():
        recall, ndcg = entry["recall@20"], entry["ndcg@20"]
        per_block = entry["seconds_per_block"]
        rows.append([
            name, entry["served_dim"], round(mean(recall), 4) if recall else None,
            round(mean(ndcg), 4) if ndcg else None, recall[-1] if recall else None,
            round(per_block, 2), round(per_block / base, 1) if base else None,
        ])  # fmt: skip
    return rows


def render(result: dict[str, Any]) -> str:
    return markdown_table(HEADERS, table_rows(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench learners", description=__doc__)
    parser.add_argument("--blocks", type=int, default=8, help="blocks after the base block")
    parser.add_argument("--base-events", type=int, default=20_000)
    parser.add_argument("--block-events", type=int, default=5_000)
    parser.add_argument("--users", type=int, default=5_000, help="synthetic users at the start")
    parser.add_argument("--items", type=int, default=2_000, help="synthetic items at the start")
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    return print_and_save(result, HEADERS, table_rows(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
