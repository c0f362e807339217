"""End-to-end learner throughput (events already in Kafka → learned) ÷ the bare River loop.

One run, side by side, for ``logreg``, ``hoeffding`` and ``arf`` on ``synth.Agrawal`` (seed 42)
with a constant label delay of 100:

  learner   the real `stream.learner.loop.Learner` built by `stream.learner.runtime.build_learner` against a
            real Kafka and Redis, in this process: confluent consume, decode, event-time merge,
            the join, predict, the Accuracy metric, learn, and the periodic snapshots to Redis
            (default settings: every 10 000 labels or 30 s, forked when the previous one was
            ≥ 1 MB, else serialized in-process and written by a thread). Timed from the start of
            `Learner.run` to the moment the N-th label was joined and learned (seen by an
            observer after each batch), so the ``--exit-when-idle`` wait and the final
            in-process snapshot are not counted. ``--margin`` samples (5 000) are published
            after the N timed ones, so that the N-th label is released by later events, as in
            a stream that goes on: at an input's end the last labels wait for the idle grace
            (0.2 s here, ≈ 15 % of a 50 000-sample run), which is not throughput.
            ``--margin 0`` measures that way (as before 2026-12-01); the time to N − delay
            labels is printed as well.
  bare      ``predict_one`` + ``learn_one`` over the same samples in memory (labels at once),
            run right before and right after the learner; the ratio uses their mean.
  River     River's own progressive validation of the same samples with the same delay
            (``evaluate.progressive_val_score``, the Accuracy metric: the very numbers the
            learner reaches, as the equivalence tests check), in memory, run beside each bare
            loop: the column ``÷River`` is what Kafka, the event-time join, exactly-once and
            the snapshots cost over River doing the same evaluation.

Rates are samples/s; one sample is two events (a feature event and a label event), so
events/s = 2 × samples/s. ``arf`` learns ≈ 1k samples/s bare, so it gets its own, smaller
``--arf-limit`` (default 10 000).

The CPU ratio divides the bare loop's CPU time by the learning thread's (`time.thread_time`,
run start → N-th label): on this shared machine it moves far less with the other loads than
the wall-clock ratio (librdkafka's fetch threads run beside it and are not counted). With
``--phases`` a second, instrumented learner runs over the same topics and prints its CPU time
per sample by phase (`learner_phases.py`: poll, ingest, join, predict, metric, learn, snapshots,
live updates, checks).

With ``--repeat K`` the learner runs K rounds over the same published topics (a fresh Redis
prefix each: every round starts from offset 0), each between two bare loops; each round is a
row, and the medians and ranges of the ratios follow (the runs of one code swing by ± 0.1 here).

Kafka and Redis are started with `ServiceManager` in a temporary state directory and stopped
(and purged) at the end. Every model has a fresh set of topics and a fresh Redis prefix. The
learner is stopped after ``--deadline`` seconds per model (reported as a timeout).

    python bench/learn_throughput.py                       # 100k samples (arf: 10k)
    python bench/learn_throughput.py --limit 20000 --arf-limit 3000 --models logreg,arf
    python bench/learn_throughput.py --limit 50000 --models logreg,hoeffding --phases
    python bench/learn_throughput.py --limit 200000 --models logreg --phases coarse
    python bench/learn_throughput.py --models logreg,hoeffding --repeat 3   # medians of 3 rounds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from pydantic import SecretStr
from river import evaluate, metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learners.datasets import dataset_events, load_dataset  # noqa: E402
from learners.specs import ModelSpec  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream.dev.services import ServiceManager  # noqa: E402
from stream.kafka.client import EventProducer  # noqa: E402
from stream.kafka.publish import Publisher  # noqa: E402
from stream.learner.runtime import build_learner  # noqa: E402

DATASET = "synth.Agrawal"
SEED = 42


class Clock:
    """Learner observer: records when the first records came and when N (and N − delay) labels
    had been learned; stops the learner at its deadline."""

    def __init__(self, n: int, delay: int, deadline: float) -> None:
        self.n = n
        self.tail = max(0, n - delay)
        self.deadline = deadline
        self.t_first: float | None = None
        self.t_learning: float | None = None  # the first label learned
        self.t_tail: float | None = None
        self.t_done: float | None = None
        self.cpu_done: float | None = None  # the learning thread's CPU time at t_done
        self.batches = 0
        self.snapshots: list[Any] = []
        self.timed_out = False

    def after_batch(self, learner: Any, records: list[Any]) -> None:
        now = time.perf_counter()
        if records:
            self.batches += 1
            if self.t_first is None:
                self.t_first = now
        joined = learner.core.counters.labels_joined
        if self.t_learning is None and joined:
            self.t_learning = now
        if self.t_tail is None and joined >= self.tail:
            self.t_tail = now
        if self.t_done is None and joined >= self.n:
            self.t_done = now
            self.cpu_done = time.thread_time()
        if self.t_done is None and now > self.deadline:
            self.timed_out = True
            learner.stop()

    def snapshot(self, learner: Any, result: Any) -> None:
        if self.t_done is None:  # not the final (in-process) snapshot after the timed part
            self.snapshots.append(result)

    def close(self) -> None:
        pass


def bare_loop(
    spec: ModelSpec, samples: list[tuple[dict[str, Any], Any]]
) -> tuple[float, float, float]:
    """Seconds (wall, and the thread's CPU) for predict_one + learn_one over ``samples``; and
    the accuracy."""
    model: Any = spec.build()
    correct = 0
    start, cpu = time.perf_counter(), time.thread_time()
    for x, y in samples:
        correct += model.predict_one(x) == y
        model.learn_one(x, y)
    return time.perf_counter() - start, time.thread_time() - cpu, correct / len(samples)


def river_eval(spec: ModelSpec, samples: list[tuple[dict[str, Any], Any]], delay: int) -> float:
    """Seconds of River's ``progressive_val_score`` over ``samples`` with ``delay``."""
    model, accuracy = spec.build(), metrics.Accuracy()
    start = time.perf_counter()
    evaluate.progressive_val_score(
        cast(list[tuple[dict[Hashable, Any], Any]], samples), model, accuracy, delay=delay
    )
    return time.perf_counter() - start


def run_model(
    base: Settings,
    name: str,
    n: int,
    delay: int,
    deadline: float,
    run_id: str,
    phases: str | None,
    margin: int = 0,
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """Publish, then ``repeat`` rounds of the learner from the first offset, each between two
    bare loops (and River's evaluation): one result per round."""
    tag = f"{run_id}.{name}"
    settings = base.model_copy(
        update={
            "topic_features": f"bench.lt.{tag}.features",
            "topic_labels": f"bench.lt.{tag}.labels",
            "topic_dlq": f"bench.lt.{tag}.dlq",
            "redis_prefix": f"bench-lt-{run_id}-{name}",
        }
    )
    spec = ModelSpec(name, name)
    samples = list(load_dataset(DATASET, limit=n, seed=SEED))

    publisher = Publisher(settings)
    try:
        report = publisher.publish_events(
            dataset_events(DATASET, label_delay=delay, limit=n + margin, seed=SEED)
        )
    finally:
        publisher.close()
    if report.sent != 2 * (n + margin) or report.failed or report.rejected:
        raise SystemExit(f"{name}: publish failed: {report.to_dict()}")
    print(f"  {name}: published {report.sent:,} events in {report.seconds:.1f} s", flush=True)

    def baseline(when: str) -> tuple[float, float, float, float]:
        bare, bare_cpu, accuracy = bare_loop(spec, samples)
        river = river_eval(spec, samples, delay)
        print(
            f"  {name}: bare loop ({when}) {n / bare:,.0f} samples/s, "
            f"River's evaluation {n / river:,.0f}",
            flush=True,
        )
        return bare, bare_cpu, river, accuracy

    before = baseline("before")
    results = []
    for round_ in range(repeat):
        # a fresh Redis prefix: no snapshot to restore, so every round reads from offset 0
        prefix = settings.redis_prefix + (f"-r{round_}" if round_ else "")
        timed = learner_round(
            settings.model_copy(update={"redis_prefix": prefix}), spec, n, delay, deadline
        )
        if phases and round_ == 0:  # a second learner on the same topics, instrumented
            sys.path.insert(0, str(ROOT / "bench"))
            from learner_phases import phase_run

            prefix = settings.redis_prefix + "-phases"
            breakdown = phase_run(
                settings.model_copy(update={"redis_prefix": prefix}),
                spec,
                n,
                coarse=phases == "coarse",
            )
            print(f"  {name}: where the time goes (a second, instrumented run)", flush=True)
            print(breakdown, flush=True)
        after = baseline("after" if repeat == 1 else f"after round {round_ + 1}")
        (bare_b, cpu_b, river_b, accuracy), (bare_a, cpu_a, river_a, _) = before, after
        results.append(
            {
                "model": name if repeat == 1 else f"{name}#{round_ + 1}",
                "samples": n,
                "bare_s": (bare_b + bare_a) / 2,
                "river_s": (river_b + river_a) / 2,
                "bare_cpu_s": (cpu_b + cpu_a) / 2,
                "bare_rates": (n / bare_b, n / bare_a),
                "bare_accuracy": accuracy,
                "publish_rate": report.rate,
                **timed,
            }
        )
        before = after
    return results


def learner_round(
    settings: Settings, spec: ModelSpec, n: int, delay: int, deadline: float
) -> dict[str, Any]:
    """One timed run of the learner over the published topics."""
    learner = None
    clock = Clock(n, delay, time.perf_counter() + deadline)
    try:
        learner = build_learner(settings, [spec], observer=clock)
        t_start, cpu_start = time.perf_counter(), time.thread_time()
        clock.deadline = t_start + deadline
        summaries = learner.run(exit_when_idle=0.5)
        t_exit = time.perf_counter()
        stats = learner.stats
        summaries = summaries or learner.summaries()
    finally:
        if learner is not None:
            learner.source.close()
            cast(EventProducer, learner.dead_letters.producer).close()
    joined = learner.core.counters.labels_joined
    print(
        f"  {spec.name}: learner {'TIMEOUT' if clock.t_done is None else 'done'} "
        f"({joined:,}/{n:,} labels)",
        flush=True,
    )
    learn_s = None if clock.t_done is None else clock.t_done - t_start
    return {
        "status": "ok" if learn_s is not None else "timeout",
        "joined": joined,
        "learn_cpu_s": None if clock.cpu_done is None else clock.cpu_done - cpu_start,
        "learn_s": learn_s,
        "steady_s": None
        if clock.t_done is None or clock.t_first is None
        else clock.t_done - clock.t_first,
        "tail_s": None if clock.t_tail is None else clock.t_tail - t_start,
        "tail_n": clock.tail,
        "first_record_s": None if clock.t_first is None else clock.t_first - t_start,
        "first_label_s": None if clock.t_learning is None else clock.t_learning - t_start,
        "exit_s": t_exit - t_start,
        "accuracy": summaries[0]["metrics"].get("Accuracy") if summaries else None,
        "snapshots": len(clock.snapshots),
        "max_stall_ms": max((s.stall_seconds for s in clock.snapshots), default=0.0) * 1000,
        "sum_stall_ms": sum(s.stall_seconds for s in clock.snapshots) * 1000,
        "write_ms": statistics.median([s.seconds for s in clock.snapshots] or [0.0]) * 1000,
        "final_snapshot_ms": stats.max_stall_seconds * 1000,
    }


def delayed(redis_url: str, rtt_ms: float) -> tuple[subprocess.Popen[str], str]:
    """Start `delay_proxy.py` in front of ``redis_url``: (its process, the URL through it)."""
    parsed = urlsplit(redis_url)
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "delay_proxy.py"),
         "--upstream", f"{parsed.hostname}:{parsed.port}", "--rtt-ms", str(rtt_ms)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proxy.stdout is not None
    line = proxy.stdout.readline()  # "listening HOST:PORT" once it accepts connections
    if not line.startswith("listening "):
        proxy.kill()
        raise SystemExit(f"delay_proxy.py did not start: {line!r}")
    address = line.split()[1]
    return proxy, parsed._replace(netloc=address).geturl()


def medians(results: list[dict[str, Any]]) -> str:
    """The median and range of each round's ratios (wall, CPU, ÷River), for ``--repeat``."""
    done = [r for r in results if r["learn_s"] is not None]
    if not done:
        return ""
    columns = {
        "ratio": [r["bare_s"] / r["learn_s"] for r in done],
        "CPU ratio": [r["bare_cpu_s"] / r["learn_cpu_s"] for r in done],
        "÷River": [r["river_s"] / r["learn_s"] for r in done],
    }
    return ", ".join(
        f"{label} {statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"
        for label, values in columns.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100_000, help="samples for logreg/hoeffding")
    parser.add_argument("--arf-limit", type=int, default=10_000, help="samples for arf")
    parser.add_argument("--delay", type=int, default=100, help="label delay (constant)")
    parser.add_argument("--models", default="logreg,hoeffding,arf")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per learner run")
    parser.add_argument(
        "--phases",
        nargs="?",
        const="fine",
        choices=["fine", "coarse"],
        help="also: CPU per sample by phase (an extra run); coarse: the loop's steps only (no "
        "timer per sample), and the core's calls replayed in process after the run",
    )
    parser.add_argument(
        "--margin",
        type=int,
        default=5_000,
        help="samples published after the N timed ones, so that the N-th label is learned while "
        "the stream still flows (0: the stream ends there and its end waits out the idle grace)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="learner rounds per model, each between two bare loops; prints each round's "
        "ratios and their medians (this machine's runs of one code swing by ± 0.1)",
    )
    parser.add_argument(
        "--redis-rtt-ms",
        type=float,
        default=0.0,
        help="reach Redis through bench/delay_proxy.py, which adds this round trip (a Redis "
        "on another machine; 0: straight to the loopback)",
    )
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="rs-learn-bench-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    results: list[dict[str, Any]] = []
    run_id = uuid.uuid4().hex[:6]
    print(
        f"# {DATASET} seed {SEED}, label delay {args.delay}; samples: {args.limit:,} "
        f"(+ {args.margin:,} published after them, not timed) "
        f"(arf: {args.arf_limit:,}, its own --arf-limit: ARF learns ≈ 1k samples/s bare)",
        flush=True,
    )
    proxy: subprocess.Popen[str] | None = None
    try:
        t0 = time.perf_counter()
        records = manager.up(("kafka", "redis"))
        redis_url = records["redis"].url
        print(
            f"# kafka at {records['kafka'].address}, redis at {redis_url}, "
            f"up in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        if args.redis_rtt_ms:
            proxy, redis_url = delayed(redis_url, args.redis_rtt_ms)
            print(f"# the learner reaches redis at {redis_url}: + {args.redis_rtt_ms} ms a round "
                  "trip (bench/delay_proxy.py)", flush=True)  # fmt: skip
        base = Settings(
            state_dir=workdir / "state",
            kafka_bootstrap_servers=records["kafka"].address,
            redis_url=redis_url,
            snapshot_key=SecretStr("bench"),
            learner_metrics_port=0,
            watermark_idle_grace=0.2,
        )
        print(
            f"# learner settings: {base.partitions} partitions, consumer_batch "
            f"{base.consumer_batch}, snapshots every {base.snapshot_every_labels} labels or "
            f"{base.snapshot_every_seconds:.0f} s (forked from {base.snapshot_fork_min_bytes:,} B), "
            f"idle grace {base.watermark_idle_grace} s",
            flush=True,
        )
        for name in models:
            n = args.arf_limit if name == "arf" else args.limit
            results.extend(
                run_model(
                    base, name, n, args.delay, args.deadline, run_id, args.phases, args.margin,
                    args.repeat,
                )
            )  # fmt: skip
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        manager.down(("kafka", "redis"), purge=True)
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("samples/s (events/s = 2 × samples/s); ratio = learner ÷ bare, same samples, same run")
    header = (
        f"{'model':10s} {'samples':>8s} {'bare/s':>9s} {'learner/s':>10s} {'ratio':>6s} "
        f"{'events/s':>9s} {'excl.1st':>8s} {'N-delay':>8s} {'1st rec':>7s} {'1st lab':>7s} "
        f"{'snaps':>5s} {'stall':>7s} {'Σstall':>7s} {'write':>7s} {'acc':>6s} {'CPU ratio':>9s} {'÷River':>6s}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        bare = r["samples"] / r["bare_s"]
        if r["learn_s"] is None:
            print(f"{r['model']:10s} {r['samples']:>8,} {bare:>9,.0f} {'timeout':>10s} "
                  f"({r['joined']:,} labels learned)")  # fmt: skip
            continue
        rate = r["samples"] / r["learn_s"]
        # "-" when the first batch learned all N labels (a short run): no time after it
        steady = f"{r['samples'] / r['steady_s'] / bare:.2f}" if r["steady_s"] else "-"
        tail = r["tail_n"] / r["tail_s"] if r["tail_s"] else 0.0
        print(
            f"{r['model']:10s} {r['samples']:>8,} {bare:>9,.0f} {rate:>10,.0f} "
            f"{rate / bare:>6.2f} {2 * rate:>9,.0f} {steady:>8s} {tail / bare:>8.2f} "
            f"{r['first_record_s']:>6.2f}s {r['first_label_s']:>6.2f}s "
            f"{r['snapshots']:>5d} {r['max_stall_ms']:>5.1f}ms {r['sum_stall_ms']:>5.0f}ms "
            f"{r['write_ms']:>5.1f}ms "
            f"{r['accuracy']:>6.4f} {r['bare_cpu_s'] / r['learn_cpu_s']:>9.2f} "
            f"{r['river_s'] / r['learn_s']:>6.2f}"
        )
    if args.repeat > 1:
        print()
        for name in models:
            rounds = [r for r in results if r["model"].split("#")[0] == name]
            print(f"{name}: median of {len(rounds)} rounds (range): {medians(rounds)}")
    print()
    print("bare/s: mean time of the bare loop run before and after the learner "
          "(individual runs: " + "; ".join(
              f"{r['model']} {r['bare_rates'][0]:,.0f} / {r['bare_rates'][1]:,.0f}"
              for r in results) + ")")  # fmt: skip
    print("learner/s: N ÷ (run start → N-th label learned); ratio: that ÷ bare/s")
    print(
        "÷River: learner/s ÷ River's progressive_val_score of the same samples, same delay, "
        "in memory (mean of its runs beside the bare loops: "
        + "; ".join(f"{r['model']} {r['samples'] / r['river_s']:,.0f}/s" for r in results)
        + ")"
    )
    print("excl.1st: ratio from the first records received (connect/assign excluded)")
    print(
        "1st rec / 1st lab: seconds from the run's start to the first records, and to the end of "
        "the first loop round that learned a label (a round is ≤ 10 000 labels since issue 14; "
        "before, one round learned all it could, so this was late)"
    )
    print(
        "N-delay: ratio to the (N − delay)-th label (excludes the idle grace for the last labels)"
    )
    print(
        "snaps/stall/Σstall: snapshots during the timed part (forked, or serialized in-process "
        "and written by a thread when the previous one was small), their longest stall and the "
        "stalls' sum (the final snapshot after the idle exit is not timed); write: the median "
        "time from a snapshot's start to its version written and its registry steps done"
    )
    print(
        "CPU ratio: the bare loop's CPU time ÷ the learning thread's, run start → N-th label "
        "(librdkafka's own threads not counted; least disturbed by other loads)"
    )
    print("acc: the learner's progressive Accuracy over every sample it read (N + margin; the "
          "delay applies); the bare loop's over N is "
          + ", ".join(f"{r['model']} {r['bare_accuracy']:.4f}" for r in results)
          + " (no delay)")  # fmt: skip
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
