"""`riverstream serve` says, once, where it listens and with how many workers (uvicorn itself
runs quiet): one line on stderr at start, whose URL answers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from schemas.settings import Settings
from stream.dev.services import free_port
from tests.support.pipeline import spawn_cli
from tests.support.serving import stop_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LINE = re.compile(r"^API on (\S+) \(docs /docs, metrics /metrics\), (.*)$", re.M)


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(("workers", "said"), [(1, "1 worker"), (2, "2 workers, a socket each")])
def test_serve_prints_its_address_and_workers(
    settings: Settings, tmp_path: Path, workers: int, said: str
) -> None:
    port, log = free_port(), tmp_path / "api.log"
    api = spawn_cli(settings, ["serve", "--port", str(port), "--workers", str(workers)], log)
    try:
        wait_until(lambda: LINE.search(log.read_text()) or api.poll() is not None, 60, log=log)
        assert api.poll() is None, log.read_text()
        [(url, workers_said)] = LINE.findall(log.read_text())
        assert (url, workers_said) == (f"http://127.0.0.1:{port}", said)
        wait_until(lambda: answers(url) or api.poll() is not None, 60, "the API", log=log)
        assert api.poll() is None, log.read_text()
        assert len(LINE.findall(log.read_text())) == 1  # once, not once per worker
    finally:
        stop_process(api)
