"""docker-compose.yml and docker/Dockerfile agree with the CLI, the settings and the app.

No Docker engine runs where the tests do, so this checks what `docker compose up` would rely on:
every `ccd` command parses with the real argument parser, every CCD_* variable is a valid Settings
field, services point at each other by the right names and ports, health checks hit real routes,
and the files the Dockerfile copies exist. The health-check script itself runs for real.
"""

from __future__ import annotations

import http.server
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ccd.cli import build_parser
from contracts.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
HEALTHCHECK_SCRIPT = REPO_ROOT / "scripts" / "healthcheck.py"
CCD_SERVICES = {"trainer": "train", "indexer": "indexer", "server": "serve"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


# --- parsing helpers ------------------------------------------------------------------------------


def interpolate(value: Any) -> str:
    """What compose substitutes with an empty shell environment: ${X:-default} -> default."""
    return INTERPOLATION.sub(lambda m: m.group("default") or "", str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def exec_form(arguments: str) -> list[str]:
    """A Dockerfile ENTRYPOINT/CMD in JSON (exec) form."""
    return yaml.safe_load(arguments)


def instruction(dockerfile: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instr, arguments in dockerfile if instr == name]


def ccd_environment(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        name: {k: interpolate(v) for k, v in service.get("environment", {}).items()}
        for name, service in services.items()
        if name in CCD_SERVICES
    }


def healthcheck_command(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    return list(test)


# --- compose: the services and their commands ----------------------------------------------------


def test_compose_runs_kafka_redis_trainer_and_server(services: dict[str, Any]) -> None:
    assert set(services) >= {"kafka", "redis", "trainer", "server"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["redis"]["image"].split(":")[0] == "redis"
    for name in CCD_SERVICES:
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert (REPO_ROOT / services[name]["build"]["context"] / "docker/Dockerfile").is_file()
    assert services["trainer"]["image"] == services["server"]["image"]  # one image, two roles


@pytest.mark.parametrize("service_name", sorted(CCD_SERVICES))
def test_ccd_commands_parse_with_the_real_cli(
    services: dict[str, Any], dockerfile: list[tuple[str, str]], service_name: str
) -> None:
    entrypoint = exec_form(instruction(dockerfile, "ENTRYPOINT")[-1])
    command = services[service_name]["command"]
    assert entrypoint == ["ccd"]
    assert "entrypoint" not in services[service_name]
    args = build_parser().parse_args(command)  # exits (fails the test) on an unknown flag
    assert args.handler.__name__ == f"cmd_{CCD_SERVICES[service_name]}"


def test_server_listens_where_its_port_and_health_check_point(services: dict[str, Any]) -> None:
    args = build_parser().parse_args(services["server"]["command"])
    assert args.host == "0.0.0.0"  # reachable from the other containers and the host
    assert [str(port) for port in services["server"]["expose"]] == [str(args.port)]
    assert "ports" not in services["server"]  # its replicas are reached through the balancer
    check = healthcheck_command(services["server"])
    url = urlsplit(check[-1])
    assert (url.hostname, url.port) == ("127.0.0.1", args.port)
    # Alive, not ready: no model before the base block fills is not a reason to restart.
    assert url.path == "/health/live"


def test_the_balancer_spreads_requests_over_every_ready_server_replica(
    services: dict[str, Any],
) -> None:
    lb, server = services["lb"], services["server"]
    assert lb["image"].split(":")[0] == "haproxy"  # the official image
    config_mount = "./docker/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert lb["volumes"] == [config_mount]
    assert [str(mapping) for mapping in lb["ports"]] == ["8000:8000"]
    config = (REPO_ROOT / "docker" / "haproxy.cfg").read_text()
    port = build_parser().parse_args(server["command"]).port
    assert re.search(r"^\s*bind :8000$", config, re.MULTILINE)
    slots = re.search(r"^\s*server-template \w+ (\d+) server:(\d+) ", config, re.MULTILINE)
    assert slots is not None, "no server-template for the replicas of service server"
    assert (int(slots.group(1)), int(slots.group(2))) == (server["deploy"]["replicas"], port)
    assert "option httpchk GET /health/ready" in config  # only replicas with a model serve


def test_the_base_block_is_one_a_first_test_can_fill(services: dict[str, Any]) -> None:
    default = services["trainer"]["environment"]["CCD_BASE_BLOCK_SIZE"]
    assert default == "${CCD_BASE_BLOCK_SIZE:-2000}"


def test_every_ccd_variable_is_a_valid_settings_field(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for service_name, environment in ccd_environment(services).items():
        ccd_vars = {k: v for k, v in environment.items() if k.startswith("CCD_")}
        assert ccd_vars, f"{service_name} sets no CCD_* variable"
        values = {key.removeprefix("CCD_").lower(): value for key, value in ccd_vars.items()}
        assert set(values) <= fields, f"{service_name}: unknown {set(values) - fields}"
        settings = Settings(**values)  # raises on a value of the wrong type or out of range
        assert settings.uses_kafka and settings.uses_redis


def test_services_point_at_kafka_and_redis_by_name(services: dict[str, Any]) -> None:
    kafka_env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    advertised = {
        listener.split("://")[1] for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for service_name, environment in ccd_environment(services).items():
        assert environment["CCD_KAFKA_BOOTSTRAP_SERVERS"] in advertised, service_name
        redis = urlsplit(environment["CCD_REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
        assert "kafka" in services and redis.hostname in services


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(
        (entry.split("://")[0], entry.split(":")[-1]) for entry in env["KAFKA_LISTENERS"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
        f"{env['KAFKA_NODE_ID']}@kafka:{listeners[controller]}"
    )
    protocols = dict(
        entry.split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # one broker holds every replica


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        assert healthcheck_command(service)[0] in {"CMD", "CMD-SHELL"}, name
    for name in CCD_SERVICES:
        depends_on = services[name]["depends_on"]
        for dependency in ("kafka", "redis"):
            assert depends_on[dependency]["condition"] == "service_healthy", name


def test_server_health_check_is_a_get_route_of_the_app(
    services: dict[str, Any], data_dir: Path
) -> None:
    try:
        from service.app import create_app
    except ModuleNotFoundError as error:
        pytest.skip(f"service.app not importable yet: {error}")
    path = urlsplit(healthcheck_command(services["server"])[-1]).path
    app = create_app(Settings(data_dir=data_dir))  # routes only; the lifespan is not entered
    assert path == "/health/live"
    assert "get" in app.openapi()["paths"][path]


def test_health_check_scripts_are_in_the_image(
    services: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    workdir = instruction(dockerfile, "WORKDIR")[-1]
    copied = {}
    for arguments in instruction(dockerfile, "COPY"):
        source, target = shlex.split(arguments)[-2:]
        copied[str(Path(workdir, target))] = source
    for name in CCD_SERVICES:
        command = healthcheck_command(services[name])
        scripts = [part for part in command if part.endswith(".py")]
        assert scripts, name
        assert copied.get(scripts[0]) == str(HEALTHCHECK_SCRIPT.relative_to(REPO_ROOT))


# --- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_builds_the_project_on_python_3_11_slim(
    dockerfile: list[tuple[str, str]],
) -> None:
    assert instruction(dockerfile, "FROM") == ["python:3.11-slim"]
    cmd = exec_form(instruction(dockerfile, "CMD")[-1])
    assert build_parser().parse_args(cmd).handler.__name__ == "cmd_serve"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["ccd"] == "ccd.cli:main"  # the ENTRYPOINT's command
    sources = {shlex.split(arguments)[-2] for arguments in instruction(dockerfile, "COPY")}
    packages = {
        name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= sources, f"packages not copied: {packages - sources}"
    env = " ".join(instruction(dockerfile, "ENV"))
    for name, value in re.findall(r"\b(CCD_\w+)=(\S+)", env):
        assert name.removeprefix("CCD_").lower() in Settings.model_fields
        Settings(**{name.removeprefix("CCD_").lower(): value})


def test_dockerfile_copies_only_existing_files_the_dockerignore_lets_through(
    dockerfile: list[tuple[str, str]],
) -> None:
    lines = DOCKERIGNORE.read_text().splitlines()
    assert "*" in lines  # an allow-list: everything else stays out of the build context
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for arguments in instruction(dockerfile, "COPY"):
        source = shlex.split(arguments)[-2]
        assert (REPO_ROOT / source).exists(), f"{source} is copied but missing"
        assert source in allowed, f"{source} is excluded by .dockerignore"


# --- the health-check script, run for real -------------------------------------------------------


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> int:
    command = [sys.executable, str(HEALTHCHECK_SCRIPT), *args]
    return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode


def test_http_health_check_passes_only_on_2xx(status_server: str) -> None:
    assert run_healthcheck("http", f"{status_server}/ok") == 0
    assert run_healthcheck("http", f"{status_server}/not-ready") == 1
    assert run_healthcheck("http", "http://127.0.0.1:1/health/ready") == 1  # nothing listens


def test_trainer_health_check_follows_consumer_group_membership(
    kafka_bootstrap: str, unique_name: str
) -> None:
    from kafka import KafkaConsumer

    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "CCD_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CCD_KAFKA_GROUP_ID": unique_name,
    }
    assert run_healthcheck("trainer", env=env) == 1  # no member yet
    consumer = KafkaConsumer(unique_name, bootstrap_servers=kafka_bootstrap, group_id=unique_name)
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert consumer.assignment()
        assert run_healthcheck("trainer", env=env) == 0
    finally:
        consumer.close()
    assert run_healthcheck("trainer", env=env) == 1  # left the group


@pytest.mark.integration  # starts a real redis-server
def test_the_test_harness_runs_redis_with_an_append_only_file_like_compose(
    services: dict[str, Any], tmp_path: Path
) -> None:
    # Without one, a restart of `make services`' Redis lost the version counter and the lease.
    import redis

    from tests.faults.harness import test_services

    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    server, url = test_services.start_redis(tmp_path)
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.stop()
