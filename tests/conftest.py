"""Shared fixtures: the real Kafka, Redis and Prometheus, started once per test run (with
``-n 3``, the README's test command: once in each pytest-xdist worker, on ports of its own).

The servers are started by the same code as `riverstream services up`, in a private state
directory, and stopped by pid at the end of the run. Each test gets its own topic names, Redis
key prefix and consumer group through the `settings` fixture, so tests never collide. No test
touches the developer's own state directory (`private_default_state_dir`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from schemas.settings import Settings
from stream.dev.services import SERVICES, Endpoints, ServiceManager
from tests.support.serving import kit, prefix, store

__all__ = ["kit", "prefix", "store"]  # shared fixtures, defined with their helpers in tests/support

SLOW_FILES = {
    "tests/stream/learner/test_loop_crash_matrix.py": 191,
    "tests/stream/learner/test_outage.py": 137,
    "tests/stream/kafka/test_security.py": 133,
    "tests/stream/kafka/test_security_acl.py": 117,
    "tests/stream/predict/test_worker_outage.py": 106,
    "tests/stream/dev/test_netns.py": 85,
    "tests/stream/dev/test_services.py": 82,
    "tests/stream/kafka/test_deadletter_acl.py": 77,
    "tests/stream/learner/test_loop_crash.py": 50,
    "tests/stream/dev/test_demo_keep.py": 48,
    "tests/stream/predict/test_batch.py": 48,
    "tests/stream/dev/test_demo.py": 47,
    "tests/stream/learner/test_groups.py": 44,
    "tests/stream/dev/test_demo_signals.py": 40,
    "tests/stream/registry/test_challenger.py": 39,
    "tests/stream/store/test_connect_failover.py": 37,
    "tests/stream/dev/test_cluster.py": 36,
    "tests/serving/test_app_auth.py": 44,
    "tests/serving/test_feedback_acl.py": 36,
    "tests/stream/dev/test_services_prometheus.py": 27,
    "tests/stream/predict/test_worker_acl.py": 25,
    "tests/serving/test_runner_rollback.py": 25,
}
"""The slowest test files of two CI runs (seconds of their tests in the 30 slowest, 2026-12-03):
collected first, so that pytest-xdist's ``--dist loadfile`` hands them out among the workers
at the start, and the run does not end with two workers idle while a third runs one of them.
A file missing here only runs in its usual place."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `SLOW_FILES` first, slowest first; every other test in its usual order."""
    root = config.rootpath

    def weight(item: pytest.Item) -> int:
        try:
            return -SLOW_FILES.get(item.path.relative_to(root).as_posix(), 0)
        except ValueError:  # outside the repository
            return 0

    items.sort(key=weight)


@pytest.fixture(scope="session", autouse=True)
def private_default_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The state directory of settings made without one, in this process and every process the
    tests start (``RIVERSTREAM_STATE_DIR``, and ``XDG_STATE_HOME`` that it defaults from): an
    empty one of this run, never the developer's (``~/.local/state/riverstream``, where their
    `services up` records its services and `riverstream serve` registers with their
    Prometheus)."""
    base = tmp_path_factory.mktemp("xdg-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(base))
        patch.setenv("RIVERSTREAM_STATE_DIR", str(base / "riverstream"))
        yield base / "riverstream"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """Real local services for the whole run (never mocked, never silently skipped)."""
    state = tmp_path_factory.mktemp("services-state")
    base = Settings(state_dir=state)
    manager = ServiceManager(base)
    manager.up(SERVICES)
    try:
        yield manager.endpoints()
    finally:
        manager.down(SERVICES, purge=True)


@pytest.fixture(scope="session")
def redis_url(services: Endpoints) -> str:
    """The shared real Redis."""
    assert services.redis_url
    return services.redis_url


@pytest.fixture(scope="session")
def services_state(services: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture
def settings(services: Endpoints, tmp_path: Path) -> Settings:
    """Settings pointing at the real services, with names unique to this test."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        kafka_bootstrap_servers=services.kafka_bootstrap_servers,
        redis_url=services.redis_url,
        prometheus_url=services.prometheus_url,
        state_dir=tmp_path / "state",
        topic_features=f"t{tag}.features",
        topic_labels=f"t{tag}.labels",
        topic_dlq=f"t{tag}.dlq",
        topic_requests=f"t{tag}.requests",
        topic_predictions=f"t{tag}.predictions",
        redis_prefix=f"test:{tag}",
        snapshot_key=SecretStr("test-key-" + tag),
        partitions=3,
        learner_metrics_port=0,
        predict_metrics_port=0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess (CLI, learner, API) the same settings."""
    return {**os.environ, **settings.to_environment()}
