"""`riverstream report` and `riverstream console`: what people look at.

``report`` draws the learning curves of the trace (`stream.store.trace`) into a PNG with
throughput and lag over time (`observability.report`); ``console`` serves the live page
(`console.app`) in its own process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from schemas.errors import RiverstreamError, ServiceError
from schemas.settings import Settings
from stream.cli.terminal import print_text

if TYPE_CHECKING:
    from observability.report import Ops

err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``console`` to the ``riverstream`` command."""
    app.command("report")(report)
    app.command("console")(console)


def _settings() -> Settings:
    from stream.dev.services import resolve

    return resolve(Settings())


def report(
    out_file: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    model: Annotated[
        list[str] | None, typer.Option(help="A model to draw (repeatable; default: all).")
    ] = None,
) -> None:
    """Draw the learning curves of the models, overlaid, with throughput and lag, as a PNG.

    Curves from the learning-curve trace in Redis; throughput, lag and latency from Prometheus
    when it has them for the trace's time span, else throughput from the trace itself.
    """
    from observability.report import ops_from_trace, render_report
    from stream.store.snapshots import open_store
    from stream.store.trace_reader import TraceReader

    settings = _settings()
    store = open_store(settings)
    names = store.models()
    if not names:
        raise RiverstreamError("no models in Redis yet: run `riverstream learn` first")
    chosen = list(dict.fromkeys(model or names))
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise RiverstreamError(f"no model {', '.join(unknown)}; models are {', '.join(names)}")
    reader = TraceReader(store.client, store.keys)
    curves = {name: [p.to_dict() for p in reader.points(name)] for name in chosen}
    walls = [p["wall_time"] for points in curves.values() for p in points]
    if not walls:
        raise RiverstreamError(
            f"no learning-curve points for {', '.join(chosen)} yet: the learner writes one every "
            f"RIVERSTREAM_TRACE_EVERY_LABELS labels (now {settings.trace_every_labels}), "
            "with its snapshots"
        )
    notes: list[str] = []
    ops = _prometheus_ops(settings, chosen, min(walls), max(walls), notes)
    if ops is None:
        ops = ops_from_trace(curves)
    render_report(curves, out_file, ops, notes=notes)
    counts = ", ".join(f"{name} {len(points)}" for name, points in curves.items())
    print_text(f"wrote {out_file}: curve points {counts}; throughput from {ops.source}", err)


def _prometheus_ops(
    settings: Settings, models: list[str], start: float, end: float, notes: list[str]
) -> Ops | None:
    """Throughput, lag and latency from Prometheus for the stream's topics and ``models``, or
    None (with the reason in ``notes``) when it is absent, unreachable or has none."""
    from observability.report import ops_from_prometheus

    if not settings.prometheus_url:
        notes.append("no Prometheus configured: throughput from the trace")
        return None
    step = max(1.0, (end - start) / 300)
    try:
        ops = ops_from_prometheus(
            settings.prometheus_url,
            start - step,
            end + step,
            topics=(settings.topic_features, settings.topic_labels),
            models=models,
            step=step,
            rate_window=f"{max(5, round(4 * step))}s",
        )
    except ServiceError as exc:
        notes.append(f"Prometheus not reachable ({exc}): throughput from the trace")
        return None
    if not ops.throughput and not ops.lag:
        notes.append(
            f"Prometheus ({settings.prometheus_url}) has no riverstream metrics of these topics "
            "for that time (does it scrape the learner?): throughput from the trace"
        )
        return None
    return ops


def console(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8050).")] = None,
) -> None:
    """Serve the live console: models, learning curves, versions, operations (read-only unless
    RIVERSTREAM_CONSOLE_TOKEN is set)."""
    from console.server import run

    settings = _settings()
    host = host or settings.console_host
    port = settings.console_port if port is None else port
    mode = "actions enabled (token)" if settings.console_token else "read-only"
    err.print(f"console on http://{host}:{port}/ ({mode}); stop with Ctrl-C", highlight=False)
    started = time.monotonic()
    run(settings, host, port)
    err.print(f"console stopped after {time.monotonic() - started:.0f} s", highlight=False)
