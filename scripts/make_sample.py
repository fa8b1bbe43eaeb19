"""Regenerate ``examples/synthetic-interactions.csv`` (``make sample``): a small, seeded slice of
the project's synthetic stream (trainer/synthetic.py) as a CSV with user, item and timestamp
columns, in time order, for ``ccd up --data`` and ``ccd produce`` to stream without any download.

6,000 events over 300 users and 200 items: with `ccd up`'s blocks (2,000, then 1,000) it gives a
first model and then three more versions, in about a minute at the default 100 events/s.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from trainer.synthetic import SyntheticStream

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "synthetic-interactions.csv"
EVENTS, USERS, ITEMS, SEED = 6_000, 300, 200, 0


def write_sample(path: Path, events: int = EVENTS) -> int:
    """Writes the sample to ``path``; returns the number of events."""
    stream = SyntheticStream(n_users=USERS, n_items=ITEMS, seed=SEED, n_events=events)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["user", "item", "timestamp"])
        for event in stream:
            # Milliseconds: fine enough to keep the stream's order, short enough to stay small.
            writer.writerow([event.user_id, event.item_id, f"{event.timestamp:.3f}"])
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE, help="default: %(default)s")
    args = parser.parse_args()
    count = write_sample(args.out)
    print(f"wrote {count} events to {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
