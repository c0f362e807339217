"""LearnerMetrics, the /metrics server of the learner, and DriftMonitor."""

from __future__ import annotations

import doctest
import random
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import observability.report
import serving.telemetry
import stream.learner.telemetry
from schemas.errors import ConfigError
from stream.learner.telemetry import DriftMonitor, LearnerMetrics, start_http_server


@pytest.mark.parametrize(
    "module", [stream.learner.telemetry, serving.telemetry, observability.report]
)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_values(learner_metrics):
    r = learner_metrics.registry
    get = r.get_sample_value
    assert get("riverstream_events_consumed_total", {"topic": "riverstream.features"}) == 50
    assert get("riverstream_join_events_total", {"outcome": "joined"}) == 45
    assert get("riverstream_predict_seconds_count", {"model": "lr"}) == 2
    assert get("riverstream_predict_seconds_bucket", {"model": "lr", "le": "1e-06"}) == 0
    assert get("riverstream_predict_seconds_bucket", {"model": "lr", "le": "5e-06"}) == 2
    assert get("riverstream_consumer_lag", {"topic": "riverstream.features", "partition": "0"}) == 3
    assert get("riverstream_progressive_metric", {"model": "lr", "metric": "Accuracy"}) == 0.9
    assert get("riverstream_snapshot_version", {"model": "lr"}) == 7
    assert get("riverstream_snapshot_timestamp_seconds", {"model": "lr"}) == 1.7e9
    assert get("riverstream_learner_stall_seconds_count") == 1
    assert get("riverstream_learner_up") == 1
    assert get("riverstream_learner_last_event_timestamp_seconds") == 1.7e9


def test_join_outcomes_are_exported_from_the_start_and_bounded():
    m = LearnerMetrics(CollectorRegistry())
    for outcome in ("joined", "expired", "orphan", "late"):
        assert (
            m.registry.get_sample_value("riverstream_join_events_total", {"outcome": outcome}) == 0
        )
    with pytest.raises(ValueError, match="unknown join outcome"):
        m.join_outcomes({"event-123": 1})


def test_two_instances_on_private_registries_do_not_clash():
    first, second = LearnerMetrics(CollectorRegistry()), LearnerMetrics(CollectorRegistry())
    first.samples_learned("lr", 3)
    get = "riverstream_samples_learned_total", {"model": "lr"}
    assert first.registry.get_sample_value(*get) == 3
    assert second.registry.get_sample_value(*get) is None  # nothing shared
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LearnerMetrics(first.registry)  # the clash that private registries avoid


def test_learner_serves_metrics_on_its_own_port(learner_metrics):
    server, thread = start_http_server(0, learner_metrics.registry, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
        # what the port serves is this registry, sample for sample
        assert _samples(body) == _samples(generate_latest(learner_metrics.registry))
        assert _samples(body)[("riverstream_learner_up", ())] == 1.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _samples(body: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_adwin_detects_a_classifier_that_starts_failing():
    rng = random.Random(1)
    monitor = DriftMonitor({"lr": "classification"})
    before = [monitor.update("lr", 1, 1 if rng.random() < 0.95 else 0) for _ in range(2000)]
    after = [monitor.update("lr", 1, 1 if rng.random() < 0.5 else 0) for _ in range(2000)]
    assert not any(before)
    assert any(after)


def test_page_hinkley_detects_a_regressor_that_degrades():
    rng = random.Random(2)
    monitor = DriftMonitor({"reg": "regression"})
    before = [monitor.update("reg", 10.0, 10.0 + rng.gauss(0, 0.1)) for _ in range(2000)]
    after = [monitor.update("reg", 10.0, 10.0 + rng.gauss(5, 0.1)) for _ in range(500)]
    assert not any(before)
    assert any(after)
    assert monitor.update("reg", 1.0, None) is False


def test_drift_monitor_rejects_unknown_models_and_tasks():
    with pytest.raises(ConfigError):
        DriftMonitor({"x": "clustering"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError):
        DriftMonitor({}).update("x", 1, 1)


def test_a_regressor_label_that_is_no_float_is_not_a_drift_sample():
    """A string label (the core counted a LabelTypeError) or an integer past the floats (an
    OverflowError): the learner's observer raised on them and the learner stopped."""
    monitor = DriftMonitor({"r": "regression"})
    assert monitor.update("r", "oops", 1.0) is False
    assert monitor.update("r", 10**400, 1.0) is False
    assert monitor.update("r", 1.0, 10**400) is False
