"""Runtime decision for the learner: what does the consume path cost, per framework/client?

One run, side by side, over the same events already sitting in a real Kafka topic:

  bare              the River loop alone (``StandardScaler | LogisticRegression``,
                    predict_one + learn_one) over the decoded events in memory: the reference
  bare+decode       the same, decoding the JSON bytes with orjson first
  faust[/raw]       a faust-streaming agent (aiokafka) in a worker subprocess, per event:
                    decode + predict + learn per event, or just count (raw)
  kafka-python[/raw] `bench/kafka_python_source.py` + the same work, or just count
  confluent[/raw]   `stream.kafka.client.ConfluentSource` (librdkafka) + the same work, or just count

Kafka is a real single-node KRaft broker started with `ServiceManager` in a temporary state
directory and stopped by pid at the end. Every mode has a deadline; a mode that does not finish
is reported as a timeout with how far it got. Rates are measured from the first record received
to the N-th processed (steady state); the time to the first record (connect, group join,
rebalance) is reported separately.

The faust worker also records the event times in processing order, so the run reports whether
faust delivered a global event-time order across partitions (it does not: partitions are
separate streams interleaved by fetch arrival).

    python bench/consume_path.py                 # 100k events, 3 partitions
    python bench/consume_path.py -n 20000 --deadline 60 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson

# ---------------------------------------------------------------------------------------------
# the work every mode does


def make_model() -> Any:
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def make_events(n: int, seed: int = 42) -> tuple[list[bytes], list[bool]]:
    """N JSON feature events (9 Agrawal features, numeric) and their labels by index."""
    from river.datasets import synth

    values: list[bytes] = []
    labels: list[bool] = []
    for i, (x, y) in enumerate(synth.Agrawal(seed=seed).take(n)):
        features = {k: float(v) for k, v in x.items()}
        values.append(orjson.dumps({"id": str(i), "time": i, "features": features}))
        labels.append(bool(y))
    return values, labels


class Work:
    """decode + predict_one + learn_one; the label is looked up by the event's id."""

    def __init__(self, labels: list[bool]) -> None:
        self.model = make_model()
        self.labels = labels
        self.correct = 0
        self.count = 0

    def __call__(self, value: bytes) -> None:
        event = orjson.loads(value)
        x = event["features"]
        y = self.labels[int(event["id"])]
        self.correct += self.model.predict_one(x) == y
        self.model.learn_one(x, y)
        self.count += 1


# ---------------------------------------------------------------------------------------------
# modes


def result(
    mode: str,
    n: int,
    done: int,
    t_start: float,
    t_first: float | None,
    t_end: float,
    deadline_hit: bool,
    first_batch: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Steady rate: the records after the first batch over the time after it arrived."""
    steady = (t_end - t_first) if t_first is not None else None
    counted = done - first_batch
    return {
        "mode": mode,
        "events": done,
        "expected": n,
        "status": "timeout" if deadline_hit or done < n else "ok",
        "seconds": round(t_end - t_start, 3),
        "to_first_record_s": round(t_first - t_start, 3) if t_first is not None else None,
        "steady_seconds": round(steady, 3) if steady is not None else None,
        "events_per_s": round(counted / steady) if steady and counted > 0 else None,
        "events_per_s_incl_connect": round(done / (t_end - t_start)) if t_end > t_start else None,
        **extra,
    }


def run_bare(values: list[bytes], labels: list[bool], *, decode: bool) -> dict[str, Any]:
    decoded = [orjson.loads(v) for v in values]
    model = make_model()
    t0 = time.perf_counter()
    correct = 0
    if decode:
        for v in values:
            event = orjson.loads(v)
            x, y = event["features"], labels[int(event["id"])]
            correct += model.predict_one(x) == y
            model.learn_one(x, y)
    else:
        for event in decoded:
            x, y = event["features"], labels[int(event["id"])]
            correct += model.predict_one(x) == y
            model.learn_one(x, y)
    t1 = time.perf_counter()
    name = "bare+decode" if decode else "bare"
    return result(
        name,
        len(values),
        len(values),
        t0,
        t0,
        t1,
        False,
        0,
        accuracy=round(correct / len(values), 4),
    )


def run_source(
    mode: str,
    open_source: Callable[[], Any],
    topic: str,
    partitions: int,
    n: int,
    labels: list[bool] | None,
    deadline: float,
) -> dict[str, Any]:
    """kafka-python / confluent: assign every partition from offset 0, poll until N."""
    work = Work(labels) if labels is not None else None
    t_start = time.perf_counter()
    source = open_source()
    source.assign({(topic, p): 0 for p in range(partitions)})
    t_first: float | None = None
    first_batch = 0
    done = 0
    limit = t_start + deadline
    try:
        while done < n and time.perf_counter() < limit:
            records = source.poll(10_000, 0.1)
            if not records:
                continue
            count = sum(len(run) for run in records)
            if t_first is None:
                t_first = time.perf_counter()
                first_batch = count
            if work is not None:
                for run in records:
                    for value in run.values:
                        work(value)
            done += count
        t_end = time.perf_counter()
    finally:
        source.close()
    extra = {"accuracy": round(work.correct / max(work.count, 1), 4)} if work else {}
    return result(mode, n, done, t_start, t_first, t_end, done < n, first_batch, **extra)


def run_faust(
    bootstrap: str,
    topic: str,
    partitions: int,
    n: int,
    labels_file: Path,
    with_model: bool,
    deadline: float,
    workdir: Path,
    batch: bool = False,
) -> dict[str, Any]:
    """A faust worker in a subprocess; it writes its result file once N events were processed."""
    out = workdir / f"faust-{uuid.uuid4().hex[:6]}.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_faust_worker",
        "--broker",
        bootstrap,
        "--topic",
        topic,
        "--partitions",
        str(partitions),
        "-n",
        str(n),
        "--labels",
        str(labels_file),
        "--out",
        str(out),
        "--datadir",
        str(workdir),
    ]
    if with_model:
        argv.append("--model")
    if batch:
        argv.append("--batch")
    log_path = workdir / (out.stem + ".log")
    t_start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    status: dict[str, Any] | None = None
    limit = t_start + deadline
    try:
        while time.perf_counter() < limit:
            if out.exists():
                status = json.loads(out.read_text())
                if status.get("final"):
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        if status is None and out.exists():
            status = json.loads(out.read_text())
    finally:
        _stop(proc)
    mode = ("faust-take" if batch else "faust") + ("" if with_model else "/raw")
    if status is None:
        tail = log_path.read_text(errors="replace")[-1500:]
        return {
            "mode": mode,
            "events": 0,
            "expected": n,
            "status": "timeout" if proc.returncode in (None, -15, -9) else "failed",
            "seconds": round(time.perf_counter() - t_start, 3),
            "log_tail": tail,
        }
    # the worker reports its own monotonic timestamps relative to its own start
    done = status["done"]
    steady = status["t_last"] - status["t_first"] if status.get("t_first") else None
    return {
        "mode": mode,
        "events": done,
        "expected": n,
        "status": "ok" if status.get("final") and done >= n else "timeout",
        "seconds": round(status["t_last"] - status["t_boot"], 3),
        "to_first_record_s": round(status["t_first"] - status["t_boot"], 3)
        if status.get("t_first")
        else None,
        "steady_seconds": round(steady, 3) if steady else None,
        "events_per_s": round((done - 1) / steady) if steady else None,
        "events_per_s_incl_connect": round(done / status["t_last"]) if status["t_last"] else None,
        "time_order_inversions": status.get("inversions"),
        "partition_switches": status.get("switches"),
        **({"accuracy": status["accuracy"]} if "accuracy" in status else {}),
    }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the worker we started, by its pid (its own session: the whole group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# the faust worker (runs in its own process)


def faust_worker(args: argparse.Namespace) -> None:
    import asyncio
    import logging

    import faust  # type: ignore[import-not-found]

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    labels = json.loads(Path(args.labels).read_text())
    t_boot = time.perf_counter()
    app = faust.App(
        f"rs-bench-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{args.broker}",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=args.partitions,
        web_enabled=False,
        datadir=str(Path(args.datadir) / "faust-data"),
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=10_000,
    )
    topic = app.topic(
        args.topic, value_serializer="raw", key_serializer="raw", partitions=args.partitions
    )
    work = Work(labels) if args.model else None
    state: dict[str, Any] = {
        "done": 0,
        "t_first": None,
        "last_time": -1,
        "inversions": 0,
        "switches": 0,
        "last_partition": None,
        "t_boot": 0.0,
    }
    out = Path(args.out)

    def dump(final: bool) -> None:
        payload = {
            "done": state["done"],
            "final": final,
            "t_boot": 0.0,
            "t_first": state["t_first"],
            "t_last": time.perf_counter() - t_boot,
            "inversions": None if args.batch else state["inversions"],
            "switches": None if args.batch else state["switches"],
        }
        if work is not None:
            payload["accuracy"] = round(work.correct / max(work.count, 1), 4)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(out)

    if args.batch:

        @app.agent(topic)
        async def learn_batches(stream: Any) -> None:
            # faust's batching API: up to 10k values or 50 ms, whichever first
            async for values in stream.take(10_000, within=0.05):
                if state["t_first"] is None:
                    state["t_first"] = time.perf_counter() - t_boot
                if work is not None:
                    for value in values:
                        work(value)
                state["done"] += len(values)
                if state["done"] >= args.n:
                    dump(True)

    @app.agent(topic) if not args.batch else (lambda f: f)
    async def learn(stream: Any) -> None:
        async for event in stream.events():
            if state["t_first"] is None:
                state["t_first"] = time.perf_counter() - t_boot
            value = event.value
            if work is not None:
                work(value)
            # order check on the event time carried in the payload (cheap prefix parse is not
            # worth it: decode only when the model did not already)
            t = (
                orjson.loads(value)["time"]
                if work is None
                else int(value.split(b'"time":')[1].split(b",")[0])
            )
            if t < state["last_time"]:
                state["inversions"] += 1
            state["last_time"] = max(state["last_time"], t)
            partition = event.message.partition
            if partition != state["last_partition"]:
                state["switches"] += 1
                state["last_partition"] = partition
            state["done"] += 1
            if state["done"] % 10_000 == 0:
                dump(False)
            if state["done"] >= args.n:
                dump(True)
                await asyncio.sleep(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


# ---------------------------------------------------------------------------------------------


def publish(bootstrap: str, topic: str, values: list[bytes], compression: str | None) -> float:
    from stream.kafka.client import EventProducer

    producer = EventProducer(bootstrap, compression=compression)
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        producer.send(topic, str(i).encode(), v)
    producer.flush(timeout=120)
    elapsed = time.perf_counter() - t0
    producer.close()
    if producer.sent != len(values) or producer.failed:
        raise SystemExit(f"publish failed: sent {producer.sent}, failed {producer.failed}")
    return len(values) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="events (default 100000)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per mode")
    parser.add_argument("--compression", default="gzip", help="producer compression or 'none'")
    parser.add_argument(
        "--modes",
        default="bare,bare+decode,faust,faust/raw,faust-take,"
        "faust-take/raw,kafka-python,"
        "kafka-python/raw,confluent,confluent/raw",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (faust logs)")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_faust_worker":
        wp = argparse.ArgumentParser()
        wp.add_argument("--broker")
        wp.add_argument("--topic")
        wp.add_argument("--partitions", type=int)
        wp.add_argument("-n", type=int)
        wp.add_argument("--labels")
        wp.add_argument("--out")
        wp.add_argument("--datadir")
        wp.add_argument("--model", action="store_true")
        wp.add_argument("--batch", action="store_true")
        wargs = wp.parse_args(argv[1:])
        sys.argv = [sys.argv[0], "worker"]  # faust's command line: run a worker
        faust_worker(wargs)
        return 0
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    compression = None if args.compression == "none" else args.compression

    from kafka_python_source import KafkaPythonSource

    from schemas.settings import Settings
    from stream.dev.services import ServiceManager
    from stream.kafka.client import ConfluentSource, create_topics

    workdir = Path(tempfile.mkdtemp(prefix="rs-consume-bench-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    results: list[dict[str, Any]] = []
    versions = _versions()
    print(
        f"# {args.n} events, {args.partitions} partitions, compression={compression}, "
        f"deadline {args.deadline:.0f} s/mode; {versions}",
        flush=True,
    )
    try:
        t0 = time.perf_counter()
        rec = manager.up(("kafka",))["kafka"]
        bootstrap = rec.address
        print(
            f"# kafka {manager.settings.kafka_version} at {bootstrap} (pid {rec.pid}), "
            f"up in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        values, labels = make_events(args.n)
        labels_file = workdir / "labels.json"
        labels_file.write_text(json.dumps(labels))
        topic = f"bench.consume.{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: args.partitions})
        rate = publish(bootstrap, topic, values, compression)
        print(f"# published {args.n} events to {topic} at {rate:,.0f} events/s", flush=True)

        for mode in modes:
            with_model = not mode.endswith("/raw")
            base = mode.removesuffix("/raw")
            lab = labels if with_model else None
            if base == "bare":
                r = run_bare(values, labels, decode=False)
            elif base == "bare+decode":
                r = run_bare(values, labels, decode=True)
            elif base in ("faust", "faust-take"):
                r = run_faust(
                    bootstrap,
                    topic,
                    args.partitions,
                    args.n,
                    labels_file,
                    with_model,
                    args.deadline,
                    workdir,
                    batch=base == "faust-take",
                )
            elif base == "kafka-python":
                r = run_source(
                    mode,
                    lambda: KafkaPythonSource(bootstrap, "bench"),
                    topic,
                    args.partitions,
                    args.n,
                    lab,
                    args.deadline,
                )
            elif base == "confluent":
                group = f"bench-{uuid.uuid4().hex[:6]}"
                r = run_source(
                    mode,
                    cast(Callable[[], Any], lambda g=group: ConfluentSource(bootstrap, g)),
                    topic,
                    args.partitions,
                    args.n,
                    lab,
                    args.deadline,
                )
            else:
                raise SystemExit(f"unknown mode {mode}")
            results.append(r)
            print(
                f"  {mode:18s} {r['status']:7s} {shown_rate(r.get('events_per_s')):>10s} ev/s",
                flush=True,
            )
    finally:
        manager.down(("kafka",), purge=True)
        if args.keep or any(r["status"] != "ok" for r in results):
            print(f"# work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    bare = next((r["events_per_s"] for r in results if r["mode"] == "bare"), None)
    print()
    print(
        f"{'mode':18s} {'status':8s} {'events':>8s} {'events/s':>10s} {'÷ bare':>7s} "
        f"{'incl. connect':>13s} {'1st rec s':>9s}  notes"
    )
    for r in results:
        eps = r.get("events_per_s")
        ratio = f"{eps / bare:.2f}" if eps and bare else "-"
        r["ratio_to_bare"] = round(eps / bare, 3) if eps and bare else None
        notes = []
        if r.get("time_order_inversions") is not None:
            notes.append(
                f"event-time inversions {r['time_order_inversions']:,}, "
                f"partition switches {r['partition_switches']:,}"
            )
        if r["status"] != "ok":
            notes.append(f"stopped at {r['events']:,}/{r['expected']:,}")
        first = r.get("to_first_record_s")
        print(
            f"{r['mode']:18s} {r['status']:8s} {r['events']:>8,} "
            f"{shown_rate(eps):>10s} {ratio:>7s} {shown_rate(r.get('events_per_s_incl_connect')):>13s} "
            f"{first if first is not None else '-':>9}  "
            f"{'; '.join(notes)}"
        )
        if r.get("log_tail"):
            print("    faust log tail:\n    " + r["log_tail"].replace("\n", "\n    "))
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "results": results}, indent=2))
    return 0 if all(r["status"] == "ok" for r in results) else 1


def shown_rate(events_per_s: int | None) -> str:
    """A rate, or "-" when none was measured: a steady rate needs records after the first
    batch, and a short run (``-n 2000``) comes in one batch."""
    return "-" if events_per_s is None else f"{events_per_s:,}"


def _versions() -> str:
    """The versions of the clients compared; faust-streaming and aiokafka come with the
    ``bench`` extra only, and a run of the other modes goes on without them."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    names = ("river", "faust-streaming", "aiokafka", "kafka-python", "confluent-kafka")
    return ", ".join(f"{n} {installed(n)}" for n in names)


if __name__ == "__main__":
    sys.exit(main())
