"""Event validation: msgspec (chosen) against pydantic v2, same events, same run.

Decodes and validates N feature events (9 Agrawal features, as the replay publishes them) with
the project's `EventCodec` (msgspec) and with an equivalent pydantic v2 model
(``model_validate_json``), and prints µs/event and the ratio.

    python bench/schema_validate.py [--n 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from learners.datasets import dataset_events  # noqa: E402
from schemas.events import EventCodec, FeatureEvent, Limits  # noqa: E402


class PydanticFeatureEvent(BaseModel):
    model_config = {"extra": "forbid", "strict": False}
    id: str
    time: float
    features: dict[str, int | float | str | bool | None]


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    codec = EventCodec(Limits())
    events = [
        e
        for e in dataset_events("synth.Agrawal", limit=args.n, seed=1)
        if isinstance(e, FeatureEvent)
    ]
    raws = [codec.encode(e) for e in events]
    msgspec_s = best_of(3, lambda: [codec.decode_feature(r) for r in raws])
    pydantic_s = best_of(3, lambda: [PydanticFeatureEvent.model_validate_json(r) for r in raws])
    n = len(raws)
    print(f"{n} feature events, {sum(map(len, raws)) / n:.0f} bytes each, best of 3")
    print(f"  msgspec (EventCodec)   {msgspec_s / n * 1e6:6.2f} µs/event")
    print(f"  pydantic v2            {pydantic_s / n * 1e6:6.2f} µs/event")
    print(f"  pydantic ÷ msgspec     {pydantic_s / msgspec_s:6.1f}x")


if __name__ == "__main__":
    main()
