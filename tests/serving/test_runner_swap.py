"""Swap under load: a real uvicorn with two workers, a writer publishing versions meanwhile."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from river import datasets, linear_model, preprocessing

from stream.store.snapshots import SnapshotStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVER = "from schemas.settings import Settings; from serving.runner import serve; serve(Settings(), workers=2)"
CLIENTS, PER_CLIENT = 16, 125


def test_versions_swap_without_errors_and_never_go_backwards(
    kit, store: SnapshotStore, redis_url: str, prefix: str
) -> None:
    data = list(datasets.Phishing())
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    models: dict[int, Any] = {}

    def learn_and_publish(start: int) -> int:
        for x, y in data[start : start + 10]:
            model.learn_one(x, y)
        version = kit.publish(store, "lr", model, "classifier")
        models[version] = store.load_model("lr", version)[0]
        return version

    first = learn_and_publish(0)
    port = kit.free_port()
    settings = kit.make_settings(redis_url, prefix, serve_port=port, serve_poll_seconds=0.5)
    with kit.serve_process(settings) as base:
        stop = threading.Event()
        published = [first]

        def writer() -> None:
            start = 10
            while not stop.is_set() and start + 10 < len(data):
                published.append(learn_and_publish(start))
                start += 10
                stop.wait(0.01)

        inputs = [x for x, _ in data[-50:]]

        def client(i: int) -> list[tuple[int, int, dict, dict]]:
            seen = []
            with httpx.Client(
                base_url=base, timeout=10, limits=httpx.Limits(max_connections=1)
            ) as http:
                for j in range(PER_CLIENT):
                    x = inputs[(i + j) % len(inputs)]
                    r = http.post("/v1/models/lr/predict", json={"features": x})
                    body = r.json() if r.status_code == 200 else {}
                    seen.append((r.status_code, body.get("version", -1), x, body))
            return seen

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(client, range(CLIENTS)))
        finally:
            stop.set()
            thread.join()
        statuses = [s for seen in results for s, *_ in seen]
        assert len(statuses) == CLIENTS * PER_CLIENT
        assert set(statuses) == {200}, Counter(statuses)
        for i, seen in enumerate(results):
            versions = [v for _, v, _, _ in seen]
            assert versions == sorted(versions), f"client {i} went backwards: {versions}"
        served = {v for seen in results for _, v, _, _ in seen}
        assert len(served) >= 3, (served, published)
        for seen in results:  # every answer is exactly the answer of the version it names
            for _, version, x, body in seen[::5]:
                assert body["prediction"] == models[version].predict_one(x)
        # and both workers end up on the last version
        last = published[-1]
        kit.wait_until(
            lambda: (
                f'riverstream_model_version{{model="lr"}} {float(last)}'
                in httpx.get(f"{base}/metrics").text
            ),
            timeout=30,
        )
