"""`riverstream serve --workers 2` whose workers fail in the app's factory (no
``RIVERSTREAM_SNAPSHOT_KEY``, which the workers read and the supervisor does not): the API stops
and exits non-zero, the reason on stderr. uvicorn started such a worker again for ever (it exited
1, not uvicorn's ``STARTUP_FAILURE``), and the command never ended. Redis refusing the workers'
credentials is in tests/serving/test_app_auth.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_workers_whose_factory_fails_stop_the_api(
    kit, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # no key, nor a local one from `services up` in the state directory
    settings = kit.make_settings(redis_url, prefix, snapshot_key=None, state_dir=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RIVERSTREAM_SNAPSHOT_KEY"}
    log = tmp_path / "api.err"
    code = kit.serve_until_exit(settings, 2, log, env)
    text = log.read_text()  # stderr
    assert code != 0, text
    assert "this worker cannot start: RIVERSTREAM_SNAPSHOT_KEY is not set" in text, text
    assert "the API stopped: " in text.splitlines()[-1], text
