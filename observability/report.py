"""A picture without Grafana: the learning curves of the models, and how the learner ran, in one PNG.

**The curves** come from the learning-curve trace the learner writes with its snapshots
(`stream.store.trace`; the CLI reads it and passes plain data): per model, a point every N
labels with ``labels``, ``event_time``, ``wall_time``, ``samples`` and ``metrics`` (a metric may
be ``None`` where it was not finite). One panel per metric, every model that has it overlaid, so
a champion and its challengers are compared at a glance; x is the label count.

**How the learner ran** (`Ops`): throughput, consumer lag and prediction latency over time from
Prometheus (`ops_from_prometheus`, stdlib HTTP only, restricted to the stream's topics and
models) when it has them for the trace's time span; otherwise throughput and progress from the
trace itself (`ops_from_trace`: labels learned against the wall-clock time of each point).

**No empty panels.** A panel is drawn only when it has data; what was left out, and where each
panel's data came from, is said in the caption under the figure. Axes are plain numbers (no
offset notation such as ``1e-5 + 9.889e-1``); counts get thousands separators.

`build_report` returns the matplotlib figure (tests inspect it), `render_report` writes the PNG;
neither does any I/O but writing the file.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import ServiceError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Point = Mapping[str, Any]
"""One point of a curve: ``labels``, ``event_time``, ``wall_time``, ``samples``, ``metrics``."""
Series = list[tuple[float, float]]
"""``(unix seconds, value)``, in time order."""


@dataclass
class Ops:
    """How the learner ran, over time; an empty series is a panel left out."""

    source: str
    throughput: Series = field(default_factory=list)
    throughput_unit: str = "events/s"
    progress: Series = field(default_factory=list)
    """Labels learned (from the trace)."""
    lag: Series = field(default_factory=list)
    latency: dict[str, Series] = field(default_factory=dict)
    """Seconds, by series name (``predict p99``...)."""

    def empty(self) -> bool:
        return not (self.throughput or self.progress or self.lag or any(self.latency.values()))


# -- from the trace ------------------------------------------------------------------------------
def ops_from_trace(curves: Mapping[str, Sequence[Point]], bins: int | None = None) -> Ops:
    """Throughput (labels/s) and progress from the wall-clock times of the trace's points.

    The label count is the learner's (every model of a learner has the same points), so the
    longest curve is used. A point's wall time is when the learner's step that processed it
    ended: the points of one step share it, and the progress over time is a staircase. The rate
    is therefore the labels learned per equal time bin (``bins`` of them; by default one per
    three steps of the staircase, at most 60), drawn at each bin's end.

    >>> pts = [{"labels": 100 * i, "wall_time": 10.0 + i} for i in range(1, 6)]
    >>> o = ops_from_trace({"m": pts}, bins=2)
    >>> o.throughput, o.progress[-1]
    ([(13.0, 100.0), (15.0, 100.0)], (15.0, 500.0))
    """
    points = max(curves.values(), key=len, default=[])
    timed = sorted(
        (float(p["wall_time"]), float(p["labels"])) for p in points if _finite(p.get("wall_time"))
    )
    ops = Ops("the learning-curve trace", throughput_unit="labels/s")
    if len(timed) < 2:
        return ops
    ops.progress = timed
    start, span = timed[0][0], timed[-1][0] - timed[0][0]
    if span <= 0:
        return ops
    steps = len({t for t, _ in timed}) - 1
    bins = bins or max(1, min(60, steps // 3))
    times = [t for t, _ in timed]
    done = list(itertools.accumulate((labels for _, labels in timed), max))

    def learned(t: float) -> float:  # labels learned by time t (the staircase)
        i = bisect.bisect_right(times, t + 1e-9)
        return done[i - 1] if i else timed[0][1]

    edges = [start + span * i / bins for i in range(bins + 1)]
    for a, b in itertools.pairwise(edges):
        ops.throughput.append((b, (learned(b) - learned(a)) / (b - a)))
    return ops


# -- from Prometheus -------------------------------------------------------------------------
def _query_range(
    base_url: str, query: str, start: float, end: float, step: float, timeout: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceError(f"Prometheus query failed at {base_url}: {exc}") from exc
    if body.get("status") != "success":
        raise ServiceError(f"Prometheus refused {query!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _pattern(names: Sequence[str]) -> str:
    r"""A PromQL regex matching exactly ``names``, for a double-quoted label matcher.

    >>> print(_pattern(["rs.features", "a|b"]))
    rs\\.features|a\\|b
    """
    special = set(".+*?()[]{}|^$\\")
    escaped = ["".join("\\\\" + c if c in special else c for c in name) for name in names]
    return "|".join(escaped)


def ops_from_prometheus(
    base_url: str,
    start: float,
    end: float,
    *,
    topics: Sequence[str],
    models: Sequence[str],
    step: float = 5.0,
    rate_window: str = "1m",
    timeout: float = 10.0,
) -> Ops:
    """Throughput (events/s read from ``topics``), consumer lag (of ``topics``) and latency (of
    ``models``) between ``start`` and ``end`` (unix seconds); raises `ServiceError` when
    Prometheus cannot be asked."""
    topic = f'topic=~"{_pattern(topics)}"'
    model = f'model=~"{_pattern(models)}"'
    w = rate_window

    def quantile(q: float, metric: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{model}}}[{w}])))"

    def series(query: str) -> Series:
        out: dict[float, float] = {}
        for found in _query_range(base_url, query, start, end, step, timeout):
            for t, v in found["values"]:
                if math.isfinite(float(v)):
                    out[float(t)] = out.get(float(t), 0.0) + float(v)
        return sorted(out.items())

    return Ops(
        "Prometheus",
        throughput=series(f"sum(rate(riverstream_events_consumed_total{{{topic}}}[{w}]))"),
        lag=series(f"sum(riverstream_consumer_lag{{{topic}}})"),
        latency={
            "predict p50": series(quantile(0.5, "riverstream_predict_seconds")),
            "predict p99": series(quantile(0.99, "riverstream_predict_seconds")),
            "learn p99": series(quantile(0.99, "riverstream_learn_seconds")),
        },
    )


# -- drawing -------------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass
class _Panel:
    title: str
    draw: Any  # Callable[[Axes], None]


def build_report(
    curves: Mapping[str, Sequence[Point]],
    ops: Ops | None = None,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> Figure:
    """The report's figure: one panel per metric (every model that has it overlaid), then the
    panels of ``ops`` that have data; the caption lists sources and what was left out."""
    from matplotlib.figure import Figure

    curves = {name: sorted(points, key=lambda p: p["labels"]) for name, points in curves.items()}
    caption = list(notes)
    panels: list[_Panel] = []
    metrics = sorted({m for points in curves.values() for p in points for m in p["metrics"]})
    for metric in metrics:
        panels.append(_Panel(f"{metric} (progressive validation)", _curve_drawer(curves, metric)))
    missing = sorted(name for name, points in curves.items() if not points)
    if missing:
        caption.append(f"no learning-curve points yet for {', '.join(missing)}")
    if not metrics:
        caption.append("no learning curve: the trace is empty")

    t0 = min(
        [float(p["wall_time"]) for pts in curves.values() for p in pts if _finite(p["wall_time"])]
        or [0.0]
    )
    if ops is not None:
        starts = [s[0][0] for s in (ops.throughput, ops.progress, ops.lag) if s]
        starts += [s[0][0] for s in ops.latency.values() if s]
        t0 = min([t0, *starts]) if curves else min(starts or [0.0])
        panels += _ops_panels(ops, t0, caption)

    columns = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / columns))
    fig = Figure(figsize=(13, 3.6 * rows + 1.4), dpi=100, layout="constrained")
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        panel.draw(ax)
        ax.set_title(panel.title)
        ax.grid(alpha=0.3)
        _plain_axes(ax)
    n = {name: len(points) for name, points in curves.items()}
    described = ", ".join(f"{name} ({count} points)" for name, count in n.items())
    fig.suptitle(title or f"riverstream — learning curves of {described or 'no model'}")
    if caption:
        fig.text(0.01, 0.002, "\n".join(caption), fontsize=9, va="bottom", ha="left", wrap=True)
        bottom = (0.4 + 0.16 * len(caption)) / fig.get_figheight()  # the caption's inches
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))  # type: ignore[call-arg,union-attr]
    return fig


def render_report(
    curves: Mapping[str, Sequence[Point]],
    out: Path,
    ops: Ops | None = None,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Draw `build_report` into the PNG ``out`` and return its path."""
    fig = build_report(curves, ops, title=title, notes=notes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _curve_drawer(curves: Mapping[str, Sequence[Point]], metric: str) -> Any:
    def draw(ax: Axes) -> None:
        for name, points in curves.items():
            xs = [p["labels"] for p in points if metric in p["metrics"]]
            ys = [_value(p["metrics"][metric]) for p in points if metric in p["metrics"]]
            if not xs:
                continue
            marker = "." if len(xs) <= 80 else None
            ax.plot(xs, ys, marker=marker, linewidth=1.4, label=f"{name} ({len(xs)} points)")
        ax.set_xlabel("labels learned")
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")

    return draw


def _value(v: Any) -> float:
    return float(v) if _finite(v) else math.nan


def _ops_panels(ops: Ops, t0: float, caption: list[str]) -> list[_Panel]:
    """The panels of ``ops`` that have data; what has none goes to the caption."""
    span = max([s[-1][0] for s in (ops.throughput, ops.progress, ops.lag) if s] or [t0]) - t0
    unit, scale = ("minutes", 60.0) if span > 300 else ("seconds", 1.0)

    def line(series: Series, ylabel: str, label: str | None = None) -> Any:
        def draw(ax: Axes) -> None:
            ax.plot([(t - t0) / scale for t, _ in series], [v for _, v in series], label=label)
            ax.set_xlabel(f"{unit} since the first point")
            ax.set_ylabel(ylabel)
            if label:
                ax.legend(fontsize="small")

        return draw

    panels = []
    source = f"from {ops.source}"
    if ops.throughput:
        panels.append(_Panel(f"Throughput ({source})", line(ops.throughput, ops.throughput_unit)))
    else:
        caption.append(f"throughput: no data {source}")
    if ops.progress:
        panels.append(_Panel(f"Labels learned over time ({source})", line(ops.progress, "labels")))
    if ops.lag:
        panels.append(_Panel(f"Consumer lag ({source})", line(ops.lag, "messages behind")))
    else:
        caption.append(
            "consumer lag: left out, only Prometheus has it"
            if ops.source != "Prometheus"
            else "consumer lag: no data from Prometheus"
        )
    latency = {name: s for name, s in ops.latency.items() if s}
    if latency:

        def draw(ax: Axes) -> None:
            for name, s in latency.items():
                ax.plot([(t - t0) / scale for t, _ in s], [v * 1e3 for _, v in s], label=name)
            ax.set_xlabel(f"{unit} since the first point")
            ax.set_ylabel("milliseconds")
            ax.legend(fontsize="small")

        panels.append(_Panel(f"Latency ({source})", draw))
    else:
        caption.append(
            "latency: left out, only Prometheus has it"
            if ops.source != "Prometheus"
            else "latency: no data from Prometheus"
        )
    return panels


def _plain_axes(ax: Axes) -> None:
    """Numbers as they are: no offset or scientific notation; counts with separators."""
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    y = ScalarFormatter(useOffset=False)
    y.set_scientific(False)
    ax.yaxis.set_major_formatter(y)
    if ax.get_xlabel() == "labels learned":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    else:
        x = ScalarFormatter(useOffset=False)
        x.set_scientific(False)
        ax.xaxis.set_major_formatter(x)
