"""The results folder of ``ccd replay``: JSON files, the Markdown report and the H-mean plots.

Everything here is a pure function of ``RunResults`` (what the runner measured), so a partial
run writes the same files as a complete one, only with fewer blocks.

Conventions (ccd-method.md §4.2): R[k][j] is the metric on block j's test set after block k.
``la`` / ``ra`` / ``hmean`` exclude the base block D0 (LA_k = mean_{t=1..k} R[t][t],
RA_k = mean_{j=1..k-1} R[k][j]; RA and H are undefined before D2); ``*_with_d0`` include it
(t and j start at 0; defined from D1). Undefined values are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.metrics import ContinualMatrix

ROLES = ("teacher", "student")
SUMMARY_METRICS = ("recall@20", "ndcg@20")
CONVENTIONS = {"": False, "_with_d0": True}  # summary key suffix -> include_d0

# The continual-learning baselines: the paper's figure compares CCD with the best "CL competitor".
# ``frozen`` (never updated) is compared apart: it ranks only D0's items and skips later users.
CL_BASELINES = ("teacher_ft", "ft")

# Absolute H-mean gain of CCD over the best CL competitor read off the official README figures
# (ccd-method.md §5.2; GNN student, metric unlabelled, probably Recall@20), after D1..D5.
PAPER_HMEAN_GAIN: dict[str, dict[str, tuple[float, ...]]] = {
    "yelp": {
        "teacher": (0.0036, 0.0237, 0.0338, 0.0388, 0.0354),
        "student": (0.0096, 0.0079, 0.0094, 0.0106, 0.0099),
    },
    "gowalla": {
        "teacher": (0.0071, 0.0242, 0.0264, 0.0320, 0.0335),
        "student": (0.0029, 0.0109, 0.0239, 0.0269, 0.0260),
    },
}

METHOD_NOTES = {
    "ccd": "CCD: teacher = CCD-updated ensemble T_k, student = continually updated CL_k",
    "ft": "student D_0 fine-tuned with plain BPR per block; teacher = the teacher_ft teacher "
    "(members fine-tuned per block: plain BPR; iALS members: ALS sweeps on the block only, "
    "warm-started from their factors)",
    "teacher_ft": "teacher members fine-tuned per block (plain BPR; iALS members: ALS sweeps on "
    "the block, warm-started from their factors), student re-distilled from them every block "
    "(no collaboration)",
    "frozen": "T_0 and the one-time-distilled D_0, never updated",
    "als": "iALS (the implicit library) retrained from scratch on all train data so far after "
    "every block: teacher = at the teacher's size, student = at the student's size; "
    "hyper-parameters chosen on D0's validation split",
}


@dataclass
class RunResults:
    """Everything one replay run measured so far (JSON-able apart from the matrices)."""

    dataset: str
    paper_dataset: str | None  # "yelp" / "gowalla" when the paper's figures apply
    command: str
    methods: list[str]
    n_blocks: int
    config: dict[str, Any]
    hardware: dict[str, Any]
    block_stats: list[dict[str, int]] = field(default_factory=list)
    matrices: dict[str, dict[str, ContinualMatrix]] = field(default_factory=dict)
    new_users: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    timings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, dict[str, int]] = field(default_factory=dict)
    blocks_done: int = 0
    elapsed_s: float = 0.0
    peak_rss_gib: float = 0.0  # the highest of every process of this run (kept by --resume)

    def matrix(self, method: str, role: str) -> ContinualMatrix:
        return self.matrices.setdefault(method, {}).setdefault(role, ContinualMatrix())


# -- summary ----------------------------------------------------------------------------------
def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarize_matrix(
    matrix: ContinualMatrix, metrics: Sequence[str] = SUMMARY_METRICS
) -> dict[str, dict[str, dict[str, float | None]]]:
    """{str(k): {metric: {"la", "ra", "hmean", "la_with_d0", "ra_with_d0", "hmean_with_d0"}}}."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for metric in metrics:
        if metric not in matrix.values:
            continue
        for suffix, include_d0 in CONVENTIONS.items():
            for k, (la, ra, h) in matrix.summary(metric, include_d0).items():
                entry = out.setdefault(str(k), {}).setdefault(metric, {})
                entry[f"la{suffix}"] = _finite(la)
                entry[f"ra{suffix}"] = _finite(ra)
                entry[f"hmean{suffix}"] = _finite(h)
    return out


def summarize(results: RunResults) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``summary.json`` content: {method: {role: {str(k): {metric: {...}}}}}."""
    return {
        method: {role: summarize_matrix(matrix) for role, matrix in roles.items()}
        for method, roles in results.matrices.items()
    }


def hmean_gains(
    summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
    role: str,
    metric: str,
    key: str,
    rivals: Sequence[str] | None = None,
) -> dict[int, tuple[float, str]]:
    """{k: (CCD's H minus the best baseline's, that baseline)} where both are defined.

    Args:
        key: "hmean" or "hmean_with_d0".
        rivals: the baselines to compare with (default: every other method).
    """
    if "ccd" not in summary:
        return {}
    gains = {}
    for k_str, entry in summary["ccd"].get(role, {}).items():
        ours = entry.get(metric, {}).get(key)
        theirs = {
            method: summary[method][role].get(k_str, {}).get(metric, {}).get(key)
            for method in summary
            if method != "ccd" and role in summary[method] and (rivals is None or method in rivals)
        }
        theirs = {m: v for m, v in theirs.items() if v is not None}
        if ours is None or not theirs:
            continue
        best = max(theirs, key=theirs.__getitem__)
        gains[int(k_str)] = (ours - theirs[best], best)
    return gains


# -- hardware ---------------------------------------------------------------------------------
def _first_match(path: str, prefix: str) -> str | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def hardware_info() -> dict[str, Any]:
    """CPU model, cores, memory, load, Python and torch versions of this machine."""
    import torch

    mem_kb = _first_match("/proc/meminfo", "MemTotal")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": _first_match("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "gpu_used": False,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


# -- Markdown ---------------------------------------------------------------------------------
def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def markdown_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, one string per line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _metric_table(
    summary: Mapping[str, Any], role: str, suffix: str, first_block: int
) -> list[str]:
    header = ["after", "method"] + [
        f"{short} {part}" for short in ("R@20", "N@20") for part in ("LA", "RA", "H")
    ]
    rows = []
    blocks = sorted({int(k) for roles in summary.values() for k in roles.get(role, {})})
    for k in (b for b in blocks if b >= first_block):
        for method, roles in summary.items():
            entry = roles.get(role, {}).get(str(k))
            if entry is None:
                continue
            cells = [
                _fmt(entry.get(metric, {}).get(f"{part}{suffix}"))
                for metric in SUMMARY_METRICS
                for part in ("la", "ra", "hmean")
            ]
            rows.append([f"D{k}", method, *cells])
    return markdown_lines(header, rows)


def _gain_table(results: RunResults, summary: Mapping[str, Any]) -> list[str]:
    paper = PAPER_HMEAN_GAIN.get(results.paper_dataset or "", {})
    header = ["after"]
    columns = []
    for role in ROLES:
        for key, label in (("hmean_with_d0", "incl. D0"), ("hmean", "excl. D0")):
            header.append(f"{role} R@20 vs CL ({label})")
            columns.append(hmean_gains(summary, role, "recall@20", key, CL_BASELINES))
        header.append(f"{role} N@20 vs CL (incl. D0)")
        columns.append(hmean_gains(summary, role, "ndcg@20", "hmean_with_d0", CL_BASELINES))
        header.append(f"{role} R@20 vs frozen (incl. D0)")
        columns.append(hmean_gains(summary, role, "recall@20", "hmean_with_d0", ("frozen",)))
        if "als" in summary:
            for metric, name in (("recall@20", "R@20"), ("ndcg@20", "N@20")):
                header.append(f"{role} {name} vs als (incl. D0)")
                columns.append(hmean_gains(summary, role, metric, "hmean_with_d0", ("als",)))
        if paper:
            header.append(f"paper {role}")
            columns.append({k + 1: (v, "") for k, v in enumerate(paper[role])})
    blocks = sorted({k for column in columns for k in column if k >= 1})
    rows = []
    for k in blocks:
        row = [f"D{k}"]
        for column in columns:
            gain = column.get(k)
            if gain is None:
                row.append("–")
            else:
                row.append(_fmt(gain[0], signed=True) + (f" (vs {gain[1]})" if gain[1] else ""))
        rows.append(row)
    return markdown_lines(header, rows)


def _new_user_table(results: RunResults) -> list[str]:
    header = ["block", "method", "role", "new users", "R@20", "N@20"]
    rows = []
    for method, roles in results.new_users.items():
        for role, per_block in roles.items():
            for k, metrics in sorted(per_block.items(), key=lambda item: int(item[0])):
                n_users = int(metrics.get("users", 0))
                scores = [metrics.get(m) if n_users else None for m in SUMMARY_METRICS]
                rows.append([f"D{k}", method, role, str(n_users), *map(_fmt, scores)])
    rows.sort(key=lambda row: (int(row[0][1:]), row[2], row[1]))
    return markdown_lines(header, rows)


def _timing_table(results: RunResults) -> list[str]:
    stages = sorted(
        {s for per in results.timings.values() for t in per.values() for s in t} - {"cpu"}
    )
    rows = []
    for k, per_method in sorted(results.timings.items(), key=lambda item: int(item[0])):
        for method, times in per_method.items():
            cells = [f"{times[s]:.1f}" if s in times else "" for s in stages]
            total = sum(v for s, v in times.items() if s != "cpu")
            cpu = f"{times['cpu']:.1f}" if "cpu" in times else ""
            rows.append([f"D{k}", method, *cells, f"{total:.1f}", cpu])
    return markdown_lines(["block", "method", *stages, "total", "CPU s"], rows)


def _matrix_tables(results: RunResults, metric: str) -> list[str]:
    lines = []
    for method, roles in results.matrices.items():
        for role, matrix in roles.items():
            if metric not in matrix.values:
                continue
            R = matrix.matrix(metric)
            cols = sorted({j for row in R.values() for j in row})
            rows = [
                [f"D{k}", *[_fmt(R[k].get(j)) if j <= k else "" for j in cols]] for k in sorted(R)
            ]
            lines += [f"**{method} / {role}**", ""]
            lines += markdown_lines(["after \\ test", *[f"D{j}" for j in cols]], rows) + [""]
    return lines


def markdown_report(results: RunResults, summary: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The results folder's README.md."""
    hw = results.hardware
    done = results.blocks_done
    state = "complete" if done >= results.n_blocks else "PARTIAL"
    state = f"{state}, {done} of {results.n_blocks} blocks evaluated"
    lines = [
        f"# CCD replay on `{results.dataset}`",
        "",
        f"Status: {state}; wall-clock so far {results.elapsed_s / 3600:.2f} h; "
        f"peak resident memory {results.peak_rss_gib} GiB.",
        "",
        "Command:",
        "",
        "```",
        results.command,
        "```",
        "",
        "## Hardware",
        "",
        f"- CPU: {hw.get('cpu_model')}, {hw.get('cpu_cores')} cores "
        f"({hw.get('cpu_cores_usable')} usable, torch threads {hw.get('torch_threads')}); "
        f"memory {hw.get('memory_gib')} GiB; no GPU used.",
        f"- Load average at start: {hw.get('load_average_at_start')} (the machine was shared "
        "with other processes, so wall-clock times are upper bounds of a dedicated run).",
        f"- torch {hw.get('torch')}, Python {hw.get('python')}, {hw.get('platform')}.",
        "",
        "## Methods",
        "",
        *[f"- `{m}`: {METHOD_NOTES.get(m, '')}" for m in results.methods],
        "",
        "All methods but `als` share the same base training on D0 (teachers, ensemble T_0, "
        "distilled student D_0), so their D0 figures are identical; `als` fits its own.",
        "",
        "## Parameter counts (at the last evaluated block)",
        "",
        *markdown_lines(
            ["method", "teacher", "student", "ratio"],
            [
                [
                    method,
                    f"{p.get('teacher', 0):,}",
                    f"{p.get('student', 0):,}",
                    f"{p['teacher'] / p['student']:.1f}x" if p.get("student") else "–",
                ]
                for method, p in results.params.items()
            ],
        ),
        "",
        "## Evaluation",
        "",
        "Full ranking over all items known after the evaluated model's block; for block j's test "
        "set the user's block-j train and valid items are removed (ccd-method.md §4.1); users "
        "unknown to the model are skipped. R[k][j] = metric on block j's test set after "
        "training through block k. LA = mean of R[t][t], RA = mean of R[k][j] over j < k, "
        "H = harmonic mean (§4.2). Two conventions: *excl. D0* (t, j from 1: `la`, `ra`, "
        "`hmean` in summary.json; RA and H exist from D2) and *incl. D0* (t, j from 0: "
        "`*_with_d0`; defined from D1). The paper's figure has a gain after D1, which only "
        "the incl.-D0 convention defines.",
        "",
        "## H-mean gain of CCD over the baselines",
        "",
        "Per role and block: CCD's H-mean minus that of the best continual-learning baseline "
        "(`vs CL`: `teacher_ft` or `ft`, the one in brackets; the paper's figure compares with "
        "the best CL competitor), and minus `frozen`'s. `frozen` is not on the same footing: "
        "it ranks only D0's items and skips later users, so its R[k][0] stays its D0 score. "
        "The paper columns are read off the official README figure (ccd-method.md §5.2; "
        "metric unlabelled, probably Recall@20).",
        "",
        *_gain_table(results, summary),
        "",
    ]
    for role in ROLES:
        lines += [f"## {role.capitalize()}: LA / RA / H-mean, incl. D0", ""]
        lines += _metric_table(summary, role, "_with_d0", 1) + [""]
        lines += [f"## {role.capitalize()}: LA / RA / H-mean, excl. D0", ""]
        lines += _metric_table(summary, role, "", 2) + [""]
    lines += ["## New users of block k, on block k's test set", ""]
    lines += [
        "New users of D_k are those with an id >= D_{k-1}'s user count (ids are chronological; "
        "the code's definition). A model skips users beyond its tables (§4.1), so `frozen` "
        "evaluates none of them (–), and its R[k][j] for j >= 1 covers only D0's id range.",
        "",
    ]
    lines += _new_user_table(results) + [""]
    lines += ["## Wall-clock seconds per stage", ""]
    lines += [
        "Block D0 is the shared base training (listed once, under `base`); `evaluate` is the "
        "test-set evaluation of that method's teacher and student (cached where a model did "
        "not change); `total` is wall-clock, `CPU s` the process CPU time of the same step "
        "summed over threads (with the machine shared, wall-clock overstates the cost).",
        "",
    ]
    lines += _timing_table(results) + [""]
    lines += ["## R matrices, Recall@20", ""] + _matrix_tables(results, "recall@20")
    lines += ["## Files", ""]
    lines += [
        "- `summary.json`: {method: {role: {k: {metric: {la, ra, hmean, la_with_d0, "
        "ra_with_d0, hmean_with_d0}}}}}",
        "- `matrices.json`: R[k][j] of every metric, per method and role",
        "- `new_users.json`, `timings.json`, `blocks.json` (per-stage validation scores), "
        "`config.json` (options, full CCD config, block sizes, hardware)",
        *[f"- `{name}`" for name in plots],
        "",
    ]
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------
def _series(per_block: Mapping[str, Any], metric: str, key: str) -> list[tuple[int, float]]:
    return sorted(
        (int(k), e[metric][key])
        for k, e in per_block.items()
        if metric in e and e[metric].get(key) is not None
    )


def plot_hmean(summary: Mapping[str, Any], metric: str, path: Path) -> bool:
    """H-mean per block per method, teacher and student side by side (solid: incl. D0,
    dashed: excl. D0); methods with identical curves share one line. Returns False when
    nothing is plottable yet."""
    if not any(
        _series(per_block, metric, "hmean_with_d0")
        for roles in summary.values()
        for per_block in roles.values()
    ):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    blocks: set[int] = set()
    colors = {method: f"C{index}" for index, method in enumerate(summary)}
    for ax, role in zip(axes, ROLES, strict=True):
        curves: dict[tuple, list[str]] = {}  # (with-D0 series, excl. series) -> methods
        for method, roles in summary.items():
            per_block = roles.get(role, {})
            key = tuple(tuple(_series(per_block, metric, k)) for k in ("hmean_with_d0", "hmean"))
            if any(key):
                curves.setdefault(key, []).append(method)
        for series, names in curves.items():
            for points, style, marker in zip(series, ("-", "--"), ("o", "s"), strict=True):
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                blocks.update(xs)
                label = " = ".join(names) if style == "-" else None
                ax.plot(xs, ys, style, color=colors[names[0]], marker=marker, label=label)
        ax.set_title(f"{role}: H-mean of {metric}")
        ax.set_xlabel("after block")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize="small")
    if not blocks:
        plt.close(fig)
        return False
    for ax in axes:
        ax.set_xticks(sorted(blocks), [f"D{k}" for k in sorted(blocks)])
    axes[0].set_ylabel("H-mean (solid: incl. D0, dashed: excl. D0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the folder -------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None, tuples as lists and unknown objects as str."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _dump(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)  # atomic: an interrupted write never leaves a truncated file


def recorded_peak_gib(out: Path) -> float:
    """The peak memory recorded in a results folder's config.json (0 if none)."""
    try:
        return float(json.loads((out / "config.json").read_text()).get("peak_rss_gib") or 0.0)
    except (OSError, ValueError, AttributeError):
        return 0.0


def write_results(results: RunResults, out: Path, measure_peak: bool = True) -> dict[str, Any]:
    """Write (or overwrite) every file of the results folder; returns the summary.

    ``results.peak_rss_gib`` is first raised to this process's peak, unless ``measure_peak``
    is False (a report rewritten by another process)."""
    out.mkdir(parents=True, exist_ok=True)
    if measure_peak:
        results.peak_rss_gib = max(results.peak_rss_gib, peak_rss_gib())
    summary = summarize(results)
    _dump(out / "summary.json", summary)
    _dump(
        out / "matrices.json",
        {
            m: {r: mat.to_dict() for r, mat in roles.items()}
            for m, roles in results.matrices.items()
        },
    )
    _dump(out / "new_users.json", results.new_users)
    _dump(out / "timings.json", results.timings)
    _dump(out / "blocks.json", results.infos)
    _dump(
        out / "config.json",
        {
            "dataset": results.dataset,
            "command": results.command,
            "methods": results.methods,
            "n_blocks": results.n_blocks,
            "blocks_done": results.blocks_done,
            "elapsed_s": round(results.elapsed_s, 1),
            "peak_rss_gib": results.peak_rss_gib,
            "summary_conventions": {
                "la/ra/hmean": "excluding D0: t, j = 1..",
                "*_with_d0": "including D0: t, j = 0..",
            },
            "block_stats": results.block_stats,
            "params": results.params,
            "ccd_config": results.config,
            "hardware": results.hardware,
        },
    )
    plots = []
    for metric in SUMMARY_METRICS:
        name = f"hmean_{metric.replace('@', '')}.png"
        if plot_hmean(summary, metric, out / name):
            plots.append(name)
    (out / "README.md").write_text(markdown_report(results, summary, plots))
    return summary
