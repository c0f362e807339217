"""The closed loop on brokers that enforce ACLs (`tests.support.acl.AclKafkaCluster`): a label
the API's user may not write is 503 at once with reason ``auth`` and a detail naming
RIVERSTREAM_KAFKA_SASL_USERNAME and the topic, saying that nothing was stored (it was
``not_acknowledged``, "may have been stored"), counted as ``auth``; what the user may write
(features) goes on at once, not refused as during an outage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.kafka.client import create_topics
from tests.support.acl import AclServices, acl_services
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOT_AN_OUTAGE = "a configuration error, not an outage; its ACLs must allow it"


@pytest.fixture(scope="module")
def acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServices]:
    with acl_services(tmp_path_factory.mktemp("acl"), ["api"]) as services:
        yield services


def post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post(path, json=body)

    return asyncio.run(run())


def test_a_write_the_acls_deny_is_503_auth_naming_the_topic(acl: AclServices) -> None:
    tag = f"rs-a{uuid.uuid4().hex[:8]}"
    s = acl.as_user("api", redis_prefix=tag, **acl.topics(tag))
    assert s.kafka_bootstrap_servers
    acl.kafka.grant("api", [("Write", "topic", s.topic_features, False)])
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=acl.kafka.security())
    apps: list[tuple[Any, ServingMetrics]] = []

    def features_accepted() -> bool:
        """A fresh API's features are 202: the grant reached the broker that gives the
        producer its id (asked before, a broker without it denies the id for good)."""
        metrics = ServingMetrics(CollectorRegistry())
        apps.append((create_app(s, metrics=metrics), metrics))
        body = {"id": "a1", "time": 1, "features": {"x": 1.0}}
        return post(apps[-1][0], "/v1/features", body).status_code == 202

    try:
        wait_until(features_accepted, 30, "the grant to reach every broker")
        app, metrics = apps[-1]
        refused = post(app, "/v1/labels", {"id": "a1", "time": 1, "label": True})
        accepted = post(app, "/v1/features", {"id": "a2", "time": 1, "features": {"x": 1.0}})
    finally:
        for each, _metrics in apps:
            each.state.publisher.close()
    detail = " ".join(refused.json()["detail"].split())
    said = (f"Kafka at {acl.kafka.bootstrap} does not let the user of "
            f"RIVERSTREAM_KAFKA_SASL_USERNAME (api) write topic {s.topic_labels}: "
            f"{NOT_AN_OUTAGE}")  # fmt: skip
    assert refused.status_code == 503 and said in detail, refused.text
    assert "nothing was stored" in detail and "may have been stored" not in detail, detail
    assert acl.kafka.users["api"] not in refused.text
    assert accepted.status_code == 202, accepted.text
    failures = metrics.closed_loop_publish_failures_total
    assert failures.labels("auth")._value.get() == 1
    assert failures.labels("not_acknowledged")._value.get() == 0
