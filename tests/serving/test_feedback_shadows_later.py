"""A logged graph answer does not wait for its shadows (`serving.feedback`): they run off the
event loop after the response, as for any graph request, and the log is written once they have
run, still carrying what the learner scores (each shadow's answer, and the versions of the
models it used). On real Kafka and Redis, with a shadow model that answers only when the test
lets it; and the shadow runner's part in isolation."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Hashable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from river import base, datasets, linear_model, metrics

from learners.graph import Outcome
from learners.served import score_shadows, shadow_target
from schemas.errors import KafkaAdapterError
from schemas.events import EventCodec, Limits
from schemas.settings import Settings
from serving import feedback
from serving.app import create_app
from serving.shadows import GraphMetrics, ShadowRunner
from serving.telemetry import ServingMetrics
from stream.dev.ports import free_port
from stream.kafka.client import read_all
from stream.learner.runtime import snapshot_store
from stream.registry.graphs import GraphRegistry
from tests.serving.test_feedback import api
from tests.serving.test_feedback_guards import failing_producer
from tests.support.pipeline import fast
from tests.support.shadows import shadow_job
from tests.support.waiting import wait_until

BRANCH = "root.shadow.shadows[0]"
GATE_SECONDS = 5.0
"""How long the gated shadow waits at most: less than the client's timeout (10 s), so that
code making the answer wait for the shadow fails an assertion, not with a timeout."""

GATE, CALLED = threading.Event(), threading.Event()
RETURNED: list[float] = []


class Gated(base.Classifier):
    """A shadow model that answers when `GATE` opens (at most `GATE_SECONDS`): a slow model
    whose slowness the test controls. Served from a signed snapshot in this process."""

    def learn_one(self, x: dict[Hashable, Any], y: Any) -> None:
        pass

    def predict_proba_one(
        self, x: dict[Hashable, Any], **kwargs: Any
    ) -> dict[bool | str | int, float]:
        CALLED.set()
        GATE.wait(GATE_SECONDS)
        RETURNED.append(1.0)
        return {True: 0.75, False: 0.25}


def shadowed(settings: Settings, kit: Any) -> tuple[Settings, dict[str, int], dict[str, float]]:
    """Models ``lr`` and ``slow`` (`Gated`) and graph ``g``: ``lr`` answers, ``slow`` shadows
    every request. The settings, the versions published and features to predict from."""
    s = fast(settings, snapshot_key=SecretStr(kit.KEY.decode()), serve_poll_seconds=0.2)
    samples = list(itertools.islice(datasets.Phishing(), 60))
    lr = linear_model.LogisticRegression()
    for x, y in samples[:50]:
        lr.learn_one(x, y)
    store = snapshot_store(s)
    versions = {
        "lr": kit.publish(store, "lr", lr, "classifier"),
        "slow": kit.publish(store, "slow", Gated(), "classifier"),
    }
    graph = {"name": "g", "root": {"shadow": {"primary": "lr", "shadows": ["slow"]}}}
    GraphRegistry(store.client, store.keys.prefix, by="test").apply(graph, reason="test")
    return s, versions, samples[55][0]


@pytest.fixture
def gate() -> Any:
    GATE.clear()
    CALLED.clear()
    RETURNED.clear()
    yield GATE
    GATE.set()  # never leave a shadow waiting


def topic(settings: Settings, name: str) -> list[dict[str, Any]]:
    """The messages of topic ``name`` (none while it does not exist: the first log creates it)."""
    assert settings.kafka_bootstrap_servers is not None
    try:
        records = read_all(settings.kafka_bootstrap_servers, [name])
    except KafkaAdapterError:
        return []
    return [orjson.loads(r.value) for r in records]


@pytest.mark.integration
def test_a_logged_answer_does_not_wait_for_its_shadows_and_its_log_still_carries_them(
    settings: Settings, kit: Any, gate: threading.Event
) -> None:
    s, versions, x = shadowed(settings, kit)
    with api(kit, s) as client:
        kit.wait_until(lambda: client.get("/v1/graphs/g").status_code == 200)
        graph_version = client.get("/v1/graphs/g").json()["version"]

        # The shadow is held at its gate: the answer comes all the same, while it waits.
        body = {"id": "p1", "time": 7, "features": x, "log": True}
        response = client.post("/v1/graphs/g/predict", json=body)
        assert response.status_code == 200, response.text
        wait_until(CALLED.is_set, what="the shadow to run")
        assert not RETURNED, "the answer waited for the shadow"
        answer = response.json()
        assert answer["id"] == "p1" and answer["time"] == 7
        # Nor does any other request wait meanwhile: another logged one, a plain predict.
        other = client.post("/v1/graphs/g/predict", json={**body, "id": "p2", "time": 8})
        assert other.status_code == 200, other.text
        plain = client.post("/v1/models/lr/predict", json={"features": x})
        assert plain.status_code == 200 and not RETURNED
        gate.set()  # the shadows answer; then the logs are written

        def logged() -> dict[str, Any]:
            events = {e["id"]: e for e in topic(s, s.topic_features)}
            return events if set(events) == {"p1", "p2"} else {}

        events = wait_until(logged, timeout=20, what="the logs of p1 and p2")
    assert len(RETURNED) == 2

    # What the learner reads: the served answer and the shadow's, with the models' versions.
    codec = EventCodec(Limits())
    event = codec.decode_feature(orjson.dumps(events["p1"]))
    served = event.served
    assert served is not None and event.time == 7 and event.features == x
    assert (served.model, served.version) == ("g", graph_version)
    assert served.prediction == answer["prediction"]
    assert served.versions == {"lr": versions["lr"]}
    assert served.shadows is not None and set(served.shadows) == {BRANCH}
    shadow = served.shadows[BRANCH]
    assert shadow.prediction is True and shadow.probabilities == {"true": 0.75, "false": 0.25}
    assert shadow.versions == {"slow": versions["slow"]}  # which version of it answered
    scores: dict[tuple[str, int], Any] = {}
    score_shadows(served, True, metrics.Accuracy, "classifier", scores, {})
    assert scores[(shadow_target("g", BRANCH), graph_version)].get() == 1.0

    # The predictions topic: each answer and its shadow's, with its versions.
    records = {(r["id"], r.get("shadow")): r for r in topic(s, s.topic_predictions)}
    assert set(records) == {(i, b) for i in ("p1", "p2") for b in (None, BRANCH)}
    assert records[("p1", None)]["prediction"] == answer["prediction"]
    assert records[("p1", BRANCH)]["versions"] == {"slow": versions["slow"]}
    assert records[("p1", BRANCH)]["prediction"] is True


@pytest.mark.integration
def test_a_log_that_fails_after_its_answer_is_counted_and_the_next_is_refused_at_once(
    settings: Settings, kit: Any, gate: threading.Event
) -> None:
    """The one promise that changes: a logged answer with shadows is sent before its log, so a
    broker that cannot be reached is known only afterwards (counted, logged); the failure is
    remembered, and the next logged request gets 503 at once, before its answer."""
    s, _, x = shadowed(settings, kit)
    s = s.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    gate.set()
    served = ServingMetrics(CollectorRegistry())
    counter = served.closed_loop_publish_failures_total
    with kit.serve_in_thread(create_app(s, metrics=served)) as client:
        kit.wait_until(lambda: client.get("/v1/graphs/g").status_code == 200)
        body = {"id": "p1", "features": x, "log": True}
        first = client.post("/v1/graphs/g/predict", json=body)
        assert first.status_code == 200, first.text
        wait_until(
            lambda: counter.labels("not_acknowledged")._value.get() == 1,
            timeout=20, what="the failed log to be counted",
        )  # fmt: skip
        refused = client.post("/v1/graphs/g/predict", json={**body, "id": "p2"})
        assert refused.status_code == 503, refused.text
        assert "not logged" in refused.json()["detail"]
        assert counter.labels("outage")._value.get() == 1


def test_stop_writes_the_logs_of_queued_logged_jobs_without_their_shadows() -> None:
    """The runner's backlog when the API stops: a logged job's answer was sent, so its log is
    written (``then``), at once and without its shadows' answers: running the backlog's
    shadows first (1000 of 50 ms: 50 s) would outlast a pod's grace period, and every log be
    lost with the process. An unlogged job is dropped, as before."""
    runner = ShadowRunner(GraphMetrics.for_registry(CollectorRegistry()))
    queued: list[Any] = []
    ran: list[str] = []

    def held(x: dict[str, Any], context: Any) -> Outcome:
        """The running job's shadow: returns once the queued logged job was cancelled."""
        wait_until(lambda: queued and all(f.cancelled() for f in queued), what="the cancel")
        return Outcome(True, None, "classifier", "held")

    def quick(x: dict[str, Any], context: Any) -> Outcome:
        ran.append(threading.current_thread().name)
        return Outcome(False, None, "classifier", "quick")

    done: list[tuple[str, list[list[Any]]]] = []
    assert runner.submit(shadow_job(held))

    def then(results: list[list[Any]]) -> None:
        done.append((threading.current_thread().name, results))

    assert runner.submit(shadow_job(quick, then))
    assert runner.submit(shadow_job(quick))
    queued.extend(runner._logged)  # the logged job's future
    runner.stop()
    # Written by stop, on its caller's thread, without the shadows' answers; no shadow ran.
    assert done == [(threading.current_thread().name, [])]
    assert ran == []
    runs = runner.metrics.shadow_runs.labels(graph="g", shadow=BRANCH)._value.get()
    assert runs == 1  # the held job's alone: the queued ones' shadows did not run


def test_a_log_written_before_shadow_versions_were_recorded_still_decodes_and_scores() -> None:
    """Backward compatible: a shadow answer without ``versions`` (older logs) decodes, with
    None, and is scored as before (by graph version)."""
    old = {
        "id": "a1", "time": 3, "features": {"x": 1.0},
        "served": {"model": "g", "version": 4, "prediction": True, "versions": {"lr": 2},
                   "shadows": {BRANCH: {"prediction": False, "probabilities": None}}},
    }  # fmt: skip
    served = EventCodec(Limits()).decode_feature(orjson.dumps(old)).served
    assert served is not None and served.shadows is not None
    assert served.shadows[BRANCH].versions is None
    scores: dict[tuple[str, int], Any] = {}
    score_shadows(served, False, metrics.Accuracy, "classifier", scores, {})
    assert scores[(shadow_target("g", BRANCH), 4)].get() == 1.0


def test_a_log_unacknowledged_past_the_publish_timeout_refuses_the_next_at_once() -> None:
    """Pure logic: a log handed to the producer without a thread waiting for it still trips the
    circuit breaker as a publish that timed out would (the producer retries it for longer)."""
    publisher = feedback.Publisher(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
    try:
        publisher.check()  # nothing pending, nothing remembered
        pending = feedback._Delivery(publisher, 1, lambda exc: None)
        pending.sent -= feedback.PUBLISH_TIMEOUT_SECONDS + 1
        publisher._later.append(pending)
        with pytest.raises(feedback.KafkaUnavailable, match="did not acknowledge a log") as caught:
            publisher.check()
        assert caught.value.reason == "outage" and caught.value.retry_after
        pending.acknowledged(None)  # at last: the broker is back
        publisher.check()
    finally:
        publisher.close()


def test_a_done_delivery_lets_go_of_what_its_log_holds() -> None:
    """Pure logic: a delivery done (acknowledged, or failed and told) no longer holds its
    ``failed``, a `_LogLater`'s whose closure holds the request's body and answer; done
    deliveries behind a pending one stay in the publisher's queue up to the producer's
    delivery timeout (120 s), so at 1000 logged requests a second they held 120 000 of them."""

    class Log:
        """Stands for a `_LogLater`: what ``failed`` keeps alive."""

        def __init__(self) -> None:
            self.told: list[str] = []

        def failed(self, exc: feedback.KafkaUnavailable) -> None:
            self.told.append(exc.reason)

    publisher = feedback.Publisher(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
    try:
        pending = feedback._Delivery(publisher, 1, lambda exc: None)  # the head, pending
        first, second = Log(), Log()
        acknowledged = feedback._Delivery(publisher, 2, first.failed)
        failed = feedback._Delivery(publisher, 1, second.failed)
        publisher._later.extend([pending, acknowledged, failed])
        refs, told = [weakref.ref(first), weakref.ref(second)], second.told
        del first, second
        acknowledged.acknowledged(None)
        assert refs[0]() is not None  # one message still to acknowledge
        acknowledged.acknowledged(None)
        failed.fail(feedback.KafkaUnavailable("gone", reason="outage"))
        failed.lost(RuntimeError("a late errback"))  # told once only
        assert told == ["outage"]
        del told
        gc.collect()
        assert [ref() for ref in refs] == [None, None]
        assert list(publisher._later) == [pending, acknowledged, failed]  # still queued
        assert acknowledged.done and failed.done and not pending.done
    finally:
        publisher.close()


def test_a_log_while_no_producer_could_be_created_fails_at_once_without_an_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pure logic, with a producer that cannot be created: the logs are handed over on the
    shadows' one thread, so a new attempt for each (up to 3 s with the broker away) stalled the
    shadows of every graph behind them. While the failure is remembered (`OUTAGE_SECONDS`,
    as `Publisher.check` refuses), a log fails at once with it, counted as an outage."""
    with failing_producer(monkeypatch) as producer:
        publisher = feedback.Publisher(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
        told: list[feedback.KafkaUnavailable] = []
        messages = [("t", b"k", b"v")]
        try:
            publisher.send_later(messages, told.append)
            assert producer.attempts == 1 and [e.reason for e in told] == ["not_acknowledged"]
            for _ in range(3):
                publisher.send_later(messages, told.append)
            assert producer.attempts == 1  # remembered: no attempt of their own
            assert [e.reason for e in told[1:]] == ["outage"] * 3
            assert {str(e) for e in told} == {str(told[0])} and "attempt 1" in str(told[0])
            # Once the memory expired, the next log tries again, as the first did.
            monkeypatch.setattr(feedback, "OUTAGE_SECONDS", 0.0)
            publisher.send_later(messages, told.append)
            assert producer.attempts == 2 and told[-1].reason == "not_acknowledged"
        finally:
            publisher.close()
