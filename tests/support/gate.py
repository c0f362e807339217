"""Run ``riverstream`` with one step held at a gate, for a test to signal it right there.

    python -m tests.support.gate ANNOUNCE spawn MATCH -- ARGS...   # a process started
    python -m tests.support.gate ANNOUNCE record NAME -- ARGS...   # a service's record made

``spawn``: once `subprocess.Popen` has started a process whose command line holds ``MATCH``
(the first one), before it returns; ``record``: when `stream.dev.services.ServiceRecord` is made
for the service ``NAME``, once it is ready and before its record is saved. There the harness
writes the pid to the file ``ANNOUNCE`` and reads a line from its stdin before going on: the
test signals it (`gate_then_signal`), then lets it go. Nothing of riverstream is changed but the
moment these calls return, so a Ctrl-C at the gate is one between a spawn and its record.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.procs import pending_signals
from tests.support.waiting import wait_until


def _hold(announce: Path, pid: int) -> None:
    tmp = announce.with_name(f".{announce.name}.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(announce)
    sys.stdin.readline()


def _gate_spawns(announce: Path, match: str) -> None:
    class GatedPopen(subprocess.Popen):
        held = False

        def __init__(self, args: Any, *rest: Any, **options: Any) -> None:
            super().__init__(args, *rest, **options)
            command = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
            if match in command and not GatedPopen.held:
                GatedPopen.held = True
                _hold(announce, self.pid)

    subprocess.Popen = GatedPopen  # type: ignore[misc]


def _gate_records(announce: Path, name: str) -> None:
    from stream.dev import services

    make: Callable[..., services.ServiceRecord] = services.ServiceRecord
    held: list[services.ServiceRecord] = []

    def gated(*args: Any, **kwargs: Any) -> services.ServiceRecord:
        record = make(*args, **kwargs)
        if record.name == name and not held:
            held.append(record)
            _hold(announce, record.pid)
        return record

    services.ServiceRecord = gated  # type: ignore[assignment, misc]


def gate_then_signal(
    harness: subprocess.Popen[bytes], announce: Path, signum: int, timeout: float = 180
) -> int:
    """Wait until ``harness`` is held at its gate, send it ``signum``, wait until the signal is
    delivered (no longer pending), then let it go; the pid it announced."""
    found = wait_until(
        lambda: announce.exists() or harness.poll() is not None, timeout, "the gate reached"
    )
    assert found and harness.poll() is None, f"ended before its gate ({harness.returncode})"
    pid = int(announce.read_text())
    os.kill(harness.pid, signum)
    wait_until(  # or killed by it (a zombie may still show it pending)
        lambda: harness.poll() is not None or signum not in pending_signals(harness.pid),
        30,
        "the signal delivered",
    )
    assert harness.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # ended at the signal: nothing left to let go
        harness.stdin.write(b"go\n")
        harness.stdin.flush()
    return pid


def main(argv: list[str]) -> None:
    announce, where, match, separator, *args = argv
    assert separator == "--", argv
    {"spawn": _gate_spawns, "record": _gate_records}[where](Path(announce), match)
    from stream.cli.main import main as riverstream

    sys.argv = ["riverstream", *args]
    riverstream()


if __name__ == "__main__":
    main(sys.argv[1:])
