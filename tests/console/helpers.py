"""Helpers of the console tests: a console served in a thread (uvicorn, the real app), and
versions with learning-curve points written as the learner's snapshots write them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from console.app import create_console
from learners.serialization import dump_signed
from schemas.records import SnapshotMeta
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.store.snapshots import SnapshotStore
from stream.store.trace import TracePoint, TraceWrite
from tests.support.waiting import wait_until

CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def serve_console(settings: Settings, **options: Any) -> Iterator[str]:
    """The console of ``settings`` on a free port, in this process; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_console(settings, **options), host="127.0.0.1", port=port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 15, "the console")
        assert thread.is_alive(), "the console did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def write_version(
    store: SnapshotStore,
    key: bytes,
    labels: int,
    every: int = 10,
    models: tuple[str, ...] = ("lr",),
) -> int:
    """A version of ``models`` covering ``labels`` labels, with their curve points (as the
    learner's snapshot writes them: same transaction, same script)."""
    version = store.next_version()
    blobs = {}
    points: dict[str, list[TracePoint]] = {}
    for i, model in enumerate(models):
        blob = dump_signed({"stand-in": model, "version": version}, key)
        accuracy = 0.6 + 0.3 * labels / (labels + 200) - 0.01 * i
        blobs[model] = (
            blob,
            SnapshotMeta.describe(
                model, blob, kind="classifier", spec="logreg", samples_learned=labels,
                metrics={"Accuracy": accuracy}, offsets={},
            ),
        )  # fmt: skip
        points[model] = [
            TracePoint(
                n, float(n), time.time(), n, {"Accuracy": 0.6 + 0.3 * n / (n + 200) - 0.01 * i}
            )
            for n in range(every, labels + 1, every)
        ]
    trace = TraceWrite(labels, [(0, "epoch")], points, 10_000)
    store.write(version, blobs, dump_signed({}, key), {}, trace)
    return version
