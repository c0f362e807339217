"""Prometheus alert rules of riverstream, as code.

Each `Alert` holds its full ``expr`` and the ``signals`` behind it: the plain queries (no
threshold) that must return a finite value whenever riverstream runs, which the integration
test evaluates against a real Prometheus. Thresholds are module constants.

    python -m observability.alerts          # write observability/prometheus/alerts.yml
    python -m observability.alerts --check  # exit 1 if the committed file differs

``prometheus/alerts_test.yml`` (hand-written) unit-tests every alert, firing and silent, with
``promtool test rules``; it assumes the scrape jobs of ``prometheus/prometheus.yml``
(``riverstream-learner``, ``riverstream-api`` and ``riverstream-predict-worker``). The alerts that
a process is down fire for a target of its job that exists and is down, never because none
exists: nothing to scrape is not down. That no learner or API is scraped at all (scaled to 0,
gone from service discovery) is its own alert, of the group `ABSENT_GROUP`, for a deployment that
declares what runs: the Prometheus of ``riverstream services up``, which scrapes only what was
started, does not load that group (``stream.dev.services``), and a prediction worker is optional
anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

PATH = Path(__file__).parent / "prometheus" / "alerts.yml"
GROUP = "riverstream"
ABSENT_GROUP = "riverstream-absent"
"""The alerts that a process expected to run has no target at all (``absent``)."""

SNAPSHOT_MAX_AGE_SECONDS = 600
SERVED_BEHIND_SECONDS = 300
LEARNER_IDLE_SECONDS = 120
STALL_P99_SECONDS = 1.0
LAG_MAX_MESSAGES = 10_000
PREDICT_LAG_MAX_REQUESTS = 10_000
METRIC_DROP = 0.05  # relative drop of a progressive metric from its 1 h best
DEAD_LETTER_RATIO = 0.01
SERVING_5XX_RATIO = 0.01
# Progressive metrics whose name matches this are lower-is-better (errors, losses).
LOWER_IS_BETTER = "(?i).*(mae|mse|rmse|rmsle|smape|loss|entropy|error).*"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    signals: tuple[str, ...]
    group: str = GROUP


_EVENTS_RATE = "sum(rate(riverstream_events_consumed_total[10m]))"
_HTTP_RATE = "sum(rate(riverstream_http_requests_total[5m]))"
_HIGHER = f'riverstream_progressive_metric{{metric!~"{LOWER_IS_BETTER}"}}'
_LOWER = f'riverstream_progressive_metric{{metric=~"{LOWER_IS_BETTER}"}}'

ALERTS = (
    Alert(
        "RiverstreamSnapshotStale",
        f"time() - max by (model) (riverstream_snapshot_timestamp_seconds)"
        f" > {SNAPSHOT_MAX_AGE_SECONDS} and on () {_EVENTS_RATE} > 0",
        "5m", "warning",
        "Learner consumes events but wrote no snapshot of {{ $labels.model }} for "
        "{{ $value | humanizeDuration }}.",
        ("time() - max by (model) (riverstream_snapshot_timestamp_seconds)", _EVENTS_RATE),
    ),
    Alert(
        "RiverstreamServedSnapshotStale",
        "max by (model) (riverstream_snapshot_timestamp_seconds)"
        " - on (model) min by (model) (riverstream_model_snapshot_timestamp_seconds)"
        f" > {SERVED_BEHIND_SECONDS}",
        "5m", "warning",
        "API serves a snapshot of {{ $labels.model }} {{ $value | humanizeDuration }} older than "
        "the learner's latest (not picked up, or pinned by a rollback).",
        ("max by (model) (riverstream_snapshot_timestamp_seconds)"
         " - on (model) min by (model) (riverstream_model_snapshot_timestamp_seconds)",),
    ),
    Alert(
        "RiverstreamLearnerDown",
        'up{job="riverstream-learner"} == 0 or riverstream_learner_up == 0',
        "1m", "critical",
        "A learner ({{ $labels.instance }}) is down or cannot be scraped.",
        ('up{job="riverstream-learner"}', "riverstream_learner_up"),
    ),
    Alert(
        "RiverstreamLearnerStalled",
        f"time() - max(riverstream_learner_last_event_timestamp_seconds) > {LEARNER_IDLE_SECONDS}"
        " and on () sum(riverstream_consumer_lag) > 0",
        "2m", "critical",
        "Learner processed no event for {{ $value | humanizeDuration }} while input is waiting.",
        ("time() - max(riverstream_learner_last_event_timestamp_seconds)",
         "sum(riverstream_consumer_lag)"),
    ),
    Alert(
        "RiverstreamSnapshotStallHigh",
        "histogram_quantile(0.99, sum by (le) (rate(riverstream_learner_stall_seconds_bucket[10m])))"
        f" > {STALL_P99_SECONDS}",
        "10m", "warning",
        "Snapshots block learning for {{ $value | humanizeDuration }} (p99).",
        ("histogram_quantile(0.99, sum by (le) "
         "(rate(riverstream_learner_stall_seconds_bucket[10m])))",),
    ),
    Alert(
        "RiverstreamConsumerLagHigh",
        f"sum by (topic) (riverstream_consumer_lag) > {LAG_MAX_MESSAGES}",
        "5m", "warning",
        "Learner is {{ $value }} messages behind on {{ $labels.topic }}.",
        ("sum by (topic) (riverstream_consumer_lag)",),
    ),
    Alert(
        "RiverstreamProgressiveMetricDropped",
        f"{_HIGHER} < {1 - METRIC_DROP} * max_over_time({_HIGHER}[1h])"
        f" or ({_LOWER} > {1 + METRIC_DROP} * min_over_time({_LOWER}[1h])"
        f" and min_over_time({_LOWER}[1h]) > 0)",
        "10m", "warning",
        "{{ $labels.metric }} of {{ $labels.model }} fell more than "
        f"{METRIC_DROP:.0%} from its best of the last hour (now {{{{ $value }}}}).",
        ("riverstream_progressive_metric", "max_over_time(riverstream_progressive_metric[1h])"),
    ),
    Alert(
        "RiverstreamDriftDetected",
        "increase(riverstream_drift_detections_total[10m]) > 0",
        "0m", "info",
        "Concept drift detected on the error stream of {{ $labels.model }}.",
        ("sum(increase(riverstream_drift_detections_total[10m])) or on () vector(0)",),
    ),
    Alert(
        "RiverstreamDeadLetterRate",
        "sum(rate(riverstream_dead_letters_total[5m]))"
        f" / clamp_min(sum(rate(riverstream_events_consumed_total[5m])), 1e-9) > {DEAD_LETTER_RATIO}",
        "5m", "warning",
        "{{ $value | humanizePercentage }} of events go to the dead-letter topic.",
        ("(sum(rate(riverstream_dead_letters_total[5m])) or on () vector(0))"
         " / clamp_min(sum(rate(riverstream_events_consumed_total[5m])), 1e-9)",),
    ),
    Alert(
        "RiverstreamServingErrors",
        f'sum(rate(riverstream_http_requests_total{{status=~"5.."}}[5m])) / {_HTTP_RATE}'
        f" > {SERVING_5XX_RATIO}",
        "5m", "critical",
        "{{ $value | humanizePercentage }} of API requests fail with 5xx.",
        (f'(sum(rate(riverstream_http_requests_total{{status=~"5.."}}[5m])) or on () vector(0))'
         f" / clamp_min({_HTTP_RATE}, 1e-9)",),
    ),
    Alert(
        "RiverstreamServingDown",
        'up{job="riverstream-api"} == 0',
        "1m", "critical",
        "An API target ({{ $labels.instance }}) is down or cannot be scraped.",
        ('up{job="riverstream-api"}',),
    ),
    Alert(
        "RiverstreamPredictWorkerDown",
        'up{job="riverstream-predict-worker"} == 0 or riverstream_predict_up == 0',
        "1m", "critical",
        "A prediction worker ({{ $labels.instance }}) is down or cannot be scraped: its "
        "partitions' requests wait until the group moves them.",
        ('up{job="riverstream-predict-worker"}', "riverstream_predict_up"),
    ),
    Alert(
        "RiverstreamPredictRequestsBehind",
        f"sum(riverstream_predict_consumer_lag) > {PREDICT_LAG_MAX_REQUESTS}",
        "5m", "warning",
        "{{ $value }} prediction requests wait in Kafka: the workers do not keep up "
        "(add workers, up to the request topic's partitions).",
        ("sum(riverstream_predict_consumer_lag)",),
    ),
    Alert(
        "RiverstreamLearnerAbsent",
        'absent(up{job="riverstream-learner"})',
        "10m", "warning",
        "No learner is scraped (none in service discovery, or scaled to 0): nothing learns.",
        ('up{job="riverstream-learner"}',),
        ABSENT_GROUP,
    ),
    Alert(
        "RiverstreamServingAbsent",
        'absent(up{job="riverstream-api"})',
        "10m", "warning",
        "No API is scraped (none in service discovery, or scaled to 0): nothing answers.",
        ('up{job="riverstream-api"}',),
        ABSENT_GROUP,
    ),
)  # fmt: skip


def render() -> str:
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    lines = [
        "# Generated by observability/alerts.py; edit that file, then run",
        "# python -m observability.alerts",
        "groups:",
    ]
    for group in dict.fromkeys(a.group for a in ALERTS):
        lines += [f"  - name: {group}", "    rules:"]
        for a in (a for a in ALERTS if a.group == group):
            lines += [
                f"      - alert: {a.name}",
                f"        expr: {q(a.expr)}",
                f"        for: {a.for_}",
                "        labels:",
                f"          severity: {a.severity}",
                "        annotations:",
                f"          summary: {q(a.summary)}",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.exists() or PATH.read_text() != text:
            print(f"out of date: {PATH}", file=sys.stderr)
            return 1
        return 0
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
