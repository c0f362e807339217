"""Servers of one test, to kill, restart or make refuse writes without disturbing the rest of the
suite: a broker (`private_kafka`), a Redis (`private_redis`; with a password, `PrivateRedis`'s
``password`` and `change_password`; ACL users, `PrivateRedis.add_user` and the README's rule,
`documented_acl`), and the ways a real Redis refuses writes for a while (`refusing`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.errors import ServiceError
from schemas.settings import Settings
from stream.dev.ports import PORTS_FILE, free_ports
from stream.dev.services import ServiceManager, ensure_debian_binary, free_port, stop_pid
from stream.store.snapshots import SnapshotStore
from tests.support.procs import freeze
from tests.support.waiting import wait_until


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[tuple[ServiceManager, str]]:
    """A broker of this test (started like `riverstream services up`), so that killing it
    leaves the rest of the suite alone: ``(its manager, its address)``."""
    state = tmp_path / "kafka-state"
    manager = ServiceManager(Settings(state_dir=state))
    try:
        yield manager, _first_start(manager, state / "kafka")
    finally:
        manager.down(("kafka",), purge=True)


def _first_start(manager: ServiceManager, home: Path, attempts: int = 3) -> str:
    """Start the broker on two free ports, its address. A first start that fails is purged and
    tried again on new ports: another test process may take a port between `free_ports`
    choosing it and the broker binding it (a CI run's broker exited with status 1 at its
    setup, its log purged with its state). What the failed start logged is printed (shown
    with the test's output), and kept in the error of the last attempt."""
    for attempt in range(1, attempts + 1):
        home.mkdir(parents=True, exist_ok=True)
        ports = dict(zip(("broker", "controller"), free_ports(2), strict=True))
        (home / PORTS_FILE).write_text(json.dumps(ports))
        try:
            return manager.up(("kafka",))["kafka"].address
        except ServiceError as exc:
            log = home / "kafka.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            manager.down(("kafka",), purge=True)
            if attempt == attempts:
                raise ServiceError(f"{exc}; its log ended:\n{tail}") from exc
            print(f"private Kafka on {ports} failed to start ({exc}); its log ended:\n{tail}")
    raise AssertionError("unreachable")


class PrivateRedis:
    """A redis-server of this test, on its own port and with its data in ``directory``.

    Not quite the flags of `riverstream services up` (`stream.dev.services`): the same address
    and append-only file, but ``--appendfsync always`` (not ``everysec``), ``--save ""`` (not
    ``60 1``: no background save runs unless `refusing` starts one for ``MISCONF``) and
    ``--enable-protected-configs local``, so that its tests may ``CONFIG SET dir`` (``MISCONF``
    in `refusing`). The other flags of ``services up`` (``--daemonize no``, ``--protected-mode
    yes``, ``--io-threads 1``) are Redis's defaults, left out here. With ``password``, it
    starts with ``--requirepass`` (the default user's password; `change_password` changes it)."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.dir, self.port = directory, free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False  # once started, its port is its address: restarts keep it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again: on its port, with its data). At its first start, a port
        that another process took since `free_port` chose it (redis-server then exits at once)
        is given up for another one, twice at most."""
        for attempt in range(3):
            proc = self.proc = self._spawn()
            client = self.admin(  # one try a call (redis-py 8 retries a timeout for 9 s)
                socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
            )
            try:
                wait_until(functools.partial(_up_or_ended, client, proc), 20, "redis to start")
            except BaseException:
                self.stop()  # not answering: not left running (a fixture's teardown never runs)
                raise
            finally:
                client.close()
            if proc.poll() is None:
                self._started = True
                return
            if self._started or attempt == 2:
                raise AssertionError(f"redis-server exited with {proc.returncode} on {self.port}")
            self.port = free_port()

    def _spawn(self) -> subprocess.Popen[bytes]:
        binary = ensure_debian_binary("redis-server", "redis-server")
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--enable-protected-configs", "local"]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def admin(self, **options: Any) -> redis.Redis:
        """A client of this server with its current password."""
        return redis.Redis(port=self.port, password=self.password, **options)

    def add_user(self, name: str, rules: list[str]) -> str:
        """Make ``name`` an ACL user of this server with ``rules`` (`ACL SETUSER`'s, after
        ``reset on``: nothing is allowed but what they allow) and a password of its own,
        returned."""
        password = f"pw-{uuid.uuid4().hex}"
        admin = self.admin(socket_timeout=10)
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *rules)
        admin.close()
        return password

    def kill(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP, returning once every thread is stopped (SIGCONT with `kill` resumes)."""
        assert self.proc is not None
        freeze(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            stop_pid(self.proc.pid, "redis-server")


def _up_or_ended(client: redis.Redis, proc: subprocess.Popen[bytes]) -> bool:
    return pings(client) or proc.poll() is not None


def change_password(server: PrivateRedis, password: str) -> None:
    """Give ``server``'s default user ``password`` and close every client connection (as a
    restart would), so that each client logs in again, with the password it was given: a
    password rotated under running processes."""
    admin = server.admin(socket_timeout=10)
    admin.config_set("requirepass", password)
    server.password = password
    for kind in ("normal", "pubsub"):
        admin.client_kill_filter(_type=kind, skipme=True)
    admin.close()


README = Path(__file__).resolve().parents[2] / "README.md"
ACL_USER = "riverstream"
"""The ACL user of the README's rule, whose keys and channels are those of the default prefix."""


def documented_acl(prefix: str) -> list[str]:
    """The rules of the ACL user that the README documents for riverstream (its ``ACL SETUSER
    riverstream on >PASSWORD ...`` line), for the key prefix ``prefix``: what a test gives a
    `PrivateRedis` user to prove the documented rule (`PrivateRedis.add_user`)."""
    start = f"ACL SETUSER {ACL_USER} on >PASSWORD "
    lines = [line for line in README.read_text().splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"the README has {len(lines)} lines starting {start!r}"
    return [rule.replace(f"{ACL_USER}:", f"{prefix}:") for rule in lines[0][len(start) :].split()]


def pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A `PrivateRedis` that wants a password (its ``password``)."""
    server = PrivateRedis(tmp_path, password=f"pw-{uuid.uuid4().hex}")
    server.start()
    yield server
    server.stop()


def learner_gauges(port: int) -> dict[str, float]:
    """The learner's ``riverstream_redis_up`` and ``samples_learned`` of model ``lr``, as its
    metrics endpoint shows them now (empty when it does not answer)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    found = {}
    for name in ("riverstream_redis_up", 'riverstream_samples_learned_total{model="lr"}'):
        match = re.search("^" + re.escape(name) + r" ([0-9.e+]+)$", text, re.MULTILINE)
        if match:
            found[name.split("{")[0]] = float(match.group(1))
    return found


def checkpoint_version(store: SnapshotStore) -> int:
    """The version of ``store``'s latest checkpoint (0: none yet, or Redis not answering)."""
    try:
        latest = store.latest_checkpoint()
    except Exception:
        return 0
    return 0 if latest is None else latest[0]


REFUSALS = ("OOM", "READONLY", "MISCONF", "BUSY")
"""How a real Redis refuses writes for a while, by its error code (`refusing`)."""


@contextlib.contextmanager
def refusing(server: PrivateRedis, code: str) -> Iterator[None]:
    """``server`` refuses writes with the error ``code`` until the block ends: ``OOM`` (at
    ``maxmemory``, policy ``noeviction``), ``READONLY`` (made the replica of a primary that is
    not there, as the old primary is after a failover), ``MISCONF`` (its last background save
    failed: its directory is gone), ``BUSY`` (a script that runs on; every command but a few
    is refused). Each is checked to be in force before the block starts."""
    admin = redis.Redis(port=server.port, socket_timeout=10)
    gone = server.dir / "gone"
    script: threading.Thread | None = None
    if code == "OOM":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
    elif code == "READONLY":
        admin.replicaof("127.0.0.1", free_port())
    elif code == "MISCONF":
        gone.mkdir()
        admin.config_set("save", "3600 1")
        admin.config_set("dir", str(gone))
        gone.rmdir()
        admin.bgsave()
        wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10)
    elif code == "BUSY":
        admin.config_set("busy-reply-threshold", 50)
        looping = redis.Redis(port=server.port)
        script = threading.Thread(target=_run_forever, args=(looping,), daemon=True)
        script.start()
    else:
        raise ValueError(code)
    try:
        probe = redis.Redis(port=server.port, socket_timeout=10)
        wait_until(lambda: _refused(probe, code), 10, f"Redis to refuse writes with {code}")
        yield
    finally:
        if code == "OOM":
            admin.config_set("maxmemory", 0)
        elif code == "READONLY":
            admin.replicaof("NO", "ONE")
        elif code == "MISCONF":
            admin.config_set("save", "")
            admin.config_set("dir", str(server.dir))
        elif script is not None:
            wait_until(lambda: _killed(admin), 10, "the script to be killed")
            script.join(timeout=10)


def _run_forever(client: redis.Redis) -> None:
    with contextlib.suppress(redis.RedisError):
        client.eval("while true do end", 0)  # until SCRIPT KILL


def _killed(admin: redis.Redis) -> bool:
    try:
        admin.script_kill()
    except redis.ResponseError:  # NOTBUSY: it is over
        return True
    except redis.RedisError:
        return False
    return True


def _refused(client: redis.Redis, code: str) -> bool:
    try:  # one write, the same each time (a second one to undo it could meet the refusal)
        client.set("riverstream:refusal-probe", 1)
    except redis.RedisError as exc:
        return code in str(exc) or code in type(exc).__name__.upper() or _named(exc, code)
    return False


def _named(exc: redis.RedisError, code: str) -> bool:
    """redis-py drops the code of the errors it has a class for."""
    names = {"OOM": redis.exceptions.OutOfMemoryError, "READONLY": redis.exceptions.ReadOnlyError}
    return code in names and isinstance(exc, names[code])
