"""What the property tests throw at the API: any JSON value, and a small API to throw it at."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.telemetry import ServingMetrics
from stream.store.snapshots import SnapshotStore

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and ±Infinity included: json.dumps writes them as bare literals
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture
def small_api(
    kit: Any, store: SnapshotStore, redis_url: str, prefix: str
) -> Iterator[httpx.Client]:
    """The API in a thread over the kit's three models (``clf``, ``reg``, ``det``), with small
    limits (6 features, 4 instances, 4 kB bodies) so that generated bodies reach them."""
    for name, (model, kind, _) in kit.trained_models(100).items():
        kit.publish(store, name, model, kind)
    settings = kit.make_settings(redis_url, prefix, max_features=6)
    app = create_app(
        settings, metrics=ServingMetrics(CollectorRegistry()), max_instances=4, max_body_bytes=4096
    )
    with kit.serve_in_thread(app) as client:
        kit.wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client
