"""The PNG report (`observability.report`): drawn from the learning-curve trace, every model
overlaid per metric, no empty panel (what is left out is said in the caption), plain axes.

The figures are inspected as matplotlib objects (axes, lines, tick labels), not as pixels; the
last test draws a real trace written by a real learner, through ``riverstream report``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from learners.datasets import dataset_events
from learners.specs import ModelSpec
from observability.report import Ops, build_report, ops_from_trace, render_report
from schemas.settings import Settings
from stream.learner.runtime import snapshot_store
from stream.store.trace_reader import TraceReader
from tests.conftest import settings_env
from tests.support.pipeline import fast, learn, publish


def _points(n: int, every: int = 10, start_wall: float = 1.7e9, **metrics: float) -> list[dict]:
    """``n`` trace points, one every ``every`` labels and 0.1 s, with the given metrics
    rising by 1e-8 a point from their value (matplotlib's default axis would need an offset)."""
    return [
        {
            "labels": every * i,
            "event_time": float(every * i),
            "wall_time": start_wall + 0.1 * i,
            "samples": every * i,
            "metrics": {name: value + 1e-8 * i for name, value in metrics.items()},
        }
        for i in range(1, n + 1)
    ]


def _drawn(fig: Figure) -> list[Axes]:
    FigureCanvasAgg(fig).draw()  # tick labels and offsets exist once drawn
    return list(fig.axes)


def _caption(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def _plain(ax: Axes) -> bool:
    """No offset (``1e-5 + 9.889e-1``) and no scientific notation on either axis."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_major_formatter().get_offset():
            return False
        labels = [t.get_text() for t in axis.get_ticklabels()]
        if any("e" in label.lower() or "+" in label for label in labels):
            return False
    return True


def test_models_are_overlaid_per_metric_and_the_axes_are_plain() -> None:
    curves = {
        "champion": _points(300, Accuracy=0.98889, LogLoss=0.3),
        "challenger": _points(300, Accuracy=0.97, LogLoss=0.35),
    }
    fig = build_report(curves, ops_from_trace(curves))
    axes = _drawn(fig)
    titles = [ax.get_title() for ax in axes]
    assert titles[:2] == ["Accuracy (progressive validation)", "LogLoss (progressive validation)"]
    for ax in axes[:2]:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [
            "champion (300 points)",
            "challenger (300 points)",
        ]
        assert all(len(cast(Sequence[float], line.get_xdata())) == 300 for line in lines)
        assert ax.get_xlabel() == "labels learned"
    # the trace alone: throughput and progress, no lag nor latency panel, said in the caption
    assert titles[2:] == [
        "Throughput (from the learning-curve trace)",
        "Labels learned over time (from the learning-curve trace)",
    ]
    caption = _caption(fig)
    assert "consumer lag: left out" in caption and "latency: left out" in caption
    # 0.98889 + 1e-8 * i: matplotlib's default axis reads "1e-6 + 9.888e-1" here; ours not
    default = Figure()
    default.add_subplot().plot([p["metrics"]["Accuracy"] for p in curves["champion"]])
    assert not _plain(_drawn(default)[0])
    assert all(_plain(ax) for ax in axes), [ax.get_title() for ax in axes if not _plain(ax)]


def test_prometheus_panels_replace_the_trace_ones_and_empty_ones_are_left_out() -> None:
    curves = {"lr": _points(50, Accuracy=0.9)}
    t = 1.7e9
    ops = Ops(
        "Prometheus",
        throughput=[(t + i, 5000.0 + i) for i in range(10)],
        lag=[(t + i, 100.0 - i) for i in range(10)],
        latency={"predict p99": [(t + i, 2e-5) for i in range(10)], "learn p99": []},
    )
    fig = build_report(curves, ops)
    titles = [ax.get_title() for ax in _drawn(fig)]
    assert titles == [
        "Accuracy (progressive validation)",
        "Throughput (from Prometheus)",
        "Consumer lag (from Prometheus)",
        "Latency (from Prometheus)",
    ]
    latency = fig.axes[3]
    assert [line.get_label() for line in latency.get_lines()] == ["predict p99"]
    assert latency.get_ylabel() == "milliseconds"
    assert "left out" not in _caption(fig)


def test_a_model_without_points_and_non_finite_values(tmp_path: Path) -> None:
    points = _points(20, R2=0.5)
    points[3]["metrics"]["R2"] = None  # not finite when written
    fig = build_report({"reg": points, "late": []}, None)
    [ax] = _drawn(fig)
    assert ax.get_title() == "R2 (progressive validation)"
    assert [line.get_label() for line in ax.get_lines()] == ["reg (20 points)"]
    assert "no learning-curve points yet for late" in _caption(fig)
    out = render_report({"reg": points}, tmp_path / "r" / "report.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_of_a_real_trace(settings: Settings, tmp_path: Path) -> None:
    s = fast(settings, trace_every_labels=5, snapshot_every_labels=200)
    publish(s, dataset_events("Phishing", label_delay=20))
    learn(s, [ModelSpec("lr", "logreg", ("Accuracy",)), ModelSpec("tree", "hoeffding", ())])
    store = snapshot_store(s)
    reader = TraceReader(store.client, store.keys)
    curves: dict[str, list[dict[str, Any]]] = {
        name: [p.to_dict() for p in reader.points(name)] for name in ("lr", "tree")
    }
    assert [len(points) for points in curves.values()] == [250, 250]  # 1250 labels / 5

    fig = build_report(curves, ops_from_trace(curves))
    axes = _drawn(fig)
    accuracy = axes[0]
    assert accuracy.get_title() == "Accuracy (progressive validation)"
    lines = {line.get_label(): line for line in accuracy.get_lines()}
    assert set(lines) == {"lr (250 points)", "tree (250 points)"}
    assert list(cast(Sequence[float], lines["lr (250 points)"].get_xdata())) == list(
        range(5, 1251, 5)
    )
    last = curves["lr"][-1]["metrics"]["Accuracy"]
    assert cast(Sequence[float], lines["lr (250 points)"].get_ydata())[-1] == last
    throughput = next(ax for ax in axes if ax.get_title().startswith("Throughput"))
    rates = cast(Sequence[float], throughput.get_lines()[0].get_ydata())
    assert len(rates) > 0 and min(rates) > 0
    assert all(_plain(ax) for ax in axes)

    # the command: every model by default, Prometheus without this stream's metrics noted
    out = tmp_path / "report.png"
    result = subprocess.run(
        [sys.executable, "-m", "stream", "report", "--out", str(out)],
        env=settings_env(s), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "curve points lr 250, tree 250" in " ".join(result.stderr.split())  # wrapped lines
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
