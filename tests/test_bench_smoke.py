"""The benchmarks' parts against hand-worked answers, and two tiny end-to-end runs.

The full benchmarks are not tests (``ccd bench all``); these check that what they compute is
right and that the machinery (server under test, wrk scripts, producer child, report) runs.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import service.model_holder
from bench import common, ingest, learners, loadgen, report, scale, swap, update
from bench.teacher import TeacherServingModel, install_teacher_serving
from contracts.model_store import ModelSnapshot
from service.ranking import ServingModel

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


# --- teacher serving --------------------------------------------------------------------------


def two_member_snapshot() -> ModelSnapshot:
    """Member A (column 0) scores items 3, 2, 1; member B (column 1) 0.1, 0.3, 0.2."""
    return ModelSnapshot(
        user_ids=["u"],
        item_ids=["i0", "i1", "i2"],
        user_embeddings=np.array([[1.0, 1.0]], dtype=np.float32),
        item_embeddings=np.array([[3.0, 0.1], [2.0, 0.3], [1.0, 0.2]], dtype=np.float32),
        item_popularity=np.zeros(3, dtype=np.float32),
        meta={"version": 1, "teacher_member_dims": [1, 1], "ensemble_power": 1.0},
    )


def test_teacher_fuses_member_ranks_by_hand() -> None:
    # Ranks: A -> i0 0, i1 1, i2 2; B -> i1 0, i2 1, i0 2. Power 1: mean of 1 / (rank + 1):
    # i0 (1 + 1/3) / 2 = 2/3, i1 (1/2 + 1) / 2 = 3/4, i2 (1/3 + 1/2) / 2 = 5/12.
    teacher = TeacherServingModel.from_snapshot(two_member_snapshot())
    ranked = teacher.recommend("u", 3)
    assert ranked.item_ids == ["i1", "i0", "i2"]
    np.testing.assert_allclose(ranked.scores, [3 / 4, 2 / 3, 5 / 12], rtol=1e-6)
    assert teacher.recommend("u", 3, exclude={"i1"}).item_ids == ["i0", "i2"]
    # The plain dot product of the same table ranks differently (3.1, 2.3, 1.2).
    assert ServingModel.from_snapshot(two_member_snapshot()).recommend("u", 3).item_ids == [
        "i0",
        "i1",
        "i2",
    ]


def test_install_makes_the_holder_build_teachers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.model_holder, "ServingModel", service.model_holder.ServingModel)
    install_teacher_serving()
    assert service.model_holder.ServingModel is TeacherServingModel


def test_single_user_path_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    model = ServingModel.from_snapshot(
        ModelSnapshot(
            user_ids=[f"u{u}" for u in range(5)],
            item_ids=[f"i{i}" for i in range(200)],
            user_embeddings=rng.standard_normal((5, 4)).astype(np.float32),
            item_embeddings=rng.standard_normal((200, 4)).astype(np.float32),
            item_popularity=np.zeros(200, dtype=np.float32),
        )
    )
    for user in range(5):
        exclude = {f"i{i}" for i in rng.choice(200, size=30, replace=False)}
        scores = model.item_matrix.astype(np.float64) @ model.user_vectors[user]
        order = [f"i{i}" for i in np.argsort(-scores, kind="stable") if f"i{i}" not in exclude]
        ranked = model.recommend(f"u{user}", 25, exclude)
        assert ranked.item_ids == order[:25]
        np.testing.assert_allclose(
            ranked.scores, [scores[int(i[1:])] for i in order[:25]], rtol=1e-5, atol=1e-5
        )
    everything_but_two = {f"i{i}" for i in range(198)}
    assert model.recommend("u0", 10, everything_but_two).item_ids == sorted(
        ["i198", "i199"], key=lambda i: -scores_of(model, "u0", i)
    )


def scores_of(model: ServingModel, user: str, item: str) -> float:
    return float(
        model.item_matrix[model.item_index[item]] @ model.user_vectors[model.user_index[user]]
    )


# --- numbers ------------------------------------------------------------------------------------


def test_ingest_rates_from_samples() -> None:
    closed = [0, 0, 0, 2000, 2000, 2000, 6000, 6000, 6000, 6000, 6000, 6000, 9000]
    samples = [(float(t), 1000 * t, closed[t], closed[t] // 2000) for t in range(13)]
    samples += [(13.0, 12_000, 9000, 4), (14.0, 12_000, 9000, 4)]  # drained: left out
    rates = ingest.summarise_samples(samples, closing_s=2.0)
    assert rates["seconds"] == 12.0
    assert rates["events_per_s_consumed"] == 1000.0
    assert rates["events_per_s_into_closed_blocks"] == 750.0
    # 10 s windows from t = 0, 1, 2: (6000 - 0) / 10, (6000 - 0) / 10, (9000 - 0) / 10.
    assert rates["slowest_10s_window_events_per_s"] == 600.0
    assert rates["events_per_s_excluding_block_closing"] == 1200.0


def test_percentiles_and_ratio() -> None:
    assert common.percentiles([1.0, 2.0, 3.0, 4.0, 5.0], (50, 100)) == {"p50": 3.0, "p100": 5.0}
    assert common.percentiles([], (99,)) == {"p99": None}
    assert common.ratio(6.0, 3.0) == 2.0 and common.ratio(1.0, 0.0) is None


def test_peak_memory_sees_a_temporary_allocation() -> None:
    _, cost = common.measure(lambda: np.ones(20_000_000).sum())  # 160 MB, freed before return
    assert cost.peak_increase_mib > 100


def test_epoch_scaling_and_trainer_like_ids() -> None:
    from models.ccd import CCDConfig

    scaled = update.scaled_epochs(CCDConfig(), 0.1)
    assert (scaled.base_epochs, scaled.kd_epochs, scaled.student_epochs) == (10, 1, 1)
    assert (scaled.teacher_epochs, scaled.eval_every) == (1, 1)
    # Back to full epochs, stage by stage: 2 s x 10 + 5 s x 10 + 3 s x 10 + 1 s fixed.
    stages = {"student_update": 2.0, "teacher_update": 5.0, "distill": 3.0, "teacher_graphs": 1.0}
    assert update.projected_seconds(stages, 11.0, scaled, CCDConfig()) == pytest.approx(101.0)
    renumbered = update._first_seen_ids(np.array([7, 3, 7, 9, 3]))
    assert renumbered.tolist() == [0, 1, 0, 2, 1]
    blocks = update.stream_blocks(50, 30, base_events=300, block_events=100, n_blocks=2, seed=0)
    assert [b.index for b in blocks] == [0, 1, 2]
    assert all(b.n_users >= a.n_users for a, b in zip(blocks, blocks[1:], strict=False))


# --- wrk ----------------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.seen.append((method, self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk drops its connections at the end of a run: broken pipes are expected


@needs_wrk
def test_wrk_scripts_send_what_they_say() -> None:
    server = _QuietServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    cores = common.cpu_plan()[1]
    try:
        _Recorder.seen = []
        paced = loadgen.run_wrk(url, n_users=7, connections=4, duration_s=2, cores=cores, rate=50)
        gets = list(_Recorder.seen)
        batch = loadgen.run_wrk(url, n_users=7, connections=1, duration_s=1, cores=cores, batch=5)
    finally:
        server.shutdown()
    assert 60 <= paced.requests <= 140  # 50/s for 2 s, give or take start and end
    assert sum(paced.errors.values()) == 0 and paced.latency_ms["p50"] > 0
    for method, path, _ in gets:
        match = re.fullmatch(r"/recommendations/u(\d+)\?k=20", path)
        assert method == "GET" and match and int(match.group(1)) < 7
    posts = [body for method, _, body in _Recorder.seen[len(gets) :] if method == "POST"]
    assert batch.requests > 0 and posts
    body = json.loads(posts[0])
    assert body["k"] == 20 and len(body["user_ids"]) == 5


# --- end to end ---------------------------------------------------------------------------------


@needs_wrk
def test_swap_benchmark_runs_and_reports(tmp_path: Path) -> None:
    args = swap.build_parser().parse_args(
        ["--scale", "0.01", "--seconds", "1", "--swap-every", "0.3", "--warmup", "1"]
        + ["--rate", "100", "--out", str(tmp_path)]
    )
    result = swap.run(args)
    report.save_result(result, tmp_path)
    saved = json.loads((tmp_path / "swap.json").read_text())
    assert saved["results"]["steady"]["requests"] > 0
    assert saved["results"]["versions_swapped_in"] >= 1
    assert saved["machine"]["cpus"] >= 1 and saved["versions"]["torch"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Swap impact" in text and "during swaps" in text and "Not run yet" in text


def test_ingest_benchmark_on_the_embedded_log(tmp_path: Path) -> None:
    args = ingest.build_parser().parse_args(
        ["--backend", "sqlite", "--seconds", "20", "--backlog-events", "3000"]
        + ["--block-sizes", "1000", "--base-block-size", "1000", "--live-rate", "0"]
    )
    result = ingest.run(args)
    drain = result["results"]["drain"][0]
    assert result["results"]["backlog"]["events"] == 3000
    assert drain["events_consumed"] == 3000  # the whole backlog, then it stopped early
    assert drain["blocks_closed"] == 3 and drain["events_in_closed_blocks"] == 3000
    rendered = report.section("ingest", result)
    assert "drain" in rendered and "Command:" in rendered


def test_learners_benchmark_runs_every_learner_on_one_stream(tmp_path: Path) -> None:
    args = learners.build_parser().parse_args(
        ["--blocks", "1", "--base-events", "400", "--block-events", "200"]
        + ["--users", "80", "--items", "60", "--out", str(tmp_path)]
    )
    result = learners.run(args)
    assert set(result["results"]) == {"ccd (best)", "ccd (paper)", "bpr", "als"}
    for entry in result["results"].values():
        assert len(entry["recall@20"]) == 1 and 0 <= entry["recall@20"][0] <= 1
    assert result["results"]["als"]["served_dim"] == 64
    rows = {row[0]: row for row in learners.table_rows(result)}
    assert rows["bpr"][-1] == 1.0
    assert "ccd (paper)" in report.section("learners", result)


def test_scale_benchmark_runs_at_tiny_sizes_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is a pinned dependency; the ANN side needs it")
    args = scale.build_parser().parse_args(
        ["--users", "200", "50", "--items", "300", "--dim", "4", "--requests", "10"]
        + ["--http-requests", "5", "--ann-min-items", "100", "--out", str(tmp_path)]
        + ["--churn-blocks", "1", "--churn-users", "60", "--churn-items", "40"]
        + ["--churn-base-events", "300", "--churn-block-events", "150"]
    )
    result = scale.run(args)
    steps = result["results"]["publish"]
    assert [step["users"] for step in steps] == [50, 200]  # ascending, one version each
    assert [step["version"] for step in steps] == [1, 2]
    assert all(step["publish_bytes"] > 0 and step["server_rss_mib"] > 0 for step in steps)
    ranking = result["results"]["ranking"]
    assert ranking["probe"] == ranking["lists"]  # 300 items: every list probed
    assert ranking["all items"]["recall_at_k"] == 1.0  # so ANN equals exact
    assert result["results"]["http_ann"]["requests"] == 5
    churn = result["results"]["churn"]
    assert set(churn) == {"ccd (best)", "bpr (best)", "als (best)"}
    assert all(len(pairs) == 1 and 0 <= pairs[0]["changed_share"] <= 1 for pairs in churn.values())
    text = report.section("scale", result)
    assert "exact scan vs ANN" in text and "single-machine figures" in text
    assert "delta version" in text and "bytes per user" in text
    assert "Redis model store" not in text  # no --redis-url: files only
    breakdown = result["results"]["load_breakdown"]
    assert breakdown["users"] == 200 and all(v >= 0 for v in breakdown.values())
    assert "Where the time goes" in text


@pytest.mark.integration
def test_scale_benchmark_publishes_through_redis_too(tmp_path: Path, redis_url: str) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is a pinned dependency; the ANN side needs it")
    args = scale.build_parser().parse_args(
        ["--users", "50", "--items", "300", "--dim", "4", "--requests", "5"]
        + ["--http-requests", "3", "--ann-min-items", "100", "--churn-blocks", "0"]
        + ["--redis-url", redis_url, "--out", str(tmp_path)]
    )
    result = scale.run(args)
    files, redis = result["results"], result["results"]["redis"]
    assert (files["store"], redis["store"]) == ("files", "redis")
    assert redis["publish"][0]["publish_bytes"] == files["publish"][0]["publish_bytes"]
    assert redis["redis_store_mib"] > 0
    assert "Redis model store" in report.section("scale", result)


def test_recorded_paths_inside_the_repository_are_relative(tmp_path: Path) -> None:
    # A committed report must not name one machine's folders.
    assert common.display_path(common.DEFAULT_OUT) == "docs/benchmarks"
    assert common.display_path(tmp_path) == str(tmp_path)


def test_the_report_places_the_analysis_after_the_headline(tmp_path: Path) -> None:
    assert "## Analysis" not in report.render_report(tmp_path)
    (tmp_path / report.ANALYSIS).write_text("Why the ratio is 15x.\n")
    rendered = report.render_report(tmp_path)
    assert rendered.index("## Headline") < rendered.index("## Analysis\n\nWhy the ratio is 15x.")
