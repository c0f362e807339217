"""The console in a real browser: headless Chromium (Debian's) driven by Playwright.

1. A learner learns two models from Kafka while ``riverstream console`` runs in its own process:
   the page loads with no console error, shows both models, their curves gain points while a
   replay is published, a rollback made with ``riverstream snapshots rollback`` appears on the
   timeline with its reason, and (no token) the page offers no action at all.
2. With a token, an action taken on the page (pin a version) moves serving.

Set ``RIVERSTREAM_SCREENSHOTS=DIR`` to keep the page's screenshots there (README's come from it).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import expect
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.kafka.publish import Publisher
from stream.learner.runtime import snapshot_store
from stream.registry.registry import Registry
from stream.store.snapshots import SnapshotStore
from tests.conftest import settings_env
from tests.console.helpers import serve_console, write_version
from tests.support.cluster import stop_all
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

LIVE_TIMEOUT_MS = 60_000


def _keep(shot: Path, name: str) -> None:
    """Copy a screenshot to $RIVERSTREAM_SCREENSHOTS, if set."""
    where = os.environ.get("RIVERSTREAM_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(where) / name)


def _watch(page: Any) -> list[str]:
    """Every console error and uncaught exception of ``page``, as they come."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page: {e}"))
    return errors


def _points(page: Any, model: str) -> int:
    found = page.get_attribute(
        f'[data-metric="Accuracy"] polyline[data-model="{model}"]', "data-points", timeout=5_000
    )
    return int(found or 0)


def test_the_page_follows_a_learner_live_and_shows_a_cli_rollback(
    settings: Settings, tmp_path: Path, chromium: Any
) -> None:
    s = fast(
        settings, trace_every_labels=10, snapshot_every_labels=100, snapshot_every_seconds=0.5,
        learner_metrics_port=free_port(), console_port=free_port(),
    )  # fmt: skip
    events = list(dataset_events("Phishing", label_delay=5))
    publish(s, [e for e in events if e.time < 300])
    learner = spawn_cli(
        s,
        ["learn", "--model", "lr=logreg", "--model", "tree=hoeffding", "--metric", "Accuracy"],
        tmp_path / "learner.log",
    )
    console = spawn_cli(s, ["console"], tmp_path / "console.log")
    url = f"http://127.0.0.1:{s.console_port}"
    store = snapshot_store(s)
    try:
        wait_until(lambda: _answers(url + "/healthz"), 60, "the console process")
        wait_until(lambda: {"lr", "tree"} <= set(store.models()), 60, "both models' versions")
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        errors = _watch(page)
        page.goto(url)
        for model in ("lr", "tree"):
            page.wait_for_selector(f'article[data-model="{model}"]', timeout=LIVE_TIMEOUT_MS)
            page.wait_for_selector(
                f'[data-metric="Accuracy"] polyline[data-model="{model}"]', timeout=LIVE_TIMEOUT_MS
            )
        assert page.locator("#mode").inner_text() == "read-only"
        assert page.locator(".actions").count() == 0 and page.locator("button").count() == 0
        assert page.locator("#token-bar").is_hidden()

        # the replay of the rest, published at a pace, while the page is watched
        before = _points(page, "lr")
        seen = [before]
        rest = [e for e in events if e.time >= 300]
        done = threading.Event()
        thread = threading.Thread(target=_publish_slowly, args=(s, rest, done), daemon=True)
        thread.start()

        # watched until the last point, not only while publishing: a loaded machine may learn
        # (and the page show) most of the replay after its last event was sent
        def every_point() -> bool:
            seen.append(_points(page, "lr"))
            return seen[-1] == 125

        wait_until(
            every_point, 180, "every point of lr (1250 labels / 10)", detail=lambda: seen[-1],
        )  # fmt: skip
        thread.join(timeout=30)
        assert done.is_set()
        assert _points(page, "tree") == 125
        growth = sorted(set(seen))
        assert len(growth) >= 3 and growth[0] == before, seen  # grew in steps, as it learned
        legend = page.locator('[data-metric="Accuracy"] [data-legend="lr"]').inner_text()
        assert "125 points" in legend

        # a rollback from the CLI shows on the timeline, with its reason
        target = store.versions("lr")[1]
        result = _cli(s, ["snapshots", "rollback", "lr", "--to", str(target), "--reason",
                          "rolled back from the CLI by the browser test"])  # fmt: skip
        assert result.returncode == 0, result.stderr
        row = page.wait_for_selector('tr[data-action="rollback"][data-model="lr"]', timeout=30_000)
        assert row is not None
        assert "rolled back from the CLI by the browser test" in row.inner_text()
        assert f"→ {target}" in row.inner_text()
        page.wait_for_selector(f'article[data-model="lr"] .badge[data-serving="{target}"]')
        page.wait_for_selector('svg path[data-action="rollback"]')  # its mark on the timeline

        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:4] == b"\x89PNG"
        _keep(shot, "console.png")
        assert errors == []
        page.close()
    finally:
        for process in (learner, console):
            process.terminate()
        try:
            # uvicorn exits by the signal it was sent, once it has shut down
            console.wait(timeout=30)
            learner.wait(timeout=60)
        finally:
            stop_all([learner, console])  # what still runs when a wait timed out
    assert "Traceback" not in (tmp_path / "console.log").read_text()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _publish_slowly(settings: Settings, events: list[Any], done: threading.Event) -> None:
    publisher = Publisher(settings)
    try:
        publisher.publish_events(events, rate=400.0)
    finally:
        publisher.close()
        done.set()


def _cli(settings: Settings, args: list[str]) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "stream", *args], env=settings_env(settings),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def store(settings: Settings) -> Iterator[SnapshotStore]:
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    yield SnapshotStore(client, settings.redis_prefix, settings.require_snapshot_key())
    client.close()


def test_with_a_token_an_action_from_the_page_moves_serving(
    settings: Settings, store: SnapshotStore, chromium: Any, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"console_token": SecretStr("page-token")})
    key = s.require_snapshot_key()
    v1 = write_version(store, key, 50, models=("lr", "tree"))
    v2 = write_version(store, key, 100, models=("lr", "tree"))
    registry = Registry(store)
    assert registry.serving_version("lr") == v2
    with serve_console(s) as url:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        errors = _watch(page)
        page.goto(url)
        card = page.locator('article[data-model="lr"]')
        card.locator('select[data-role="version"]').wait_for()
        assert page.locator("#mode").inner_text() == "actions enabled"
        assert page.locator("#token-bar").is_visible()
        pin = card.locator('button[data-action="pin"]')
        assert pin.is_disabled()  # no token typed yet

        page.fill("#token", "page-token")
        card.locator('select[data-role="version"]').select_option(str(v1))
        card.locator('input[data-role="reason"]').fill("pinned from the page")
        pin.click()
        wait_until(lambda: registry.serving_version("lr") == v1, 15, "serving to move")
        page.wait_for_selector(f'article[data-model="lr"] .badge[data-serving="{v1}"]')
        # the toast comes with the action's answer, the badge by another request: either first
        expect(page.locator("#toast")).to_contain_text(f"pin done; serving v{v1}", timeout=15_000)
        row = page.wait_for_selector('tr[data-action="pin"][data-model="lr"]')
        assert row is not None and "pinned from the page" in row.inner_text()
        assert registry.history("lr")[-1].by == "console"
        assert registry.serving_version("tree") == v2  # only the model acted on moved

        shot = tmp_path / "console-actions.png"
        page.screenshot(path=str(shot), full_page=True)
        _keep(shot, "console-actions.png")
        assert errors == []
        page.close()
