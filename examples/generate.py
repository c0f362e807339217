"""Writes the example files of the README from River's Phishing dataset (`learners.datasets`).

    python examples/generate.py

- ``events.jsonl``: the feature events of the first 40 samples, ids ``a0`` to ``a39``, one a
  minute from 2024-01-01T00:00:00Z (epoch seconds: the learner refuses an event time more than
  `RIVERSTREAM_MAX_FUTURE_SECONDS` after its record's timestamp, and milliseconds would be);
- ``labels.csv``: their labels, each five minutes after its features (`publish labels` reads a
  CSV ``true``/``false`` cell as a boolean, as JSON would);
- ``events.parquet``: the same feature events as a Parquet file (with pyarrow installed:
  ``pip install 'riverstream[parquet]'``), one column per feature;
- ``requests.jsonl``: asynchronous prediction requests (`riverstream publish requests`) for the
  next five samples, asking ``lr``, ``tree`` and the ``fraud`` graph of ``fraud.yaml``.

``fraud.yaml`` is written by hand. tests/project/test_examples.py checks every file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from learners.datasets import dataset_events
from schemas.events import FeatureEvent, LabelEvent

HERE = Path(__file__).resolve().parent
SAMPLES = 40
START = 1_704_067_200  # 2024-01-01T00:00:00Z
SPACING = 60  # seconds between two samples
LABEL_DELAY = 5  # samples (five minutes)
TARGETS = ("lr", "tree", "fraud")


def main() -> None:
    events = list(dataset_events("Phishing", label_delay=LABEL_DELAY, limit=SAMPLES + 5))
    features = [e for e in events if isinstance(e, FeatureEvent)]
    labels = [e for e in events if isinstance(e, LabelEvent) and int(e.id) < SAMPLES]
    rows = [
        {"id": f"a{e.id}", "time": START + SPACING * int(e.time), "features": e.features}
        for e in features[:SAMPLES]
    ]
    with (HERE / "events.jsonl").open("w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    with (HERE / "labels.csv").open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "time", "label"])
        for e in sorted(labels, key=lambda e: int(e.id)):
            writer.writerow([f"a{e.id}", START + SPACING * int(e.time), str(e.label).lower()])
    with (HERE / "requests.jsonl").open("w") as out:
        for k, e in enumerate(features[SAMPLES:]):
            request = {"id": f"r{e.id}", "target": TARGETS[k % 3], "features": e.features}
            out.write(json.dumps(request) + "\n")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        print("pyarrow is not installed: events.parquet not written")
        return
    columns = {"id": [r["id"] for r in rows], "time": [r["time"] for r in rows]}
    for name in rows[0]["features"]:
        columns[name] = [r["features"][name] for r in rows]
    pq.write_table(pa.table(columns), HERE / "events.parquet")


if __name__ == "__main__":
    main()
