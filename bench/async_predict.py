"""Asynchronous predictions: the runtime decision for the prediction worker, side by side.

One run, the same model, the same requests, the same answering code (`stream.predict.answer`,
with a `SnapshotFollower` following Redis), three workers in turn:

  confluent    ``riverstream predict-worker`` (`stream.predict.worker`: a confluent-kafka
               consumer-group member, batches answered then flushed with acks=all, offsets
               committed after the acks)
  confluent-x2 two of them in one consumer group (each takes half the partitions): the
               scaling ratio is its answers/s ÷ confluent's (the mean of the confluent runs
               when modes repeat, e.g. in ABBA order), from the same run
  faust        a faust-streaming agent (aiokafka), one event at a time: ``await topic.send``
               per answer (``processing_guarantee="at_least_once"``, ``producer_acks=-1``)
  faust-take   the same agent over faust's batches (``stream.take_events(1000, within=10 ms)``)
  faust-soon   batches, and answers put in faust's producer buffer without awaiting each
               (``topic.send_soon``): faust's fastest produce path

For each, in a fresh request/answer topic pair (``--partitions``, 4) and consumer group:

1. warm-up: a request every 0.2 s until one is answered (the worker has joined its group; with
   several workers, until every worker reports partitions assigned and the group is complete);
2. throughput: N requests produced at once; answers/s = (N - 1) / (last - first
   ``answered_at``), the worker's steady rate with a full queue;
3. latency: requests at a fixed offered load R/s for T seconds; end to end = the moment this
   process reads the answer minus the moment it produced the request (same clock), p50 / p99.
   For reference, "hop" is the same for reading the request itself from the request topic:
   what one Kafka hop costs here, out of the two an answer makes.

Before the measured modes, the first mode runs once uncounted (2 000 requests, 2 s of load): a
freshly started broker answered the first mode's requests up to 50 times slower (hop p50 1.7-1.9 s
against ≈ 30 ms later in the same run); ``--no-warm-up`` skips it. Kafka and Redis are started
with `ServiceManager` in a temporary state directory and stopped (by pid) at the end. The model is ``StandardScaler | LogisticRegression`` trained on 2 000
``synth.Agrawal`` samples; requests carry Agrawal features.

The faust modes need faust-streaming, which is not a dependency of riverstream: ``pip install
-e '.[bench]'``.

    python bench/async_predict.py --modes confluent,confluent-x2,confluent-x2,confluent
    python bench/async_predict.py                         # N = 20 000, R = 500/s for 10 s
    python bench/async_predict.py -n 5000 --rate 500 --seconds 5 --modes confluent,faust
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from schemas.settings import Settings  # noqa: E402

TARGET = "bench"


# ---------------------------------------------------------------------------------------------
# the bench process


def train_model() -> Any:
    from river import linear_model, preprocessing
    from river.datasets import synth

    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in synth.Agrawal(seed=42).take(2000):
        model.learn_one(x, y)
    return model


def publish_model(settings: Settings) -> int:
    from learners.serialization import dump_signed
    from schemas.records import SnapshotMeta
    from stream.store.snapshots import open_store

    store = open_store(settings)
    blob = dump_signed(train_model(), settings.require_snapshot_key())
    version = store.next_version()
    meta = SnapshotMeta.describe(
        TARGET, blob, kind="classifier", spec="logreg", samples_learned=2000, metrics={},
        offsets={},
    )  # fmt: skip
    store.write(version, {TARGET: (blob, meta)}, b"", {})
    store.client.close()
    return version


def request_values(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    from river.datasets import synth

    return [
        (f"{prefix}{i}".encode(),
         orjson.dumps({"id": f"{prefix}{i}", "target": TARGET, "features": x}))
        for i, (x, _) in enumerate(synth.Agrawal(seed=7).take(n))
    ]  # fmt: skip


class Answers:
    """Reads a topic of answers (or requests) in a thread: id → (read at, answered_at)."""

    def __init__(self, bootstrap: str, topic: str, *, from_end: bool = False) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from stream.kafka.client import partitions_for

        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "rs-bench-reader",
             "enable.auto.commit": False, "fetch.wait.max.ms": 10}
        )  # fmt: skip
        tps = [TopicPartition(topic, p) for p in partitions_for(bootstrap, topic)]
        for tp in tps:  # from the log end as it is now, or from the start
            tp.offset = self.consumer.get_watermark_offsets(tp, timeout=10)[1] if from_end else 0
        self.consumer.assign(tps)
        self.seen: dict[str, tuple[float, float]] = {}
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self.consumer.consume(10_000, 0.05):
                if m.error() is not None:
                    continue
                now = time.time()
                body = orjson.loads(cast(bytes, m.value()))
                self.seen.setdefault(body["id"], (now, body.get("answered_at", now)))
                self.count += 1

    def wait(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.seen for i in ids):
                return True
            time.sleep(0.01)  # polling the reader thread's state with a deadline
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.consumer.close()


def producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})


def start_worker(mode: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_environment()}
    if mode.startswith("confluent"):
        argv = [sys.executable, "-m", "stream", "predict-worker", "--target", TARGET,
                "--report-every", "0.5", "--metrics-port", "0"]  # fmt: skip
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "_faust_worker", mode]
    with log.open("wb") as handle:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker we started (its own session), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def assigned(log: Path) -> int:
    """Partitions the worker logging to ``log`` said it holds in its last status line."""
    lines = [line for line in log.read_text().splitlines() if line.startswith('{"answered"')]
    return int(json.loads(lines[-1])["assigned"]) if lines else 0


def worker_count(mode: str) -> int:
    """``confluent-x2`` → 2; any other mode runs one worker."""
    return int(mode.rsplit("-x", 1)[1]) if "-x" in mode else 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(
    mode: str, base: Settings, args: argparse.Namespace, workdir: Path, broker_pid: int
) -> dict[str, Any]:
    from stream.kafka.client import create_topics

    tag = f"b{uuid.uuid4().hex[:6]}.{mode}"
    settings = base.model_copy(
        update={"topic_requests": f"{tag}.requests", "topic_predictions": f"{tag}.predictions",
                "topic_dlq": f"{tag}.dlq", "predict_group": tag}
    )  # fmt: skip
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    create_topics(bootstrap, settings.topics())
    logs = [workdir / f"{mode}.{i}.log" for i in range(worker_count(mode))]
    log = logs[0]
    result: dict[str, Any] = {"mode": mode, "workers": len(logs)}
    started = time.monotonic()
    procs = [start_worker(mode, settings, path) for path in logs]
    proc = procs[0]
    answers = Answers(bootstrap, settings.topic_predictions)
    out = producer(bootstrap)
    try:
        # 1. warm-up
        warm = request_values(400, "w")
        warmed: list[str] = []
        for key, value in warm:
            out.produce(settings.topic_requests, value, key)
            warmed.append(key.decode())
            out.flush(10)
            if answers.wait([key.decode()], 0.2) or answers.seen:
                break
            if proc.poll() is not None or time.monotonic() - started > args.deadline:
                raise RuntimeError(f"{mode} worker not answering: {log.read_text()[-1500:]}")
        else:
            raise RuntimeError(f"{mode} worker answered none of {len(warm)} warm-up requests")
        result["to_first_answer_s"] = round(time.monotonic() - started, 2)
        answers.wait(warmed, 30)
        if len(logs) > 1:  # every worker holds partitions, and together all of them
            deadline = time.monotonic() + args.deadline
            while not (all(map(assigned, logs)) and sum(map(assigned, logs)) == base.partitions):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode}: the group never shared the partitions")
                time.sleep(0.1)  # polling the workers' status lines with a deadline
            result["assigned"] = [assigned(path) for path in logs]
        # 2. throughput with a full queue
        burst = request_values(args.n, "t")
        pids = [p.pid for p in procs]
        cpu0 = [cpu_seconds(pid) for pid in [*pids, broker_pid]]
        wall0 = time.monotonic()
        for key, value in burst:
            while True:
                try:
                    out.produce(settings.topic_requests, value, key)
                    break
                except BufferError:
                    out.poll(0.01)
        out.flush(60)
        ids = [k.decode() for k, _ in burst]
        if answers.wait(ids, args.deadline):
            times = sorted(answers.seen[i][1] for i in ids)
            result["answers_per_s"] = round((len(times) - 1) / (times[-1] - times[0]))
            # where the CPU went: the workers' and the broker's share of one CPU over the phase
            cpu = [cpu_seconds(pid) - c for pid, c in zip([*pids, broker_pid], cpu0, strict=True)]
            wall = time.monotonic() - wall0
            result["workers_cpu"] = [round(c / wall, 2) for c in cpu[:-1]]
            result["broker_cpu"] = round(cpu[-1] / wall, 2)
            result["worker_cpu_us_per_answer"] = round(sum(cpu[:-1]) / len(ids) * 1e6, 1)
        else:
            done = sum(i in answers.seen for i in ids)
            result["answers_per_s"] = None
            result["throughput_timeout"] = f"{done}/{len(ids)} answered in {args.deadline:.0f} s"
        # 3. latency at a fixed offered load
        load = request_values(int(args.rate * args.seconds), "l")
        hop = Answers(bootstrap, settings.topic_requests, from_end=True)  # one hop, for reference
        sent: dict[str, float] = {}
        t0 = time.monotonic()
        for n, (key, value) in enumerate(load):
            ahead = n / args.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)  # pacing the offered load, not synchronisation
            sent[key.decode()] = time.time()
            out.produce(settings.topic_requests, value, key)
            out.poll(0)
        out.flush(30)
        lids = list(sent)
        complete = answers.wait(lids, args.deadline)
        hop.wait(lids, 10)
        hop.close()
        hops = [(hop.seen[i][0] - sent[i]) * 1000 for i in lids if i in hop.seen]
        result["hop_p50_ms"] = round(percentile(hops, 0.5), 1)
        result["hop_p99_ms"] = round(percentile(hops, 0.99), 1)
        latencies = [(answers.seen[i][0] - sent[i]) * 1000 for i in lids if i in answers.seen]
        result["offered_per_s"] = args.rate
        result["answered_under_load"] = f"{len(latencies)}/{len(lids)}"
        if latencies:
            result["p50_ms"] = round(percentile(latencies, 0.5), 1)
            result["p99_ms"] = round(percentile(latencies, 0.99), 1)
        if not complete:
            result["latency_timeout"] = True
        result["answers_read"] = answers.count
    finally:
        answers.close()
        for p in procs:
            stop_worker(p)
    return result


# ---------------------------------------------------------------------------------------------
# the faust worker (its own process; settings from the RIVERSTREAM_* environment)


def faust_worker(mode: str) -> None:
    import logging

    import faust  # type: ignore[import-not-found]

    from schemas.errors import SchemaError
    from schemas.events import Limits
    from stream.predict.answer import Answerer
    from stream.predict.metrics import FollowerLog
    from stream.predict.producer import passed_headers
    from stream.store.follower import SnapshotFollower
    from stream.store.snapshots import open_store

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = Settings()
    follower = SnapshotFollower(open_store(settings), FollowerLog(), models=[TARGET])
    follower.start()
    follower.first_sync.wait(30)
    answerer = Answerer(
        follower.get, is_known=follower.is_known, targets=[TARGET],
        limits=Limits.from_settings(settings),
    )  # fmt: skip
    app = faust.App(
        settings.predict_group,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        topic_partitions=settings.partitions,
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="rs-faust-"),
        consumer_auto_offset_reset="earliest",
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    requests = app.topic(settings.topic_requests, partitions=settings.partitions, **raw)
    answers = app.topic(settings.topic_predictions, partitions=settings.partitions, **raw)
    dlq = app.topic(settings.topic_dlq, partitions=1, **raw)

    def answer(event: Any) -> tuple[Any, bytes, list[tuple[str, bytes]]]:
        """(topic, value, headers) to send for ``event``: an answer or a dead letter."""
        m = event.message
        headers = passed_headers(m.headers or [])
        try:
            _id, _target, body = answerer.answer(event.value, m.timestamp, time.time())
        except SchemaError as exc:
            return dlq, m.value, [("rs.reason", exc.reason.encode()), *headers]
        return answers, body, headers

    if mode == "faust":

        @app.agent(requests)
        async def answer_each(stream: Any) -> None:
            async for event in stream.events():
                topic, value, headers = answer(event)
                await topic.send(key=event.message.key, value=value, headers=headers)

    elif mode == "faust-take":

        @app.agent(requests)
        async def answer_batches(stream: Any) -> None:
            async for events in stream.take_events(1000, within=0.01):
                for event in events:
                    topic, value, headers = answer(event)
                    await topic.send(key=event.message.key, value=value, headers=headers)

    else:  # faust-soon: batches, answers put in the producer's buffer without awaiting

        @app.agent(requests)
        async def answer_soon(stream: Any) -> None:
            async for events in stream.take_events(1000, within=0.01):
                for event in events:
                    topic, value, headers = answer(event)
                    topic.send_soon(key=event.message.key, value=value, headers=headers)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# ---------------------------------------------------------------------------------------------


def versions() -> str:
    """The versions of the clients compared; faust-streaming and aiokafka come with the
    ``bench`` extra only, which ``--modes confluent`` runs without."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    names = ("faust-streaming", "aiokafka", "confluent-kafka", "river")
    return ", ".join(f"{n} {installed(n)}" for n in names)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_faust_worker":
        sys.argv = [sys.argv[0], "worker"]  # faust's command line: run a worker
        faust_worker(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests of the throughput phase")
    parser.add_argument("--rate", type=float, default=500.0, help="offered load, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load phase")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per phase")
    parser.add_argument(
        "--modes",
        default="confluent,confluent-x2,faust,faust-take,faust-soon",
        help="confluent, confluent-xK (K workers in one group), faust, faust-take, faust-soon",
    )
    parser.add_argument("--partitions", type=int, default=4, help="of the request topic")
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="skip the uncounted first run (2 000 requests) that warms the fresh broker up",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m.startswith("faust") for m in modes) and importlib.util.find_spec("faust") is None:
        raise SystemExit(
            "the faust modes need faust-streaming, which only the bench extra installs: "
            "pip install -e '.[bench]' (or --modes confluent)"
        )

    from stream.dev.services import ServiceManager

    workdir = Path(tempfile.mkdtemp(prefix="rs-async-bench-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    results = []
    print(f"# {versions()}; N = {args.n}, load {args.rate:.0f}/s for {args.seconds:.0f} s",
          flush=True)  # fmt: skip
    try:
        records = manager.up(("kafka", "redis"))
        base = Settings(
            state_dir=workdir / "state", kafka_bootstrap_servers=records["kafka"].address,
            redis_url=records["redis"].url, redis_prefix=f"bench{uuid.uuid4().hex[:6]}",
            snapshot_key=SecretStr("bench-key"), serve_poll_seconds=1.0, partitions=args.partitions,
            predict_metrics_port=0,
        )  # fmt: skip
        publish_model(base)
        if args.warm_up and modes:  # a fresh broker is slow at first: the first mode paid it
            warm = argparse.Namespace(**{**vars(args), "n": 2000, "seconds": 2.0})
            run_mode(modes[0], base, warm, workdir, records["kafka"].pid)
            print("# warm-up run done (not counted)", flush=True)
        for mode in modes:
            try:
                result = run_mode(mode, base, args, workdir, records["kafka"].pid)
            except RuntimeError as exc:
                result = {"mode": mode, "error": str(exc)}
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        manager.down(("kafka", "redis"), purge=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    # modes may repeat (ABBA order cancels the machine's drift): the mean of the confluent runs
    singles = [r["answers_per_s"] for r in results
               if r["mode"] == "confluent" and r.get("answers_per_s")]  # fmt: skip
    reference = sum(singles) / len(singles) if singles else None
    print(f"{'mode':12s} {'answers/s':>10s} {'÷ confluent':>12s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'hop p50/p99':>12s} {'answered':>12s} {'1st answer s':>12s} "
          f"{'worker CPU':>12s} {'broker CPU':>10s} {'µs/answer':>9s}")  # fmt: skip
    for r in results:
        rate = r.get("answers_per_s")
        ratio = f"{rate / reference:.2f}" if rate and reference else "-"
        print(f"{r['mode']:12s} {rate or '-':>10} {ratio:>12s} {r.get('p50_ms', '-'):>8} "
              f"{r.get('p99_ms', '-'):>8} "
              f"{str(r.get('hop_p50_ms', '-')) + '/' + str(r.get('hop_p99_ms', '-')):>12} "
              f"{r.get('answered_under_load', '-'):>12} "
              f"{r.get('to_first_answer_s', '-'):>12} "
              f"{'+'.join(map(str, r.get('workers_cpu', []))) or '-':>12} "
              f"{r.get('broker_cpu', '-'):>10} {r.get('worker_cpu_us_per_answer', '-'):>9}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
