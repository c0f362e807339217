"""Running the API with uvicorn: one process, or several workers that each follow versions.

With ``workers > 1`` uvicorn spawns fresh interpreters that import `app_from_env`, so `serve`
first writes every setting into the environment (``RIVERSTREAM_*``): each worker then builds
the same `Settings` and its own follower. Prometheus' multiprocess mode is switched on with a
fresh ``PROMETHEUS_MULTIPROC_DIR`` unless one is already set.

On Linux each worker listens on a socket of its own, bound to the same address with
``SO_REUSEPORT``, and the kernel spreads new connections over the workers by a hash of their
addresses. uvicorn's default, one socket shared by the workers, lets whichever worker is in
``accept()`` take a whole burst of connections, and kept-alive connections stay where they
were accepted: measured with wrk opening 64 connections at once to two workers, one worker
spent 96 % of the two workers' CPU time in one run (10.5k requests/s) and 60 % in the next
(18k requests/s) (`bench/README.md`, *serve_latency.py*, session 9). Connections hashed to a
busy worker wait for it: ``RIVERSTREAM_SERVE_REUSE_PORT=false`` gives the shared socket back.

uvicorn runs with ``log_level="warning"`` (its per-worker "running on" lines would say the same
thing N times), so `serve` tells its caller, once, where it listens and with how many workers
(`listening_line`, through ``announce``): `riverstream serve` prints it on stderr at start.

A worker stops (SIGTERM, gracefully) when its supervisor dies, also of a SIGKILL, which gives
the supervisor no chance to stop it (`end_with_supervisor`, Linux's parent-death signal): such
workers went on serving for ever, beside the workers of the API started again.

A worker that fails at its start (Redis refusing the credentials, `serving.app`; a setting
missing, `app_from_env`) says why on stderr and stops every worker; `serve` then raises
`WorkerStartError` (`riverstream serve` exits non-zero), where uvicorn's supervisor returned as
after a SIGTERM and the command exited 0, a clean stop to systemd or Kubernetes. A start refused
for a setting (a `ConfigError`) is said in its message alone, not as a traceback
(`ConfigErrorAtStart`); with one worker, `serve` raises it (`riverstream serve` exits 2, as
for a setting missing), where uvicorn exited with its ``STARTUP_FAILURE``.

`serve` is given a ``listening`` block (`Listening`), entered once the address is bound and
left when the server has stopped: `riverstream serve` registers the API with the local
Prometheus for that time (`stream.dev.services.scraped`), never before the address is its own
(a second API on a port in use fails to bind, and leaves the first one's registration). On
SIGTERM the server stops, the block is left, then the process dies by the signal, with one
worker or several: a clean stop to systemd, where an exit status of 143 is a failure (uvicorn
does so with one worker; its supervisor of several returned, and the command exited 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from schemas.errors import ConfigError, RiverstreamError
from schemas.settings import Settings
from serving.protocol import ApiProtocol
from serving.telemetry import MULTIPROC_ENV


def settings_environment(settings: Settings) -> dict[str, str]:
    """``RIVERSTREAM_*`` variables that rebuild ``settings`` in another process."""
    return settings.to_environment()


def app_from_env() -> FastAPI:
    """The uvicorn factory of each worker process. What fails here fails again in every worker
    (a setting missing, say): the worker says why and exits with uvicorn's ``STARTUP_FAILURE``,
    which stops the supervisor (`WorkerStartError`); on any other exit status uvicorn started
    the worker again, for ever."""
    from serving.app import create_app

    end_with_supervisor()
    logging.getLogger("uvicorn.error").addFilter(ConfigErrorAtStart(say=True))  # the lifespan's
    try:
        return create_app(Settings())
    except RiverstreamError as exc:
        logging.getLogger("uvicorn.error").error("this worker cannot start: %s", exc)
    except Exception:
        logging.getLogger("uvicorn.error").exception("this worker cannot start")
    sys.exit(STARTUP_FAILURE)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_supervisor() -> bool:
    """Have the kernel send this worker SIGTERM (a graceful stop) when the supervisor that
    spawned it dies, also of a SIGKILL (the OOM killer, ``kill -9``), which gives the supervisor
    no chance to stop its workers: they went on serving for ever, each on its own socket of the
    port, beside the workers of a restarted API. Returns whether the request was made (Linux,
    in a spawned worker); a supervisor already gone by then is told at once, the same way.
    """
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unsigned = ctypes.c_ulong  # prctl reads its arguments as unsigned longs
        asked = libc.prctl(
            ctypes.c_int(_PR_SET_PDEATHSIG), unsigned(signal.SIGTERM), *[unsigned(0)] * 3
        )
        if asked != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        logging.getLogger("uvicorn.error").warning(
            "this worker will not stop with its supervisor if that is killed: %s", exc
        )
        return False
    if os.getppid() != parent.pid:  # it died before the request: nothing will tell
        os.kill(os.getpid(), signal.SIGTERM)
    return True


TRACEBACK = "Traceback (most recent call last):"


class ConfigErrorAtStart(logging.Filter):
    """On uvicorn's ``uvicorn.error`` logger: the app's startup failing on a `ConfigError` (Redis
    refusing the credentials, `serving.app`'s lifespan) is a setting to mend, not a bug, and is
    said in its message alone. Starlette hands uvicorn the failure as the text of its traceback,
    which uvicorn logs at ERROR while Starlette still handles the exception (``sys.exc_info()``
    is the error). The error is kept (`error`); ``say``: its message is logged in the
    traceback's place (a worker's), else the record is dropped (the caller raises the error).
    Any other exception keeps its traceback."""

    def __init__(self, *, say: bool) -> None:
        super().__init__()
        self.say = say
        self.error: ConfigError | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]
        # only that text: a request's error (logged with exc_info) keeps its traceback
        if not (isinstance(exc, ConfigError) and str(record.msg).startswith(TRACEBACK)):
            return True
        self.error = exc
        record.msg, record.args = f"this worker cannot start: {exc}", ()
        return self.say


class WorkerStartError(RiverstreamError):
    """A worker process of the API failed at its start (its reason is on stderr, above): every
    worker was stopped."""


class Supervisor(Multiprocess):
    """uvicorn's supervisor of the worker processes, which tells after `run` whether a worker
    failed at its start (uvicorn then stops every worker and returns as after a SIGTERM) and
    whether a SIGTERM stopped it (``terminated``)."""

    terminated = False

    def handle_term(self) -> None:
        self.terminated = True
        super().handle_term()

    def failed_at_start(self) -> list[int]:
        """The pids of the workers that exited with uvicorn's ``STARTUP_FAILURE`` (their app's
        factory or lifespan startup failed). The supervisor replaces a worker that died of
        anything else, so one that is still in its list failed at its start."""
        return [p.pid for p in self.processes
                if p.exitcode == STARTUP_FAILURE and p.pid is not None]  # fmt: skip


Listening = Callable[[str, int], AbstractContextManager[object]]
"""A block entered with the API's host and port once they are bound (the port the system chose,
for port 0), and left when the server has stopped."""


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    *,
    log_level: str = "warning",
    announce: Callable[[str], None] | None = None,
    listening: Listening | None = None,
) -> None:
    """Serve the API until interrupted (blocks); ``announce`` is given `listening_line` once,
    when the address is bound (reserved, with several workers), before requests are served;
    the server runs inside ``listening``. A SIGTERM ends the process (`run_uvicorn`)."""
    host = settings.serve_host if host is None else host
    port = settings.serve_port if port is None else port
    workers = settings.serve_workers if workers is None else workers
    if workers <= 1:
        from serving.app import create_app

        app = create_app(settings)
        run_uvicorn(app, host, port, 1, log_level=log_level, announce=announce, listening=listening)
        return
    os.environ.update(settings_environment(settings))
    run_uvicorn(
        "serving.runner:app_from_env", host, port, workers, log_level=log_level,
        reuse_port=settings.serve_reuse_port, announce=announce, listening=listening,
    )  # fmt: skip


def listening_line(host: str, port: int, workers: int, *, own_sockets: bool = False) -> str:
    """Where the API listens and with how many workers, in one line.

    >>> listening_line("127.0.0.1", 8000, 2, own_sockets=True)
    'API on http://127.0.0.1:8000 (docs /docs, metrics /metrics), 2 workers, a socket each'
    >>> listening_line("::", 8000, 1)
    'API on http://[::]:8000 (every address of this host; docs /docs, metrics /metrics), 1 worker'
    """
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    every = "every address of this host; " if host in ("0.0.0.0", "::", "") else ""
    count = f"{workers} worker" + ("s" if workers != 1 else "")
    sockets = ", a socket each" if own_sockets and workers > 1 else ""
    return f"API on {url} ({every}docs /docs, metrics /metrics), {count}{sockets}"


def run_uvicorn(
    app: Any,
    host: str,
    port: int,
    workers: int,
    *,
    log_level: str = "warning",
    reuse_port: bool = True,
    announce: Callable[[str], None] | None = None,
    listening: Listening | None = None,
) -> None:
    """uvicorn with riverstream's options; ``app`` is an app, or an import string of a factory
    when ``workers > 1`` (each worker process then builds its own, and with ``reuse_port``, on
    Linux, listens on a socket of its own). ``announce``, ``listening``: see `serve`. Raises
    `WorkerStartError` when a worker failed at its start.

    A SIGTERM stops the server; once ``listening`` is left, the signal is passed on to the
    handler in place before (the default one: the process dies by it). The handler of this
    call raises `_Terminated` to leave the block: uvicorn's single server passes the signal on
    to it when it has stopped, and its supervisor of several records it (`Supervisor`)."""
    tell = announce or (lambda _line: None)
    around: Listening = listening or (lambda _host, _port: contextlib.nullcontext())
    common: dict[str, Any] = {
        "host": host, "port": port, "log_level": log_level, "access_log": False,
        "http": ApiProtocol,
    }  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    terminated = False
    try:
        if workers <= 1 and not isinstance(app, str):
            _run_server(uvicorn.Config(app, **common), tell, around)
        else:
            config = uvicorn.Config(app, factory=True, workers=workers, **common)
            terminated = _run_workers(config, reuse_port and REUSE_PORT, tell, around)
    except _Terminated:
        terminated = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if terminated:
        signal.raise_signal(signal.SIGTERM)


class _Terminated(BaseException):
    """SIGTERM, raised in `run_uvicorn` by its handler: a stop (no `Exception`) that leaves the
    ``listening`` block before the signal is passed on."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise _Terminated


def _run_server(config: uvicorn.Config, tell: Callable[[str], None], around: Listening) -> None:
    """One server in this process, on a socket bound before ``around`` is entered (uvicorn
    binds its own after the app's startup); raises the `ConfigError` its startup failed on
    (`ConfigErrorAtStart`), else exits with uvicorn's ``STARTUP_FAILURE`` when the address is
    taken or the startup failed, as `uvicorn.run` does. Stopped by a SIGTERM, it raises
    `_Terminated` (uvicorn passes the signal on once stopped)."""
    sock = config.bind_socket()
    port = sock.getsockname()[1]
    tell(listening_line(config.host, port, 1))
    server = uvicorn.Server(config)
    refused, uvicorn_log = ConfigErrorAtStart(say=False), logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(refused)
    try:
        with around(config.host, port), contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
            server.run(sockets=[sock])
    except SystemExit:  # uvicorn's STARTUP_FAILURE, when the startup failed
        if refused.error is None:
            raise
        raise refused.error from None
    finally:
        uvicorn_log.removeFilter(refused)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _run_workers(
    config: uvicorn.Config, own_sockets: bool, tell: Callable[[str], None], around: Listening
) -> bool:
    """``config.workers`` processes under a `Supervisor`, on sockets of their own or one they
    share; whether a SIGTERM stopped them. Raises `WorkerStartError`."""
    made_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        made_dir = tempfile.mkdtemp(prefix="riverstream-metrics-")
        os.environ[MULTIPROC_ENV] = made_dir
    else:
        for stale in Path(os.environ[MULTIPROC_ENV]).glob("*.db"):
            stale.unlink()
    try:
        if own_sockets:
            sock: socket.socket = ReusePortAddress.reserve(config.host, config.port)
        else:  # one socket shared by the workers
            sock = config.bind_socket()
        port = sock.getsockname()[1]
        tell(listening_line(config.host, port, config.workers, own_sockets=own_sockets))
        supervisor = Supervisor(config, sockets=[sock])
        with around(config.host, port):
            supervisor.run()
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)
    failed = supervisor.failed_at_start()
    if failed:
        what = "a worker" if len(failed) == 1 else f"{len(failed)} workers"
        raise WorkerStartError(
            f"the API stopped: {what} failed at start (pid {', '.join(map(str, failed))}; "
            "the reason is above), and every worker was stopped"
        )
    return supervisor.terminated


REUSE_PORT = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
"""Whether each worker binds its own socket (Linux balances ``SO_REUSEPORT`` groups by hash;
other systems give every connection to one of the sockets)."""


class ReusePortAddress(socket.socket):
    """The supervisor's listening address, bound with ``SO_REUSEPORT`` (so that no other
    program takes the port) but never listened on. uvicorn hands it to each worker process by
    pickling it, and it pickles as its address: the worker gets a socket of its own bound to
    the same address (`bound_twin`), and listens on that one."""

    @classmethod
    def reserve(cls, host: str, port: int) -> ReusePortAddress:
        """The address ``host:port``, refused (`RiverstreamError`) while any socket listens on
        it: a server still running there, say, whose workers would otherwise share the port
        with the new one's (a plain socket is bound first, which no listener allows)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise RiverstreamError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            port = probe.getsockname()[1]  # port 0: the one the system chose
        sock = cls(family, socket.SOCK_STREAM)
        _reuse(sock)
        sock.bind((host, port))
        return sock

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return bound_twin, (self.family, self.getsockname())


def bound_twin(family: int, address: tuple[Any, ...]) -> socket.socket:
    """A socket of this process bound to ``address`` with ``SO_REUSEPORT`` (a worker's)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    _reuse(sock)
    sock.bind(address)
    return sock


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
