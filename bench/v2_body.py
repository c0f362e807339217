"""Reading an Open Inference Protocol v2 infer body, against reading `/v1`'s body of the same
features, in one process, the same run.

`serve_latency.py` measures v2 infer against `/v1` predict through the server; this script
isolates the step that made the difference: turning the request's bytes into the row of
features. The body is built as `serve_latency.py` builds its own (``--features`` FP64 tensors
of shape [1], as ``json.dumps`` writes them; other random values); the baseline is
``orjson.loads`` of `/v1`'s body of the same features (what `/v1`'s route does before its
checks). Each reader's µs per body is the minimum
over interleaved trials (CPU time), and its ratio is the baseline's time ÷ its own (1.0: as cheap
as `/v1`'s reading):

- ``C reader``: `serving.v2_requests.read_row_in_c` (``serving/_v2_body.c``);
- ``numeric_row``: what the route calls (the C reader, else the Python one);
- ``Python reader``: `serving.v2_requests.read_row_in_python`, the fall-back;
- ``orjson.loads (v2)``: the general reading's first step alone;
- ``parse_infer_body``: the general reading.

    python bench/v2_body.py [--features 30] [--trials 30] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from serving_harness import best_of

from serving.inputs import InputLimits
from serving.v2_requests import (
    numeric_row,
    parse_infer_body,
    read_row_in_c,
    read_row_in_python,
)


def bodies(n: int) -> tuple[bytes, bytes]:
    """`/v1`'s body and v2's of the same ``n`` features (random floats, as `serve_latency.py`)."""
    rng = random.Random(7)
    x = {f"x{i}": rng.gauss(0.0, 1.0) for i in range(n)}
    v1 = json.dumps({"features": x}).encode()
    inputs = [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in x.items()]
    return v1, json.dumps({"inputs": inputs}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if read_row_in_c is None:
        raise SystemExit("serving/_v2_body.c is not built: pip install -e . (with a C compiler)")
    limits = InputLimits()
    v1, v2 = bodies(args.features)
    row = read_row_in_c(v2, limits.max_features)
    if row is None or row != read_row_in_python(v2, limits) or row != orjson.loads(v1)["features"]:
        raise SystemExit("the readers do not agree on this body")
    calls: dict[str, Callable[[], Any]] = {
        "orjson.loads (/v1, baseline)": lambda: orjson.loads(v1),
        "C reader": lambda: read_row_in_c(v2, limits.max_features),
        "numeric_row": lambda: numeric_row(v2, limits),
        "Python reader": lambda: read_row_in_python(v2, limits),
        "orjson.loads (v2)": lambda: orjson.loads(v2),
        "parse_infer_body": lambda: parse_infer_body(v2, limits),
    }
    best = best_of(calls, args.trials, args.calls)
    baseline = best["orjson.loads (/v1, baseline)"]
    result = {
        "features": args.features,
        "bytes": {"v1": len(v1), "v2": len(v2)},
        "us": {name: round(us, 2) for name, us in best.items()},
        "ratio (baseline ÷ reader)": {name: round(baseline / us, 2) for name, us in best.items()},
        "load": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.features} features: /v1 body {len(v1)} bytes, v2 body {len(v2)} bytes")
    print(f"{'reader':<30} {'µs a body':>10} {'÷ baseline':>11}")
    for name, us in best.items():
        print(f"{name:<30} {us:>10.2f} {baseline / us:>11.2f}")
    print(f"load average {', '.join(f'{v:.2f}' for v in result['load'])}")


if __name__ == "__main__":
    main()
