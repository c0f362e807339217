"""`riverstream demo` runs to completion on a fresh machine and stops what it started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from stream.dev.services import pid_alive


def test_demo_runs_to_completion_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "RIVERSTREAM_STATE_DIR": str(tmp_path / "state")}
    env.pop("RIVERSTREAM_SNAPSHOT_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "stream", "demo", "--limit", "300", "--label-delay", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"events published\s+600", out)
    assert re.search(r"samples learned\s+300", out)
    assert re.search(r"progressive metric\s+Accuracy 0\.\d+", out)
    assert re.search(r"predictions asked\s+\d+ \(0 failed\)", out)
    versions = re.search(r"versions served\s+(\d+)", out)
    assert versions and int(versions.group(1)) >= 1
    # the three serving architectures, one line each
    assert re.search(r"online, synchronous\s+\d+ answers over HTTP \(0 failed\)", out), out
    asked = re.search(r"asynchronous, Kafka\s+(\d+) of (\d+) requests answered", out)
    assert asked and asked.group(1) == asked.group(2) == "20", out
    assert re.search(r"\s+versions \[\d+(, \d+)*\], request → answer p50 \d+\.\d ms", out), out
    scored = re.search(r"batch, score\s+50 rows scored \(0 rejected\), versions \[(\d+)\]", out)
    assert scored, out
    assert re.search(r"and Redis: GET /v1/models/model/predictions/\S+ → 200", out), out
    [scores] = (tmp_path / "state").glob("demo-*.scores.jsonl")
    assert re.search(rf"^\s+into {re.escape(str(scores.resolve()))}$", out, re.M), out  # where
    # nothing runs any more: no console address, nor any other, to follow
    assert not re.search(r"^console\b", out, re.M) and "http://" not in out, out
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 50 and {r["versions"]["model"] for r in rows} == {int(scored.group(1))}
    # everything the demo started has been stopped, by pid
    records = json.loads((tmp_path / "state" / "services.json").read_text())
    assert records == {}
    # its Prometheus targets, registered while it ran, are gone, and its record (which `demo
    # stop` would read had it died)
    targets = tmp_path / "state" / "prometheus" / "targets"
    assert not list(targets.glob("demo-*")) and not list((tmp_path / "state").glob("demos/*"))
    # the learner it started said where it began, and printed its summary when stopped (SIGTERM)
    [learner_log] = (tmp_path / "state").glob("demo-*.learner.log")
    text = learner_log.read_text()
    assert "a fresh stream, from the earliest offsets" in text
    assert '"samples_learned": 300' in text
    assert not any(pid_alive(int(p)) for p in re.findall(r"\(pid (\d+)\)", result.stderr))
    # the prediction worker it started answered, and stopped when told to (SIGTERM)
    [worker_log] = (tmp_path / "state").glob("demo-*.predict-worker.log")
    status = [json.loads(s) for s in worker_log.read_text().splitlines() if s.startswith("{")]
    assert status[-1]["stopped"] is True and status[-1]["answered"] == 20
