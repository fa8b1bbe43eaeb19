"""Ablation of the best variant on Yelp's D1: each switch set back to the official behaviour,
one at a time, from one shared D0, and a table of what each changes.

    python scripts/yelp_ablation.py --base runs/replay-yelp-d0 --reference runs/replay-yelp \\
        --out runs/ablation [--table docs/results/yelp-ablation/README.md] [--table-only]

``--base`` is a results folder whose ``state/base.pt`` holds the best variant's D0 (any
``ccd replay`` run of it writes one); ``--reference`` is the full best-variant run whose D1 the
ablations are compared with (same D0, same seeds, every switch on). Choices are read off the
validation columns; the test H-mean is reported beside them, not chosen on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# name -> (the --set overrides, what it turns back to the official behaviour)
ABLATIONS: dict[str, tuple[list[str], str]] = {
    "ials-replay": (
        ["ials_replay_weight=0.5"],
        "the iALS teacher's refit takes the student-side replay pairs (S, P, CL_1) at 0.5",
    ),
    "kd-paper-schedule": (
        ["kd_epochs=10", "kd_eval_every=5"],
        "distillation capped at 10 epochs, validated every 5 (only epochs 0 and 5 selectable)",
    ),
    "distill-window": (
        ["distill_data=window"],
        "the student is distilled on the teacher's last window (D1) only",
    ),
    "redraw-at-evaluation": (
        ["replay_redraw=evaluation", "eval_every=5"],
        "Stage 2 validates every 5 epochs and re-draws its replay set only then",
    ),
}
INFO_KEYS = (
    "student_valid_recall@20",
    "distill_valid_recall@20",
    "distill_epochs",
    "teacher_valid_recall@20",
)


def run_ablation(name: str, sets: list[str], base: Path, out: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "experiments.protocol",
        "--dataset",
        "yelp",
        "--threads",
        "1",
        "--blocks",
        "2",
        "--methods",
        "ccd",
        "--base-from",
        str(base),
        "--out",
        str(out / name),
    ]
    for item in sets:
        command += ["--set", item]
    return subprocess.call(command)


def block1(folder: Path) -> dict | None:
    """D1's validation figures (the learner's info) and test H-means of one run."""
    try:
        info = json.loads((folder / "blocks.json").read_text())["1"]["ccd"]
        summary = json.loads((folder / "summary.json").read_text())["ccd"]
    except (FileNotFoundError, KeyError):
        return None
    teacher_valid = info.get("teacher_valid_recall@20") or {}
    return {
        "student_valid": info.get("student_valid_recall@20"),
        "distill_valid": info.get("distill_valid_recall@20"),
        "distill_epochs": info.get("distill_epochs"),
        "teacher_valid": sum(teacher_valid.values()) / len(teacher_valid)
        if teacher_valid
        else None,
        **{
            f"{role}_test_h": summary[role]["1"]["recall@20"]["hmean_with_d0"]
            for role in ("teacher", "student")
        },
    }


def fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return f"{value[0]} of {value[1]}"
    return str(value)


def table(reference: Path, out: Path) -> str:
    header = [
        "run",
        "what changes",
        "Stage 2 valid R@20 (CL_1)",
        "teacher valid R@20 (mean)",
        "D_1 valid R@20",
        "D_1 best / run epochs",
        "teacher test H R@20",
        "student test H R@20",
    ]
    rows = []
    for name, (_, what) in [("best", ([], "nothing: every switch on")), *ABLATIONS.items()]:
        found = block1(reference if name == "best" else out / name)
        if found is None:
            rows.append([name, what, *["not run"] * 6])
            continue
        rows.append(
            [
                name,
                what,
                *(
                    fmt(found[k])
                    for k in (
                        "student_valid",
                        "teacher_valid",
                        "distill_valid",
                        "distill_epochs",
                        "teacher_test_h",
                        "student_test_h",
                    )
                ),
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--table", type=Path, help="also write the Markdown table here")
    parser.add_argument("--table-only", action="store_true", help="run nothing")
    parser.add_argument("--only", nargs="+", choices=sorted(ABLATIONS))
    args = parser.parse_args(argv)
    if not args.table_only:
        for name in args.only or ABLATIONS:
            run_ablation(name, ABLATIONS[name][0], args.base, args.out)
    text = table(args.reference, args.out)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
