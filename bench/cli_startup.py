"""How long do operator commands take, as whole processes, against ``python -c pass``?

An operator types ``riverstream snapshots list lr`` and waits for the whole process: interpreter
start, imports, settings, one Redis round trip, the table. This script times exactly that, with
the installed ``riverstream`` console script (the one ``pip install`` puts next to the
interpreter), in a fresh process per run:

- ``python -c pass``: the interpreter alone, the baseline of every ratio;
- ``riverstream --help``;
- ``riverstream snapshots list M`` and ``riverstream snapshots history M`` against a real Redis
  started with `ServiceManager` in a temporary state directory (stopped by pid and purged at
  the end), holding ``--versions`` versions of model ``M`` and a promotion history.

Each command runs ``--repeat`` times (after one untimed warm-up run that fills the OS caches);
the table shows the median and the fastest wall-clock time, the median divided by the
baseline's, and the median CPU time (user + system) of the process, which the other loads of a
shared machine disturb less than wall-clock time.

    python bench/cli_startup.py                 # 7 repetitions
    python bench/cli_startup.py --repeat 15 --versions 20
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learners.serialization import dump_signed  # noqa: E402
from schemas.records import SnapshotMeta  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream.dev.services import ServiceManager, resolve  # noqa: E402
from stream.registry.registry import Registry  # noqa: E402
from stream.store.snapshots import SnapshotStore  # noqa: E402

MODEL = "M"


def riverstream_script() -> str:
    """The console script installed next to this interpreter."""
    script = Path(sys.executable).parent / "riverstream"
    if not script.exists():
        raise SystemExit(f"{script} not found: pip install -e . in this environment first")
    return str(script)


def fill(settings: Settings, versions: int) -> None:
    """``versions`` signed versions of `MODEL`, each promoted (a history of ``versions`` lines)."""
    import redis

    assert settings.redis_url
    key = settings.require_snapshot_key()
    store = SnapshotStore(redis.Redis.from_url(settings.redis_url), settings.redis_prefix, key)
    registry = Registry(store, by="bench", signing_key=key)
    for i in range(versions):
        version = store.next_version()
        blob = dump_signed({"model": MODEL, "version": version}, key)
        meta = SnapshotMeta.describe(
            MODEL, blob, kind="classifier", spec="logreg", samples_learned=100 * (i + 1),
            metrics={"Accuracy": 0.5 + i / (2 * versions)}, offsets={"features:0": version},
        )  # fmt: skip
        store.write(version, {MODEL: (blob, meta)}, dump_signed({"join": version}, key),
                    {"features:0": version, "labels:0": version})  # fmt: skip
        registry.promote(MODEL, version, reason="bench")
    store.client.close()


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run of ``argv``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's child is reaped: counted
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr.decode()[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per command")
    parser.add_argument("--versions", type=int, default=10, help="versions of the model listed")
    args = parser.parse_args()

    script = riverstream_script()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "riverstream --help": [script, "--help"],
        f"riverstream snapshots list {MODEL}": [script, "snapshots", "list", MODEL],
        f"riverstream snapshots history {MODEL}": [script, "snapshots", "history", MODEL],
    }
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as state:
        settings = Settings(state_dir=Path(state), redis_prefix="bench")
        manager = ServiceManager(settings)
        try:
            manager.up(("redis",))
            fill(resolve(settings), args.versions)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("RIVERSTREAM_")},
                "RIVERSTREAM_STATE_DIR": state,
                "RIVERSTREAM_REDIS_PREFIX": "bench",
                "COLUMNS": "200",
            }
            times: dict[str, list[tuple[float, float]]] = {}
            for name, argv in commands.items():
                timed(argv, env)  # warm-up
                times[name] = [timed(argv, env) for _ in range(args.repeat)]
        finally:
            manager.down(("redis",), purge=True)

    base = statistics.median(wall for wall, _cpu in times["python -c pass"])
    print(f"{args.repeat} runs each, {args.versions} versions, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'command':<34} {'median s':>9} {'fastest s':>10} {'÷ python -c pass':>17} "
          f"{'CPU s':>6}")  # fmt: skip
    for name, runs in times.items():
        median = statistics.median(wall for wall, _cpu in runs)
        fastest = min(wall for wall, _cpu in runs)
        cpu = statistics.median(cpu for _wall, cpu in runs)
        print(f"{name:<34} {median:>9.3f} {fastest:>10.3f} {median / base:>17.1f} {cpu:>6.3f}")


if __name__ == "__main__":
    main()
