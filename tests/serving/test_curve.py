"""``GET /v1/models/{name}/curve`` on a real Redis: the points a snapshot wrote with its trace,
paged by label count; 404 for an unknown model; 422 for a bad query."""

from __future__ import annotations

from typing import Any

from learners.serialization import dump_signed
from schemas.records import SnapshotMeta
from serving.app import create_app
from stream.store.snapshots import SnapshotStore
from stream.store.trace import TracePoint, TraceWrite


def _write(store: SnapshotStore, key: bytes, covered: int, points: list[TracePoint]) -> int:
    """A version of model ``lr`` whose snapshot carries ``points`` (as the learner writes)."""
    version = store.next_version()
    blob = dump_signed({"stand-in": version}, key)
    meta = SnapshotMeta.describe(
        "lr", blob, kind="classifier", spec="logreg", samples_learned=covered,
        metrics={"Accuracy": 0.5}, offsets={},
    )  # fmt: skip
    trace = TraceWrite(covered, [(0, "epoch")], {"lr": points}, 1000)
    store.write(version, {"lr": (blob, meta)}, dump_signed({}, key), {}, trace)
    return version


def test_the_curve_route_pages_by_label_count(redis_url: str, prefix: str, store, kit: Any) -> None:
    points = [
        TracePoint(n, float(n), 1_700_000_000.0 + n, n, {"Accuracy": n / 400, "R2": float("nan")})
        for n in range(50, 301, 50)
    ]
    _write(store, kit.KEY, 150, points[:3])
    _write(store, kit.KEY, 300, points)  # the first three again: not duplicated
    app = create_app(kit.make_settings(redis_url, prefix))
    with kit.serve_in_thread(app) as client:
        body = client.get("/v1/models/lr/curve").json()
        assert body["model"] == "lr"
        assert [p["labels"] for p in body["points"]] == [50, 100, 150, 200, 250, 300]
        assert body["points"][1] == {
            "labels": 100, "event_time": 100.0, "wall_time": 1_700_000_100.0, "samples": 100,
            "metrics": {"Accuracy": 0.25, "R2": None},
        }  # fmt: skip
        later = client.get("/v1/models/lr/curve", params={"after": 200, "limit": 1}).json()
        assert [p["labels"] for p in later["points"]] == [250]
        assert client.get("/v1/models/lr/curve", params={"after": 300}).json()["points"] == []
        assert client.get("/v1/models/nope/curve").status_code == 404
        assert client.get("/v1/models/lr/curve", params={"after": -1}).status_code == 422
