"""Registries in which every riverstream metric has been touched once (`tests/support/metrics.py`)."""

from tests.support.metrics import learner_metrics, serving_metrics, worker_metrics

__all__ = ["learner_metrics", "serving_metrics", "worker_metrics"]
