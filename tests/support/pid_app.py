"""A bare ASGI app answering its process id: which worker took a connection
(`tests/serving/test_runner_balance.py`). ``factory`` is the uvicorn factory of each worker.

``GET /busy?SECONDS`` blocks the worker's event loop that long, as a worker busy with one
request (or a model swap) is, after creating the file ``$PID_APP_BUSY_FILE`` (the test polls for
it before going on)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/busy":
        Path(os.environ["PID_APP_BUSY_FILE"]).touch()
        time.sleep(float(scope["query_string"] or 1))  # the point: this worker does nothing else
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def factory() -> Any:
    return app
