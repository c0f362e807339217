"""Graph serving throughput: a three-member ensemble with rules against single-model /v1 predict,
same server, same run.

Starts a private redis-server and the API (`serving.runner.run_uvicorn`, N workers, the stack of
`riverstream serve`), publishes three classifiers trained on the same 2 000 synthetic events
(30 Gaussian features, as `serve_latency.py`): ``lr`` (StandardScaler | LogisticRegression),
``tree`` (HoeffdingTreeClassifier, majority-class leaves by default: ``--tree-leaf nba``, River's
default, costs ≈ 10× more per prediction with 30 features) and ``lr2`` (StandardScaler |
LogisticRegression, l2=0.01), each with a different progressive Accuracy in its snapshot
metadata, and applies two graphs:

- ``fraud``: rules over a weighted ensemble of the three, ``weights: by_metric``; the rules look
  at a feature and at the ensemble's probability (first match decides);
- ``one``: the graph of ``lr`` alone (the cost of the graph route without its members).

Then it drives ``POST /v1/models/lr/predict``, ``/v1/graphs/one/predict`` and
``/v1/graphs/fraud/predict`` with `wrk` (the same body, ``{"features": {...}}``) in alternating
rounds at concurrency 1, 16 and 64, and prints requests/s, p50, p99 and the graph/model ratios,
and the API processes' CPU time per request (user + system from /proc, over each run: the
figure least disturbed by whatever else the shared machine runs; its model/graph ratio is the
requests/s ratio a machine of its own would show at saturation).
It also prints the in-process cost of each member and of the graph evaluation (no HTTP), so
that the ratio can be read: the members' own ``predict`` costs add up, the graph adds little.

    python bench/graph_predict.py [--workers 2] [--duration 3] [--rounds 3] [--tree-leaf mc] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_latency import KEY, median_run, run_wrk, start_redis, wait_for  # noqa: E402

from stream.dev.services import free_port  # noqa: E402

N_FEATURES = 30
ACCURACY = {"lr": 0.91, "tree": 0.84, "lr2": 0.88}
FRAUD = {
    "name": "fraud",
    "description": "three members weighted by their live accuracy, business rules around them",
    "root": {
        "rules": {
            "over": {
                "ensemble": {
                    "members": ["lr", "tree", "lr2"],
                    "combine": "weighted",
                    "weights": "by_metric",
                }
            },
            "rules": [
                {
                    "when": {"feature": "x0", "gt": 3.0},
                    "then": {"decision": "review", "reason": "x0 out of range"},
                },
                {"when": {"output": "proba.true", "ge": 0.9}, "then": {"decision": "block"}},
                {"when": {"output": "proba.true", "lt": 0.1}, "then": {"decision": "allow"}},
            ],
        }
    },
}


def events() -> list[dict[str, float]]:
    rng = random.Random(42)
    return [{f"x{i}": rng.gauss(0, 1) for i in range(N_FEATURES)} for _ in range(2000)]


def trained(tree_leaf: str = "mc") -> dict[str, Any]:
    from river import linear_model, preprocessing, tree

    models: dict[str, Any] = {
        "lr": preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "tree": tree.HoeffdingTreeClassifier(grace_period=100, leaf_prediction=tree_leaf),
        "lr2": preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.01),
    }
    for x in events():
        y = x["x0"] + 0.5 * x["x1"] > 0
        for model in models.values():
            model.learn_one(x, y)
    return models


def publish(redis_url: str, prefix: str, models: dict[str, Any]) -> None:
    import redis

    from learners.serialization import dump_signed
    from stream.registry.graphs import GraphRegistry
    from stream.store.snapshots import SnapshotMeta, SnapshotStore

    client = redis.Redis.from_url(redis_url)
    store = SnapshotStore(client, prefix, KEY.encode())
    for name, model in models.items():
        blob = dump_signed(model, KEY.encode())
        meta = SnapshotMeta.describe(
            name, blob, kind="classifier", spec=type(model).__name__, samples_learned=2000,
            metrics={"Accuracy": ACCURACY[name]}, offsets={},
        )  # fmt: skip
        store.write(store.next_version(), {name: (blob, meta)}, dump_signed({}, KEY.encode()), {})
    graphs = GraphRegistry(client, prefix, by="bench")
    graphs.apply(FRAUD, reason="bench")
    graphs.apply({"name": "one", "root": "lr"}, reason="bench")


def in_process(models: dict[str, Any], x: dict[str, float]) -> dict[str, float]:
    """µs per call of each member's served ``predict``, of the three in a row and of the graph
    evaluation: the minimum over 30 interleaved trials of 300 calls (the machine is shared)."""
    from learners.graph import CompiledGraph
    from learners.predictor import ServedModel
    from schemas.graphs import parse_graph
    from schemas.records import SnapshotMeta
    from stream.store.graph_follower import ServedModels

    served = {
        name: ServedModel.build(
            name, model, version=1, kind="classifier",
            meta=SnapshotMeta.describe(
                name, b"", kind="classifier", spec="", samples_learned=0,
                metrics={"Accuracy": ACCURACY[name]}, offsets={},
            ),
        )
        for name, model in models.items()
    }  # fmt: skip
    graph = CompiledGraph(parse_graph(FRAUD))
    weights: dict[tuple[str, int], float | None] = {}  # as `serving.graphs` shares it
    calls: dict[str, Any] = {name: (lambda s=s: s.predict(x)) for name, s in served.items()}
    calls["members"] = lambda: [s.predict(x) for s in served.values()]
    calls["graph"] = lambda: graph.evaluate(x, models=ServedModels(served, None, weights))
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(30):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(300):
                call()
            best[name] = min(best[name], (time.perf_counter() - start) / 300)
    out = {name: round(seconds * 1e6, 1) for name, seconds in best.items()}
    out["graph - members"] = round(out["graph"] - out["members"], 1)
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and of its children (uvicorn workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--tree-leaf", default="mc", choices=["mc", "nb", "nba"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    models = trained(args.tree_leaf)
    x = events()[0]
    costs = in_process(models, x)
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-graph-"))
    redis_proc, redis_url = start_redis(tmp)
    server = None
    rows = []
    try:
        prefix = "bench"
        publish(redis_url, prefix, models)
        port = free_port()
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env = {
            **os.environ, "RIVERSTREAM_REDIS_URL": redis_url, "RIVERSTREAM_REDIS_PREFIX": prefix,
            "RIVERSTREAM_SNAPSHOT_KEY": KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        }  # fmt: skip
        code = (
            "from serving.runner import run_uvicorn; "
            f"run_uvicorn('serve_latency:bench_app', '127.0.0.1', {port}, {args.workers})"
        )
        server = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT / "bench", env=env, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            import httpx

            try:
                ok = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
                return ok and httpx.get(f"{base}/v1/graphs/fraud", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 30, "the API")
        import httpx

        sample = httpx.post(f"{base}/v1/graphs/fraud/predict", json={"features": x}).json()
        body = json.dumps({"features": x})
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        urls = {
            "model": f"{base}/v1/models/lr/predict",
            "graph_one": f"{base}/v1/graphs/one/predict",
            "graph_fraud": f"{base}/v1/graphs/fraud/predict",
        }
        for url in urls.values():  # warm-up
            run_wrk(url, 16, 1, script)
        for c in [int(c) for c in args.concurrency.split(",")]:
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
            cpu: dict[str, list[float]] = {k: [] for k in urls}
            for _ in range(args.rounds):  # alternate short rounds, keep the median
                for key, url in urls.items():
                    before = cpu_seconds(server.pid)
                    run = run_wrk(url, c, args.duration, script)
                    spent = cpu_seconds(server.pid) - before
                    runs[key].append(run)
                    cpu[key].append(spent / max(1.0, run["rps"] * max(1, round(args.duration))))
            row: dict[str, Any] = {"concurrency": c}
            row.update({k: median_run(v) for k, v in runs.items()})
            for key, values in cpu.items():
                row[key]["cpu_us_per_request"] = sorted(values)[len(values) // 2] * 1e6
            row["cpu_ratio"] = (
                row["model"]["cpu_us_per_request"] / row["graph_fraud"]["cpu_us_per_request"]
            )
            row["fraud_ratio"] = row["graph_fraud"]["rps"] / row["model"]["rps"]
            row["one_ratio"] = row["graph_one"]["rps"] / row["model"]["rps"]
            rows.append(row)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"workers": args.workers, "cpus": os.cpu_count(), "tree_leaf": args.tree_leaf,
              "in_process_us": costs, "sample_answer": sample, "rows": rows}  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"uvicorn workers={args.workers}, cpus={os.cpu_count()}, wrk -t1, "
        f"median of {args.rounds} alternating {args.duration}s runs, tree leaves {args.tree_leaf}"
    )
    print("in-process µs per call (min of 30 trials):", json.dumps(costs))
    print("a graph answer:", json.dumps(sample))
    print(f"{'c':>3} | {'model req/s':>11} {'p50':>7} {'p99':>7} | {'one req/s':>9} | "
          f"{'fraud req/s':>11} {'p50':>7} {'p99':>7} | fraud/model | one/model | "
          "CPU µs/req model one fraud | model/fraud CPU | non-2xx")  # fmt: skip
    for r in rows:
        m, o, f = r["model"], r["graph_one"], r["graph_fraud"]
        bad = m["non_2xx"] + o["non_2xx"] + f["non_2xx"]
        print(
            f"{r['concurrency']:>3} | {m['rps']:>11.0f} {m['p50_ms']:>6.2f}m {m['p99_ms']:>6.2f}m | "
            f"{o['rps']:>9.0f} | {f['rps']:>11.0f} {f['p50_ms']:>6.2f}m {f['p99_ms']:>6.2f}m | "
            f"{r['fraud_ratio']:>11.2f} | {r['one_ratio']:>9.2f} | "
            f"{m['cpu_us_per_request']:>11.0f} {o['cpu_us_per_request']:>4.0f} "
            f"{f['cpu_us_per_request']:>5.0f} | {r['cpu_ratio']:>15.2f} | {bad}"
        )


if __name__ == "__main__":
    main()
