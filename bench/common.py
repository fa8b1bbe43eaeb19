"""What every benchmark shares: machine and version facts, percentiles, peak memory, result files,
tables, and starting / stopping the server under test."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from experiments.report import hardware_info, markdown_lines

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks"
DEFAULT_REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
_PACKAGES = (
    "ccd-recommender",
    "torch",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "orjson",
    "httptools",
    "uvloop",
    "kafka-python",
    "redis",
)


# --- facts about the run ----------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores (all, and those this process may use), memory, kernel, and the load
    average at start: the last says how busy the machine was (numbers are noisy when it is).
    Read by ``experiments.report.hardware_info``, as the replay reports do."""
    hardware = hardware_info()
    return {
        "cpu_model": hardware["cpu_model"],
        "cpus": hardware["cpu_cores"],
        "cpus_usable": hardware["cpu_cores_usable"],
        "memory_gib": hardware["memory_gib"],
        "kernel": platform.release(),
        "machine": platform.machine(),
        "load_average_at_start": hardware["load_average_at_start"],
    }


def versions(**extra: str | None) -> dict[str, str | None]:
    """Python, the packages that matter to the numbers (None = not installed), the git commit."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["git_commit"] = _git_commit()
    found.update(extra)
    return found


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


def tool_version(command: Sequence[str]) -> str | None:
    """First output line of e.g. ``wrk --version`` (None when the tool is missing)."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else None


# Set by ``ccd bench all`` to the single-benchmark command each result should name.
invoked_as: str | None = None


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside (what a reader of a committed
    report can follow), else as given."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


def exact_command() -> str:
    """The command line that ran this benchmark, as a shell would take it."""
    if invoked_as is not None:
        return invoked_as
    if Path(sys.argv[0]).name == "ccd":
        return shlex.join(["ccd", *sys.argv[1:]])
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


# --- numbers --------------------------------------------------------------------------------------


def percentiles(samples: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict:
    """``{"p50": ..., ...}`` of ``samples`` (linear interpolation); NaN-free, None when empty."""
    if len(samples) == 0:
        return {f"p{p:g}": None for p in points}
    values = np.percentile(np.asarray(samples, dtype=np.float64), list(points))
    return {f"p{p:g}": float(v) for p, v in zip(points, values, strict=True)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant figures, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 10 ** (digits - 1):
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


# --- peak memory ------------------------------------------------------------------------------


def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process in KiB, from /proc."""
    status = Path("/proc/self/status").read_text().splitlines()
    values = {line.split(":")[0]: line.split()[1] for line in status if line.startswith("Vm")}
    return int(values.get("VmRSS", 0)), int(values.get("VmHWM", 0))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Measured:
    """Wall time and memory of one measured call."""

    seconds: float
    rss_before_mib: float
    peak_rss_mib: float  # the process's peak RSS during the call

    @property
    def peak_increase_mib(self) -> float:
        return self.peak_rss_mib - self.rss_before_mib


class _RssSampler:
    """Fallback when the peak cannot be reset: samples RSS every few milliseconds."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.peak = rss_kib()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.peak = max(self.peak, rss_kib()[0])

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib()[0])


def measure(fn, *args: Any, **kwargs: Any) -> tuple[Any, Measured]:
    """Run ``fn`` and return its result with wall time and peak RSS (kernel high-water mark
    after a reset, else a 5 ms sampler)."""
    before = rss_kib()[0]
    if reset_peak_rss():
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - started
        peak = rss_kib()[1]
    else:
        with _RssSampler() as sampler:
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds = time.perf_counter() - started
        peak = sampler.peak
    return out, Measured(seconds, before / 1024, max(peak, before) / 1024)


# --- results ------------------------------------------------------------------------------------


@dataclass
class Target:
    """One of the issue's targets and how this run did against it."""

    name: str
    target: str  # as the issue states it, e.g. "<= 1.5 ms"
    measured: float | None
    unit: str
    met: bool | None  # None: not measured in this run
    note: str = ""


def new_result(name: str, title: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": name,
        "title": title,
        "command": exact_command(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "params": params,
        "results": {},
        "targets": [],
        "notes": [],
    }


def add_target(result: dict[str, Any], target: Target) -> None:
    result["targets"].append(asdict(target))


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder of the JSON results (default docs/benchmarks; the report docs/BENCHMARKS.md "
        "is regenerated from it; any other folder gets its own BENCHMARKS.md)",
    )


# --- tables -------------------------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join(markdown_lines(headers, [[fmt(c) for c in row] for row in rows]))


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_plan() -> tuple[list[int], list[int]]:
    """(server cores, load-generator cores): the first usable core for the server, the last
    for the load generator; both the same single core on a one-core machine."""
    cores = sorted(os.sched_getaffinity(0))
    return [cores[0]], [cores[-1]]


def pinned(command: Sequence[str], cores: Sequence[int]) -> list[str]:
    """``command`` under ``taskset`` (unchanged when taskset is missing)."""
    from shutil import which

    if which("taskset") is None:
        return list(command)
    return ["taskset", "-c", ",".join(map(str, cores)), *command]


@contextlib.contextmanager
def this_process_on(cores: Sequence[int]) -> Iterator[None]:
    """Pin this process to ``cores`` for the block, then restore its affinity."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Child:
    """A process started by a benchmark, stopped by its own process group."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str, command: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Child(name, process, log_path)


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.stop()


def child_env(**overrides: str) -> dict[str, str]:
    """This environment without CCD_* settings (children get theirs explicitly), plus
    ``overrides``; one torch/OpenMP thread unless overridden (each process owns one core)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCD_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout_s: float, child: Child | None = None, ok=None) -> dict:
    """GET ``url`` until it answers 200 (and ``ok(json)`` holds); returns the JSON body."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: Exception | str | None = None
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            response = httpx.get(url, timeout=5.0)
            if response.status_code == 200:
                body = response.json()
                if ok is None or ok(body):
                    return body
                last = f"not yet: {body}"
            else:
                last = f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.1)
    tail = f"\n{child.log_tail()}" if child is not None else ""
    raise TimeoutError(f"{url} not ready in {timeout_s:.0f} s ({last}){tail}")


def load_test_services() -> ModuleType:
    """``scripts/test_services.py`` (real Kafka and Redis) as a module."""
    path = REPO_ROOT / "scripts" / "test_services.py"
    spec = importlib.util.spec_from_file_location("ccd_test_services", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ccd_test_services", module)
    spec.loader.exec_module(module)
    return module
