"""Time the student path (CCD Stage 2) on the last block of a finished ``ccd replay`` run.

    python scripts/time_student_path.py runs/replay-yelp-best [--repeat 2]

Loads the run's final state, starts Stage 2 from its latest distilled student on the last block
again (the same sizes as the real update), and prints the seconds of each repeat: the first one
of a fresh process also pays torch's one-time optimiser import, which a running trainer paid long
before. CPU seconds (one torch thread, as the replays) are the figure on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from experiments.protocol import load_checkpoint
from models.ccd.stage2_student import update_student
from models.data import load_block_file, resolve_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, help="a ccd replay output folder with state/")
    parser.add_argument("--dataset", default="yelp")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    learner = load_checkpoint(args.run)["methods"]["ccd"].learner
    blocks = load_block_file(resolve_dataset(args.dataset))
    block = blocks[learner.blocks_seen - 1]
    cfg = learner.config.for_block(learner.blocks_seen - 1)
    for repeat in range(args.repeat):
        started, cpu = time.perf_counter(), time.process_time()
        update_student(
            copy.deepcopy(learner.distilled),
            learner.stability,
            learner.plasticity if cfg.use_plasticity else None,
            learner.teacher_top,
            learner.prev_train,
            block,
            cfg,
            seed=repeat,
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"repeat {repeat}: student path {cpu:.2f} CPU s ({wall:.2f} s wall)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
