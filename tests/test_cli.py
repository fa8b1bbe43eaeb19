"""The `ccd` command: every subcommand's help, settings precedence, and a `ccd up` smoke run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ccd.cli import UP_SETTINGS, build_parser, load_settings, main

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["serve", "train", "up", "produce", "version"]


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_of_every_subcommand(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ccd")
    if not command:
        for name in [*SUBCOMMANDS, "replay"]:
            assert name in text


def test_version(capsys: pytest.CaptureFixture) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("ccd ")


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "usage: ccd" in capsys.readouterr().out


def ccd_with_env(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """A real ``ccd`` process with ``env`` added to its environment, as an operator sets it."""
    return subprocess.run(
        [sys.executable, "-m", "ccd.cli", *command],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [["train"], ["serve"]])
def test_a_bad_setting_is_one_line_naming_the_variable(command: list[str]) -> None:
    done = ccd_with_env(command, CCD_LEARNER_VARIANT="bogus")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ccd: invalid CCD_LEARNER_VARIANT='bogus': Input should be 'best' or 'paper'"
    ]


def test_a_rule_between_settings_is_one_line_naming_both_variables() -> None:
    done = ccd_with_env(["train"], CCD_BLOCK_SIZE="300", CCD_MAX_BLOCK_EVENTS="200")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ccd: invalid settings: Value error, CCD_BLOCK_SIZE=300 is above "
        "CCD_MAX_BLOCK_EVENTS=200: every block would close early at the cap"
    ]


def test_seen_items_in_redis_need_kafka_and_redis_for_the_indexer_and_the_server() -> None:
    done = ccd_with_env(["indexer"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ccd indexer: needs CCD_KAFKA_BOOTSTRAP_SERVERS and CCD_REDIS_URL"
    ]
    done = ccd_with_env(["serve"], CCD_SEEN_STORE="redis", CCD_REDIS_URL="redis://x:1/0")
    assert done.returncode == 2
    assert "CCD_SEEN_STORE=redis needs CCD_KAFKA_BOOTSTRAP_SERVERS" in done.stderr


def test_replay_dispatches_its_own_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", "--help"])  # --help goes to experiments.protocol's parser, not ours
    assert exit_info.value.code == 0
    assert "--dataset" in capsys.readouterr().out


def test_flags_override_environment_which_overrides_up_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CCD_BLOCK_SIZE", "77")
    monkeypatch.setenv("CCD_PORT", "9001")
    args = build_parser().parse_args(["up", "--port", "9002", "--data-dir", str(tmp_path)])
    settings = load_settings(
        {"port": args.port, "data_dir": args.data_dir, "host": args.host}, defaults=UP_SETTINGS
    )
    assert settings.port == 9002  # flag beats environment
    assert settings.block_size == 77  # environment beats the `ccd up` default
    assert settings.base_block_size == UP_SETTINGS["base_block_size"]  # default beats Settings'
    assert settings.host == "127.0.0.1"  # an absent flag changes nothing
    assert settings.data_dir == tmp_path.resolve()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_up_serves_advancing_versions(tmp_path: Path) -> None:
    """`ccd up` with tiny blocks: ready, a personalized answer from version >= 2, clean Ctrl-C."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    env.update(CCD_LEARNER="bpr", CCD_TORCH_THREADS="1", CCD_RELOAD_POLL_S="0.5")
    command = [sys.executable, "-m", "ccd", "up", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "data"), "--users", "100", "--items", "50"]
    command += ["--base-block-size", "300", "--block-size", "200", "--rate", "400"]
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            answer = _wait_for_recommendation(port, min_version=2, timeout_s=90.0)
            assert answer["strategy"] == "personalized"
            assert len(answer["items"]) == 5
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log_text = log_path.read_text()
    assert re.search(r"serving model version \d+ ", log_text), log_text[-3000:]
    assert "trainer exited with code 0" in log_text, log_text[-3000:]


def _wait_for_recommendation(port: int, min_version: int, timeout_s: float) -> dict:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/ready", timeout=2.0).status_code == 200:
                last = httpx.get(f"{base}/recommendations/u1", params={"k": 5}, timeout=2.0)
                body = last.json()
                if body["model_version"] >= min_version:
                    return body
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError(f"no model version {min_version} within {timeout_s} s: {last}")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children of children too)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue  # the task just ended
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_up_leaves_no_process_behind(tmp_path: Path, signum: int) -> None:
    """`kill`, `docker stop` (SIGTERM), a closed terminal (SIGHUP) and `kill -9` of `ccd up`
    end its trainer and producer too (SIGTERM once left them running as orphans)."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    env.update(CCD_LEARNER="bpr", CCD_TORCH_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "ccd", "up", "--port", str(port), "--rate", "50"]
    command += ["--data-dir", str(tmp_path / "data"), "--users", "20", "--items", "20"]
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = log_path.read_text()
            if "trainer started (pid" in text and "producer started (pid" in text:
                if signum == signal.SIGKILL or "Uvicorn running" in text:
                    break
            assert process.poll() is None, text[-3000:]
            time.sleep(0.2)
        children = _descendants(process.pid)
        assert len(children) >= 2, (children, log_path.read_text()[-3000:])
        process.send_signal(signum)
        code = process.wait(timeout=40)
        assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 0)
        deadline = time.monotonic() + 30
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(pid for pid in children if _alive(pid))
        assert not left, f"left running: {left}\n{log_path.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _ccd(args: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``ccd ARGS`` in a fresh process in embedded mode (no CCD_* variables)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    command = [sys.executable, "-m", "ccd", *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.stderr[-3000:]


def test_produce_of_a_missing_or_unreadable_file_says_so_in_one_line(tmp_path: Path) -> None:
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("a,b\n1,2\n")
    cases = [(tmp_path / "missing.csv", "No such file"), (tmp_path, "Is a directory")]
    for path, reason in [*cases, (bad_header, "no column for")]:
        result = _ccd(["produce", str(path), "--data-dir", str(tmp_path / "data")])
        _assert_one_line_error(result, f"ccd produce: {path}", reason)
    assert not (tmp_path / "data").exists()  # nothing was opened


def test_up_with_a_missing_file_starts_nothing(tmp_path: Path) -> None:
    """It used to print the producer's traceback and serve on, with a trainer and no data."""
    missing = tmp_path / "missing.csv"
    command = ["up", "--data", str(missing), "--data-dir", str(tmp_path / "data")]
    result = _ccd([*command, "--port", str(_free_port())])
    _assert_one_line_error(result, f"ccd up: {missing}: No such file")
    assert not (tmp_path / "data").exists()  # neither trainer nor server opened it


def _up_until_serving(tmp_path: Path, args: list[str]) -> None:
    """A real `ccd up ARGS` until its server listens, then Ctrl-C; asserts a clean exit."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCD_")}
    env.update(CCD_LEARNER="bpr", CCD_TORCH_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "ccd", "up", "--port", str(_free_port()), *args]
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_up_refuses_a_data_dir_made_from_another_source(tmp_path: Path) -> None:
    """A file streamed into a synthetic run's directory (or another synthetic seed) was learned
    on top of that run's model; now `ccd up` refuses it, naming both sources and the way out."""
    data_dir = tmp_path / "data"
    synthetic = ["--data-dir", str(data_dir), "--users", "20", "--items", "10", "--rate", "5"]
    _up_until_serving(tmp_path, synthetic)
    recorded = json.loads((data_dir / "source.json").read_text())
    assert recorded == {"kind": "synthetic", "users": 20, "items": 10, "seed": 0}
    events = tmp_path / "events.csv"
    events.write_text("user,item,timestamp\nu1,i1,1\n")
    for other in (["--data", str(events)], ["--seed", "1"], ["--users", "21"]):
        result = _ccd(["up", *synthetic, *other, "--port", str(_free_port())])
        _assert_one_line_error(result, "synthetic events (users 20, items 10, seed 0)", "rm -r")
    assert json.loads((data_dir / "source.json").read_text()) == recorded
    _up_until_serving(tmp_path, [*synthetic, "--rate", "7"])  # the same source resumes


def test_up_refuses_a_data_dir_of_an_unrecorded_source(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "events.sqlite").write_bytes(b"")  # e.g. from before sources were recorded
    result = _ccd(["up", "--data-dir", str(data_dir), "--port", str(_free_port())])
    _assert_one_line_error(result, "unrecorded source", "rm -r")
    assert not (data_dir / "source.json").exists()
