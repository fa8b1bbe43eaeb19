"""Stage 1 alone on D0: re-distil a student from a saved run's D0 teachers under other settings,
and print its validation curve and CPU time, to choose distillation settings on D0's valid split.

    python scripts/distill_d0.py --base runs/replay-yelp-d0 --dataset yelp \\
        --set kd_user_rrd=per_epoch --set kd_rrd_weight=0.3

``--base`` is a results folder whose ``state/base.pt`` holds a D0 (``ccd replay`` writes one);
its teachers and settings are used, with each ``--set FIELD=VALUE`` on top (the fields of
``ccd replay --list-settings``). Prints the D0 student the base itself distilled, then one line
per validation of the new one (D0's valid Recall@20, wall seconds) and its best with the CPU
seconds it took. One torch thread (the fastest on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from experiments.protocol import load_base, parse_override
from models import training
from models.ccd import stage1_distill
from models.data import load_block_file, resolve_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="results folder with state/")
    parser.add_argument("--dataset", required=True, help="yelp, gowalla or a block file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("ccd.models").setLevel(logging.INFO)
    torch.set_num_threads(1)
    base, report = load_base(args.base)
    print(
        f"the base's own distillation: valid R@20 {report.info['distill_valid_recall@20']:.4f}, "
        f"{report.stage_seconds['distill']:.0f} s (settings as recorded in {args.base})"
    )
    cfg = dataclasses.replace(base.config, **dict(map(parse_override, args.set)))
    block0 = load_block_file(resolve_dataset(args.dataset))[0]
    training.PROGRESS_EVERY_S = 0.0  # Stage 1's progress line after every validation
    started = time.process_time()
    result = stage1_distill.distill(base.teacher_scorer(), block0, cfg)
    print(
        f"{' '.join(args.set) or 'unchanged'}: best valid R@20 {result.fit.best_score:.4f} at "
        f"epoch {result.fit.best_epoch}, {result.fit.epochs_run} epochs, "
        f"{time.process_time() - started:.0f} CPU s"
    )


if __name__ == "__main__":
    main()
