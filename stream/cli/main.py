"""The `riverstream` command: the one place that wires settings and adapters together."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from schemas.errors import RiverstreamError
from schemas.settings import Settings, invalid_settings
from stream.cli.graphs import graphs_app
from stream.cli.models import models_app
from stream.cli.predict import register as register_predict
from stream.cli.snapshots import snapshots_app
from stream.cli.terminal import print_error, print_text
from stream.cli.views import register as register_views
from stream.dev import services as svc
from stream.dev.processes import EndOnSignal, Signalled

if TYPE_CHECKING:
    from stream.kafka.publish import Kind

app = typer.Typer(
    help="riverstream: streaming online learning with River, Kafka, Redis and FastAPI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
services_app = typer.Typer(help="Local Kafka, Redis and Prometheus (no Docker needed).")
topics_app = typer.Typer(help="Kafka topics.")
publish_app = typer.Typer(
    help="Publish events from a file (JSON Lines, CSV or Parquet): features, labels or "
    "prediction requests."
)
app.add_typer(services_app, name="services")
app.add_typer(topics_app, name="topics")
app.add_typer(publish_app, name="publish")
app.add_typer(snapshots_app, name="snapshots")
register_predict(app)  # predict-worker, score
app.add_typer(graphs_app, name="graphs")
register_views(app)  # report, console
app.add_typer(models_app, name="models")

console = Console(stderr=True)
out = Console()


def load_settings() -> Settings:
    """The settings from the environment, with local services' addresses filled in."""
    return svc.resolve(Settings())


def need(value: str | None, what: str, variable: str) -> str:
    if not value:
        raise RiverstreamError(
            f"no {what} address: set RIVERSTREAM_{variable} or run `riverstream services up`"
        )
    return value


# -- services ------------------------------------------------------------------------------
ServiceNames = Annotated[
    list[str] | None, typer.Argument(help="kafka, redis, prometheus (default: all)")
]


@services_app.command("up")
def services_up(
    names: ServiceNames = None,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Replicated instead: 3 Kafka brokers (replication 3, min.insync.replicas 2), "
            "a Redis primary + replica + 3 Sentinels (and Prometheus); other commands then use "
            "them.",
        ),
    ] = False,
) -> None:
    """Start the local services (idempotent) and wait until they answer. Interrupted (Ctrl-C,
    SIGTERM, SIGHUP), it leaves nothing running that `services down` cannot stop."""
    settings = Settings()
    manager = svc.ServiceManager(settings, log=lambda m: print_text(m, console, style="dim"))
    with EndOnSignal():
        try:
            if cluster:
                from stream.dev.cluster import cluster_up

                manager.up(("prometheus",))
                cluster_up(
                    manager.state_dir, manager.cache_dir, settings.kafka_version, manager.log
                )
            else:
                manager.up(tuple(names or svc.SERVICES))
            _print_status(manager, as_json=False)
        except Signalled as exc:
            print_text(
                f"{exc}: services up stopped; what runs is recorded "
                "(`riverstream services status` shows it, `riverstream services down` stops it)",
                console,
                style="yellow",
            )
            raise


@services_app.command("down")
def services_down(
    names: ServiceNames = None,
    purge: Annotated[bool, typer.Option(help="Also delete the local data.")] = False,
) -> None:
    """Stop the local services by pid (idempotent)."""
    from stream.dev.cluster import cluster_down

    manager = svc.ServiceManager(Settings())
    stopped = manager.down(tuple(names or svc.SERVICES), purge=purge)
    if not names:  # and the replicated cluster of `services up --cluster`
        stopped += cluster_down(manager.state_dir, purge=purge)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@services_app.command("status")
def services_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What runs where."""
    _print_status(svc.ServiceManager(Settings()), as_json=as_json)


def _print_status(manager: svc.ServiceManager, *, as_json: bool) -> None:
    from stream.dev.cluster import cluster_endpoints, cluster_nodes

    rows = list(svc.iter_status(manager))
    if as_json:
        ep = manager.endpoints()
        payload = {
            "kafka_bootstrap_servers": ep.kafka_bootstrap_servers,
            "redis_url": ep.redis_url,
            "prometheus_url": ep.prometheus_url,
            "services": {n: (r.__dict__ if r else None) for n, r in rows},
            "cluster": cluster_endpoints(manager.state_dir),  # `services up --cluster`
        }
        out.print_json(json.dumps(payload))
        return
    table = Table(title="riverstream local services")
    for column in ("service", "state", "pid", "address", "url", "log"):
        table.add_column(column, overflow="fold")
    for name, rec in rows:
        if rec is None:
            table.add_row(name, "[red]stopped[/]", "", "", "", "")
        else:  # the log's path as it is (a state directory may hold brackets)
            table.add_row(
                name, "[green]running[/]", str(rec.pid), rec.address, rec.url, Text(rec.log)
            )
    for node in cluster_nodes(manager.state_dir):  # `services up --cluster`
        address = f"127.0.0.1:{node.port}"
        table.add_row(node.name, "[green]running[/]", str(node.pid), address, "", Text(node.log))
    out.print(table)


# -- topics --------------------------------------------------------------------------------
@topics_app.command("create")
def topics_create() -> None:
    """Create the feature, label and dead-letter topics if they are missing."""
    from stream.kafka.client import create_topics
    from stream.kafka.security import kafka_security

    s = load_settings()
    bootstrap = need(s.kafka_bootstrap_servers, "Kafka", "KAFKA_BOOTSTRAP_SERVERS")
    created = create_topics(bootstrap, s.topics(), security=kafka_security(s))
    console.print(f"created: {', '.join(created) or 'none (all exist)'}")


# -- publishing ----------------------------------------------------------------------------
def _progress(total: int | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def _publish_file(path: Path, kind: Kind) -> None:
    from stream.kafka.publish import Publisher, read_rows

    if not path.exists():
        raise RiverstreamError(f"{path}: no such file")
    publisher = Publisher(load_settings())
    try:
        with _progress(None) as progress:
            task = progress.add_task(f"publishing {kind}", total=None)
            report = publisher.publish_rows(
                read_rows(path, kind),
                kind,
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        publisher.close()
    for rejection in report.rejected:
        print_text(f"line {rejection.line}: rejected: {rejection.reason}", console, style="yellow")
    out.print_json(json.dumps(report.to_dict()))
    if report.failed or report.rejected:
        raise typer.Exit(1)


@publish_app.command("features")
def publish_features(path: Path) -> None:
    """Publish feature events from FILE: .jsonl, or .csv or .parquet with id and time columns
    (every other column a feature)."""
    _publish_file(path, "features")


@publish_app.command("labels")
def publish_labels(path: Path) -> None:
    """Publish label events from FILE: .jsonl, or .csv or .parquet with id, time and label
    columns."""
    _publish_file(path, "labels")


@publish_app.command("requests")
def publish_requests(path: Path) -> None:
    """Publish prediction requests from FILE to the requests topic, for `predict-worker`:
    .jsonl ({"id", "target", "features"}), or .csv or .parquet with id and target columns
    (every other column a feature)."""
    _publish_file(path, "requests")


@app.command()
def replay(
    dataset: Annotated[str, typer.Argument(help="River dataset (Phishing, synth.Agrawal, ...).")],
    label_delay: Annotated[str, typer.Option(help="N, or random:A-B per event.")] = "0",
    limit: Annotated[int | None, typer.Option(help="At most N samples.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of generators and delays.")] = None,
    rate: Annotated[float | None, typer.Option(help="Events per second (default: fast).")] = None,
) -> None:
    """Turn a River dataset into feature and label events, published in event-time order."""
    from learners.datasets import dataset_events
    from stream.kafka.publish import Publisher

    events = list(dataset_events(dataset, label_delay=label_delay, limit=limit, seed=seed))
    publisher = Publisher(load_settings())
    try:
        with _progress(len(events)) as progress:
            task = progress.add_task(f"replaying {dataset}", total=len(events))
            report = publisher.publish_events(
                events, rate=rate, progress=lambda n: progress.advance(task, n)
            )
    finally:
        publisher.close()
    out.print_json(json.dumps(report.to_dict()))
    if report.failed:
        raise typer.Exit(1)


@app.command()
def learn(
    model: Annotated[
        list[str],
        typer.Option(
            help="NAME=SPEC: a preset (logreg, linreg, hoeffding, "
            "hoeffding-reg, arf, halfspace) or package.module:function. Repeatable."
        ),
    ],
    metric: Annotated[
        list[str] | None,
        typer.Option(help="River metric class name, for all models or as MODEL:Metric."),
    ] = None,
    exit_when_idle: Annotated[
        float | None, typer.Option(help="Stop after the topics were idle this many seconds.")
    ] = None,
    no_fork: Annotated[
        bool,
        typer.Option(help="Write every snapshot in the learning thread (no child, no thread)."),
    ] = False,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="CHAMPION:CHALLENGER: compare two models on the labels both scored "
            "(`riverstream models compare`). Repeatable; 'all': every pair of one kind."
        ),
    ] = None,
    learner_name: Annotated[
        str | None,
        typer.Option(
            "--learner",
            help="This learner's name (default: RIVERSTREAM_LEARNER, else 'default'): learners "
            "with different models share one prefix, each with its own checkpoints.",
        ),
    ] = None,
    backfill_from: Annotated[
        str | None,
        typer.Option(
            help="TIME (epoch seconds or ISO 8601): models added to a stream already learning "
            "first learn, alone, the events published since TIME up to its position "
            "(the others are untouched); then everything goes on live.",
        ),
    ] = None,
) -> None:
    """Learn from the feature and label topics until stopped (SIGTERM: snapshot, then exit)."""
    from learners.comparisons import parse_compare_options
    from stream.learner.backfill import parse_since
    from stream.learner.observer import PrometheusObserver
    from stream.learner.runtime import build_learner, model_specs
    from stream.registry.owners import check_learner_name

    settings = load_settings()
    if learner_name is not None:
        settings = settings.model_copy(update={"learner": check_learner_name(learner_name)})
    specs = model_specs(model, metric or [])
    pairs = parse_compare_options([settings.compare, *(compare or [])])
    observer = PrometheusObserver.start(settings)
    learner = build_learner(
        settings,
        specs,
        observer=observer,
        use_fork=not no_fork,
        compare=pairs,
        backfill_from=None if backfill_from is None else parse_since(backfill_from),
    )
    signal.signal(signal.SIGTERM, lambda *_: learner.stop())
    signal.signal(signal.SIGINT, lambda *_: learner.stop())
    if learner.stats.restored_from is not None:
        console.print(f"[dim]resumed from snapshot v{learner.stats.restored_from}[/]")
    port = settings.learner_metrics_port
    metrics = f"http://{settings.metrics_host}:{port}/metrics" if port else "off"
    for line in [*learner.describe(), f"metrics: {metrics}"]:
        print_text(line, console, style="dim")
    # registered only with its exporter bound (another process may hold the port: not this one)
    with svc.scraped(settings, "riverstream-learner", svc.exporter_address(observer.server)):
        for summary in learner.run(exit_when_idle=exit_when_idle):
            print_text(json.dumps(summary), out)  # JSON: `[true]` would be read as markup


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Serve predictions from the promoted snapshots; follows new versions live. Its address
    and worker count are printed on stderr at start."""
    from serving.runner import serve as run

    settings = load_settings()
    run(
        settings, host, port, workers,
        announce=lambda line: print_text(line, console),
        listening=lambda *bound: svc.scraped(settings, "riverstream-api", bound),
    )  # fmt: skip


demo_app = typer.Typer()  # `riverstream demo`, and `demo stop`
app.add_typer(demo_app, name="demo")


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="River dataset to replay.")] = "Phishing",
    model: Annotated[str, typer.Option(help="Model preset or module:function.")] = "logreg",
    label_delay: Annotated[str, typer.Option(help="N, or random:A-B.")] = "20",
    limit: Annotated[int | None, typer.Option(help="At most N samples.")] = None,
    rate: Annotated[float, typer.Option(help="Events published per second.")] = 1500.0,
    keep: Annotated[
        bool,
        typer.Option(
            help="Leave the learner, API, console and worker running; print their URLs and "
            "pids and the settings that reach them from another shell (`riverstream demo stop` "
            "stops them)."
        ),
    ] = False,
) -> None:
    """Run everything: services, a learner, the API, a replay, live predictions, a summary."""
    if ctx.invoked_subcommand is not None:
        return
    from stream.dev.demo import Demo, DemoOptions, describe, kept_lines

    options = DemoOptions(dataset, model, label_delay, limit, rate, keep=keep)
    runner = Demo(options, log=lambda m: print_text(m, console, style="dim"))  # paths as they are
    progress = Progress(
        TextColumn("[bold]replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("replay", total=None, status="starting ...")

        def update(done: int, total: int, info: dict[str, object]) -> None:
            metrics = info.get("metrics")
            items = metrics.items() if isinstance(metrics, dict) else ()
            shown = ", ".join(f"{k} {v:.3f}" for k, v in items)
            status = f"v{info.get('version', '-')} {shown}" if info else "waiting for a model"
            progress.update(task, completed=done, total=total, status=status)

        summary = runner.run(update)
    # plain and unwrapped: paths are long, and the exports are copied into a shell
    for line in describe(summary):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    for line in [] if summary.kept is None else kept_lines(summary.kept):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if summary.failed_predictions:
        raise typer.Exit(1)


@demo_app.command("stop")
def demo_stop() -> None:
    """Stop what `riverstream demo --keep` left running, or a demo killed before it could stop
    it: its processes (by pid), its Prometheus targets and the services it started."""
    from stream.dev.demo import stop_kept

    said = stop_kept(Settings())
    for line in said or ["no demo was left running"]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # kafka-python is chatty on connect
    try:
        app()
    except RiverstreamError as exc:
        print_error(exc, console)
        sys.exit(2)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise  # not the environment's fault: a bug, with its traceback
        print_error(invalid_settings(exc), console)
        sys.exit(2)
