"""A picture without Grafana: learning curve, throughput, lag and latency in one PNG.

Samples are plain dicts, one per point in time::

    {"time": 1700000000.0,            # unix seconds
     "samples_learned": 12000.0,      # or None
     "metrics": {"Accuracy": 0.91},   # progressive metrics (name -> value)
     "throughput": 5400.0,            # events/s, or None
     "lag": 120.0,                    # messages behind, or None
     "latency": {"predict p99": 2e-5}}  # seconds, any number of named series

They come from Prometheus (`samples_from_prometheus`, stdlib HTTP only) or, when Prometheus is
absent, from the snapshot history (`samples_from_snapshots`), which has no lag nor latency.
`render_report` draws them; it does no I/O but writing the PNG.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from schemas.errors import ServiceError


def _seconds(value: str | datetime | float) -> float:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def samples_from_snapshots(metadata: Sequence[Mapping]) -> list[dict]:
    """Samples from snapshot metadata dicts (version, created_at, samples_learned, metrics).

    Throughput is the growth of samples_learned between consecutive snapshots.

    >>> s = samples_from_snapshots([
    ...     {"version": 2, "created_at": 20.0, "samples_learned": 300, "metrics": {"MAE": 1.5}},
    ...     {"version": 1, "created_at": 10.0, "samples_learned": 100, "metrics": {"MAE": 2.0}}])
    >>> [(x["time"], x["throughput"], x["metrics"]["MAE"]) for x in s]
    [(10.0, None, 2.0), (20.0, 20.0, 1.5)]
    """
    rows = sorted(metadata, key=lambda m: (_seconds(m["created_at"]), m.get("version", 0)))
    out: list[dict] = []
    for meta in rows:
        t, n = _seconds(meta["created_at"]), meta.get("samples_learned")
        throughput = None
        if out and n is not None and out[-1]["samples_learned"] is not None:
            dt = t - out[-1]["time"]
            throughput = (n - out[-1]["samples_learned"]) / dt if dt > 0 else None
        out.append(
            {
                "time": t,
                "samples_learned": None if n is None else float(n),
                "metrics": {k: float(v) for k, v in (meta.get("metrics") or {}).items()},
                "throughput": throughput,
                "lag": None,
                "latency": {},
            }
        )
    return out


def _query_range(base_url: str, query: str, start: float, end: float, step: float, timeout: float):
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceError(f"Prometheus query failed at {base_url}: {exc}") from exc
    if body.get("status") != "success":
        raise ServiceError(f"Prometheus refused {query!r}: {body.get('error')}")
    return body["data"]["result"]


def samples_from_prometheus(
    base_url: str,
    start: float,
    end: float,
    step: float = 5.0,
    model: str | None = None,
    rate_window: str = "1m",
    timeout: float = 10.0,
) -> list[dict]:
    """Samples from a Prometheus HTTP API (``query_range``), one per ``step`` seconds."""
    sel = f'model="{model}"' if model else ""
    w = rate_window

    def quantile(q: float, metric: str, s: str) -> str:
        inner = f"{metric}_bucket{{{s}}}" if s else f"{metric}_bucket"
        return f"histogram_quantile({q}, sum by (le) (rate({inner}[{w}])))"

    scalars = {
        "samples_learned": f"max(sum by (model) (riverstream_samples_learned_total{{{sel}}}))",
        "throughput": f"sum(rate(riverstream_events_consumed_total[{w}]))",
        "lag": "sum(riverstream_consumer_lag)",
    }
    latencies = {
        "predict p50": quantile(0.5, "riverstream_predict_seconds", sel),
        "predict p99": quantile(0.99, "riverstream_predict_seconds", sel),
        "http p99": quantile(0.99, "riverstream_http_request_duration_seconds", sel),
    }
    points: dict[float, dict] = {}

    def point(t: float) -> dict:
        return points.setdefault(
            t,
            {"time": t, "samples_learned": None, "metrics": {}, "throughput": None, "lag": None,
             "latency": {}},
        )  # fmt: skip

    def fetch(query: str):
        for series in _query_range(base_url, query, start, end, step, timeout):
            for t, v in series["values"]:
                yield series["metric"], float(t), float(v)

    for key, query in scalars.items():
        for _labels, t, v in fetch(query):
            point(t)[key] = v
    for name, query in latencies.items():
        for _labels, t, v in fetch(query):
            point(t)["latency"][name] = v
    for labels, t, v in fetch(f"riverstream_progressive_metric{{{sel}}}"):
        name = (
            labels.get("metric", "?") if model else f"{labels.get('model')} {labels.get('metric')}"
        )
        point(t)["metrics"][name] = v
    return [points[t] for t in sorted(points)]


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def render_report(samples: Sequence[dict], out: Path, model: str | None = None) -> Path:
    """Draw the 2x2 report of ``samples`` into the PNG ``out`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    fig: Figure = plt.figure(figsize=(12, 8), dpi=100)
    try:
        axes = fig.subplots(2, 2)
        t0 = samples[0]["time"] if samples else 0.0
        minutes = [(s["time"] - t0) / 60 for s in samples]
        by_samples = bool(samples) and all(_finite(s.get("samples_learned")) for s in samples)
        x_curve = [s["samples_learned"] for s in samples] if by_samples else minutes

        ax = axes[0][0]
        names = sorted({n for s in samples for n in s.get("metrics", {})})
        for name in names:
            ax.plot(x_curve, [s["metrics"].get(name, math.nan) for s in samples], ".-", label=name)
        ax.set_title("Learning curve (progressive validation)")
        ax.set_xlabel("samples learned" if by_samples else "minutes")
        _finish(ax, bool(names), "no progressive metric")

        series = [
            (axes[0][1], "Throughput", "events/s", {"events/s": "throughput"}),
            (axes[1][0], "Consumer lag", "messages", {"lag": "lag"}),
        ]
        for ax, title, ylabel, keys in series:
            empty = f"no {title.lower()} data (Prometheus only)"
            drawn = False
            for label, key in keys.items():
                ys = [s.get(key) for s in samples]
                if any(_finite(y) for y in ys):
                    ys = [y if _finite(y) else math.nan for y in ys]
                    ax.plot(minutes, ys, ".-", label=label)
                    drawn = True
            ax.set_title(title)
            ax.set_xlabel("minutes")
            ax.set_ylabel(ylabel)
            _finish(ax, drawn, empty)

        ax = axes[1][1]
        names = sorted({n for s in samples for n in s.get("latency", {})})
        for name in names:
            ys = [s["latency"].get(name, math.nan) * 1e3 for s in samples]
            ax.plot(minutes, ys, ".-", label=name)
        ax.set_title("Latency")
        ax.set_xlabel("minutes")
        ax.set_ylabel("ms")
        _finish(ax, bool(names), "no latency data (Prometheus only)")

        fig.suptitle(f"riverstream — {model or 'all models'} ({len(samples)} points)")
        fig.tight_layout()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def _finish(ax, drawn: bool, empty_text: str) -> None:
    if drawn:
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
