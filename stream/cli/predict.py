"""`riverstream predict-worker` and `riverstream score`: the asynchronous and the batch
prediction architectures (`stream.predict`).

The runtime modules are imported by the commands that run, so that ``--help`` and the other
commands stay quick (River takes ≈ 1 s to import; tests/stream/cli/test_main.py).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.errors import RegistryError, RiverstreamError
from schemas.settings import Settings
from stream.cli.terminal import print_text

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from learners.graph import GraphAnswer
    from learners.predictor import ServedModel
    from serving.shadows import ShadowRunner
    from stream.store.graph_follower import ServedModels

err = Console(stderr=True)


def _settings() -> Settings:
    from stream.dev.services import resolve

    return resolve(Settings())


def predict_worker(
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="Answer only for this model or graph (repeatable; default: every model and graph)."
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default: RIVERSTREAM_PREDICT_GROUP).")
    ] = None,
    session_timeout: Annotated[
        float, typer.Option(help="Seconds after which a silent worker's partitions move.")
    ] = 10.0,
    report_every: Annotated[float, typer.Option(help="Seconds between JSON status lines.")] = 10.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="/metrics port (default RIVERSTREAM_PREDICT_METRICS_PORT; 0: none)."),
    ] = None,
) -> None:
    """Answer prediction requests from Kafka until stopped (SIGTERM: finish, commit, leave).

    Requests on RIVERSTREAM_TOPIC_REQUESTS ({"id", "target", "features"}, key = id; the target
    a model or a graph), answers on RIVERSTREAM_TOPIC_PREDICTIONS, bad requests to the
    dead-letter topic. Workers sharing a
    group share the request partitions; delivery is at-least-once (answers carry the model
    versions, so a client deduplicates by id).
    """
    from prometheus_client import CollectorRegistry

    from stream.dev.services import exporter_address, scraped
    from stream.predict.metrics import WorkerMetrics, serve_metrics
    from stream.predict.worker import build_worker

    settings = _settings()
    if group:
        settings = settings.model_copy(update={"predict_group": group})
    metrics = WorkerMetrics(CollectorRegistry())
    shadows = _shadows(metrics.registry)
    port = settings.predict_metrics_port if metrics_port is None else metrics_port
    server = serve_metrics(metrics.registry, port, settings.metrics_host)
    worker, follower, graphs = build_worker(
        settings, target or (), session_timeout_ms=int(session_timeout * 1000),
        metrics=metrics, shadows=shadows,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())

    def report(stats: dict[str, object]) -> None:
        served = {name: m.version for name, m in follower.served.items()}
        graph_versions = {name: g.version for name, g in graphs.served.items()}
        print(json.dumps({**stats, "serving": served, "graphs": graph_versions}), flush=True)

    try:
        with scraped(settings, "riverstream-predict-worker", exporter_address(server)):
            worker.run(report=report, report_every=report_every)
    finally:
        follower.stop()
        graphs.stop()
        shadows.runner.stop()
        if server is not None:
            server[0].shutdown()


class _Shadows:
    """`stream.predict.graph_target.Shadows` on the API's shadow runner and metrics
    (`serving.shadows`): graph shadows run and count outside the API as in it."""

    def __init__(self, runner: ShadowRunner) -> None:
        self.runner = runner

    def run_later(
        self, graph: str, answer: GraphAnswer, features: dict[str, Any], models: ServedModels
    ) -> None:
        from serving.shadows import ShadowJob

        self.runner.submit(ShadowJob(graph, ((answer, features),), models))

    def summary(self) -> dict[str, dict[str, float]]:
        """The shadow metrics' totals by shadow (``runs``, ``errors``, ``agreements``) and
        ``dropped`` (backlog full), for `score`'s report."""
        out: dict[str, dict[str, float]] = {}
        m = self.runner.metrics
        counters = (m.shadow_runs, m.shadow_errors, m.shadow_agreements, m.shadow_dropped)
        for family in [f for counter in counters for f in counter.collect()]:
            what = family.name.removeprefix("riverstream_shadow_")
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                shadow = sample.labels.get("shadow", "all")
                row = out.setdefault(shadow, {})
                row[what] = row.get(what, 0) + sample.value
        return out


SCORE_SHADOW_BACKLOG = 10_000
"""Rows whose shadows may wait to run while `score` goes on (beyond: dropped, reported)."""
SCORE_SHADOW_WAIT_SECONDS = 600.0
"""How long `score` waits, once scored, for the shadows still queued."""


def _shadows(registry: CollectorRegistry, backlog: int | None = None) -> _Shadows:
    from serving.shadows import SHADOW_BACKLOG, GraphMetrics, ShadowRunner

    metrics = GraphMetrics.for_registry(registry)
    return _Shadows(ShadowRunner(metrics, backlog or SHADOW_BACKLOG))


def score(
    target: Annotated[
        str, typer.Argument(help="Model name, or a serving graph's (when no model has it).")
    ],
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Feature events: FILE (.jsonl, .csv or .parquet, as `publish features` reads "
            "them) or kafka:TOPIC[:FROM-TO] (FROM-TO: a closed range of event times).",
        ),
    ],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Answers: .jsonl, .csv or .parquet (by suffix).")
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(
            help="Model version, or graph version for a graph (default: the one served now; a "
            "graph's members are always at the versions served now)."
        ),
    ] = None,
    into: Annotated[
        str | None, typer.Option(help="'redis': also store the answers as a lookup table.")
    ] = None,
    ttl: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Lookup table lifetime, s (default RIVERSTREAM_LOOKUP_TTL_SECONDS; 0: none).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Processes answering rows beside this one, which reads and writes (0: one per "
            "CPU; not for a graph with shadows). The output is the same, bytes for bytes.",
        ),
    ] = 1,
) -> None:
    """Score INPUT with TARGET (a model or a graph) and write the answers, in input order.

    Rows that cannot be scored are listed with their line (or partition and offset) and make
    the exit status 1. A topic is read committed: a transaction open at the start ends its
    partition there (the offsets not read are listed). A run that scores no row (an empty
    input, every row rejected or outside the range) publishes no lookup table: the served one
    stays, and the exit status is 2.
    SIGTERM stops the run (its worker processes too) without publishing, exit status 143.
    """
    from schemas.events import Limits
    from stream.kafka.security import kafka_security
    from stream.predict.batch import (
        file_rows,
        kafka_rows,
        load_served,
        one_process_only,
        score_rows,
    )  # fmt: skip
    from stream.predict.graph_target import GraphTarget, load_graph_target
    from stream.predict.sinks import Sink, TableSink, file_sink
    from stream.store.graphs import GraphStore
    from stream.store.lookup import LookupTables
    from stream.store.snapshots import open_store

    if out_file is None and into is None:
        raise RiverstreamError("give --out FILE, --into redis, or both")
    if into not in (None, "redis"):
        raise RiverstreamError(f"--into {into}: the only lookup store is 'redis'")
    if out_file is not None and not source.startswith("kafka:"):
        _refuse_same_file(Path(source), out_file)
    settings = _settings()
    time_range = None
    if source.startswith("kafka:"):
        _, topic, *rest = source.split(":", 2)
        if rest:
            time_range = _time_range(rest[0])
        if not settings.kafka_bootstrap_servers:
            raise RiverstreamError(
                "no Kafka address: set RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS or run "
                "`riverstream services up`"
            )
        rows = kafka_rows(
            settings.kafka_bootstrap_servers, topic, security=kafka_security(settings),
            note=lambda text: print_text(text, err, style="yellow"),
        )  # fmt: skip
    else:
        rows = file_rows(Path(source))
    store = open_store(settings)
    graphs = GraphStore(store.client, store.keys.prefix)
    served: ServedModel | GraphTarget
    shadows = None
    if store.serving_version(target) is None and target in graphs.names():  # models first
        from prometheus_client import CollectorRegistry

        metric = settings.serve_graph_metric or None
        shadows = _shadows(CollectorRegistry(), backlog=SCORE_SHADOW_BACKLOG)
        served = load_graph_target(store, graphs, target, version, metric=metric, shadows=shadows)
    elif store.serving_version(target) is None:
        raise RiverstreamError(f"no model or graph named {target!r} in Redis (nothing to score)")
    else:
        served = load_served(store, target, version)
    is_graph = isinstance(served, GraphTarget)
    workers = workers or os.cpu_count() or 1
    refused = one_process_only(served, workers)
    if refused:
        raise RiverstreamError(refused)
    # The model (up to hundreds of MB of small objects) never becomes garbage: keep the
    # collector from traversing it again and again while rows are scored.
    gc.freeze()
    sinks: list[Sink] = []
    table = None
    stopped = False

    def stop(signum: int, _frame: object) -> None:
        # A clean exit: the finally blocks run (the worker processes are shut down, the sinks
        # closed) and nothing is published. Once: a second SIGTERM does not cut the cleanup.
        nonlocal stopped
        stopped = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous_handler = signal.signal(signal.SIGTERM, stop)
    try:
        if out_file is not None:
            sinks.append(file_sink(out_file, graph=is_graph))
        if into == "redis":
            table = LookupTables(store.client, store.keys).writer(target, graph=is_graph)
            sinks.append(TableSink(table))
        computed_at = time.time()
        with _progress() as progress:
            what = f"graph {target}" if is_graph else target
            task = progress.add_task(f"scoring with {what} v{served.version}", total=None)
            report = score_rows(
                served, rows, sinks, limits=Limits.from_settings(settings),
                time_range=time_range, progress=lambda n: progress.advance(task, n),
                workers=workers,
            )  # fmt: skip
        if table is not None and report.scored:  # an empty table never replaces one
            lifetime = settings.lookup_ttl_seconds if ttl is None else ttl
            report.table = table.publish(
                report.versions, computed_at, lifetime, graph_version=report.graph_version
            )
        elif table is not None:
            table.discard()  # numbered and claimed (`stream.store.lookup`), never to be served
    finally:
        for sink in sinks:
            sink.close()
        if shadows is not None:
            if not stopped:
                shadows.runner.wait_idle(SCORE_SHADOW_WAIT_SECONDS)
            shadows.runner.stop()
        if stopped:
            unpublished = ": no lookup table published" if table is not None else ""
            err.print(f"stopped (SIGTERM){unpublished}", highlight=False)
        else:
            signal.signal(signal.SIGTERM, previous_handler)
    for rejection in report.rejected:
        print_text(f"{rejection.where}: not scored: {rejection.reason}", err, style="yellow")
    summary = report.to_dict()
    if shadows is not None:
        summary["shadows"] = shadows.summary()
    print(json.dumps(summary), flush=True)
    if table is not None and report.table is None:
        raise RiverstreamError(
            f"no row scored ({len(report.rejected)} rejected, {report.outside_range} outside "
            f"the range): no lookup table published, the one served for {target!r} stays"
        )
    if report.rejected:
        raise typer.Exit(1)


def _refuse_same_file(source: Path, out_file: Path) -> None:
    """Refuse an ``--out`` that is the input file: it would be emptied before it is read."""
    same = source.resolve() == out_file.resolve()
    if not same and source.exists() and out_file.exists():
        same = os.path.samefile(source, out_file)  # a hard link
    if same:
        raise RiverstreamError(
            f"--out {out_file} is the input file: it would be emptied before it is read"
        )


def _time_range(text: str) -> tuple[float, float]:
    from stream.cli.snapshots import parse_range

    try:
        low, high = parse_range(text)
    except RegistryError:
        raise RiverstreamError(
            f"bad range {text!r} in kafka:TOPIC:FROM-TO: give event times, e.g. 100-250"
        ) from None
    if low > high:
        raise RiverstreamError(
            f"bad range {text!r} in kafka:TOPIC:FROM-TO: FROM is after TO (no event time "
            f"is in it), e.g. {high:g}-{low:g}"
        )
    return low, high


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} rows"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal or not sys.stderr.isatty(),
    )


def register(app: typer.Typer) -> None:
    """Add the commands to the `riverstream` app."""
    app.command("predict-worker")(predict_worker)
    app.command("score")(score)
