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

``--variants`` also applies and drives ``same3`` (an ensemble of ``lr``, ``lr2``, ``lr``: the same
code three times) and ``ens`` (the mean of the three members, no rules, no weights), and prints
their CPU time per request beside the others: what the members cost inside the server, against
their in-process cost (see bench/README.md, session 6).

The servers, wrk rounds and /proc readings are `serving_harness`'s (shared with
`serve_latency.py`); ``--before DIR`` also serves the API from another checkout and hits it in
the same rounds, for before/after ratios from one run; ``--asgi`` serves this tree's API with
its direct answers off (`serving.protocol`) beside it (``@asgi``).

    python bench/graph_predict.py [--workers 2] [--duration 3] [--rounds 3] [--tree-leaf mc]
                                  [--before DIR] [--asgi] [--variants] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving_harness as harness

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


VARIANTS: dict[str, Any] = {
    "same3": {"ensemble": {"members": ["lr", "lr2", "lr"]}},
    "ens": {"ensemble": {"members": ["lr", "tree", "lr2"]}},
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


def publish(redis_url: str, prefix: str, models: dict[str, Any], variants: bool = False) -> None:
    import redis

    from learners.serialization import dump_signed
    from stream.registry.graphs import GraphRegistry
    from stream.store.snapshots import SnapshotMeta, SnapshotStore

    client = redis.Redis.from_url(redis_url)
    store = SnapshotStore(client, prefix, harness.KEY.encode())
    for name, model in models.items():
        blob = dump_signed(model, harness.KEY.encode())
        meta = SnapshotMeta.describe(
            name, blob, kind="classifier", spec=type(model).__name__, samples_learned=2000,
            metrics={"Accuracy": ACCURACY[name]}, offsets={},
        )  # fmt: skip
        store.write(
            store.next_version(), {name: (blob, meta)}, dump_signed({}, harness.KEY.encode()), {}
        )
    graphs = GraphRegistry(client, prefix, by="bench")
    graphs.apply(FRAUD, reason="bench")
    graphs.apply({"name": "one", "root": "lr"}, reason="bench")
    for name, root in VARIANTS.items() if variants else ():
        graphs.apply({"name": name, "root": root}, reason="bench")


def in_process(models: dict[str, Any], x: dict[str, float]) -> dict[str, float]:
    """µs per call of each member's served ``predict``, of the three in a row and of the graph
    evaluation, as the HTTP route calls them: the minimum over 30 interleaved trials of 300
    calls (the machine is shared)."""
    from learners.graph import CompiledGraph
    from learners.predictor import ServedModel
    from schemas.graph_parser import parse_graph
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
    view = ServedModels(served, None, {})  # one view per served mapping, as `serving.graphs`
    calls: dict[str, Any] = {
        name: (lambda s=s: s.predict(x, complete=True)) for name, s in served.items()
    }  # complete: numbers only, as the commonest body (`serving.graph_service`)
    calls["members"] = lambda: [s.predict(x, complete=True) for s in served.values()]
    calls["graph"] = lambda: graph.outcome(x, models=view, complete=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_arguments(parser)
    parser.add_argument("--tree-leaf", default="mc", choices=["mc", "nb", "nba"])
    parser.add_argument("--variants", action="store_true", help="also same3 and ens (see above)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    models = trained(args.tree_leaf)
    x = events()[0]
    costs = in_process(models, x)
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-graph-"))
    redis_proc, redis_url = harness.start_redis(tmp)
    servers: dict[str, Any] = {}
    try:
        prefix = "bench"
        publish(redis_url, prefix, models, args.variants)
        apis = harness.start_apis(redis_url, prefix, tmp, args.workers, args.before, args.asgi)
        servers = {tree: proc for tree, (proc, _) in apis.items()}
        bases = {tree: base for tree, (_, base) in apis.items()}
        trees = list(apis)
        for base in bases.values():  # graphs load after models
            for graph in ["fraud", *(VARIANTS if args.variants else ())]:
                harness.wait_http(f"{base}/v1/graphs/{graph}", 30, f"{graph} at {base}")
        import httpx

        sample = httpx.post(f"{bases['']}/v1/graphs/fraud/predict", json={"features": x}).json()
        script = harness.post_script(tmp / "post.lua", json.dumps({"features": x}))
        paths = {"model": "/v1/models/lr/predict", "graph_one": "/v1/graphs/one/predict",
                 "graph_fraud": "/v1/graphs/fraud/predict"}  # fmt: skip
        if args.variants:
            paths.update({f"graph_{name}": f"/v1/graphs/{name}/predict" for name in VARIANTS})
        targets = {
            key + tree: harness.Target(bases[tree] + path, script, servers[tree].pid)
            for key, path in paths.items()
            for tree in trees
        }
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        rows, loads = harness.rounds(targets, concurrencies, args.rounds, args.duration)
        for row in rows:
            for tree in trees:
                model = row["model" + tree]
                row["cpu_ratio" + tree] = model["cpu_us"] / row["graph_fraud" + tree]["cpu_us"]
                row["one_cpu_ratio" + tree] = model["cpu_us"] / row["graph_one" + tree]["cpu_us"]
                row["fraud_ratio" + tree] = row["graph_fraud" + tree]["rps"] / model["rps"]
                row["one_ratio" + tree] = row["graph_one" + tree]["rps"] / model["rps"]
    finally:
        for server in servers.values():
            harness.stop_server(server)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"workers": args.workers, "cpus": os.cpu_count(), "tree_leaf": args.tree_leaf,
              "in_process_us": costs, "sample_answer": sample, "rows": rows,
              "load": loads}  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"uvicorn workers={args.workers}, cpus={os.cpu_count()}, wrk -t1, "
        f"median of {args.rounds} alternating {args.duration}s runs, tree leaves {args.tree_leaf}"
        + (f"; @before = the API of {args.before}" if args.before else "")
        + ("; @asgi = this API with its direct answers off" if args.asgi else "")
    )
    print("in-process µs per call (min of 30 trials):", json.dumps(costs))
    print("a graph answer:", json.dumps(sample))
    print(f"{'c':>3} {'tree':7} | {'model req/s':>11} {'p50':>7} {'p99':>7} | {'one req/s':>9} | "
          f"{'fraud req/s':>11} {'p50':>7} {'p99':>7} | fraud/model | one/model | "
          "CPU µs/req model one fraud | CPU model/one model/fraud | non-2xx")  # fmt: skip
    for r in rows:
        for tree in trees:
            m, o, f = r["model" + tree], r["graph_one" + tree], r["graph_fraud" + tree]
            bad = m["non_2xx"] + o["non_2xx"] + f["non_2xx"]
            print(
                f"{r['concurrency']:>3} {tree or 'this':7} | {m['rps']:>11.0f} "
                f"{m['p50_ms']:>6.2f}m {m['p99_ms']:>6.2f}m | {o['rps']:>9.0f} | {f['rps']:>11.0f} "
                f"{f['p50_ms']:>6.2f}m {f['p99_ms']:>6.2f}m | {r['fraud_ratio' + tree]:>11.2f} | "
                f"{r['one_ratio' + tree]:>9.2f} | {m['cpu_us']:>11.0f} {o['cpu_us']:>4.0f} "
                f"{f['cpu_us']:>5.0f} | {r['one_cpu_ratio' + tree]:>9.2f} "
                f"{r['cpu_ratio' + tree]:>11.2f} | {bad}"
            )
    for r in rows if args.variants else ():
        for tree in trees:
            cpu = {k: r[f"{k}{tree}"]["cpu_us"] for k in ("model", "graph_one", "graph_fraud")}
            cpu |= {name: r[f"graph_{name}{tree}"]["cpu_us"] for name in VARIANTS}
            print(f"c={r['concurrency']} {tree or 'this'}: CPU µs/req "
                  + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))  # fmt: skip
    print(f"load average (1 min) before and after each concurrency: "
          f"{', '.join(f'{x:.1f}' for x in loads)}")  # fmt: skip


if __name__ == "__main__":
    main()
