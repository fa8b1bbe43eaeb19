"""``ccd replay`` (experiments/protocol.py, experiments/report.py): the protocol end to end on a
tiny synthetic block file, and the pieces whose answers can be worked out by hand."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.protocol import (
    METHODS,
    MOVED_PICKLE,
    CCDMethod,
    FineTuneMethod,
    ReplayOptions,
    build_config,
    main,
    new_user_ids,
    parse_args,
    parse_override,
)
from experiments.report import CL_BASELINES, hmean_gains, jsonable, summarize_matrix
from models.api import BlockData, Interactions
from models.ccd import CCDConfig
from models.ccd.learner import member_state
from models.data import load_block_file, split_block
from models.metrics import ContinualMatrix, SizedScorer, ranking_metrics

N_CLUSTERS = 4
FIXTURES = Path(__file__).parents[1] / "fixtures" / "before_layout_move"
# The "stream" preset made smaller still, so the whole protocol takes seconds.
TINY = [
    "--set", "base_epochs=6",
    "--set", "kd_epochs=3",
    "--set", "student_epochs=3",
    "--set", "teacher_epochs=2",
    "--set", "kd_uninteresting_items=100",
    "--set", "kd_uninteresting_users=100",
]  # fmt: skip


def write_blocks(path: Path, n_blocks: int = 3, seed: int = 0) -> None:
    """A clustered stream: user u likes items of cluster u % 4; 150 users and 240 items in D0,
    then 30 new users and 40 new items per block (chronological ids) plus 60 returning users."""
    rng = np.random.default_rng(seed)
    lines = ["block\tsplit\tuser\titem"]
    n_users, n_items = 150, 240
    for b in range(n_blocks):
        if b:
            returning = rng.choice(n_users, 60, replace=False)
            n_users, n_items = n_users + 30, n_items + 40
            active = np.concatenate([returning, np.arange(n_users - 30, n_users)])
        else:
            active = np.arange(n_users)
        users, items = [], []
        for u in active:
            pool = np.arange(u % N_CLUSTERS, n_items, N_CLUSTERS)
            chosen = rng.choice(pool, int(rng.integers(10, 18)), replace=False)
            users += [int(u)] * len(chosen)
            items += chosen.tolist()
        block = split_block(torch.tensor(users), torch.tensor(items), n_users, n_items, b, seed + b)
        for split in ("train", "valid", "test"):
            part = getattr(block, split)
            lines += [
                f"{b}\t{split}\t{u}\t{i}"
                for u, i in zip(part.users.tolist(), part.items.tolist(), strict=True)
            ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory) -> tuple[Path, Path]:
    """Two blocks, then ``--resume`` to the third: a partial and a resumed run in one."""
    root = tmp_path_factory.mktemp("replay")
    data = root / "interactions.tsv"
    write_blocks(data)
    out = root / "results"
    args = ["--dataset", str(data), "--out", str(out), "--preset", "stream", *TINY]
    assert main([*args, "--blocks", "2"]) == 0
    partial = json.loads((out / "summary.json").read_text())
    assert sorted(partial["ccd"]["student"]) == ["0", "1"]
    assert "complete, 2 of 2 blocks evaluated" in (out / "README.md").read_text()
    assert main([*args, "--resume"]) == 0
    return data, out


def test_results_folder_has_every_file(replay_run) -> None:
    _, out = replay_run
    for name in (
        "summary.json",
        "matrices.json",
        "new_users.json",
        "timings.json",
        "blocks.json",
        "config.json",
        "README.md",
        "run.log",
        "state/checkpoint.pt",
        "state/.gitignore",
    ):
        assert (out / name).is_file(), name
    for name in ("hmean_recall20.png", "hmean_ndcg20.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (out / "README.md").read_text()
    assert "complete, 3 of 3 blocks evaluated" in readme
    assert "ccd replay --dataset" in readme
    assert "CPU:" in readme and "torch " in readme and "Parameter counts" in readme


def test_summary_covers_every_method_role_block_within_unit_range(replay_run) -> None:
    _, out = replay_run
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == sorted(METHODS)
    for method in METHODS:
        assert sorted(summary[method]) == ["student", "teacher"]
        for role in ("teacher", "student"):
            assert sorted(summary[method][role]) == ["0", "1", "2"]
            for k, entry in summary[method][role].items():
                for metric in ("recall@20", "ndcg@20"):
                    values = entry[metric]
                    assert set(values) == {
                        "la", "ra", "hmean", "la_with_d0", "ra_with_d0", "hmean_with_d0"
                    }  # fmt: skip
                    defined = [v for v in values.values() if v is not None]
                    assert all(0.0 <= v <= 1.0 for v in defined)
                    # excl. D0: H from D2 on; incl. D0: from D1 on.
                    assert (values["hmean"] is not None) == (int(k) >= 2)
                    assert (values["hmean_with_d0"] is not None) == (int(k) >= 1)


def test_summary_agrees_with_the_matrices(replay_run) -> None:
    _, out = replay_run
    summary = json.loads((out / "summary.json").read_text())
    matrices = json.loads((out / "matrices.json").read_text())
    R = matrices["ccd"]["student"]["recall@20"]
    la = (R["1"]["1"] + R["2"]["2"]) / 2
    ra = R["2"]["1"]
    la0 = (R["0"]["0"] + R["1"]["1"] + R["2"]["2"]) / 3
    ra0 = (R["2"]["0"] + R["2"]["1"]) / 2
    entry = summary["ccd"]["student"]["2"]["recall@20"]
    assert entry["la"] == pytest.approx(la) and entry["ra"] == pytest.approx(ra)
    assert entry["hmean"] == pytest.approx(2 * la * ra / (la + ra))
    assert entry["la_with_d0"] == pytest.approx(la0) and entry["ra_with_d0"] == pytest.approx(ra0)
    # D0 is shared by every method but als (its own fits); frozen never changes; ft's teacher
    # is teacher_ft's.
    assert matrices["als"]["student"]["recall@20"]["0"] != R["0"]
    for method in set(METHODS) - {"als"}:
        for role in ("teacher", "student"):
            assert (
                matrices[method][role]["recall@20"]["0"] == matrices["ccd"][role]["recall@20"]["0"]
            )
    frozen = matrices["frozen"]["student"]["ndcg@20"]
    assert frozen["0"]["0"] == frozen["1"]["0"] == frozen["2"]["0"]
    assert frozen["1"]["1"] == frozen["2"]["1"]
    # als is refitted every block: its D0 score changes, and it reports its fit times.
    als = matrices["als"]["teacher"]["recall@20"]
    assert als["0"]["0"] != als["2"]["0"]
    timings = json.loads((out / "timings.json").read_text())
    assert timings["2"]["als"]["teacher_fit"] > 0 and timings["0"]["als"]["student_tune"] > 0
    assert matrices["ft"]["teacher"] == matrices["teacher_ft"]["teacher"]
    assert matrices["ccd"]["student"]["recall@20"]["2"] != frozen["2"]  # CCD did update


def test_ccd_student_beats_a_random_model(replay_run) -> None:
    data, out = replay_run
    blocks = load_block_file(data)
    R = json.loads((out / "matrices.json").read_text())["ccd"]["student"]["recall@20"]
    gen = torch.Generator().manual_seed(0)
    ours, chance = [], []
    for k, block in enumerate(blocks):
        scorer = SizedScorer(
            lambda users, n=block.n_items: torch.rand(users.numel(), n, generator=gen),
            block.n_users,
            block.n_items,
        )
        chance.append(ranking_metrics(scorer, block.test, [block.train, block.valid])["recall@20"])
        ours.append(R[str(k)][str(k)])
    # Random Recall@20 is about 20 / n_items (0.06-0.08 here).
    assert all(r > 2 * c for r, c in zip(ours, chance, strict=True)), (ours, chance)
    assert sum(ours) / len(ours) > 2 * sum(chance) / len(chance) + 0.05, (ours, chance)


def test_new_users_and_timings_are_recorded(replay_run) -> None:
    _, out = replay_run
    new_users = json.loads((out / "new_users.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert [b["new_users"] for b in config["block_stats"]] == [150, 30, 30]
    for k in ("1", "2"):
        assert new_users["ccd"]["student"][k]["users"] > 0
        assert new_users["frozen"]["student"][k]["users"] == 0  # unknown to D_0: skipped
    timings = json.loads((out / "timings.json").read_text())
    assert {"base_teachers", "distill", "evaluate", "cpu"} <= set(timings["0"]["base"])
    assert {"student_update", "teacher_update", "distill", "cpu"} <= set(timings["2"]["ccd"])
    assert config["params"]["ccd"]["teacher"] > config["params"]["ccd"]["student"] > 0


def test_ft_alone_still_trains_its_teacher(replay_run, tmp_path) -> None:
    data, _ = replay_run
    out = tmp_path / "ft"
    args = ["--dataset", str(data), "--out", str(out), "--methods", "ft", "--blocks", "2"]
    assert main([*args, "--preset", "stream", "--no-checkpoint", *TINY]) == 0
    matrices = json.loads((out / "matrices.json").read_text())
    assert list(matrices) == ["ft"] and not (out / "state").exists()
    teacher = matrices["ft"]["teacher"]["ndcg@20"]
    assert teacher["1"]["0"] != teacher["0"]["0"]  # the teacher was fine-tuned on D1


def test_missing_dataset_is_an_error(tmp_path, capsys) -> None:
    assert main(["--dataset", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert "no block file" in capsys.readouterr().err and not (tmp_path / "o").exists()


# -- pieces worked out by hand -----------------------------------------------------------------
def _inter(users: list[int], items: list[int]) -> Interactions:
    return Interactions(torch.tensor(users), torch.tensor(items))


def test_new_users_have_ids_beyond_the_previous_block() -> None:
    empty = Interactions.empty()
    blocks = [
        BlockData(0, 4, 5, _inter([0, 1], [0, 1]), empty, _inter([2], [1])),  # id 3 unused
        BlockData(1, 6, 5, _inter([1, 3, 4], [2, 2, 2]), _inter([5], [2]), empty),
        BlockData(2, 7, 5, _inter([4, 6, 0], [3, 3, 3]), empty, empty),
    ]
    # User 3 has an id below D0's size (its D0 rows were filtered out): not new in D1.
    assert [t.tolist() for t in new_user_ids(blocks)] == [[0, 1, 2], [4, 5], [6]]


def test_summarize_matrix_both_conventions() -> None:
    matrix = ContinualMatrix()
    values = {(0, 0): 0.4, (1, 0): 0.2, (1, 1): 0.6, (2, 0): 0.1, (2, 1): 0.3, (2, 2): 0.5}
    for (k, j), v in values.items():
        matrix.record(k, j, {"recall@20": v})
    summary = summarize_matrix(matrix, ["recall@20"])
    at1, at2 = summary["1"]["recall@20"], summary["2"]["recall@20"]
    # incl. D0 after D1: LA = (0.4 + 0.6) / 2, RA = 0.2, H = 2 * 0.5 * 0.2 / 0.7.
    assert at1["la_with_d0"] == pytest.approx(0.5) and at1["ra_with_d0"] == pytest.approx(0.2)
    assert at1["hmean_with_d0"] == pytest.approx(0.2 / 0.7)
    assert at1["la"] == pytest.approx(0.6) and at1["ra"] is None and at1["hmean"] is None
    # excl. D0 after D2: LA = (0.6 + 0.5) / 2 = 0.55, RA = 0.3.
    assert at2["la"] == pytest.approx(0.55) and at2["ra"] == pytest.approx(0.3)
    assert at2["hmean"] == pytest.approx(2 * 0.55 * 0.3 / 0.85)
    assert at2["ra_with_d0"] == pytest.approx(0.2)
    assert summary["0"]["recall@20"]["la_with_d0"] == pytest.approx(0.4)


def test_hmean_gain_is_against_the_best_baseline() -> None:
    def entry(h):
        return {"recall@20": {"hmean": h}}

    summary = {  # block 0 first, where nothing is defined yet (as in a real summary)
        "ccd": {"student": {"0": entry(None), "1": entry(0.30), "2": entry(None)}},
        "ft": {"student": {"0": entry(None), "1": entry(0.25), "2": entry(0.2)}},
        "frozen": {"student": {"0": entry(None), "1": entry(0.28)}},
    }
    gains = hmean_gains(summary, "student", "recall@20", "hmean")
    assert gains.keys() == {1}
    assert gains[1][0] == pytest.approx(0.02) and gains[1][1] == "frozen"
    versus_cl = hmean_gains(summary, "student", "recall@20", "hmean", CL_BASELINES)
    assert versus_cl[1][0] == pytest.approx(0.05) and versus_cl[1][1] == "ft"


def test_report_only_rewrites_the_report_and_keeps_the_recorded_peak(replay_run) -> None:
    data, out = replay_run
    config = json.loads((out / "config.json").read_text())
    assert config["peak_rss_gib"] > 0
    config["peak_rss_gib"] = 123.0  # as if an earlier process of the run had peaked there
    (out / "config.json").write_text(json.dumps(config))
    (out / "README.md").write_text("stale")
    args = ["--dataset", str(data), "--out", str(out), "--preset", "stream", *TINY]
    assert main([*args, "--report-only"]) == 0
    readme = (out / "README.md").read_text()
    assert "complete, 3 of 3 blocks evaluated" in readme and "peak resident memory 123.0" in readme
    assert "vs CL" in readme
    assert json.loads((out / "config.json").read_text())["peak_rss_gib"] == 123.0


def test_a_fresh_run_does_not_inherit_a_stale_peak(replay_run, tmp_path) -> None:
    data, _ = replay_run
    out = tmp_path / "again"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"peak_rss_gib": 999.0}))  # an older run's
    args = ["--dataset", str(data), "--out", str(out), "--preset", "stream", *TINY]
    assert main([*args, "--blocks", "1", "--no-checkpoint"]) == 0
    assert 0 < json.loads((out / "config.json").read_text())["peak_rss_gib"] < 999.0


def test_parse_override_types() -> None:
    assert parse_override("kd_epochs=3") == ("kd_epochs", 3)
    assert parse_override("kd_lr=1") == ("kd_lr", 1.0)
    assert parse_override("piw=false") == ("piw", False)
    assert parse_override("entity_init=random") == ("entity_init", "random")
    assert parse_override("teacher_kinds=mf, lightgcn") == ("teacher_kinds", ("mf", "lightgcn"))
    with pytest.raises(Exception, match="FIELD=VALUE"):
        parse_override("no_such_field=1")


def test_options_and_config() -> None:
    best = build_config(parse_args(["--dataset", "yelp"]))
    assert best.teacher_kinds[0] == "ials" and best.distill_data == "all"
    args = ["--dataset", "yelp", "--variant", "paper", "--epochs-scale", "0.5", "--set"]
    options = parse_args([*args, "kd_epochs=7"])
    assert options.preset == "yelp" and options.methods == list(METHODS)
    assert options.out == Path("runs/replay-yelp")
    cfg = build_config(options)
    # base 100 and student/teacher 10 halved; the explicit --set wins over the scale.
    assert (cfg.base_epochs, cfg.student_epochs, cfg.teacher_epochs, cfg.kd_epochs) == (50, 5, 5, 7)
    assert cfg.teacher_dim == 128 and cfg.for_block(1).student_replay_abs == 50
    quick = build_config(
        ReplayOptions("x.tsv", Path("o"), ["ccd"], "stream", variant="paper", quick=True)
    )
    assert quick.base_eval_every == 2 and quick.kd_epochs == 3 and quick.teacher_dim == 32
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "yelp", "--methods", "ccd,nope"])


def test_list_settings_names_every_field_with_its_meaning(capsys) -> None:
    """``--list-settings`` needs no --dataset and prints each field's type, default, meaning."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["--list-settings"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(CCDConfig):
        assert f"  {field.name} (" in out and field.metadata["help"] in out
    assert "  kd_epochs (int, default 10)\n      epoch limit of Stage 1" in out


def test_jsonable_replaces_non_finite_floats() -> None:
    data = {"a": math.inf, "b": (1, math.nan), 3: {"c": 0.5}}
    assert jsonable(data) == {"a": None, "b": [1, None], "3": {"c": 0.5}}


def test_base_from_reuses_another_runs_d0(replay_run, tmp_path, caplog) -> None:
    data, out = replay_run
    assert (out / "state" / "base.pt").exists()
    again = tmp_path / "reused"
    args = ["--dataset", str(data), "--out", str(again), "--preset", "stream", *TINY]
    extra = ["--set", "replay_redraw=evaluation", "--blocks", "2", "--methods", "ccd"]
    with caplog.at_level("INFO", logger="ccd"):
        assert main([*args, *extra, "--base-from", str(out)]) == 0
    assert "base training reused" in caplog.text and "replay_redraw" in caplog.text
    first = json.loads((out / "matrices.json").read_text())["ccd"]
    second = json.loads((again / "matrices.json").read_text())["ccd"]
    for role in ("teacher", "student"):  # the same T_0 and D_0, evaluated again
        assert second[role]["recall@20"]["0"] == first[role]["recall@20"]["0"]
    config = json.loads((again / "config.json").read_text())
    assert config["ccd_config"]["replay_redraw"] == "evaluation"
    missing = ["--base-from", str(tmp_path / "nowhere")]
    assert main([*args, "--blocks", "1", "--out", str(tmp_path / "x"), *missing]) == 2


def test_summary_matches_the_one_written_before_the_layout_move(tmp_path: Path) -> None:
    """The same fixed-seed replay as tests/fixtures/before_layout_move/replay_summary.json, which
    commit 046df2e wrote before models/ was split into the method (models/) and this harness
    (experiments/): moving code must not change a single result."""
    data = tmp_path / "interactions.tsv"
    write_blocks(data)
    out = tmp_path / "results"
    args = ["--dataset", str(data), "--out", str(out), "--preset", "stream", "--threads", "1"]
    assert main([*args, *TINY]) == 0
    before = json.loads((FIXTURES / "replay_summary.json").read_text())
    after = json.loads((out / "summary.json").read_text())
    assert_close(after, before)


def assert_close(after: object, before: object, path: str = "") -> None:
    """Equal structure, numbers equal to 1e-6 (another CPU's SIMD paths may round differently)."""
    if isinstance(before, dict):
        assert isinstance(after, dict) and after.keys() == before.keys(), path
        for key in before:
            assert_close(after[key], before[key], f"{path}/{key}")
    elif isinstance(before, float):
        assert after == pytest.approx(before, abs=1e-6), path
    else:
        assert after == before, path


def test_a_checkpoint_pickled_before_the_layout_move_still_loads() -> None:
    """Runs started before the move pickled their learners under models.reproduce, models.ccd,
    ...: ``--resume`` and ``--base-from`` find those classes at their new homes."""
    data = pickle.dumps(CCDMethod.__new__(CCDMethod), protocol=0)
    old = data.replace(b"experiments.protocol", b"models.reproduce")
    assert old != data
    assert type(MOVED_PICKLE.Unpickler(io.BytesIO(old)).load()) is CCDMethod
    moved = pickle.dumps(member_state, protocol=0).replace(b"models.ccd.learner", b"models.ccd")
    assert MOVED_PICKLE.Unpickler(io.BytesIO(moved)).load() is member_state


def test_resume_skips_the_methods_that_already_learned_the_unfinished_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while ``ft`` learns D2 (after ``ccd`` and ``teacher_ft`` learned it) resumes
    from the per-method checkpoint: ccd does not learn D2 again, and the results are those of an
    uninterrupted run (the fixed-seed summary above)."""
    data = tmp_path / "interactions.tsv"
    write_blocks(data)
    out = tmp_path / "results"
    args = ["--dataset", str(data), "--out", str(out), "--preset", "stream", "--threads", "1"]

    def killed(self, block: BlockData):
        if self.student.blocks_seen == 2:  # about to learn D2
            raise KeyboardInterrupt("killed while ft learns D2")
        return unpatched_ft(self, block)

    unpatched_ft = FineTuneMethod.learn_block
    monkeypatch.setattr(FineTuneMethod, "learn_block", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*args, *TINY])
    monkeypatch.undo()

    ccd_blocks: list[int] = []
    unpatched_ccd = CCDMethod.learn_block

    def counted(self, block: BlockData):
        ccd_blocks.append(self.learner.blocks_seen)
        return unpatched_ccd(self, block)

    monkeypatch.setattr(CCDMethod, "learn_block", counted)
    assert main([*args, *TINY, "--resume"]) == 0
    assert ccd_blocks == []  # D2 was the last block and ccd had learned it before the kill
    before = json.loads((FIXTURES / "replay_summary.json").read_text())
    assert_close(json.loads((out / "summary.json").read_text()), before)


def test_distill_d0_script_redistils_a_saved_base_under_other_settings(replay_run) -> None:
    """scripts/distill_d0.py: the settings probe behind docs/results' choices of Stage 1."""
    data, out = replay_run
    script = Path(__file__).parents[2] / "scripts" / "distill_d0.py"
    command = [sys.executable, str(script), "--base", str(out), "--dataset", str(data)]
    done = subprocess.run(
        [*command, "--set", "kd_user_rrd=per_epoch", "--set", "kd_rrd_weight=0.3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("the base's own distillation: valid R@20 0.")
    assert lines[-1].startswith("kd_user_rrd=per_epoch kd_rrd_weight=0.3: best valid R@20 0.")
    assert "Stage 1 distillation: epoch 0 of at most" in done.stderr  # the curve, as it runs
