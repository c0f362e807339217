"""What the console shows, read from Redis and from the learner's /metrics: plain JSON-ready data.

- **models**: per model the version served and its metadata (age, samples, metrics, size), the
  promoted/pinned/latest pointers, the versions kept and the registry's history
  (`stream.registry.registry.Registry`, the code the CLI uses);
- **curves**: the learning-curve trace (`stream.store.trace`), sent incrementally to each page:
  a `CurveCursor` remembers the last point a page has (label count and wall time) and sends the
  points after it, or the whole curve again (``reset``) when that point is gone or changed (a
  replay rewound the curve);
- **ops**: lag, throughput, dead letters and drift detections from the learner's Prometheus
  /metrics when it answers (`scrape_learner`); else throughput from the trace, and the rest
  marked unknown;
- **graphs** (`stream.store.graphs`) and **comparisons** (`stream.store.comparisons`).

Points travel as arrays ``[labels, event_time, wall_time, samples, {metric: value | null}]``.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from schemas.errors import RiverstreamError
from schemas.records import HistoryEntry, VersionInfo
from schemas.settings import Settings
from stream.registry.registry import Registry
from stream.store.comparisons import ComparisonStore
from stream.store.graphs import GraphStore
from stream.store.snapshots import SnapshotStore
from stream.store.trace import TracePoint
from stream.store.trace_reader import TraceReader

HISTORY_SHOWN = 200
VERSIONS_SHOWN = 60
CURVE_POINTS = 10_000
RATE_SECONDS = 2.0
"""Throughput is measured over at least this long."""


def learner_metrics_url(settings: Settings) -> str | None:
    """Where the console reads the learner's metrics (None: nowhere configured).

    >>> learner_metrics_url(Settings(learner_metrics_port=9108))
    'http://127.0.0.1:9108/metrics'
    >>> learner_metrics_url(Settings(learner_metrics_port=0)) is None
    True
    """
    if settings.console_metrics_url:
        return settings.console_metrics_url
    if settings.learner_metrics_port:
        host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::") else settings.metrics_host
        return f"http://{host}:{settings.learner_metrics_port}/metrics"
    return None


@dataclass
class LearnerSample:
    """What the console uses of one scrape of the learner's /metrics."""

    at: float
    consumed: float = 0.0
    """Events read from the stream's topics, total."""
    lag: float | None = None
    dead_letters: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    learner_up: bool = False
    redis_up: bool | None = None
    watermark_delay: float | None = None


def scrape_learner(url: str, topics: Sequence[str], timeout: float = 1.0) -> LearnerSample | None:
    """One scrape of the learner's Prometheus text; None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return parse_learner_metrics(text, topics, time.time())


def parse_learner_metrics(text: str, topics: Sequence[str], at: float) -> LearnerSample:
    """The console's view of a learner's /metrics text.

    >>> text = '''riverstream_events_consumed_total{topic="f"} 30.0
    ... riverstream_events_consumed_total{topic="other"} 5.0
    ... riverstream_consumer_lag{topic="f",partition="0"} 4.0
    ... riverstream_dead_letters_total{reason="bad_json"} 2.0
    ... riverstream_drift_detections_total{model="lr"} 1.0
    ... riverstream_learner_up 1.0
    ... '''
    >>> s = parse_learner_metrics(text, ["f", "l"], 0.0)
    >>> s.consumed, s.lag, s.dead_letters, s.drift, s.learner_up
    (30.0, 4.0, {'bad_json': 2.0}, {'lr': 1.0}, True)
    """
    sample = LearnerSample(at)
    wanted = set(topics)
    lag: float | None = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "riverstream_events_consumed_total" and labels.get("topic") in wanted:
                sample.consumed += value
            elif name == "riverstream_consumer_lag" and labels.get("topic") in wanted:
                lag = (lag or 0.0) + value
            elif name == "riverstream_dead_letters_total" and value:
                sample.dead_letters[labels.get("reason", "?")] = value
            elif name == "riverstream_drift_detections_total":
                sample.drift[labels.get("model", "?")] = value
            elif name == "riverstream_learner_up":
                sample.learner_up = value == 1
            elif name == "riverstream_redis_up":
                sample.redis_up = value == 1
            elif name == "riverstream_watermark_delay":
                sample.watermark_delay = value
    sample.lag = lag
    return sample


def point_row(p: TracePoint) -> list[Any]:
    return [p.labels, p.event_time, p.wall_time, p.samples, p.metrics]


@dataclass
class CurveCursor:
    """Per page: the last point it has of each model's curve."""

    last: dict[str, tuple[int, float]] = field(default_factory=dict)

    def update(self, reader: TraceReader, models: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{model: {"reset": bool, "points": [...]}}`` with what the page lacks (models with
        nothing new are left out)."""
        out: dict[str, dict[str, Any]] = {}
        for model in models:
            seen = self.last.get(model)
            reset = seen is None
            if seen is not None:
                there = reader.at(model, seen[0])
                reset = there is None or there.wall_time != seen[1]
            after = 0 if reset or seen is None else seen[0]
            points = reader.points(model, after=after, limit=CURVE_POINTS)
            if points:
                self.last[model] = (points[-1].labels, points[-1].wall_time)
            elif reset:
                self.last.pop(model, None)
            if points or (reset and seen is not None):
                out[model] = {"reset": reset, "points": [point_row(p) for p in points]}
        return out


@dataclass
class OpsTracker:
    """Per page: an earlier scrape, for the throughput since."""

    previous: LearnerSample | None = None
    rate: float | None = None
    trace_rates: dict[str, tuple[int, float]] = field(default_factory=dict)

    def ops(
        self, url: str | None, topics: Sequence[str], reader: TraceReader, models: Sequence[str]
    ) -> dict[str, Any]:
        sample = scrape_learner(url, topics) if url else None
        if sample is None:
            return self._from_trace(reader, models, url)
        # over at least RATE_SECONDS: updates come at every snapshot, often several a second
        previous = self.previous
        if previous is None or sample.at - previous.at >= RATE_SECONDS:
            if previous is not None and sample.consumed >= previous.consumed:
                self.rate = (sample.consumed - previous.consumed) / (sample.at - previous.at)
            self.previous = sample
        rate = self.rate
        return {
            "source": f"learner metrics ({url})",
            "learner_up": sample.learner_up,
            "redis_up": sample.redis_up,
            "throughput": rate,
            "throughput_unit": "events/s",
            "consumed": sample.consumed,
            "lag": sample.lag,
            "dead_letters": sample.dead_letters,
            "drift": sample.drift,
            "watermark_delay": sample.watermark_delay,
        }

    def _from_trace(
        self, reader: TraceReader, models: Sequence[str], url: str | None
    ) -> dict[str, Any]:
        """Without the learner's metrics: labels/s from the newest trace points."""
        rate = None
        for model in models[:1]:
            newest = reader.last(model)
            if newest is None:
                continue
            before = self.trace_rates.get(model)
            self.trace_rates[model] = (newest.labels, newest.wall_time)
            if before is not None and newest.wall_time > before[1] and newest.labels > before[0]:
                rate = (newest.labels - before[0]) / (newest.wall_time - before[1])
            elif before is not None and newest.labels == before[0]:
                rate = 0.0 if time.time() - newest.wall_time > 5 else None
        why = f"the learner's metrics at {url} do not answer" if url else "no learner metrics set"
        return {
            "source": f"the learning-curve trace ({why})",
            "learner_up": None,
            "redis_up": None,
            "throughput": rate,
            "throughput_unit": "labels/s",
            "consumed": None,
            "lag": None,
            "dead_letters": None,
            "drift": None,
            "watermark_delay": None,
        }


def _version_row(info: VersionInfo) -> dict[str, Any]:
    m = info.meta
    return {
        "version": m.version,
        "created_at": m.created_at,
        "samples": m.samples_learned,
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in m.metrics.items()},
        "size": m.size,
        "kind": m.kind,
        "spec": m.spec,
        "promoted": info.promoted,
        "pinned": info.pinned,
        "serving": info.serving,
        "has_checkpoint": info.has_checkpoint,
    }


def _history_row(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "time": entry.time,
        "action": entry.action,
        "from": entry.from_,
        "to": entry.to,
        "reason": entry.reason,
        "by": entry.by,
        "resume": entry.resume,
        "exclude": entry.exclude,
    }


def model_view(registry: Registry, name: str) -> dict[str, Any]:
    """One model: pointers, the served version's metadata, versions kept, history."""
    infos = registry.versions(name)
    rows = [_version_row(i) for i in infos]
    served = next((r for r in rows if r["serving"]), None)
    history = registry.history(name, last=HISTORY_SHOWN)  # not the whole list at each update
    return {
        "name": name,
        "serving": served["version"] if served else None,
        "promoted": next((r["version"] for r in rows if r["promoted"]), None),
        "pinned": next((r["version"] for r in rows if r["pinned"]), None),
        "latest": rows[-1]["version"] if rows else None,
        "served": served,
        "versions": rows[-VERSIONS_SHOWN:][::-1],
        "history": [_history_row(e) for e in history[-HISTORY_SHOWN:]],
    }


def graphs_view(graphs: GraphStore) -> list[dict[str, Any]]:
    """Every serving graph: the version served and the models it uses."""
    out = []
    for name in graphs.names():
        promoted = graphs.promoted(name)
        models: list[str] = []
        if promoted is not None:
            try:
                models = sorted(graphs.spec(name, promoted).model_names())
            except RiverstreamError:  # deleted meanwhile, or the document no longer parses
                models = []
        out.append(
            {
                "name": name,
                "promoted": promoted,
                "versions": len(graphs.versions(name)),
                "models": models,
            }
        )
    return out


def comparisons_view(comparisons: ComparisonStore) -> list[dict[str, Any]]:
    out = []
    for champion, challenger in comparisons.pairs():
        stored = comparisons.get(champion, challenger)
        if stored is not None:
            out.append(stored.to_dict())
    return out


class ConsoleState:
    """Everything one update of the page holds (one per page: cursors are per page)."""

    def __init__(self, settings: Settings, store: SnapshotStore) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(store, by="console")
        self.reader = TraceReader(store.client, store.keys)
        self.graphs = GraphStore(store.client, settings.redis_prefix)
        self.comparisons = ComparisonStore(store.client, settings.redis_prefix)
        self.metrics_url = learner_metrics_url(settings)
        self.topics = (settings.topic_features, settings.topic_labels)

    def update(self, cursor: CurveCursor, ops: OpsTracker, *, actions: bool) -> dict[str, Any]:
        """One update: every section, curves as what ``cursor``'s page lacks."""
        names = self.store.models()
        models = []
        for name in names:
            try:
                models.append(model_view(self.registry, name))
            except RiverstreamError as exc:  # e.g. pruned while reading: shown, not fatal
                models.append({"name": name, "error": str(exc)})
        return {
            "time": time.time(),
            "prefix": self.settings.redis_prefix,
            "actions": actions,
            "trace_every": self.settings.trace_every_labels,
            "models": models,
            "curves": cursor.update(self.reader, names),
            "ops": ops.ops(self.metrics_url, self.topics, self.reader, names),
            "graphs": graphs_view(self.graphs),
            "comparisons": comparisons_view(self.comparisons),
        }
