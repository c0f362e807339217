"""The closed loop on brokers that enforce ACLs (`tests.support.acl.AclKafkaCluster`): a label
the API's user may not write is 503 at once with reason ``auth`` and a detail naming
RIVERSTREAM_KAFKA_SASL_USERNAME and the topic, saying that nothing was stored (it was
``not_acknowledged``, "may have been stored"), counted as ``auth``; what the user may write
(features) goes on at once, not refused as during an outage. A graph's log written after its
answer (`serving.feedback.Publisher.send_later`) to a topic the ACLs deny is counted as
``auth`` and said once in the log naming the topic, not remembered as an outage (it was
``not_acknowledged``, and every log and request refused for `OUTAGE_SECONDS`)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry

from schemas.settings import Settings
from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.kafka.client import create_topics
from tests.serving.test_feedback_shadows_later import GATE, shadowed
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


def features_only(acl: AclServices) -> tuple[Settings, Any, ServingMetrics]:
    """Settings of the user ``api``, allowed to write its features topic alone (the five
    topics created); and a fresh API (not started) whose features were 202: the grant reached
    the broker that gives the producer its id (asked before, a broker without it denies the id
    for good), with its metrics."""
    tag = f"rs-a{uuid.uuid4().hex[:8]}"
    s = acl.as_user("api", redis_prefix=tag, **acl.topics(tag))
    assert s.kafka_bootstrap_servers
    acl.kafka.grant("api", [("Write", "topic", s.topic_features, False)])
    create_topics(s.kafka_bootstrap_servers, s.topics(), security=acl.kafka.security())
    apps: list[tuple[Any, ServingMetrics]] = []

    def features_accepted() -> bool:
        metrics = ServingMetrics(CollectorRegistry())
        apps.append((create_app(s, metrics=metrics), metrics))
        body = {"id": "a1", "time": 1, "features": {"x": 1.0}}
        return post(apps[-1][0], "/v1/features", body).status_code == 202

    try:
        wait_until(features_accepted, 30, "the grant to reach every broker")
    finally:
        for each, _metrics in apps[:-1]:
            each.state.publisher.close()
    return s, *apps[-1]


def test_a_write_the_acls_deny_is_503_auth_naming_the_topic(acl: AclServices) -> None:
    s, app, metrics = features_only(acl)
    try:
        refused = post(app, "/v1/labels", {"id": "a1", "time": 1, "label": True})
        accepted = post(app, "/v1/features", {"id": "a2", "time": 1, "features": {"x": 1.0}})
    finally:
        app.state.publisher.close()
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


def test_a_log_after_its_answer_the_acls_deny_is_auth_not_an_outage(
    acl: AclServices, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Graph ``g``'s logs go to the features topic (allowed) and the predictions topic (its
    Write denied); its shadow makes them be written after the answer (`send_later`)."""
    s, warm, _ = features_only(acl)
    warm.state.publisher.close()
    s, _, x = shadowed(s, kit)
    GATE.set()  # the shadow answers at once
    metrics = ServingMetrics(CollectorRegistry())
    failures = metrics.closed_loop_publish_failures_total
    reasons = ("auth", "not_acknowledged", "outage")

    def counted() -> dict[str, float]:
        return {reason: failures.labels(reason)._value.get() for reason in reasons}

    caplog.set_level(logging.WARNING)
    with kit.serve_in_thread(create_app(s, metrics=metrics)) as client:
        wait_until(lambda: client.get("/v1/graphs/g").status_code == 200, 20, "graph g served")
        for i in (1, 2):  # the second: not refused as during an outage, nor said again
            body = {"id": f"p{i}", "time": i, "features": x, "log": True}
            answer = client.post("/v1/graphs/g/predict", json=body)
            assert answer.status_code == 200, answer.text
            wait_until(cast(Callable[[], Any], lambda i=i: sum(counted().values()) >= i), 20,
                       f"log {i} to fail", detail=counted)  # fmt: skip
            assert counted() == {"auth": i, "not_acknowledged": 0, "outage": 0}
        feature = {"id": "p3", "time": 3, "features": {"x": 1.0}}
        accepted = client.post("/v1/features", json=feature)
        assert accepted.status_code == 202, accepted.text
    said = (f"does not let the user of RIVERSTREAM_KAFKA_SASL_USERNAME (api) write topic "
            f"{s.topic_predictions}: {NOT_AN_OUTAGE}")  # fmt: skip
    lines = [r for r in caplog.records if r.name.startswith("serving.")]
    denials = [r for r in lines if said in " ".join(r.getMessage().split())]
    assert len(denials) == 1 and denials[0].levelno == logging.ERROR, [
        r.getMessage() for r in lines
    ]
    assert acl.kafka.users["api"] not in caplog.text
    assert not [r for r in lines if r.exc_info], "raised into the shadows' thread"
