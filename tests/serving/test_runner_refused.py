"""`riverstream serve` refused at its start for a setting (a `ConfigError`: Redis refusing the
credentials, or its ACL denying a command) says so in the error's words, without a traceback,
and exits 2, with one worker or several; any other failure of the startup keeps its traceback.
Before, uvicorn logged the whole traceback Starlette handed it (``ERROR: Traceback ...``) above
the message, and one worker exited 3 (uvicorn's ``STARTUP_FAILURE``) with no ``error:`` line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from serving.runner import ConfigErrorAtStart
from tests.support.outage import PrivateRedis, locked_redis
from tests.support.scraping import as_if_services_up

__all__ = ["locked_redis"]  # fixtures


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
@pytest.mark.parametrize("refusal", ["password", "acl"])
def test_a_start_refused_for_a_setting_says_why_in_one_line_and_exits_2(
    kit, locked_redis: PrivateRedis, prefix: str, tmp_path: Path, workers: int, refusal: str
) -> None:
    if refusal == "password":
        credentials = {"redis_password": "not-the-password"}
        said = "RIVERSTREAM_REDIS_PASSWORD"
    else:  # a user who may ping, nothing else (NOPERM)
        user = f"u-{prefix}"
        credentials = {"redis_username": user,
                       "redis_password": locked_redis.add_user(user, ["+ping"])}  # fmt: skip
        said = "RIVERSTREAM_REDIS_USERNAME"
    settings = kit.make_settings(
        locked_redis.url, prefix, state_dir=tmp_path / "state", **credentials
    )
    as_if_services_up(settings.state_dir)
    log = tmp_path / "api.err"
    code = kit.serve_until_exit(settings, workers, log)
    text = log.read_text()  # stderr
    assert code == 2, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    if workers == 1:
        assert said in errors[0], text
    else:  # a worker says why (the first to fail: uvicorn then stops the others, maybe before
        # they got as far), the command that they stopped
        assert "the API stopped: " in errors[0], text
        assert 1 <= len([line for line in text.splitlines() if "this worker cannot start" in line
                         and said in line]) <= workers, text  # fmt: skip


def _failed_startup(error: BaseException, *, say: bool) -> tuple[ConfigErrorAtStart, list[str]]:
    """What uvicorn's logger lets through when Starlette reports a startup that failed on
    ``error``: the traceback's text, logged while the error is handled."""
    import traceback

    refused = ConfigErrorAtStart(say=say)
    logger = logging.getLogger("test.uvicorn.error")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    logger.addFilter(refused)
    try:
        try:
            raise error
        except BaseException:
            logger.error(traceback.format_exc())
    finally:
        logger.removeFilter(refused)
        logger.removeHandler(handler)
    return refused, seen


def test_a_config_error_at_start_is_its_message_and_a_bug_keeps_its_traceback() -> None:
    refused, seen = _failed_startup(ConfigError("RIVERSTREAM_X is wrong"), say=True)
    assert seen == ["this worker cannot start: RIVERSTREAM_X is wrong"]
    assert isinstance(refused.error, ConfigError)
    refused, seen = _failed_startup(ConfigError("RIVERSTREAM_X is wrong"), say=False)
    assert seen == [] and str(refused.error) == "RIVERSTREAM_X is wrong"  # the caller raises it
    refused, seen = _failed_startup(KeyError("a bug"), say=True)
    assert refused.error is None
    [text] = seen
    assert text.startswith("Traceback (most recent call last):") and "KeyError: 'a bug'" in text


def test_a_config_error_of_a_request_keeps_its_traceback() -> None:
    """uvicorn logs a request's error with ``exc_info`` (not the text of a traceback): kept."""
    refused = ConfigErrorAtStart(say=False)
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1,
                               "Exception in ASGI application\n", (), None)  # fmt: skip
    try:
        raise ConfigError("RIVERSTREAM_X is wrong")
    except ConfigError as exc:
        record.exc_info = (ConfigError, exc, exc.__traceback__)
        assert refused.filter(record) and record.exc_info is not None
    assert refused.error is None
