"""What the serving benchmarks share (`serve_latency.py`, `graph_predict.py`): a private
redis-server, API servers started the way `riverstream serve` starts them (from this tree or
from another checkout, for before/after runs side by side), `wrk` rounds alternated between
targets, and the servers' CPU time per request read from /proc.

A target is a URL, an optional wrk Lua script (the POST body) and the server it hits; `rounds`
alternates short wrk runs over the targets at each concurrency and keeps the median of each
figure, because the machine is shared and its load swings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream.dev.services import free_port  # noqa: E402

KEY = "bench-key"

__all__ = [
    "KEY", "ROOT", "Target", "best_of", "cpu_seconds", "free_port", "median_run", "post_script", "rounds",
    "run_wrk", "server_env", "start_redis", "start_server", "stop_server", "wait_for",
    "wait_http",
]  # fmt: skip


def best_of(calls: dict[str, Callable[[], Any]], trials: int, n: int) -> dict[str, float]:
    """In process: CPU µs per call of each of ``calls``, the minimum over ``trials`` interleaved
    runs of ``n`` calls (the machine is shared: the least disturbed run)."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(trials):
        for name, call in calls.items():
            start = time.process_time()
            for _ in range(n):
                call()
            best[name] = min(best[name], (time.process_time() - start) / n * 1e6)
    return best


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {timeout}s")
        time.sleep(0.05)


def wait_http(url: str, timeout: float, what: str) -> None:
    """Poll ``url`` until it answers 200."""
    import httpx

    def ok() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ok, timeout, what)


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A private redis-server on a free port (no persistence); its process and URL."""
    import redis

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"

    def up() -> bool:
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 10, "redis-server")
    return proc, url


def server_env(redis_url: str, prefix: str, metrics_dir: Path, root: Path = ROOT) -> dict[str, str]:
    """The environment of an API reading ``prefix`` on ``redis_url``, code from ``root``."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ, "RIVERSTREAM_REDIS_URL": redis_url, "RIVERSTREAM_REDIS_PREFIX": prefix,
        "RIVERSTREAM_SNAPSHOT_KEY": KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": f"{root}:{root / 'bench'}",
    }  # fmt: skip


def start_server(
    factory: str, port: int, workers: int, env: dict[str, str], root: Path = ROOT
) -> subprocess.Popen:
    """``serving.runner.run_uvicorn`` of the uvicorn factory ``factory`` (``module:function``
    importable from ``root/bench``), from the code in ``root``, in a session of its own."""
    code = (
        f"import sys; sys.path[:0] = [{str(root)!r}, {str(root / 'bench')!r}]; "
        "from serving.runner import run_uvicorn; "
        f"run_uvicorn({factory!r}, '127.0.0.1', {port}, {workers})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=root / "bench", env=env, start_new_session=True
    )


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def post_script(path: Path, body: str) -> Path:
    """A wrk Lua script POSTing ``body`` as JSON."""
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match is not None, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise SystemExit(f"wrk's output has no {pattern!r}:\n{text}")
    return match.group(1)


def start_wrk(
    url: str, connections: int, duration: float, script: Path | None
) -> subprocess.Popen[str]:
    """Start one wrk run (``-t1``); `wrk_result` waits for it and reads its figures."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "5s"]  # fmt: skip
    if script is not None:
        argv += ["-s", str(script)]
    return subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """req/s, requests, p50/p99 in ms, non-2xx and socket errors of a finished wrk run."""
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {err}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": float(_found(r"Requests/sec:\s+([\d.]+)", out)),
        "requests": int(_found(r"(\d+) requests in", out)),
        "p50_ms": _ms(_found(r"\s50%\s+(\S+)", out)),
        "p99_ms": _ms(_found(r"\s99%\s+(\S+)", out)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }


def run_wrk(url: str, connections: int, duration: float, script: Path | None) -> dict[str, Any]:
    """One wrk run (``-t1``), waited for: see `wrk_result`."""
    return wrk_result(start_wrk(url, connections, duration, script))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over rounds; errors summed."""
    out: dict[str, Any] = {}
    for k in ("rps", "p50_ms", "p99_ms", "cpu_us"):
        values = sorted(r[k] for r in runs if k in r)
        if values:
            out[k] = values[len(values) // 2]
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = [r["socket_errors"] for r in runs if r["socket_errors"]]
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


@dataclass(frozen=True)
class Target:
    """What one wrk run hits: ``url`` with ``script`` (None: GET), served by process ``pid``."""

    url: str
    script: Path | None
    pid: int


def rounds(
    targets: dict[str, Target],
    concurrencies: Iterable[int],
    n_rounds: int,
    duration: float,
    *,
    warm_up: bool = True,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Per concurrency, ``n_rounds`` alternating wrk runs over ``targets``, each with its server's
    CPU µs per request; rows ``{"concurrency", target: median figures}`` and the 1-min load
    average before and after each concurrency."""
    if warm_up:
        for t in targets.values():
            run_wrk(t.url, 16, 1, t.script)
    loads = [os.getloadavg()[0]]
    rows: list[dict[str, Any]] = []
    for c in concurrencies:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(n_rounds):
            for name, t in targets.items():
                cpu0 = cpu_seconds(t.pid)
                run = run_wrk(t.url, c, duration, t.script)
                run["cpu_us"] = (cpu_seconds(t.pid) - cpu0) / max(1, run["requests"]) * 1e6
                runs[name].append(run)
        rows.append({"concurrency": c, **{name: median_run(r) for name, r in runs.items()}})
        loads.append(os.getloadavg()[0])
    return rows, loads


def add_common_arguments(parser: Any, *, duration: float = 3.0) -> None:
    """The options every serving benchmark takes."""
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=duration, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--before", type=Path, default=None,
        help="another checkout (say, a git worktree at an older commit): its API answers the "
        "same API targets (name@before) in the same rounds, for before/after ratios",
    )  # fmt: skip
    parser.add_argument(
        "--asgi", action="store_true",
        help="also serve this tree's API with RIVERSTREAM_SERVE_DIRECT_ANSWERS=false (name@asgi): "
        "every request through uvicorn's ASGI cycle, as before session 33",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")


def start_apis(
    redis_url: str,
    prefix: str,
    workdir: Path,
    workers: int,
    before: Path | None,
    asgi: bool = False,
) -> dict[str, tuple[subprocess.Popen, str]]:
    """The API of this tree (key ``""``); with ``asgi``, the same with its direct answers off
    (``"@asgi"``); with ``before``, the API of that checkout (``"@before"``); each
    ``serving.runner.app_from_env`` (what `riverstream serve --workers N` runs): their processes
    and base URLs, once they answer ``/readyz``."""
    trees = {"": ROOT, **({"@asgi": ROOT} if asgi else {})}
    trees.update({"@before": before.resolve()} if before else {})
    apis = {}
    for tree, root in trees.items():
        port = free_port()
        env = server_env(redis_url, prefix, workdir / f"metrics{tree}", root)
        if tree == "@asgi":
            env["RIVERSTREAM_SERVE_DIRECT_ANSWERS"] = "false"
        proc = start_server("serving.runner:app_from_env", port, workers, env, root)
        apis[tree] = (proc, f"http://127.0.0.1:{port}")
    for tree, (_, base) in apis.items():
        wait_http(f"{base}/readyz", 30, f"the API{tree}")
    return apis
