"""Batch scoring throughput against the bare River loop over the same rows, in one run.

For each model (trained on ``synth.Agrawal``, seed 42), over the same N rows of Agrawal
features (seed 7):

  bare           ``model.predict_proba_one(x)`` over the decoded feature dicts in memory: the
                 reference (run before and after the others; the ratio uses the mean)
  jsonl→jsonl    `stream.predict.batch.score_rows` from a JSON Lines file of feature events to
                 a JSON Lines file of answers: read, validate (the learner's codec), predict
                 (`ServedModel.predict`), encode, write
  csv→csv        the same from a CSV file to a CSV file
  jsonl→redis    the same into a Redis lookup table (`stream.store.lookup`; a private
                 redis-server on 127.0.0.1, started and stopped by this script)
  … ×N           jsonl→jsonl and csv→csv with ``--workers N`` (default 2: `score --workers`),
                 the rows answered in N forked processes while this one reads and writes; its
                 CPU rate counts the workers' CPU time too

Rates are rows/s over the scoring call only (the model is built once beforehand and frozen
out of the garbage collector's scans, as `score` does). Each rate is given per second of wall
clock and per second of this process's CPU time: on a shared machine the second is steadier.
The files are in a temporary directory.

    python bench/batch_score.py                       # 100k rows logreg/hoeffding, 10k arf
    python bench/batch_score.py -n 20000 --models logreg
    python bench/batch_score.py --stages --models logreg,hoeffding   # where a row's time goes

``--stages`` prints, per model, the CPU time per row of each stage alone (best of three passes
over the rows in memory): the bare ``predict_proba_one``, `ServedModel.predict` (the predictor
every serving path shares), `stream.predict.answer.ModelAnswers.answer` (fields and JSON),
reading the JSON Lines file (`file_rows`), decoding and validating it (the learner's codec), and
the whole `score_rows` into a JSON Lines file.
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis  # noqa: E402
from river import forest, linear_model, preprocessing, tree  # noqa: E402
from river.datasets import synth  # noqa: E402

from learners.predictor import ServedModel  # noqa: E402
from schemas.events import EventCodec, Limits  # noqa: E402
from stream.dev.services import free_port  # noqa: E402
from stream.predict.answer import ModelAnswers  # noqa: E402
from stream.predict.batch import CHUNK, file_rows, score_rows  # noqa: E402
from stream.predict.sinks import CsvSink, JsonLinesSink, Sink, TableSink  # noqa: E402
from stream.store.keys import RedisKeys  # noqa: E402
from stream.store.lookup import LookupTables  # noqa: E402

MODELS = {
    "logreg": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    "hoeffding": lambda: tree.HoeffdingTreeClassifier(),
    "arf": lambda: forest.ARFClassifier(n_models=10, seed=42),
}


def trained(name: str) -> Any:
    model: Any = MODELS[name]()
    for x, y in synth.Agrawal(seed=42).take(5000):
        model.learn_one(x, y)
    return model


def write_inputs(rows: list[dict[str, Any]], workdir: Path) -> tuple[Path, Path]:
    jsonl, csv_path = workdir / "in.jsonl", workdir / "in.csv"
    jsonl.write_bytes(
        b"".join(orjson.dumps({"id": str(i), "time": i, "features": x}) + b"\n"
                 for i, x in enumerate(rows))
    )  # fmt: skip
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "time", *rows[0]])
        writer.writeheader()
        for i, x in enumerate(rows):
            writer.writerow({"id": str(i), "time": i, **x})
    return jsonl, csv_path


Rate = tuple[float, float]
"""Rows per second of wall-clock time and of this process's CPU time."""


def bare(model: Any, rows: list[dict[str, Any]]) -> Rate:
    predict = model.predict_proba_one
    wall, cpu = time.perf_counter(), time.process_time()
    for x in rows:
        predict(x)
    return len(rows) / (time.perf_counter() - wall), len(rows) / (time.process_time() - cpu)


def scored(served: ServedModel, source: Path, sink: Sink, n: int, workers: int = 1) -> Rate:
    """Rows/s of `score_rows`; with ``workers`` > 1 the CPU rate counts the worker processes'
    CPU time too (`os.times`' children, once they have exited)."""
    wall, cpu = time.perf_counter(), _cpu()
    try:
        report = score_rows(served, file_rows(source), [sink], workers=workers)
    finally:
        sink.close()
    assert report.scored == n and not report.rejected, report.to_dict()
    return n / (time.perf_counter() - wall), n / (_cpu() - cpu)


def _cpu() -> float:
    """CPU seconds of this process and of its waited-for children. This process's own from
    `time.process_time` (nanoseconds): `os.times` counts in clock ticks (10 ms), and a small
    run (``-n 2000``) of one process measured 0 s of CPU and divided by it."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def stages(name: str, n: int, workdir: Path) -> dict[str, float]:
    """CPU µs per row of each stage alone (best of three passes)."""
    rows = [x for x, _ in synth.Agrawal(seed=7).take(n)]
    jsonl, _ = write_inputs(rows, workdir)
    model = trained(name)
    served = ServedModel.build(name, model, version=1, kind="classifier")
    answers = ModelAnswers(served)
    codec = EventCodec(Limits())
    raws = [raw for _, raw in file_rows(jsonl)]
    assert all(isinstance(raw, bytes) for raw in raws)

    def decode() -> None:
        for i in range(0, len(raws), CHUNK):
            codec.decode_features(cast("list[bytes]", raws[i : i + CHUNK]))

    def whole() -> None:
        sink = JsonLinesSink(workdir / "out.jsonl")
        score_rows(served, file_rows(jsonl), [sink])
        sink.close()

    proba, predict, answer = model.predict_proba_one, served.predict, answers.answer
    work = {
        "predict_proba_one (bare)": lambda: [proba(x) for x in rows],
        "ServedModel.predict": lambda: [predict(x) for x in rows],
        "ModelAnswers.answer": lambda: [answer("1234", x) for x in rows],
        "read (file_rows)": lambda: list(file_rows(jsonl)),
        "decode + validate": decode,
        "score_rows, jsonl→jsonl": whole,
    }
    gc.freeze()
    out = {}
    for stage, run in work.items():
        best = math.inf
        for _ in range(3):
            cpu = time.process_time()
            run()
            best = min(best, time.process_time() - cpu)
        out[stage] = best / n * 1e6
    gc.unfreeze()
    return out


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], redis.Redis] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling the server's readiness with a deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="rows (logreg, hoeffding)")
    parser.add_argument("--arf-n", type=int, default=10_000, help="rows for arf")
    parser.add_argument("--models", default="logreg,hoeffding,arf")
    parser.add_argument("--stages", action="store_true", help="CPU µs per row of each stage")
    parser.add_argument(
        "--workers", type=int, default=2,
        help="also jsonl→jsonl and csv→csv with this many worker processes (score --workers); "
        "1: not",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rs-batch-bench-"))
    if args.stages:
        try:
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                n = args.arf_n if name == "arf" else args.n
                for stage, us in stages(name, n, workdir).items():
                    print(f"{name:10s} {stage:28s} {us:7.2f} µs/row (CPU)", flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    server = start_redis(workdir)
    results = []
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            n = args.arf_n if name == "arf" else args.n
            rows = [x for x, _ in synth.Agrawal(seed=7).take(n)]
            jsonl, csv_path = write_inputs(rows, workdir)
            model = trained(name)
            served = ServedModel.build(name, model, version=1, kind="classifier")
            gc.freeze()  # as `riverstream score` does once the model is loaded
            before = bare(model, rows)
            rates = {
                "jsonl→jsonl": scored(served, jsonl, JsonLinesSink(workdir / "out.jsonl"), n),
                "csv→csv": scored(served, csv_path, CsvSink(workdir / "out.csv"), n),
            }
            if args.workers > 1:
                w = args.workers
                rates[f"jsonl→jsonl ×{w}"] = scored(
                    served, jsonl, JsonLinesSink(workdir / "out.jsonl"), n, workers=w
                )
                rates[f"csv→csv ×{w}"] = scored(
                    served, csv_path, CsvSink(workdir / "out.csv"), n, workers=w
                )
            if server is not None:
                tables = LookupTables(server[1], RedisKeys("bench"))
                writer = tables.writer(name)
                rates["jsonl→redis"] = scored(served, jsonl, TableSink(writer), n)
                writer.publish({name: 1}, time.time(), 600)
            after = bare(model, rows)
            gc.unfreeze()
            reference = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
            results.append({"model": name, "rows": n, "bare": reference, **rates})
            print(
                f"{name:10s} bare {before[0]:9,.0f} / {after[0]:9,.0f} rows/s  "
                + "  ".join(f"{k} {v[0]:9,.0f} ({v[0] / reference[0]:.2f})"
                            for k, v in rates.items()),
                flush=True,
            )  # fmt: skip
    finally:
        if server is not None:
            server[1].close()
            server[0].terminate()
            server[0].wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("rows/s (÷ bare): wall clock | CPU time of this process (steadier on a shared machine)")
    modes = [k for k in results[0] if "→" in k] if results else []
    print(f"{'model':10s} {'rows':>8s} {'bare/s':>9s} " + " ".join(f"{m:>27s}" for m in modes))
    for r in results:
        cells = " ".join(
            f"{r[m][0]:>8,.0f} ({r[m][0] / r['bare'][0]:.2f}) | ({r[m][1] / r['bare'][1]:.2f})"
            for m in modes
        )
        print(f"{r['model']:10s} {r['rows']:>8,d} {r['bare'][0]:>9,.0f} {cells}")


if __name__ == "__main__":
    main()
