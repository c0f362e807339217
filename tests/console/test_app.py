"""The console over HTTP, on a real Redis: read-only without a token (no write route exists), the
guards of the actions with one (token header, JSON, same origin), the event stream (curves sent
incrementally, again in full after a rewind), and operations read from a real learner exporter."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from learners.serialization import dump_signed
from schemas.records import SnapshotMeta
from schemas.settings import Settings
from stream.learner.telemetry import LearnerMetrics, start_http_server
from stream.registry.graphs import GraphRegistry
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from stream.store.trace import TracePoint, TraceWrite
from tests.console.helpers import serve_console, write_version

ACTIONS = ("promote", "pin", "unpin", "rollback")


@pytest.fixture
def store(settings: Settings) -> Iterator[SnapshotStore]:
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    yield SnapshotStore(client, settings.redis_prefix, settings.require_snapshot_key())
    client.close()


def _key(settings: Settings) -> bytes:
    return settings.require_snapshot_key()


def test_without_a_token_no_write_action_is_reachable(
    settings: Settings, store: SnapshotStore, client: httpx.Client
) -> None:
    v1 = write_version(store, _key(settings), 50, models=("lr", "tree"))
    v2 = write_version(store, _key(settings), 100, models=("lr", "tree"))
    graph = GraphRegistry(store.client, settings.redis_prefix).apply(
        {"name": "fraud", "root": {"ensemble": {"members": ["lr", {"model": "tree"}]}}}
    )
    with serve_console(settings) as url:
        page = client.get(url + "/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = client.get(url + "/static/console.js").text
        for text in (page.text, script, client.get(url + "/static/console.css").text):
            assert "https://" not in text and "//cdn" not in text  # nothing from elsewhere
        assert client.get(url + "/healthz").json() == {"status": "ok", "actions": False}
        state = client.get(url + "/api/state").json()
        assert state["actions"] is False
        assert [m["name"] for m in state["models"]] == ["lr", "tree"]
        assert state["models"][0]["serving"] == v2
        assert [p[0] for p in state["curves"]["lr"]["points"]] == list(range(10, 101, 10))
        assert state["graphs"] == [
            {"name": "fraud", "promoted": graph.version, "versions": 1, "models": ["lr", "tree"]}
        ]

        token = "anything"
        for action in ACTIONS:
            for headers in ({}, {"X-Riverstream-Token": token}):
                response = client.post(
                    f"{url}/api/models/lr/{action}",
                    json={"version": v1, "to": v1, "reason": "try"},
                    headers=headers,
                )
                assert response.status_code == 404, (action, response.text)
            preflight = client.options(
                f"{url}/api/models/lr/{action}",
                headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert "access-control-allow-origin" not in preflight.headers
    assert Registry(store).serving_version("lr") == v2
    assert Registry(store).history("lr") == []


def test_actions_need_the_token_json_and_the_same_origin(
    settings: Settings, store: SnapshotStore, client: httpx.Client
) -> None:
    s = settings.model_copy(update={"console_token": SecretStr("s3cret-token")})
    v1 = write_version(store, _key(s), 50)
    v2 = write_version(store, _key(s), 100)
    registry = Registry(store)
    with serve_console(s) as url:
        promote = f"{url}/api/models/lr/promote"
        body = {"version": v1, "reason": "from the console"}
        good = {"X-Riverstream-Token": "s3cret-token", "Origin": url}

        assert client.post(promote, json=body).status_code == 401  # no token
        wrong = {**good, "X-Riverstream-Token": "s3cret-tokem"}
        assert client.post(promote, json=body, headers=wrong).status_code == 401
        evil = {**good, "Origin": "http://evil.example"}
        assert client.post(promote, json=body, headers=evil).status_code == 403
        cross = {**good, "Sec-Fetch-Site": "cross-site"}
        assert client.post(promote, json=body, headers=cross).status_code == 403
        form = client.post(
            promote, content=json.dumps(body), headers={**good, "Content-Type": "text/plain"}
        )
        assert form.status_code == 415  # what a cross-site form could send
        assert registry.serving_version("lr") == v2  # nothing moved

        done = client.post(promote, json=body, headers=good)
        assert done.status_code == 200, done.text
        assert done.json() == {"model": "lr", "from": None, "to": v1, "serving": v1}
        assert registry.serving_version("lr") == v1
        assert registry.history("lr")[-1].by == "console"
        no_origin = client.post(  # a script (no browser, so no Origin): the token is enough
            f"{url}/api/models/lr/pin",
            json={"version": v2},
            headers={"X-Riverstream-Token": "s3cret-token"},
        )
        assert no_origin.status_code == 200 and registry.serving_version("lr") == v2
        unpin = client.post(f"{url}/api/models/lr/unpin", json={}, headers=good)
        assert unpin.json()["serving"] == v1

        rollback = f"{url}/api/models/lr/rollback"
        assert client.post(rollback, json={"to": v2}, headers=good).status_code == 422  # no reason
        again = client.post(promote, json=body, headers=good)  # already promoted: the registry says
        assert again.status_code == 409 and "already promoted" in again.json()["detail"]
        done = client.post(
            rollback, json={"to": v2, "reason": "test", "resume": "skip"}, headers=good
        )
        assert done.status_code == 200 and done.json()["serving"] == v2
        [command] = registry.pending_commands()  # for the learner, as the CLI's rollback
        assert (command.model, command.to, command.resume) == ("lr", v2, "skip")


def _events(client: httpx.Client, url: str) -> Iterator[dict[str, Any]]:
    """The ``state`` events of the console's stream, parsed."""
    with client.stream("GET", url + "/api/events", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event == "state":
                yield json.loads(line[len("data: ") :])


def _next(
    events: Iterator[dict[str, Any]], check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    for state in events:
        if check(state):
            return state
        assert time.monotonic() < deadline, "no matching event"
    raise AssertionError("the event stream ended")


def test_the_event_stream_sends_new_points_and_the_whole_curve_after_a_rewind(
    settings: Settings, store: SnapshotStore, client: httpx.Client
) -> None:
    key = _key(settings)
    write_version(store, key, 30)
    with serve_console(settings) as url:
        events = _events(client, url)
        first = next(events)
        assert first["curves"]["lr"]["reset"] is True
        assert [p[0] for p in first["curves"]["lr"]["points"]] == [10, 20, 30]

        write_version(store, key, 50)  # the page is told at once (notification)
        grown = _next(events, lambda s: "lr" in s["curves"])
        assert grown["curves"]["lr"]["reset"] is False
        assert [p[0] for p in grown["curves"]["lr"]["points"]] == [40, 50]

        # a replay from 20 labels: a new epoch, the point after 20 learned again differently
        points = [TracePoint(n, float(n), time.time(), n, {"Accuracy": 0.1}) for n in (10, 20, 30)]
        trace = TraceWrite(30, [(0, "epoch"), (20, "replay")], {"lr": points}, 10_000)
        blob = dump_signed({"stand-in": "replayed"}, key)
        meta = SnapshotMeta.describe(
            "lr", blob, kind="classifier", spec="logreg", samples_learned=30,
            metrics={"Accuracy": 0.1}, offsets={},
        )  # fmt: skip
        store.write(store.next_version(), {"lr": (blob, meta)}, dump_signed({}, key), {}, trace)
        rewound = _next(events, lambda s: "lr" in s["curves"])
        assert rewound["curves"]["lr"]["reset"] is True
        assert [(p[0], p[4]["Accuracy"]) for p in rewound["curves"]["lr"]["points"]] == [
            (10, pytest.approx(0.6 + 0.3 * 10 / 210)),
            (20, pytest.approx(0.6 + 0.3 * 20 / 220)),
            (30, 0.1),
        ]


def test_operations_come_from_the_learners_metrics_when_they_answer(
    settings: Settings, store: SnapshotStore, client: httpx.Client
) -> None:
    write_version(store, _key(settings), 30)
    metrics = LearnerMetrics(CollectorRegistry())
    metrics.mark_up()
    metrics.events_consumed(settings.topic_features, 120)
    metrics.events_consumed("some.other.topic", 7)
    metrics.set_consumer_lag(settings.topic_features, {0: 3, 1: 4})
    metrics.dead_letter("bad_json", 2)
    metrics.drift_detected("lr")
    server, _thread = start_http_server(0, metrics.registry, addr="127.0.0.1")
    try:
        port = server.server_address[1]
        s = settings.model_copy(update={"console_metrics_url": f"http://127.0.0.1:{port}/metrics"})
        with serve_console(s) as url:
            ops = client.get(url + "/api/state").json()["ops"]
            assert ops["source"].startswith("learner metrics")
            assert ops["consumed"] == 120 and ops["lag"] == 7 and ops["learner_up"] is True
            assert ops["dead_letters"] == {"bad_json": 2} and ops["drift"] == {"lr": 1}
    finally:
        server.shutdown()
    s = settings.model_copy(update={"console_metrics_url": f"http://127.0.0.1:{port}/metrics"})
    with serve_console(s) as url:  # the exporter is gone: what Redis has
        ops = client.get(url + "/api/state").json()["ops"]
        assert ops["source"].startswith("the learning-curve trace")
        assert ops["lag"] is None and ops["dead_letters"] is None
