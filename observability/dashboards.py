"""Grafana dashboards of riverstream, as code, built with the official ``grafana-foundation-sdk``.

Each dashboard is a list of `P` (panel specs: a title, queries, a unit, a width); `build`
lays them out left to right in 24 columns, numbers them in order (stable ids) and turns them
into SDK builders, every panel and query on the ``${datasource}`` template variable. Output is
deterministic (sorted keys, two-space indent), so the committed JSON can be checked::

    python -m observability.dashboards          # write observability/grafana/...
    python -m observability.dashboards --check  # exit 1 if the committed files differ

Grafana loads ``grafana/dashboards/*.json`` through the provider in
``grafana/provisioning/dashboards/riverstream.yml`` (mount that folder on
``/var/lib/grafana/dashboards``) and the Prometheus datasource from
``grafana/provisioning/datasources/prometheus.yml``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    Panel,
    VariableModel,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).parent / "grafana"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
M = 'model=~"$model"'


@dataclass(frozen=True)
class P:
    """One panel: ``queries`` are (PromQL, legend) pairs; ``kind`` is timeseries or stat."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    w: int = 12
    h: int = 8
    kind: str = "timeseries"
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str


def _rate(metric: str, by: str = "", sel: str = "") -> str:
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({metric}{{{sel}}}[{RATE}]))" if sel else f"{agg}(rate({metric}[{RATE}]))"


def _quantile(q: float, metric: str, by: str, sel: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    inner = f"{metric}_bucket{{{sel}}}" if sel else f"{metric}_bucket"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({inner}[{RATE}])))"


def _or_zero(expr: str) -> str:
    """Counters whose labelled series appear only on first increment: show 0, not 'No data'."""
    return f"({expr}) or on() vector(0)"


_5XX = _rate("riverstream_http_requests_total", sel='status=~"5.."')
_5XX_RATIO = (
    f"({_5XX} or on() vector(0)) / clamp_min({_rate('riverstream_http_requests_total')}, 1e-9)"
)

OVERVIEW: list[P | Row] = [
    Row("Health"),
    P("Learner up", (('sum(up{job="riverstream-learner"})', "targets up"),), w=4, h=4, kind="stat"),
    P("API processes up", (('sum(up{job="riverstream-api"})', "targets up"),), w=4, h=4,
      kind="stat"),
    P("Events consumed /s", ((_rate("riverstream_events_consumed_total"), "events/s"),), "ops",
      w=4, h=4, kind="stat"),
    P("HTTP requests /s", ((_rate("riverstream_http_requests_total"), "req/s"),), "reqps", w=4,
      h=4, kind="stat"),
    P("Consumer lag", (("sum(riverstream_consumer_lag)", "messages"),), w=4, h=4, kind="stat"),
    P("Oldest served snapshot age",
      (("time() - min(riverstream_model_snapshot_timestamp_seconds)", "age"),), "s", w=4, h=4,
      kind="stat"),
    Row("Learning and serving"),
    P("Progressive metric", (("riverstream_progressive_metric", "{{model}} {{metric}}"),),
      description="Label-delay-aware progressive validation, as river.evaluate computes it."),
    P("Throughput", ((_rate("riverstream_events_consumed_total", "topic"), "consumed {{topic}}"),
                     (_rate("riverstream_samples_learned_total", "model"), "learned {{model}}")),
      "ops"),
    P("HTTP 5xx ratio", ((_5XX_RATIO, "5xx / all"),), "percentunit"),
    P("Dead letters /s", ((_or_zero(_rate("riverstream_dead_letters_total", "reason")),
                           "{{reason}}"),), "ops"),
]  # fmt: skip

LEARNING: list[P | Row] = [
    Row("Quality"),
    P("Progressive metric (the learner's predictions) and served metric (the answers given)", (
        (f'riverstream_progressive_metric{{{M}, metric=~"$metric"}}', "{{model}} {{metric}}"),
        (f'riverstream_served_metric{{{M}, metric=~"$metric"}}',
         "served {{model}} v{{version}} {{metric}}")), w=24, h=10),
    P("Samples learned /s", ((_rate("riverstream_samples_learned_total", "model", M),
                              "{{model}}"),), "ops", w=8),
    P("Drift detections (1h)", ((_or_zero(
        f"sum by (model) (increase(riverstream_drift_detections_total{{{M}}}[1h]))"),
        "{{model}}"),), w=8,
      description="ADWIN on 0/1 errors (classifiers), Page-Hinkley on |error|."),
    P("Observer errors since the learner started", ((_or_zero(
        "sum by (reason) (riverstream_learner_observer_errors_total)"), "{{reason}}"),), w=8,
      description="Exceptions of the learner's metrics exporter, by type: learning went on, "
      "but the metrics on this page may be incomplete or stale; the learner's log has the "
      "traceback. A total, not an increase: one failure shows."),
    Row("Model cost and joins"),
    P("Predict latency", ((_quantile(0.5, "riverstream_predict_seconds", "model", M),
                           "p50 {{model}}"),
                          (_quantile(0.99, "riverstream_predict_seconds", "model", M),
                           "p99 {{model}}")), "s"),
    P("Learn latency", ((_quantile(0.5, "riverstream_learn_seconds", "model", M),
                         "p50 {{model}}"),
                        (_quantile(0.99, "riverstream_learn_seconds", "model", M),
                         "p99 {{model}}")), "s"),
    P("Join outcomes /s", ((_rate("riverstream_join_events_total", "outcome"), "{{outcome}}"),),
      "ops"),
    P("Watermark delay", (("riverstream_watermark_delay", "delay"),),
      description="Newest event time minus watermark, in event-time units."),
    Row("Champion / challenger (paired, on the labels both scored)"),
    P("Loss difference, champion - challenger, with its anytime-valid interval", (
        (f"riverstream_comparison_difference{{{M}}}", "{{model}} - {{challenger}}"),
        (f"riverstream_comparison_lower{{{M}}}", "lower {{model}} - {{challenger}}"),
        (f"riverstream_comparison_upper{{{M}}}", "upper {{model}} - {{challenger}}")),
      w=12, description="Above 0: the challenger is better. The interval is a confidence "
      "sequence (riverstream models compare): valid however often it is looked at."),
    P("Decision (1: challenger better, -1: champion better)",
      ((f"riverstream_comparison_decision{{{M}}}", "{{model}} vs {{challenger}}"),), w=6,
      kind="stat"),
    P("Labels compared", ((f"riverstream_comparison_labels{{{M}}}",
                           "{{model}} vs {{challenger}}"),), w=6, kind="stat"),
    P("Loss on the compared labels (0/1 error or absolute error)", (
        (f"riverstream_comparison_champion_loss{{{M}}}", "{{model}} (champion)"),
        (f"riverstream_comparison_challenger_loss{{{M}}}",
         "{{challenger}} (challenger of {{model}})")), w=24),
]  # fmt: skip

SERVING: list[P | Row] = [
    Row("Traffic"),
    P("Requests /s", ((_rate("riverstream_http_requests_total", "route, status"),
                       "{{route}} {{status}}"),), "reqps"),
    P("Latency", tuple(
        (_quantile(q, "riverstream_http_request_duration_seconds", "route"),
         f"p{round(q * 100)} {{{{route}}}}") for q in (0.5, 0.95, 0.99)), "s"),
    P("5xx ratio", ((_5XX_RATIO, "5xx / all"),), "percentunit"),
    P("Closed loop: events not stored (503s, 5m)", ((_or_zero(
        "sum by (reason) (increase(riverstream_closed_loop_publish_failures_total[5m]))"),
        "{{reason}}"),), description="Ingest requests and logged predictions answered 503 "
      "because Kafka did not acknowledge (serving.feedback): not_acknowledged, outage (failing "
      "fast while Kafka is away), busy (too many publishes waiting), no_kafka."),
    Row("Models"),
    P("Version served (min over workers)", (("min by (model) (riverstream_model_version)",
                                             "{{model}}"),), w=8),
    P("Versions behind the learner", ((
        "max by (model) (riverstream_snapshot_version)"
        " - on (model) min by (model) (riverstream_model_version)", "{{model}}"),), w=8),
    P("Served snapshot age", (("time() - min by (model) "
                               "(riverstream_model_snapshot_timestamp_seconds)", "{{model}}"),),
      "s", w=8),
    P("Swaps and refused snapshots (5m)", (
        ("sum by (model) (increase(riverstream_model_swaps_total[5m]))", "swaps {{model}}"),
        (_or_zero("sum by (model, reason) (increase(riverstream_snapshots_refused_total[5m]))"),
         "refused {{model}} {{reason}}")), w=12),
    P("Snapshot load time", (
        (_quantile(0.5, "riverstream_snapshot_load_seconds", "model"), "p50 {{model}}"),
        (_quantile(0.99, "riverstream_snapshot_load_seconds", "model"), "p99 {{model}}")), "s"),
    Row("Graphs and shadows"),
    P("Graph version served (min over workers)",
      (("min by (graph) (riverstream_graph_version)", "{{graph}}"),), w=8),
    P("Graph swaps and refused documents (5m)", (
        ("sum by (graph) (increase(riverstream_graph_swaps_total[5m]))", "swaps {{graph}}"),
        (_or_zero("sum by (graph, reason) (increase(riverstream_graphs_refused_total[5m]))"),
         "refused {{graph}} {{reason}}")), w=8),
    P("Shadow runs, errors and drops /s", (
        (_rate("riverstream_shadow_runs_total", "graph, shadow"), "runs {{graph}} {{shadow}}"),
        (_or_zero(_rate("riverstream_shadow_errors_total", "graph, shadow, reason")),
         "errors {{graph}} {{shadow}} {{reason}}"),
        (_or_zero(_rate("riverstream_shadow_dropped_total", "graph")), "dropped {{graph}}")),
      "ops", w=8),
    P("Shadow agreement with the primary answer", ((
        "sum by (graph, shadow) (rate(riverstream_shadow_agreements_total[5m]))"
        " / sum by (graph, shadow) (rate(riverstream_shadow_runs_total[5m]))",
        "{{graph}} {{shadow}}"),), "percentunit", w=12),
    P("Shadow evaluation time", (
        (_quantile(0.5, "riverstream_shadow_duration_seconds", "graph, shadow"),
         "p50 {{graph}} {{shadow}}"),
        (_quantile(0.99, "riverstream_shadow_duration_seconds", "graph, shadow"),
         "p99 {{graph}} {{shadow}}")), "s", w=12),
    Row("Prediction workers (requests and answers through Kafka)"),
    P("Workers up", (("sum(riverstream_predict_up)", "workers"),), w=4, kind="stat"),
    P("Requests, answers and dead letters /s", (
        (_rate("riverstream_predict_requests_total"), "requests"),
        (_rate("riverstream_predict_answers_total", "model"), "answers {{model}}"),
        (_or_zero(_rate("riverstream_predict_dead_letters_total", "reason")),
         "dead letters {{reason}}"),
        (_or_zero(_rate("riverstream_predict_batch_retries_total")), "batches answered again")),
      "ops", w=10, description="Answers are counted once the broker acknowledged them; a "
      "batch the broker refused is answered again (at-least-once)."),
    P("Request → answer latency", tuple(
        (_quantile(q, "riverstream_predict_latency_seconds", ""), f"p{round(q * 100)}")
        for q in (0.5, 0.99)), "s", w=10,
      description="From the request's Kafka timestamp to its answer acknowledged by the broker."),
    P("Requests waiting, per partition", ((
        "max by (topic, partition) (riverstream_predict_consumer_lag)",
        "{{topic}}/{{partition}}"),), w=12),
    P("Versions answered with (min over workers)", (
        ("min by (model) (riverstream_predict_model_version)", "{{model}}"),
        ("min by (graph) (riverstream_predict_graph_version)", "graph {{graph}}")), w=12),
]  # fmt: skip

KAFKA_SNAPSHOTS: list[P | Row] = [
    Row("Kafka"),
    P("Consumer lag per partition", (("riverstream_consumer_lag", "{{topic}}/{{partition}}"),)),
    P("Events consumed /s", ((_rate("riverstream_events_consumed_total", "topic"), "{{topic}}"),),
      "ops"),
    P("Dead letters /s by reason", ((_or_zero(_rate("riverstream_dead_letters_total", "reason")),
                                     "{{reason}}"),), "ops"),
    P("Model errors /s (events a model raised on)", ((_or_zero(_rate(
        "riverstream_model_errors_total", "model, reason")),
        "{{model}} {{reason}}"),), "ops"),
    P("Watermark delay", (("riverstream_watermark_delay", "delay"),)),
    P("Redis reachable from the learner (0: outage, learning goes on)",
      (("riverstream_redis_up", "redis up"),)),
    Row("Snapshots"),
    P("Snapshot version (learner)", (("riverstream_snapshot_version", "{{model}}"),), w=8),
    P("Snapshot size", (("riverstream_snapshot_size_bytes", "{{model}}"),), "bytes", w=8),
    P("Snapshot age (learner)", (("time() - riverstream_snapshot_timestamp_seconds",
                                  "{{model}}"),), "s", w=8),
    P("Snapshot duration", (
        (_quantile(0.5, "riverstream_snapshot_duration_seconds", ""), "p50"),
        (_quantile(0.99, "riverstream_snapshot_duration_seconds", ""), "p99")), "s"),
    P("Learner stall during snapshots", (
        (_quantile(0.99, "riverstream_learner_stall_seconds", ""), "p99"),
        ("rate(riverstream_learner_stall_seconds_sum[$__rate_interval])", "stalled s/s")), "s"),
]  # fmt: skip

# uid -> (title, panel specs, whether it has the $model and $metric variables)
DASHBOARDS = {
    "riverstream-overview": ("riverstream / Overview", OVERVIEW, False),
    "riverstream-learning": ("riverstream / Learning quality", LEARNING, True),
    "riverstream-serving": ("riverstream / Serving", SERVING, False),
    "riverstream-kafka-snapshots": ("riverstream / Kafka and snapshots", KAFKA_SNAPSHOTS, False),
}


def model_selector(specs: list[P | Row]) -> str:
    """The series whose ``model`` labels the ``$model`` variable offers: every metric that a
    panel of ``specs`` filters by ``$model``. Not the learned models alone: a graph's served
    metric and its shadows' (``GRAPH@BRANCH``) and a comparison's champion are models too.

    >>> model_selector([P("t", ((f"a_b{{{M}}}", ""), ("c_d", ""), (f"rate(e_f_total{{{M}}}[1m])", "")))])
    '{__name__=~"a_b|e_f_total"}'
    """
    names = {
        name
        for spec in specs
        if isinstance(spec, P)
        for expr, _legend in spec.queries
        if M in expr
        for name in re.findall(r"([a-z_:][a-z0-9_:]*)\{[^}]*" + re.escape(M), expr)
    }
    return '{__name__=~"' + "|".join(sorted(names)) + '"}'


def _variables(specs: list[P | Row], per_model: bool) -> list[Builder[VariableModel]]:
    out: list[Builder[VariableModel]] = [
        dashboard.DatasourceVariable("datasource").label("Datasource").type("prometheus")
    ]
    if per_model:
        for name, query in (
            ("model", f"label_values({model_selector(specs)}, model)"),
            ("metric", "label_values(riverstream_progressive_metric, metric)"),
        ):
            out.append(
                dashboard.QueryVariable(name).label(name.capitalize()).datasource(DATASOURCE)
                .query(query).refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True)
                .include_all(True).all_value(".*").sort(VariableSort.ALPHABETICAL_ASC)
            )  # fmt: skip
    return out


def _panel(spec: P, panel_id: int, pos: GridPos) -> Builder[Panel]:
    builder: stat.Panel | timeseries.Panel = (
        stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    )
    builder = builder.id(panel_id).title(spec.title).datasource(DATASOURCE).unit(spec.unit)
    if spec.description:
        builder = builder.description(spec.description)
    for ref, (expr, legend) in zip("ABCDEFGH", spec.queries, strict=False):
        query = prometheus.Dataquery().ref_id(ref).datasource(DATASOURCE).expr(expr)
        builder = builder.with_target(query.legend_format(legend))
    return builder.grid_pos(pos)


def build(uid: str) -> dict[str, Any]:
    """The dashboard ``uid`` as a JSON-ready dict, laid out and numbered deterministically."""
    title, specs, per_model = DASHBOARDS[uid]
    board = dashboard.Dashboard(title).uid(uid).tags(["riverstream"]).editable()
    board = board.refresh("10s").time("now-1h", "now").timezone("browser")
    for variable in _variables(specs, per_model):
        board = board.with_variable(variable)
    x = y = row_h = 0
    for panel_id, spec in enumerate(specs, start=1):
        if isinstance(spec, Row):
            y, x, row_h = y + row_h, 0, 0
            row = dashboard.Row(spec.title).id(panel_id).datasource(DATASOURCE)
            row = row.grid_pos(GridPos(h=1, w=24, x=0, y=y))
            board = board.with_row(row)
            y += 1
            continue
        if x + spec.w > 24:
            y, x, row_h = y + row_h, 0, 0
        board = board.with_panel(_panel(spec, panel_id, GridPos(h=spec.h, w=spec.w, x=x, y=y)))
        x, row_h = x + spec.w, max(row_h, spec.h)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render(uid: str) -> str:
    return json.dumps(build(uid), indent=2, sort_keys=True) + "\n"


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """Every (dashboard uid, panel title, PromQL) pair, as written in the dashboards."""
    for uid, (_, specs, _) in DASHBOARDS.items():
        for spec in specs:
            if isinstance(spec, P):
                for expr, _legend in spec.queries:
                    yield uid, spec.title, expr


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """Replace Grafana's variables so Prometheus can evaluate ``expr`` directly."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace('"$model"', '".*"')
        .replace('"$metric"', '".*"')
    )


DATASOURCE_YML = """\
# Grafana datasource provisioning (generated by observability/dashboards.py).
apiVersion: 1
datasources:
  - name: Prometheus
    uid: prometheus
    type: prometheus
    access: proxy
    url: http://prometheus:9090
    isDefault: true
    editable: false
    jsonData:
      timeInterval: 1s
"""

PROVIDER_YML = """\
# Grafana dashboard provider (generated by observability/dashboards.py).
# Mount observability/grafana/dashboards on /var/lib/grafana/dashboards.
apiVersion: 1
providers:
  - name: riverstream
    folder: riverstream
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /var/lib/grafana/dashboards
      foldersFromFilesStructure: false
"""


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {ROOT / "dashboards" / f"{uid}.json": render(uid) for uid in DASHBOARDS}
    files[ROOT / "provisioning" / "datasources" / "prometheus.yml"] = DATASOURCE_YML
    files[ROOT / "provisioning" / "dashboards" / "riverstream.yml"] = PROVIDER_YML
    return files


def stale_outputs() -> list[Path]:
    """Generated files whose committed content differs (or is missing)."""
    return [p for p, text in outputs().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files differ")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_outputs()
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
