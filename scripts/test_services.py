"""Start a real Kafka broker (KRaft) and a real redis-server, run pytest against them, stop them.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python scripts/test_services.py [-- PYTEST_ARGS...]   # pytest on real services
    .venv/bin/python scripts/test_services.py --hold                # start them, wait for Ctrl-C

The addresses reach the tests as ``CCD_TEST_KAFKA_BOOTSTRAP`` and ``CCD_TEST_REDIS_URL``; every
other ``CCD_*`` variable is removed from pytest's environment so that ``Settings()`` in unit tests
sees only its defaults. If ``CCD_KAFKA_BOOTSTRAP_SERVERS`` / ``CCD_REDIS_URL`` are already set,
those services are used as they are and nothing is started for them.

Kafka: the jars of ``org.apache.kafka:kafka_2.13`` (version in scripts/kafka/pom.xml) are copied by
Maven into ``$XDG_CACHE_HOME/ccd-kafka/<version>-<pom hash>/libs`` (default ``~/.cache``; override
with ``CCD_TEST_KAFKA_CACHE``) once, then reused. Redis: Debian's ``redis-server``, installed with
apt-get when missing. Both run on free loopback ports, with their state in a temporary directory
that is deleted afterwards, and are stopped on success, failure, Ctrl-C and SIGTERM.

Chromium: Debian's ``chromium``, installed with apt-get when missing, for the dashboard's
browser test (Playwright drives it); its path reaches pytest as ``CCD_TEST_CHROMIUM``. Where it
cannot be installed the suite still runs and that test skips, saying so.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
KAFKA_ENV = "CCD_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "CCD_TEST_REDIS_URL"
CHROMIUM_ENV = "CCD_TEST_CHROMIUM"
STARTUP_TIMEOUT_S = 180.0  # a cold JVM on 2 busy cores can take a while
STOP_TIMEOUT_S = 15.0
PYTEST_NO_TESTS = 5
KAFKA_JVM_OPTS = ["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]


class ServiceError(RuntimeError):
    """A service could not be prepared or did not come up."""


def log(message: str) -> None:
    print(f"[test-services] {message}", file=sys.stderr, flush=True)


# --- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_checked(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ServiceError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def tail(paths: tuple[Path, ...], lines: int = 30) -> str:
    parts = []
    for path in paths:
        text = path.read_text(errors="replace") if path.exists() else "(missing)"
        parts.append(f"--- {path}\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(parts)


def apt_install(*packages: str) -> None:
    """Install Debian packages (CI machines start without some of them)."""
    if shutil.which("apt-get") is None:
        raise ServiceError(f"{' '.join(packages)} missing and apt-get is not available")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(packages)} with apt-get")
    run_checked([*sudo, "apt-get", "update", "-q"], "apt-get update", env)
    run_checked([*sudo, "apt-get", "install", "-y", "-q", *packages], "apt-get install", env)


def require_tool(tool: str, package: str) -> str:
    if shutil.which(tool) is None:
        apt_install(package)
    path = shutil.which(tool)
    if path is None:
        raise ServiceError(f"{tool} still missing after installing {package}")
    return path


@dataclass
class Service:
    """A started process; stopped by its own process group so its children go too."""

    name: str
    process: subprocess.Popen[bytes]
    log_paths: tuple[Path, ...]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with {self.process.returncode}; last log lines:\n"
                f"{tail(self.log_paths)}"
            )

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s, killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this script dies without cleaning up (SIGKILL)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn(name: str, cmd: list[str], cwd: Path, output: Path, *other_logs: Path) -> Service:
    """Start `cmd` in its own session with stdout and stderr in `output`."""
    with output.open("ab") as out:
        process = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches pytest, not the services
            preexec_fn=die_with_parent,
        )
    return Service(name, process, (output, *other_logs))


def wait_until(service: Service, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            if ready():
                return
        except Exception as error:  # noqa: BLE001 - any failure just means "not yet"
            last_error = error
        time.sleep(0.25)
    raise ServiceError(
        f"{service.name}: {what} not reached in {STARTUP_TIMEOUT_S:.0f} s ({last_error}); "
        f"last log lines:\n{tail(service.log_paths)}"
    )


# --- Redis ----------------------------------------------------------------------------------------


def start_redis(work_dir: Path) -> tuple[Service, str]:
    redis_server = require_tool("redis-server", "redis-server")
    port = free_port()
    data_dir = work_dir / "redis"
    data_dir.mkdir()
    cmd = [
        redis_server,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes",  # as docker-compose.yml: a restart keeps versions and epochs
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", "",
    ]  # fmt: skip
    service = spawn("redis-server", cmd, data_dir, work_dir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(service, lambda: redis_ping(url), "PING")
    return service, url


def redis_ping(url: str) -> bool:
    from contracts.redis_client import connect

    client = connect(url, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


# --- Kafka ----------------------------------------------------------------------------------------


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", KAFKA_POM.read_text())
    if match is None:
        raise ServiceError(f"no <kafka.version> in {KAFKA_POM}")
    return match.group(1).strip()


def kafka_libs() -> Path:
    """The broker's jars, copied from Maven Central on first use and cached outside the tree."""
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:12]
    cache_root = os.environ.get("CCD_TEST_KAFKA_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ccd-kafka"
    )
    libs = Path(cache_root) / f"{kafka_version()}-{pom_hash}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = require_tool("mvn", "maven")
    staging = libs.with_name(f"libs.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"resolving Kafka {kafka_version()} jars with Maven into {libs.parent}")
    started = time.monotonic()
    run_checked(
        [
            mvn, "-B", "-q", "-f", str(KAFKA_POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ],
        "mvn dependency:copy-dependencies",
    )  # fmt: skip
    (staging / ".complete").touch()
    if (libs / ".complete").exists():  # another run finished first; keep its copy in place
        shutil.rmtree(staging)
        return libs
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)  # atomic: a half-copied cache is never mistaken for a complete one
    log(f"Kafka jars resolved in {time.monotonic() - started:.1f} s")
    return libs


def kafka_properties(work_dir: Path, broker_port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "log.dirs": str(work_dir / "kafka-data"),
        "auto.create.topics.enable": "true",
        "num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        # One replica of every internal topic, and few partitions so they are created quickly.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        # The machine has 2 cores; the defaults start many more threads than a test needs.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j_config(log_file: Path) -> str:
    return (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
    )


def start_kafka(work_dir: Path) -> tuple[Service, str]:
    java = require_tool("java", "openjdk-17-jre-headless")
    libs = kafka_libs()
    broker_port, controller_port = free_port(), free_port()
    while controller_port == broker_port:
        controller_port = free_port()
    kafka_dir = work_dir / "kafka"
    kafka_dir.mkdir()
    properties = kafka_dir / "server.properties"
    properties.write_text(kafka_properties(kafka_dir, broker_port, controller_port))
    log4j = kafka_dir / "log4j2.properties"
    log4j.write_text(log4j_config(kafka_dir / "server.log"))
    base = [java, *KAFKA_JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    # "--cluster-id=...": a random id may start with "-", which a separate argument would not pass
    run_checked(
        [*base, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         "-c", str(properties), "--standalone"],
        "kafka-storage format",
    )  # fmt: skip
    cmd = [*base, "kafka.Kafka", str(properties)]
    service = spawn("kafka", cmd, kafka_dir, kafka_dir / "stdout.log", kafka_dir / "server.log")
    bootstrap = f"127.0.0.1:{broker_port}"
    wait_until(service, lambda: kafka_ready(bootstrap), "a metadata answer with one live broker")
    return service, bootstrap


def kafka_ready(bootstrap: str) -> bool:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        brokers = admin.describe_cluster()["brokers"]
        return any(not broker.get("is_fenced", False) for broker in brokers)
    finally:
        admin.close()


# --- orchestration --------------------------------------------------------------------------------


def child_environment(kafka: str, redis_url: str) -> dict[str, str]:
    """pytest's environment: the CCD_TEST_* addresses, and no CCD_* that Settings() would read."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CCD_") or key.startswith("CCD_TEST_")
    }
    env[KAFKA_ENV] = kafka
    env[REDIS_ENV] = redis_url
    return env


@contextlib.contextmanager
def services() -> Iterator[tuple[str, str]]:
    """Start (or reuse from CCD_* variables) Kafka and Redis; yield (bootstrap, redis URL)."""
    started_at = time.monotonic()
    with contextlib.ExitStack() as stack:
        work_dir = Path(tempfile.mkdtemp(prefix="ccd-test-services-"))
        stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
        redis_url = os.environ.get("CCD_REDIS_URL")
        if redis_url:
            log(f"using Redis from CCD_REDIS_URL: {redis_url}")
        else:
            redis_service, redis_url = start_redis(work_dir)
            stack.callback(stop_and_log, redis_service)
            log(f"redis-server up at {redis_url} ({time.monotonic() - started_at:.1f} s)")
        bootstrap = os.environ.get("CCD_KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            log(f"using Kafka from CCD_KAFKA_BOOTSTRAP_SERVERS: {bootstrap}")
        else:
            kafka_started = time.monotonic()
            kafka_service, bootstrap = start_kafka(work_dir)
            stack.callback(stop_and_log, kafka_service)
            log(f"Kafka up at {bootstrap} ({time.monotonic() - kafka_started:.1f} s)")
        log(f"services ready in {time.monotonic() - started_at:.1f} s")
        yield bootstrap, redis_url


def find_chromium() -> str | None:
    """Debian's ``chromium`` for the dashboard's browser test, installed with apt-get when
    missing; None (the test then skips, saying why) where it cannot be installed."""
    try:
        path = require_tool("chromium", "chromium")
    except ServiceError as error:
        log(f"no chromium, the browser test will be skipped: {error}")
        return None
    log(f"chromium for the browser test: {path}")
    return path


def stop_and_log(service: Service) -> None:
    started = time.monotonic()
    service.stop()
    log(f"stopped {service.name} ({time.monotonic() - started:.1f} s)")


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_pytest(env: dict[str, str], pytest_args: list[str]) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *pytest_args], cwd=REPO_ROOT, env=env
    )
    try:
        return process.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached pytest too; a SIGTERM sent to us alone did not. Either way
        # pytest gets a SIGINT (after a grace period) so that its fixtures tear down.
        for signal_to_send, grace_s in ((None, 5), (signal.SIGINT, 30), (signal.SIGKILL, None)):
            if signal_to_send is not None:
                process.send_signal(signal_to_send)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return process.wait(timeout=grace_s)
        raise


def hold(bootstrap: str, redis_url: str) -> int:
    print(f"export {KAFKA_ENV}={bootstrap} {REDIS_ENV}={redis_url}", flush=True)
    log("services running; Ctrl-C stops them")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold", action="store_true", help="start the services and wait")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then pytest arguments")
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # so the services are stopped too
    try:
        with services() as (bootstrap, redis_url):
            if args.hold:
                return hold(bootstrap, redis_url)
            env = child_environment(bootstrap, redis_url)
            chromium = find_chromium()
            if chromium is not None:
                env[CHROMIUM_ENV] = chromium
            exit_code = run_pytest(env, pytest_args)
    except ServiceError as error:
        log(f"ERROR: {error}")
        return 3
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    if exit_code == PYTEST_NO_TESTS:
        log("pytest collected no tests: that is a failure here, the suite is never empty")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
