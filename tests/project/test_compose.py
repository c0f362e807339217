"""docker-compose.yml and the Dockerfile agree with the settings and the CLI (no Docker needed).

Docker cannot run here, so these tests read the files: the expected services exist, every
``RIVERSTREAM_*`` variable is a field of `Settings`, published ports are the settings' defaults,
the learner and the API are built from our Dockerfile and run real ``riverstream`` subcommands,
and the mounted observability files exist.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from schemas.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

EXPECTED_SERVICES = {"kafka", "redis", "prometheus", "grafana", "learner", "api", "predict-worker"}
APP_SERVICES = ("learner", "api", "predict-worker")

# The subcommands compose runs and the options it passes to them:
# test_commands_are_riverstream_subcommands checks compose against this table, and
# test_table_matches_registered_cli the table against the commands of `stream.cli.main.app`.
SUBCOMMAND_OPTIONS = {
    "learn": {"--model"},
    "serve": {"--host", "--port", "--workers"},
    "predict-worker": set(),
}

INTERPOLATION = re.compile(r"\$\{(RIVERSTREAM_[A-Z0-9_]+)")


def default(field: str) -> Any:
    return Settings.model_fields[field].default


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port → host port."""
    ports = {}
    for spec in service.get("ports", []):
        if isinstance(spec, dict):
            ports[int(spec["target"])] = int(spec["published"])
        else:
            host, container = str(spec).rsplit(":", 2)[-2:]
            ports[int(container.split("/")[0])] = int(host)
    return ports


def option_value(command: list[str], option: str) -> str:
    assert option in command, f"{option} missing from {command}"
    return command[command.index(option) + 1]


def registered_commands() -> dict[str, Any]:
    """Top-level subcommands of `stream.cli.main.app`, as (typer's) click commands."""
    from stream.cli.main import app

    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


# -- services ------------------------------------------------------------------------------


def test_expected_services(services: dict[str, Any]) -> None:
    assert set(services) >= EXPECTED_SERVICES


def test_images_are_pinned(services: dict[str, Any]) -> None:
    assert services["kafka"]["image"] == "apache/kafka:4.3.1"
    assert services["kafka"]["image"].endswith(default("kafka_version"))
    assert services["redis"]["image"] == "redis:7"
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"] == "grafana/grafana:11.6.0"


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    # the app services reach the broker on the advertised in-network listener
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in APP_SERVICES:
        bootstrap = environment(services[name])["RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
        assert any(a.endswith("://" + bootstrap) for a in advertised), (name, bootstrap)


def test_redis_persists(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    command = command if isinstance(command, list) else command.split()
    assert option_value(command, "--appendonly") == "yes"
    assert any(str(v).endswith(":/data") for v in services["redis"]["volumes"])


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name in EXPECTED_SERVICES:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_depends_on_conditions(services: dict[str, Any]) -> None:
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] in valid, (name, dep)
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{dep} has no healthcheck"
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        for backing in ("kafka", "redis"):
            assert deps[backing]["condition"] == "service_healthy", (name, backing)


# -- settings ------------------------------------------------------------------------------


def test_every_riverstream_variable_is_a_settings_field(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    fields = set(Settings.model_fields)
    used = set(INTERPOLATION.findall(COMPOSE.read_text()))
    for service in services.values():
        used |= {k for k in environment(service) if k.startswith(ENV_PREFIX)}
    assert used, "compose configures nothing through RIVERSTREAM_* variables"
    unknown = {v for v in used if v.removeprefix(ENV_PREFIX).lower() not in fields}
    assert not unknown, f"not fields of Settings: {sorted(unknown)}"


def test_app_environment_builds_valid_settings(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["RIVERSTREAM_REDIS_URL"] == "redis://redis:6379/0"
        # required from the caller's environment, with an error message when missing
        assert env["RIVERSTREAM_SNAPSHOT_KEY"].startswith("${RIVERSTREAM_SNAPSHOT_KEY:?")
        values: dict[str, Any] = {
            k.removeprefix(ENV_PREFIX).lower(): re.sub(r"\$\{[^}]*:-([^}]*)\}", r"\1", v)
            for k, v in env.items()
            if k.startswith(ENV_PREFIX)
        }
        values["snapshot_key"] = "a-test-secret"
        settings = Settings(**values)
        assert settings.require_snapshot_key() == b"a-test-secret"


def test_published_ports_match_settings(services: dict[str, Any]) -> None:
    api_port = default("serve_port")
    assert api_port == 8000
    assert published(services["api"])[api_port] == api_port
    assert int(option_value(services["api"]["command"], "--port")) == api_port

    metrics_port = default("learner_metrics_port")
    assert metrics_port == 9108
    learner_env = environment(services["learner"])
    assert int(learner_env["RIVERSTREAM_LEARNER_METRICS_PORT"]) == metrics_port
    assert published(services["learner"])[metrics_port] == metrics_port

    worker_port = default("predict_metrics_port")
    assert worker_port == 9109
    worker_env = environment(services["predict-worker"])
    assert int(worker_env["RIVERSTREAM_PREDICT_METRICS_PORT"]) == worker_port
    assert worker_port in {int(p) for p in services["predict-worker"]["expose"]}


def test_prometheus_scrapes_every_app_service_on_its_port(services: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "observability/prometheus/prometheus-compose.yml").read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                scraped[name] = int(dns["port"])
    assert scraped == {"learner": 9108, "api": 8000, "predict-worker": 9109}
    for name, port in scraped.items():
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"localhost:{port}/" in check, (name, check)


# -- the riverstream image and commands ----------------------------------------------------


def test_learner_and_api_build_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context).resolve() == ROOT, name
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, name
    assert DOCKERFILE.exists()


def test_commands_are_riverstream_subcommands(services: dict[str, Any]) -> None:
    learner = services["learner"]["command"]
    api = services["api"]["command"]
    assert services["predict-worker"]["command"] == ["predict-worker"]
    assert learner[0] == "learn" and option_value(learner, "--model") == "logreg=logreg"
    assert api[0] == "serve"
    assert option_value(api, "--host") == "0.0.0.0"
    assert int(option_value(api, "--workers")) == 2
    for command in (learner, api, services["predict-worker"]["command"]):
        assert command[0] in SUBCOMMAND_OPTIONS, command
        passed = {part for part in command[1:] if part.startswith("--")}
        assert passed <= SUBCOMMAND_OPTIONS[command[0]], command


def test_table_matches_registered_cli() -> None:
    commands = registered_commands()
    for name, options in SUBCOMMAND_OPTIONS.items():
        if name not in commands:
            continue  # not registered yet: see test_learn_and_serve_are_registered
        declared = {opt for param in commands[name].params for opt in param.opts}
        assert options <= declared, (name, options - declared)


def test_learn_and_serve_are_registered() -> None:
    assert set(SUBCOMMAND_OPTIONS) <= set(registered_commands())


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    instructions = [
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    ]
    first = [args for op, *args in instructions if op == "FROM"]
    assert first and first[0][0].strip() == "python:3.11-slim"
    # the project itself, with extras or not: pip install . / '.[parquet]'
    assert re.search(r"pip install [^\n]*'?\.(\[[a-z,]+\])?'?(\s|$)", text)
    users = [args[0].strip() for op, *args in instructions if op == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must run as a non-root user"
    entrypoints = [args[0].strip() for op, *args in instructions if op == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == '["riverstream"]'


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    """(tests/project/test_docker_build.py builds the wheel from what is kept.)"""
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}
    assert "observability" in packages
    for needed in ("pyproject.toml", "README.md", *sorted(packages)):
        assert needed not in ignored, needed


# -- observability mounts ------------------------------------------------------------------


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path → host path, for bind mounts (host paths starting with ./)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            out[target] = source
    return out


def test_every_mounted_file_exists(services: dict[str, Any], compose: dict[str, Any]) -> None:
    """Every bind mount's host path exists (a missing one makes Docker create an empty
    directory in its place, and the service starts without its configuration); every named
    volume is declared; every env_file exists."""
    declared = set(compose.get("volumes") or {})
    checked = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source, kind = str(volume.get("source", "")), volume.get("type", "volume")
            else:
                source = str(volume).split(":")[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "bind":
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
                checked += 1
            elif source:
                assert source in declared, f"{name} uses undeclared volume {source}"
        env_files = service.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (COMPOSE.parent / path).exists(), f"{name}: env_file {path} missing"
    assert checked >= 4  # prometheus' config and alerts, grafana's provisioning and dashboards


def test_observability_files_are_mounted(services: dict[str, Any]) -> None:
    expected = {
        "prometheus": {
            "/etc/prometheus/prometheus.yml": "observability/prometheus/prometheus-compose.yml",
            "/etc/prometheus/alerts.yml": "observability/prometheus/alerts.yml",
        },
        "grafana": {
            "/etc/grafana/provisioning": "observability/grafana/provisioning",
            "/var/lib/grafana/dashboards": "observability/grafana/dashboards",
        },
    }
    for name, wanted in expected.items():
        bound = mounts(services[name])
        for target, source in wanted.items():
            assert bound.get(target) == "./" + source, (name, target, bound)
            assert (ROOT / source).exists(), f"{source} (mounted into {name}) does not exist"
    # the config Prometheus loads names the alert file next to it, where it is mounted
    config = yaml.safe_load((ROOT / "observability/prometheus/prometheus-compose.yml").read_text())
    assert "alerts.yml" in [Path(f).name for f in config.get("rule_files", [])]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
