"""Waiting in tests: poll a condition with a deadline, the one way a test waits for something
another thread or process does (never a sleep as synchronisation).

>>> wait_until(lambda: 42, timeout=1)
42
>>> wait_until(lambda: 0, timeout=0, what="the answer", detail=lambda: "still 0")
Traceback (most recent call last):
...
AssertionError: timed out after 0 s waiting for the answer (now: still 0)
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    interval: float = 0.01,
    detail: Callable[[], object] | None = None,
    log: Path | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds with an `AssertionError` naming ``what`` (else ``check`` and its
    docstring), ``detail()`` (the state seen last) and the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            doc = check.__doc__ if inspect.isfunction(check) or inspect.ismethod(check) else None
            waited = what or (f"{check!r}: {doc}" if doc else repr(check))
            seen = f" (now: {detail()})" if detail is not None else ""
            tail = f"\n{log.read_text()[-4000:]}" if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {waited}{seen}{tail}")
        time.sleep(interval)
