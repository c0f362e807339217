"""How riverstream scales on one machine: API replicas, and learners sharded by model (issue 15).

Two questions, one run, private services (Kafka and Redis started with `ServiceManager` in a
temporary state directory, stopped and purged at the end):

**API replicas.** One logreg snapshot (``synth.Agrawal``, 2 000 samples, learned by the real
learner) in Redis; N independent ``riverstream serve`` processes (one worker each, each its own
port, as replicas on separate hosts would be) for N = 1, 2, 4, each driven by its own ``wrk``
(``-t1``, the total concurrency ``--connections`` split between them) with
``POST /v1/models/lr/predict``. Reported: total requests/s (median of ``--rounds`` rounds),
the worst p99, the servers' CPU time per request (from /proc) and the scaling efficiency
``rps(N) / (N × rps(1))``. wrk runs on the same CPUs as the servers.

**Learners sharded by model.** The same four models (``--models``, default four Hoeffding
trees with different grace periods: learning dominates the cost) learn ``--limit`` samples of
``synth.Agrawal`` already in Kafka, (a) in one learner process, (b) in two learner processes
of two models each (what `riverstream learn --learner l0|l1` runs; one prefix, one pair of
topics). The
throughput is model-samples per second: 4 × N over the time from the start (every learner
process is built first, topics assigned, then all are released together) to the last model's
N-th label, so process start-up is not counted. The ratio (b) ÷ (a) is the speed-up from sharding;
2 would be perfect on two free CPUs. The bare River loop (the four models in one process,
``predict_one`` + ``learn_one``, in memory) is printed beside them.

    python bench/scale.py                          # both parts
    python bench/scale.py --part api --rounds 3 --duration 4
    python bench/scale.py --part learners --limit 30000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from learners.datasets import dataset_events, load_dataset  # noqa: E402
from learners.specs import ModelSpec, build_estimator  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream.dev.services import ServiceManager, free_port  # noqa: E402
from stream.kafka.publish import Publisher  # noqa: E402
from stream.learner.runtime import build_learner  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_harness import cpu_seconds, post_script, start_wrk, wrk_result  # noqa: E402

DATASET, SEED, DELAY = "synth.Agrawal", 42, 100
DEFAULT_MODELS = (
    "t1=river.tree:HoeffdingTreeClassifier",
    "t2=bench.scale:tree_grace_100",
    "t3=bench.scale:tree_grace_300",
    "t4=bench.scale:tree_grace_500",
)


def tree_grace_100() -> Any:
    from river import tree

    return tree.HoeffdingTreeClassifier(grace_period=100)


def tree_grace_300() -> Any:
    from river import tree

    return tree.HoeffdingTreeClassifier(grace_period=300)


def tree_grace_500() -> Any:
    from river import tree

    return tree.HoeffdingTreeClassifier(grace_period=500)


def load() -> float:
    return os.getloadavg()[0]


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def settings_for(base: Settings, tag: str, **changes: Any) -> Settings:
    return base.model_copy(
        update={
            "topic_features": f"s{tag}.features", "topic_labels": f"s{tag}.labels",
            "topic_dlq": f"s{tag}.dlq", "topic_requests": f"s{tag}.requests",
            "topic_predictions": f"s{tag}.predictions", "redis_prefix": f"scale:{tag}",
            "watermark_idle_grace": 0.2, "learner_metrics_port": 0, **changes,
        }
    )  # fmt: skip


def publish(s: Settings, limit: int) -> None:
    publisher = Publisher(s)
    try:
        report = publisher.publish_events(
            dataset_events(DATASET, label_delay=DELAY, limit=limit, seed=SEED)
        )
    finally:
        publisher.close()
    if report.failed:
        raise SystemExit(f"publishing failed: {report.errors[:3]}")


def env_of(s: Settings) -> dict[str, str]:
    return {**os.environ, **s.to_environment(), "PYTHONPATH": str(ROOT)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this bench started in its own session (and its children)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- API replicas ----------------------------------------------------------------------------
def api_replicas(base: Settings, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    s = settings_for(base, tag)
    publish(s, 2_000)
    learner = build_learner(s, [ModelSpec("lr", "logreg")], use_fork=False)
    try:
        learner.run(exit_when_idle=0.5)
    finally:
        learner.source.close()
    x = next(iter(load_dataset(DATASET, seed=SEED)))[0]
    script = post_script(work / "post.lua", json.dumps({"features": x}))
    rows = []
    for n in args.replicas:
        ports = [free_port() for _ in range(n)]
        argv = [sys.executable, "-m", "stream", "serve", "--workers", "1", "--port"]
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        servers = [
            subprocess.Popen([*argv, str(port)], env=env_of(s), start_new_session=True, **quiet)
            for port in ports
        ]
        try:
            import httpx

            for port in ports:
                url = f"http://127.0.0.1:{port}/readyz"
                wait_for(lambda url=url: httpx.get(url).status_code == 200, 60, "an API replica")
            per = max(1, args.connections // n)
            urls = [f"http://127.0.0.1:{port}/v1/models/lr/predict" for port in ports]
            for proc in [start_wrk(url, per, 1, script) for url in urls]:  # warm-up
                wrk_result(proc)
            rounds = []
            for _ in range(args.rounds):
                cpu0 = sum(cpu_seconds(p.pid) for p in servers)
                runs = [wrk_result(p) for p in [start_wrk(u, per, args.duration, script)
                                                  for u in urls]]  # fmt: skip
                cpu = sum(cpu_seconds(p.pid) for p in servers) - cpu0
                requests = sum(r["requests"] for r in runs)
                rounds.append({
                    "rps": sum(r["rps"] for r in runs),
                    "p99_ms": max(r["p99_ms"] for r in runs),
                    "cpu_us": 1e6 * cpu / max(1, requests),
                    "non_2xx": sum(int(r["non_2xx"]) for r in runs),
                    "load": load(),
                })  # fmt: skip
            rounds.sort(key=lambda r: r["rps"])
            median = dict(rounds[len(rounds) // 2])
            median["non_2xx"] = sum(r["non_2xx"] for r in rounds)
            rows.append({"replicas": n, "connections": per * n, **median})
            print(f"  {n} replica(s): {median['rps']:.0f} req/s, p99 {median['p99_ms']:.1f} ms, "
                  f"{median['cpu_us']:.0f} µs CPU/request, load {median['load']:.1f}")  # fmt: skip
        finally:
            for server in servers:
                stop(server)
    single = rows[0]["rps"]
    for row in rows:
        row["efficiency"] = row["rps"] / (row["replicas"] * single)
    return rows


# -- learners sharded by model -----------------------------------------------------------
class Clock:
    """Learner observer (in a child): wall-clock time of the first records and of the moment
    ``limit`` labels were learned; then stops the learner."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.first: float | None = None
        self.done: float | None = None

    def after_batch(self, learner: Any, records: list[Any]) -> None:
        now = time.time()
        if records and self.first is None:
            self.first = now
        if self.done is None and learner.core.counters.labels_joined >= self.limit:
            self.done = now
            learner.stop()

    def snapshot(self, learner: Any, result: Any) -> None:
        pass

    def close(self) -> None:
        pass


def child(args: argparse.Namespace) -> None:
    """One learner process of `run_learners`: built (imports, topics, restore), ready, waits for
    the go file, learns ``--limit`` samples, prints its times as JSON."""
    from stream.dev.services import resolve
    from stream.learner.runtime import model_specs

    s = resolve(Settings())
    clock = Clock(args.limit)
    learner = build_learner(s, model_specs(args.models, ["Accuracy"]), observer=clock)
    go = Path(args.child_go)
    Path(f"{go}.{s.learner}.ready").touch()
    wait_for(go.exists, 120, "the go file")
    try:
        learner.run()
    finally:
        learner.source.close()
    print(json.dumps({"first": clock.first, "done": clock.done}))


def run_learners(
    base: Settings, groups: list[list[str]], limit: int, work: Path, deadline: float
) -> dict[str, Any]:
    """Learn ``limit`` samples with one learner process per group of models, all started
    together once built (a go file); model-samples/s from the go to the last model's
    ``limit``-th label."""
    tag = uuid.uuid4().hex[:8]
    s = settings_for(base, tag)
    publish(s, limit)
    go = work / f"go-{tag}"
    procs = []
    for i, group in enumerate(groups):
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", f"l{i}",
                "--child-go", str(go), "--limit", str(limit), "--models", *group]  # fmt: skip
        env = env_of(s.model_copy(update={"learner": f"l{i}"}))
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, start_new_session=True))  # fmt: skip
    try:
        names = [f"l{i}" for i in range(len(groups))]
        wait_for(lambda: all(Path(f"{go}.{n}.ready").exists() for n in names), 120,
                 "the learners to be built")  # fmt: skip
        go.touch()
        start = time.time()  # the children poll the go file every 50 ms
        times = []
        for proc in procs:
            out, _ = proc.communicate(timeout=deadline)
            times.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            stop(proc)
    done = max(t["done"] for t in times)
    models = sum(len(g) for g in groups)
    return {
        "learners": len(groups), "models": models, "seconds": done - start,
        "model_samples_per_s": models * limit / (done - start), "load": load(),
        "per_learner_seconds": [round(t["done"] - start, 2) for t in times],
    }  # fmt: skip


def bare_loop(specs: list[str], limit: int) -> float:
    """Model-samples/s of the bare River loop: every model, predict_one + learn_one."""
    models: list[Any] = [build_estimator(spec.partition("=")[2]) for spec in specs]
    data = list(load_dataset(DATASET, limit=limit, seed=SEED))
    start = time.perf_counter()
    for x, y in data:
        for model in models:
            model.predict_one(x)
            model.learn_one(x, y)
    return len(models) * limit / (time.perf_counter() - start)


def learners(base: Settings, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    specs = list(args.models)
    bare = bare_loop(specs, args.limit)
    print(f"  bare River loop, {len(specs)} models in one process: {bare:.0f} model-samples/s")
    one = run_learners(base, [specs], args.limit, work, args.deadline)
    print(f"  1 learner x {len(specs)} models: {one['model_samples_per_s']:.0f} model-samples/s "
          f"({one['seconds']:.2f} s, load {one['load']:.1f})")  # fmt: skip
    half = len(specs) // 2
    two = run_learners(base, [specs[:half], specs[half:]], args.limit, work, args.deadline)
    print(
        f"  2 learners x {half} models: {two['model_samples_per_s']:.0f} model-samples/s "
        f"({two['seconds']:.2f} s; each {two['per_learner_seconds']}, load {two['load']:.1f})"
    )
    speedup = two["model_samples_per_s"] / one["model_samples_per_s"]
    print(f"  speed-up from sharding: {speedup:.2f} (2 = perfect on two free CPUs)")
    return {"bare": bare, "one_learner": one, "two_learners": two, "speedup": speedup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["api", "learners", "both"], default="both")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--connections", type=int, default=32, help="total wrk connections")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=30_000, help="samples the learners learn")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per learner run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a learner process of the bench
    parser.add_argument("--child-go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.part in ("api", "both") and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    work = Path(tempfile.mkdtemp(prefix="rs-scale-"))
    manager = ServiceManager(Settings(state_dir=work / "state"))
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_start": load()}
    try:
        endpoints = manager.up(("kafka", "redis"))
        base = Settings(
            kafka_bootstrap_servers=endpoints["kafka"].address,
            redis_url=endpoints["redis"].url,
            snapshot_key=SecretStr("bench-scale-key"),
            state_dir=work / "state",
        )
        if args.part in ("api", "both"):
            print("API replicas (POST /v1/models/lr/predict, one worker per replica):")
            results["api"] = api_replicas(base, work, args)
        if args.part in ("learners", "both"):
            print(f"learners sharded by model ({args.limit} samples of {DATASET}):")
            results["learners"] = learners(base, work, args)
    finally:
        manager.down(("kafka", "redis"), purge=True)
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = load()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
