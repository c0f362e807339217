"""The PNG report, from snapshot metadata (Prometheus absent)."""

from __future__ import annotations

import math

from observability.report import render_report, samples_from_snapshots


def _metadata(n: int = 60) -> list[dict]:
    out = []
    for v in range(1, n + 1):
        learned = 500 * v
        out.append({
            "version": v,
            "created_at": f"2025-01-01T00:{v // 60:02d}:{v % 60:02d}+00:00",
            "samples_learned": learned,
            "metrics": {"Accuracy": 0.95 - 0.4 * math.exp(-learned / 5000),
                        "F1": 0.9 - 0.5 * math.exp(-learned / 4000)},
        })  # fmt: skip
    return out


def test_samples_from_snapshots_are_ordered_with_throughput():
    samples = samples_from_snapshots(list(reversed(_metadata(5))))
    assert [s["samples_learned"] for s in samples] == [500, 1000, 1500, 2000, 2500]
    assert samples[0]["throughput"] is None
    assert samples[1]["throughput"] == 500.0  # 500 samples in one second
    assert samples[0]["lag"] is None and samples[0]["latency"] == {}


def test_render_report_from_snapshot_metadata(tmp_path):
    out = render_report(samples_from_snapshots(_metadata()), tmp_path / "r" / "report.png", "lr")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # four panels drawn, not an empty canvas


def test_render_report_with_no_samples(tmp_path):
    out = render_report([], tmp_path / "empty.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
