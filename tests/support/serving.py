"""Fixtures shared by every test that serves or stores snapshots without the learner: a unique key
prefix per test, a store signed with `KEY` under it, and the `kit` of helpers (publish snapshots,
run an app in a thread, a private redis-server). Registered for the whole suite by
tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from river import anomaly, datasets, linear_model, preprocessing

from learners.serialization import dump_signed
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.store.snapshots import SnapshotMeta, SnapshotStore
from tests.support.waiting import wait_until

KEY = b"serving-test-key"
ROOT = Path(__file__).resolve().parents[2]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (Debian package redis-server); never skipped"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def ping() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(ping, timeout=10)
    except BaseException:
        stop_process(proc)  # not answering: not left running (the caller never gets it)
        raise
    finally:
        client.close()
    return proc, url


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "redis_prefix": prefix, "snapshot_key": KEY.decode(),
        "serve_poll_seconds": 0.2,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[SnapshotStore]:
    client = redis.Redis.from_url(redis_url)
    yield SnapshotStore(client, prefix, KEY)
    client.close()


def publish(
    store: SnapshotStore,
    name: str,
    obj: Any,
    kind: str,
    *,
    key: bytes = KEY,
    metrics: dict[str, float] | None = None,
) -> int:
    """Write ``obj`` as a new version of ``name`` (signed with ``key``, its snapshot's progressive
    ``metrics`` by default ``{"Accuracy": 0.75}``); return the version."""
    version = store.next_version()
    blob = dump_signed(obj, key)
    metrics = {"Accuracy": 0.75} if metrics is None else metrics
    meta = SnapshotMeta.describe(
        name, blob, kind=kind, spec=type(obj).__name__, samples_learned=version * 10,
        metrics=metrics, offsets={"features:0": version},
    )  # fmt: skip
    store.write(version, {name: (blob, meta)}, dump_signed({}, KEY), {"features:0": version})
    return version


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[httpx.Client]:
    """Run ``app`` (lifespan included) with uvicorn on a free port, with the API's HTTP protocol
    (`serving.protocol.ApiProtocol`, as `riverstream serve` runs it); yield a client for it."""
    from serving.protocol import ApiProtocol

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=ApiProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=10)
        assert thread.is_alive(), "uvicorn did not start"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


SERVER = (
    "from schemas.settings import Settings; from serving.runner import serve; "
    "serve(Settings(), workers=1)"
)
"""`riverstream serve` with one worker, as a child's ``python -c`` (the settings from its env)."""


@contextlib.contextmanager
def serve_process(settings: Settings, ready_path: str = "/readyz") -> Iterator[str]:
    """Run the API in a child process (``settings.serve_port``) until ``ready_path`` answers
    200; yield its base URL; stop it by pid (SIGTERM, then SIGKILL of its group)."""
    from serving.runner import settings_environment

    env = {**os.environ, **settings_environment(settings)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], cwd=ROOT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{settings.serve_port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}{ready_path}", timeout=2).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, "the server exited"
                return False

        wait_until(ready, timeout=30, interval=0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_serve(
    settings: Settings,
    workers: int,
    stderr: Path,
    env: dict[str, str] | None = None,
    *,
    port: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``riverstream serve --workers WORKERS`` on ``port`` (a free one by default) with
    ``settings`` (over ``env``, by default this process's environment), in a session of its
    own (its process group holds its workers); its stderr goes to ``stderr``. The caller
    stops it."""
    from serving.runner import settings_environment

    argv = [sys.executable, "-m", "stream", "serve", "--port", str(port or free_port()),
            "--workers", str(workers)]  # fmt: skip
    environment = {**(os.environ if env is None else env), **settings_environment(settings)}
    with stderr.open("wb") as err:
        return subprocess.Popen(
            argv, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip


def serve_until_exit(
    settings: Settings, workers: int, stderr: Path, env: dict[str, str] | None = None
) -> int:
    """Run ``riverstream serve --workers WORKERS`` (`start_serve`) until it exits by itself.
    Returns its exit status; fails when it still runs after 60 s (its process group, its
    workers too, is then killed)."""
    api = start_serve(settings, workers, stderr, env)
    try:
        return api.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"serve still runs after 60 s:\n{stderr.read_text()[-3000:]}"
        ) from None
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait()


class Kit:
    """Helpers for the tests, as a fixture (test modules cannot import conftest under
    ``--import-mode=importlib``)."""

    KEY = KEY
    free_port = staticmethod(free_port)
    wait_until = staticmethod(wait_until)
    start_redis = staticmethod(start_redis)
    stop_process = staticmethod(stop_process)
    make_settings = staticmethod(make_settings)
    publish = staticmethod(publish)
    serve_in_thread = staticmethod(serve_in_thread)
    serve_process = staticmethod(serve_process)
    start_serve = staticmethod(start_serve)
    serve_until_exit = staticmethod(serve_until_exit)

    @staticmethod
    def trained_models(n: int = 300) -> dict[str, tuple[Any, str, list[dict]]]:
        return trained_models(n)

    @staticmethod
    def state(model: Any, kind: str) -> State:
        return State(model, kind)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    return Kit


SumReader = Callable[[bytes, dict[Any, Any], int], float | None]
"""A C reader of a linear model's sum from a body's bytes (`serving/_v2_body.c`'s ``read_dot``
and ``read_row_dot``)."""


def recording(read: SumReader | None) -> tuple[SumReader, list[float | None]]:
    """``read`` (which must be built) wrapped to keep what it returns, and the list it keeps
    it in: a test puts the wrapper in the reader's place to see which bodies it answered."""
    assert read is not None, "serving/_v2_body.c was not built: pip install -e . again"
    sums: list[float | None] = []

    def recorded(raw: bytes, params: dict[Any, Any], max_features: int) -> float | None:
        sums.append(read(raw, params, max_features))
        return sums[-1]

    return recorded, sums


class FollowerRecorder:
    """The metrics a `stream.store.follower.SnapshotFollower` reports, kept: ``swapped``
    ``(model, version)``, ``refused`` ``(model, reason)``."""

    def __init__(self) -> None:
        self.swapped: list[tuple[str, int]] = []
        self.refused: list[tuple[str, str]] = []

    def snapshot_swapped(
        self, model: str, version: int, snapshot_timestamp: float, load_seconds: float
    ) -> None:
        self.swapped.append((model, version))

    def snapshot_refused(self, model: str, reason: str) -> None:
        self.refused.append((model, reason))


class State:
    """Stands in for the learner's ModelState: the estimator lives in ``.model``."""

    def __init__(self, model: Any, kind: str) -> None:
        self.model = model
        self.kind = kind


def trained_models(n: int = 300) -> dict[str, tuple[Any, str, list[dict]]]:
    """name -> (trained estimator, kind, sample inputs), from River's bundled datasets."""
    clf = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    reg = preprocessing.StandardScaler() | linear_model.LinearRegression()
    det = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)
    phishing = list(datasets.Phishing())[: n + 20]
    trump = list(datasets.TrumpApproval())[: n + 20]
    for x, y in phishing[:n]:
        clf.learn_one(x, y)
        det.learn_one(x)
    for x, y in trump[:n]:
        reg.learn_one(x, y)
    return {
        "clf": (clf, "classifier", [x for x, _ in phishing[n:]]),
        "reg": (reg, "regressor", [x for x, _ in trump[n:]]),
        "det": (det, "anomaly", [x for x, _ in phishing[n:]]),
    }


async def asgi_post(
    asgi: Any,
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "POST",
) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to the ASGI callable ``asgi`` in this process, no server (or send
    it with another ``method``): the response's status and body."""
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *(headers or [])],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(scope, receive, send)
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body_out
