"""The API's direct answers (`serving.protocol`) are its ASGI answers, byte for byte: the same
requests to two servers of the same models and graphs, one answering the hot routes in the
protocol (the default), one with ``RIVERSTREAM_SERVE_DIRECT_ANSWERS=false``, over real sockets
and the real Redis. Only the ``date`` header may differ."""

from __future__ import annotations

import http.client
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from river import datasets, linear_model, preprocessing, tree

from serving.app import create_app
from stream.registry.graphs import GraphRegistry
from stream.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

MAX_BODY = 8192


def requests(x: dict[str, Any], batch: list[dict[str, Any]]) -> list[tuple[str, str, bytes]]:
    """(method, path, body): the hot routes' commonest bodies and their odd ones, then others."""
    v2 = [{"name": f, "shape": [1], "datatype": "FP64", "data": [v]} for f, v in x.items()]
    return [
        ("POST", "/v1/models/lr/predict", orjson.dumps({"features": x})),  # read from its bytes
        ("POST", "/v1/models/lr/predict", orjson.dumps({"features": x}, option=orjson.OPT_INDENT_2)),
        ("POST", "/v1/models/lr/predict", orjson.dumps({"features": {**x, "extra": "a"}})),
        ("POST", "/v1/models/lr/predict", orjson.dumps({"instances": batch})),
        ("POST", "/v1/models/tree/predict", orjson.dumps({"features": x})),
        ("POST", "/v1/models/lr/predict", b"{not json"),  # 422
        ("POST", "/v1/models/lr/predict", b'{"features": [1, 2]}'),  # 422
        ("POST", "/v1/models/nope/predict", orjson.dumps({"features": x})),  # 404
        ("POST", "/v1/models/lr/predict", b'{"features": {"x": "' + b"a" * MAX_BODY + b'"}}'),
        ("POST", "/v2/models/lr/infer", orjson.dumps({"inputs": v2})),
        ("POST", "/v2/models/lr/infer", orjson.dumps({"id": "r-1", "inputs": v2})),
        ("POST", "/v2/models/lr/infer", b'{"inputs": []}'),  # 400
        ("POST", "/v2/models/lr/infer", b'{"id": "' + b"a" * MAX_BODY + b'"}'),  # 400: too large
        ("POST", "/v1/graphs/one/predict", orjson.dumps({"features": x})),
        ("POST", "/v1/graphs/pair/predict", orjson.dumps({"features": x})),
        ("POST", "/v1/graphs/ruled/predict", orjson.dumps({"instances": batch})),
        ("POST", "/v1/graphs/nope/predict", orjson.dumps({"features": x})),  # 404
        ("POST", "/v1/graphs/one/predict", b"[]"),  # 422
        ("POST", "/v1/graphs/one/predict", b'{"features": {"x": "' + b"a" * MAX_BODY + b'"}}'),
        ("GET", "/healthz", b""),  # not a hot route: ASGI on both
        ("POST", "/v1/models/lr", b"{}"),  # 405
    ]  # fmt: skip


def exchange(base: str, sent: Iterable[tuple[str, str, bytes]]) -> list[tuple[int, list, bytes]]:
    """Each request in turn on one kept-alive connection: status, headers but the date, body."""
    address = urlsplit(base)
    conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    answers = []
    try:
        for method, path, body in sent:
            conn.request(
                method, path, body=body or None, headers={"content-type": "application/json"}
            )
            response = conn.getresponse()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() != "date"]
            answers.append((response.status, headers, response.read()))
    finally:
        conn.close()
    return answers


def test_direct_answers_are_the_asgi_answers_byte_for_byte(
    kit, store: SnapshotStore, redis_url: str, prefix: str
) -> None:
    data = list(datasets.Phishing())
    lr = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    hoeffding = tree.HoeffdingTreeClassifier(grace_period=40)
    for x, y in data[:300]:
        lr.learn_one(x, y)
        hoeffding.learn_one(x, y)
    kit.publish(store, "lr", lr, "classifier")
    kit.publish(store, "tree", hoeffding, "classifier")
    graphs = GraphRegistry(store.client, store.keys.prefix, by="test")
    pair = {"ensemble": {"members": ["lr", "tree"]}}
    rules = [{"when": {"output": "proba.true", "ge": 0.7}, "then": {"decision": "block"}}]
    for name, root in {
        "one": "lr",
        "pair": pair,
        "ruled": {"rules": {"over": pair, "rules": rules}},
    }.items():
        graphs.apply({"name": name, "root": root})
    sent = requests(data[300][0], [x for x, _ in data[301:305]])

    answers: dict[bool, list[tuple[int, list, bytes]]] = {}
    direct: list[tuple[str, bool]] = []
    for on in (True, False):
        settings = kit.make_settings(
            redis_url, prefix, serve_direct_answers=on, serve_max_body_bytes=MAX_BODY
        )
        app = create_app(settings)
        answer = app.direct

        def counted(path: str, *args: Any, answer: Any = answer) -> Any:
            answered = answer(path, *args)
            direct.append((path, answered is not None))
            return answered

        app.direct = counted  # type: ignore[method-assign, assignment]
        with kit.serve_in_thread(app) as client:
            kit.wait_until(lambda client=client: client.get("/readyz").status_code == 200)
            kit.wait_until(lambda client=client: client.get("/v1/graphs/ruled").status_code == 200)
            answers[on] = exchange(str(client.base_url), sent)
    # the first server answered each hot route directly and offered the app every POST; the
    # second offered none
    offered = [path for method, path, _ in sent if method == "POST"]
    assert direct == [(path, path.endswith(("/predict", "/infer"))) for path in offered]
    for request, direct_answer, asgi_answer in zip(
        sent, answers[True], answers[False], strict=True
    ):
        assert direct_answer == asgi_answer, request
    statuses = [status for status, _, _ in answers[True]]
    assert statuses == [200, 200, 200, 200, 200, 422, 422, 404, 413, 200, 200, 400, 400,
                        200, 200, 200, 404, 422, 413, 200, 405]  # fmt: skip
