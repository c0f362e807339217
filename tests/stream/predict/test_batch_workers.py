"""`score_rows` with worker processes: the same answers as one process, and a worker that dies
fails the run with the reason instead of hanging it (the processes are real, forked here)."""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import base

from learners.predictor import ServedModel
from schemas.errors import RiverstreamError
from stream.predict.batch import CHUNK, file_rows, score_rows
from stream.predict.sinks import JsonLinesSink

PARENT = os.getpid()


class Fragile(base.Classifier):
    """Answers from feature ``x``; a worker process (not the test's) dies on ``boom``."""

    def learn_one(self, x: dict[Hashable, Any], y: Any) -> None:
        pass

    def predict_proba_one(self, x: dict[Hashable, Any]) -> dict[Any, float]:  # type: ignore[override]
        if "boom" in x and os.getpid() != PARENT:
            os._exit(3)  # as the kernel's OOM killer would end it: no exception, no cleanup
        p = min(max(x["x"], 0.0), 1.0)
        return {False: 1.0 - p, True: p}


def events(path: Path, n: int, boom_at: int | None = None) -> Path:
    lines = []
    for i in range(n):
        features = {"x": (i % 100) / 100, **({"boom": 1} if i == boom_at else {})}
        lines.append(orjson.dumps({"id": f"e{i}", "time": i, "features": features}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def score(served: ServedModel, source: Path, out: Path, workers: int) -> bytes:
    sink = JsonLinesSink(out)
    try:
        report = score_rows(served, file_rows(source), [sink], workers=workers)
    finally:
        sink.close()
    assert report.scored == sum(1 for _ in source.open("rb"))
    assert report.workers == workers
    return out.read_bytes()


def test_workers_answer_as_one_process(tmp_path: Path) -> None:
    served = ServedModel.build("f", Fragile(), version=1, kind="classifier")
    source = events(tmp_path / "in.jsonl", 3 * CHUNK + 11)
    one = score(served, source, tmp_path / "one.jsonl", 1)
    assert one == score(served, source, tmp_path / "two.jsonl", 2)
    assert len(one.splitlines()) == 3 * CHUNK + 11


def test_a_worker_that_dies_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    served = ServedModel.build("f", Fragile(), version=1, kind="classifier")
    source = events(tmp_path / "in.jsonl", 4 * CHUNK, boom_at=2 * CHUNK + 5)
    sink = JsonLinesSink(tmp_path / "out.jsonl")
    try:
        with pytest.raises(RiverstreamError, match="a scoring process died"):
            score_rows(served, file_rows(source), [sink], workers=2)
    finally:
        sink.close()
    written = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len(written) <= 2 * CHUNK  # the chunks before the dead one, at most, in order
    assert [orjson.loads(line)["id"] for line in written] == [f"e{i}" for i in range(len(written))]
