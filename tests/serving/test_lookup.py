"""``GET /v1/models/{name}/predictions/{id}`` and the graph's (serving/lookup.py): the id is the
rest of the path, whatever characters it holds. A quoted CSV cell makes an id with a newline,
which the codec accepts and ``score --into redis`` stores: it is found too (percent-encoded).
The tables are written in the real Redis as `score` writes them; the API runs in uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from schemas.settings import Settings
from serving.app import create_app
from stream.store.lookup import LookupTables
from stream.store.snapshots import SnapshotStore, open_store

pytestmark = pytest.mark.integration

IDS = ["a\nb", "multi/\nline/\r\nid", "tail\n", "\n", "tab\there", "plain/one"]


@pytest.fixture
def settings_store(settings: Settings) -> Iterator[SnapshotStore]:
    s = open_store(settings)
    yield s
    s.client.close()


def test_any_id_is_found_a_newline_included(
    kit: Any, settings: Settings, settings_store: SnapshotStore
) -> None:
    tables = LookupTables(settings_store.client, settings_store.keys)
    published = {}
    for graph in (False, True):
        writer = tables.writer("m", graph=graph)
        for i, row_id in enumerate(IDS):
            writer.add(row_id, orjson.dumps({"id": row_id, "target": "m", "prediction": i}))
        published[graph] = writer.publish({"m": 1}, 1.0, 100)
    with kit.serve_in_thread(create_app(settings)) as api:
        for graph, kind in ((False, "models"), (True, "graphs")):
            for i, row_id in enumerate(IDS):
                response = api.get(f"/v1/{kind}/m/predictions/{quote(row_id, safe='/')}")
                assert response.status_code == 200, (kind, row_id, response.text)
                assert response.json() == {
                    "id": row_id, "target": "m", "prediction": i,
                    "table": published[graph].table, "computed_at": 1.0,
                }  # fmt: skip
            missing = api.get(f"/v1/{kind}/m/predictions/" + quote("a\nc"))
            assert missing.status_code == 404
            assert "'a\\nc'" in missing.json()["detail"]
