"""Local services for development, the demo and the test suite: Kafka, Redis and Prometheus.

No Docker is needed. `ServiceManager.up` obtains each server (Kafka's jars from Maven Central into
a cache directory, redis-server and prometheus from Debian's packages), starts it on 127.0.0.1,
waits for it to answer within a deadline and records its pid and address in
``<state_dir>/services.json``: a server whose start fails or is interrupted (Ctrl-C, or SIGTERM
and SIGHUP under `stream.dev.processes.EndOnSignal`) is killed, never left running unrecorded.
Calling `up` twice is harmless; a record whose process died is cleaned up and the service
started again *in place*: on the ports chosen at its first start (`stream.dev.ports`) and with
its data (the Kafka node, in `stream.dev.kafka_node`, is formatted only when its data directory
does not exist). `down` stops by pid (checking the pid is still ours); ``down --purge`` also
deletes the data and the recorded ports.

Prometheus scrapes what riverstream runs here and evaluates its alert rules: its configuration
(``<state_dir>/prometheus/prometheus.yml``, written at every `up`) loads a copy of
``observability/prometheus/alerts.yml`` and has the scrape jobs those rules name (`SCRAPE_JOBS`),
whose targets come from files (Prometheus' file-based discovery, re-read by Prometheus itself
when they change): ``<state_dir>/prometheus/targets/<stack>.<job>.json``. Only what runs is
registered there, so that no alert says a learner or an API is down where none was started:
``riverstream learn``, ``serve`` and ``predict-worker`` register themselves while they run
(`scraped`), the demo registers its processes' ports under its tag while it runs
(`ServiceManager.register_targets`), and nothing restarts Prometheus. For the same reason the
copy of the rules leaves out their group `DEPLOYMENT_GROUP` (the alerts that no learner or API
is scraped at all, for a deployment that declares what runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import SecretStr

from schemas.errors import ConfigError, ServiceError
from schemas.settings import Settings
from stream.dev.cluster import cluster_endpoints
from stream.dev.kafka_node import MARKER as KAFKA_MARKER
from stream.dev.kafka_node import KafkaNode, kafka_ready
from stream.dev.ports import free_port, port_is_free, preferred_port, recorded_ports
from stream.dev.processes import (
    deferred_signals,
    ensure_debian_binary,
    pid_alive,
    stop_pid,
    wait_until,
)

__all__ = [  # free_port and port_is_free: for the benches and tests that pick ports
    "DEMO_OPTION", "DEPLOYMENT_GROUP", "KEY_FILE", "PID_LABEL", "SCRAPE_JOBS", "SERVICES",
    "STATE_FILE", "TARGETS_DIR", "Endpoints", "ServiceManager", "ServiceRecord",
    "ensure_debian_binary", "exporter_address", "free_port", "iter_status", "pid_alive",
    "port_is_free", "prometheus_config", "redis_ping", "resolve", "scrape_targets", "scraped",
    "stop_pid", "wait_until",
]  # fmt: skip

SERVICES = ("kafka", "redis", "prometheus")
STATE_FILE = "services.json"
KEY_FILE = "snapshot.key"  # the local signing key, read by `resolve`
PORT_WAIT_SECONDS = 15.0  # longest wait for a recorded port that no program listens on
SCRAPE_JOBS = ("riverstream-learner", "riverstream-api", "riverstream-predict-worker")
"""The scrape jobs of observability/prometheus/prometheus.yml, which the alert rules name."""
TARGETS_DIR = "targets"  # under <state_dir>/prometheus: the file-based discovery's files
PID_LABEL = "__riverstream_pid"
"""The label of a target that `scraped` registered: the pid of its process, so that it deletes
only its own registration. Prometheus drops the labels that start with ``__`` after relabeling:
no series carries it (a process restarted at the same address continues the same series)."""
OLD_DEFAULT_STACK = "default"
"""The stack an older `up` registered: the settings' ports, scraped (and alerted on as down)
whether anything ran there or not; `up` deletes it."""
DEMO_OPTION = "riverstream-demo"
"""``python -X riverstream-demo=<tag> -m stream ...``: the demo's name in its processes' command
lines (Python keeps unknown ``-X`` options in ``sys._xoptions`` and ignores them), so that
`stream.dev.demo.stop_kept` stops no other demo's process that was given a recorded pid since,
and that `scraped` leaves a demo's processes to the demo."""
ALERT_RULES = Path(__file__).resolve().parents[2] / "observability" / "prometheus" / "alerts.yml"
"""The alert rules (package data of `observability`, read as a file: `stream.dev` does not import
that room)."""
DEPLOYMENT_GROUP = "riverstream-absent"
"""The group of `ALERT_RULES` that the local Prometheus does not load (``observability.alerts``
writes it: ``ABSENT_GROUP``): its alerts fire when no learner or API is scraped at all, which
here means only that none was started."""


@dataclass(frozen=True)
class ServiceRecord:
    """What runs where: one line of `riverstream services status`."""

    name: str
    pid: int
    address: str
    url: str
    started_at: float
    log: str


@dataclass(frozen=True)
class _Launch:
    """How to start a service: its command, run in ``home``, where it answers, and how to know
    it ready."""

    argv: list[str]
    home: Path
    address: str
    url: str
    ready: Callable[[], bool]


@dataclass(frozen=True)
class Endpoints:
    """The addresses other commands use when no address is configured."""

    kafka_bootstrap_servers: str | None
    redis_url: str | None
    prometheus_url: str | None


class ServiceManager:
    """Starts, stops and reports the local Kafka, Redis and Prometheus servers."""

    def __init__(self, settings: Settings, log: Callable[[str], None] = lambda _msg: None) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.cache_dir = settings.cache_dir.expanduser().resolve()
        self.log = log

    # -- records ---------------------------------------------------------------------------
    def records(self) -> dict[str, ServiceRecord]:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return {}
        raw = json.loads(path.read_text())
        return {name: ServiceRecord(**rec) for name, rec in raw.items()}

    def _save(self, records: dict[str, ServiceRecord]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({n: asdict(r) for n, r in records.items()}, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    def running(self) -> dict[str, ServiceRecord]:
        """Records whose process is alive; stale ones (after a crash) are removed."""
        records = self.records()
        alive = {n: r for n, r in records.items() if pid_alive(r.pid)}
        if alive != records:
            self._save(alive)
        return alive

    def endpoints(self) -> Endpoints:
        running = self.running()
        return Endpoints(
            kafka_bootstrap_servers=running["kafka"].address if "kafka" in running else None,
            redis_url=running["redis"].url if "redis" in running else None,
            prometheus_url=running["prometheus"].url if "prometheus" in running else None,
        )

    # -- up / down -------------------------------------------------------------------------
    def up(self, names: tuple[str, ...] = SERVICES) -> dict[str, ServiceRecord]:
        unknown = set(names) - set(SERVICES)
        if unknown:
            raise ServiceError(f"unknown service(s): {', '.join(sorted(unknown))}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_key()
        records = self.running()
        for name in names:
            if name in records:
                self.log(f"{name} already running (pid {records[name].pid})")
                if name == "prometheus":  # started by an older riverstream, or other settings
                    self._refresh_prometheus(records[name])
                continue
            prepare = {"kafka": self._kafka_launch, "redis": self._redis_launch}.get(
                name, self._prometheus_launch
            )
            with _one_start_at_a_time(self.cache_dir):
                self._start(name, prepare(), records)
            self.log(f"{name} ready at {records[name].address} (pid {records[name].pid})")
        return records

    def down(self, names: tuple[str, ...] = SERVICES, *, purge: bool = False) -> list[str]:
        records = self.records()
        stopped = []
        for name in names:
            rec = records.pop(name, None)
            if rec is not None and stop_pid(rec.pid, _MARKERS[name]):
                stopped.append(name)
            if purge:
                shutil.rmtree(self.state_dir / name, ignore_errors=True)
        self._save(records)
        return stopped

    def _ensure_key(self) -> None:
        key_file = self.state_dir / KEY_FILE
        if not key_file.exists():
            key_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
            key_file.chmod(0o600)

    def _start(self, name: str, launch: _Launch, records: dict[str, ServiceRecord]) -> None:
        """Spawn ``launch`` in a session of its own, wait until it is ready, then add it to
        ``records`` and save them. Never a service left running unrecorded: what raises while
        it starts (a failure, Ctrl-C, a signal the caller turns into an exception: SIGTERM and
        SIGHUP under `EndOnSignal`) kills it, and a signal that arrives between its spawn and
        that guard, or between its readiness and its record, waits for them
        (`deferred_signals`)."""
        log_path = launch.home / f"{name}.log"
        proc: subprocess.Popen[bytes] | None = None
        with contextlib.ExitStack() as recording:
            try:
                with deferred_signals(), open(log_path, "ab") as log_file:
                    proc = subprocess.Popen(
                        launch.argv, cwd=launch.home, stdin=subprocess.DEVNULL, stdout=log_file,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                self._await(proc, launch.ready, name)
                recording.enter_context(deferred_signals())  # until the record is saved
            except BaseException:
                if proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                raise
            url, log = launch.url, str(log_path)
            records[name] = ServiceRecord(name, proc.pid, launch.address, url, time.time(), log)
            self._save(records)

    def _await(self, proc: subprocess.Popen[bytes], check: Callable[[], bool], what: str) -> None:
        """Wait until ``check`` or the end of ``proc`` (`wait_until` ignores what raises)."""
        wait_until(
            lambda: proc.poll() is not None or check(),
            self.settings.service_start_timeout,
            what,
        )
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode} (see its log)")

    # -- redis -----------------------------------------------------------------------------
    def _redis_launch(self) -> _Launch:
        binary = ensure_debian_binary("redis-server", "redis-server")
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = self._ports(data, "redis", 6379)
        argv = [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1",
            "--daemonize", "no", "--protected-mode", "yes", "--io-threads", "1",
        ]  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        return _Launch(argv, data, f"127.0.0.1:{port}", url, lambda: redis_ping(port))

    # -- prometheus ------------------------------------------------------------------------
    def _prometheus_launch(self) -> _Launch:
        binary = ensure_debian_binary("prometheus", "prometheus")
        home = self.state_dir / "prometheus"
        home.mkdir(parents=True, exist_ok=True)
        self._write_prometheus_files(home)
        port = self._ports(home, "prometheus", 9090)
        argv = [  # the configuration's relative paths are read from `home`, its directory
            binary, "--config.file=prometheus.yml", f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        return _Launch(argv, home, f"127.0.0.1:{port}", url, lambda: _http_ok(f"{url}/-/ready"))

    def _write_prometheus_files(self, home: Path) -> bool:
        """Write the configuration and its copy of the alert rules into ``home`` (a state
        directory of an older riverstream has a configuration that scrapes nothing, or the
        targets of the settings' ports, where nothing may run); whether either changed.

        The configuration names the rules and the targets' files by paths relative to ``home``:
        Prometheus reads both as glob patterns, in which a ``[``, ``*`` or ``?`` of the state
        directory's path would be a pattern's (the configuration refused, or matching nothing)."""
        (home / TARGETS_DIR).mkdir(parents=True, exist_ok=True)
        self.unregister_targets(OLD_DEFAULT_STACK)
        rules: list[Path] = []
        changed = False
        if ALERT_RULES.exists():
            rules.append(Path(ALERT_RULES.name))
            changed |= _write_if_changed(home / ALERT_RULES.name, _local_rules(ALERT_RULES))
        else:
            self.log(f"prometheus: no alert rules at {ALERT_RULES}; none loaded")
        config = prometheus_config([], rule_files=rules, discovery=Path(TARGETS_DIR))
        return _write_if_changed(home / "prometheus.yml", config) or changed

    def _refresh_prometheus(self, record: ServiceRecord) -> None:
        """Bring a running Prometheus's configuration up to date (files of targets it re-reads
        by itself): a changed configuration through its reload endpoint."""
        if not self._write_prometheus_files(self.state_dir / "prometheus"):
            return
        try:
            request = urllib.request.Request(f"{record.url}/-/reload", method="POST")
            with urllib.request.urlopen(request, timeout=10):
                pass
            self.log("prometheus: configuration reloaded")
        except OSError as exc:
            self.log(f"prometheus: the new configuration is not loaded ({exc}); restart it")

    def register_targets(
        self, stack: str, targets: Mapping[str, str], *, pid: int | None = None
    ) -> None:
        """Have Prometheus scrape ``targets`` (job of `SCRAPE_JOBS` → ``host:port``) as
        ``stack``'s: one file per job, replaced atomically (Prometheus reads it within seconds);
        a job left out is no longer scraped for ``stack``. ``pid``: the process they belong to,
        written in their files (`PID_LABEL`, see `unregister_targets`). Harmless when
        Prometheus is not started: `up` writes the configuration that reads these files."""
        unknown = set(targets) - set(SCRAPE_JOBS)
        if unknown:
            raise ServiceError(f"unknown scrape job(s): {', '.join(sorted(unknown))}")
        directory = self.state_dir / "prometheus" / TARGETS_DIR
        if not targets and not directory.exists():
            return
        directory.mkdir(parents=True, exist_ok=True)
        labels = {} if pid is None else {"labels": {PID_LABEL: str(pid)}}
        with _locked(directory.with_suffix(".lock")):
            for job in SCRAPE_JOBS:
                path = directory / f"{stack}.{job}.json"
                if job not in targets:
                    path.unlink(missing_ok=True)
                    continue
                tmp = directory / f".{path.name}.tmp"  # not matched by the discovery's pattern
                tmp.write_text(json.dumps([{"targets": [targets[job]], **labels}]))
                tmp.replace(path)

    def unregister_targets(self, stack: str, *, pid: int | None = None) -> None:
        """Stop scraping ``stack``'s targets; with ``pid``, only those that process registered:
        a file that another process wrote since (the same address, registered again) stays."""
        directory = self.state_dir / "prometheus" / TARGETS_DIR
        if pid is None:
            self.register_targets(stack, {})
            return
        if not directory.exists():
            return
        with _locked(directory.with_suffix(".lock")):
            for job in SCRAPE_JOBS:
                path = directory / f"{stack}.{job}.json"
                if _registered_pid(path) == pid:
                    path.unlink()

    # -- kafka -----------------------------------------------------------------------------
    def kafka_node(self) -> KafkaNode:
        return KafkaNode(
            self.state_dir / "kafka", self.cache_dir, self.settings.kafka_version, self.log
        )

    def _kafka_launch(self) -> _Launch:
        node = self.kafka_node()
        command = node.prepare(PORT_WAIT_SECONDS)
        address = command.address
        return _Launch(command.argv, node.home, address, address, lambda: kafka_ready(address))

    def _ports(self, home: Path, name: str, preferred: int) -> int:
        """The port of service ``name``: the one recorded in ``home``, else ``preferred`` if
        free, else any free one (then recorded)."""
        chosen = recorded_ports(
            home, lambda: {name: preferred_port(preferred)}, name, PORT_WAIT_SECONDS
        )
        return chosen[name]


_MARKERS = {"kafka": KAFKA_MARKER, "redis": "redis-server", "prometheus": "prometheus"}


def _one_start_at_a_time(directory: Path) -> contextlib.AbstractContextManager[None]:
    """Services of other state directories started at the same moment (two `services up`, or
    the test suite's processes, each with its own) would each find the same preferred port
    free and then fight over it: each chooses its port and binds it in turn, under a lock file
    in ``directory`` (the cache, shared by every state directory)."""
    return _locked(directory / "services.lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The lock file ``path``, held by this process (and no other) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _registered_pid(path: Path) -> int | None:
    """The pid written in the targets' file ``path`` (`PID_LABEL`); None without one."""
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError):  # none (deleted), or not one of ours
        return None
    pids = {group.get("labels", {}).get(PID_LABEL) for group in groups}
    return int(pids.pop()) if len(pids) == 1 and None not in pids else None


def _local_rules(rules: Path) -> str:
    """The alert rules ``rules`` without their group `DEPLOYMENT_GROUP`, for the local
    Prometheus (as JSON, which YAML reads).

    >>> import tempfile, yaml
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "alerts.yml"
    ...     _ = path.write_text("groups: [{name: a, rules: []}, {name: riverstream-absent}]")
    ...     [group["name"] for group in yaml.safe_load(_local_rules(path))["groups"]]
    ['a']
    """
    import yaml  # only `up` reads YAML: every command imports this module

    loaded = yaml.safe_load(rules.read_text())
    groups = [group for group in loaded["groups"] if group["name"] != DEPLOYMENT_GROUP]
    head = f"# {rules.name} without its group {DEPLOYMENT_GROUP} (stream/dev/services.py)."
    return f"{head}\n{json.dumps({**loaded, 'groups': groups}, indent=2)}\n"


_WRITTEN_BY = "# Written by `riverstream services up` at every start (stream/dev/services.py)."


def prometheus_config(
    targets: list[tuple[str, str]],
    interval: str = "1s",
    *,
    rule_files: Sequence[Path] = (),
    discovery: Path | None = None,
) -> str:
    """A Prometheus config scraping ``targets`` given as (job, host:port), loading
    ``rule_files``, and with a ``discovery`` directory, each job of `SCRAPE_JOBS` scraping the
    targets listed in its files there, ``*.<job>.json`` (see `ServiceManager.register_targets`).
    Prometheus reads relative paths from the configuration's directory.

    >>> print(prometheus_config([], rule_files=[Path("alerts.yml")], discovery=Path("targets")))
    ... # doctest: +ELLIPSIS
    # Written by `riverstream services up` at every start (stream/dev/services.py).
    global:
      scrape_interval: 1s
      evaluation_interval: 1s
    rule_files:
      - "alerts.yml"
    scrape_configs:
      - job_name: riverstream-learner
        file_sd_configs:
          - files: ["targets/*.riverstream-learner.json"]
            refresh_interval: 5s
    ...
    """
    lines = [] if discovery is None else [_WRITTEN_BY]
    lines += ["global:", f"  scrape_interval: {interval}", f"  evaluation_interval: {interval}"]
    if rule_files:  # JSON strings are YAML strings: any path is quoted right
        lines += ["rule_files:", *(f"  - {json.dumps(str(path))}" for path in rule_files)]
    lines.append("scrape_configs:")
    if not targets and discovery is None:
        lines += ["  - job_name: prometheus", "    static_configs:", "      - targets: []"]
    for job, target in targets:
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    for job in SCRAPE_JOBS if discovery is not None else ():
        files = json.dumps(f"{discovery}/*.{job}.json")
        lines += [f"  - job_name: {job}", "    file_sd_configs:", f"      - files: [{files}]"]
        lines.append("        refresh_interval: 5s")  # a fallback: changes are watched
    return "\n".join(lines) + "\n"


def scrape_targets(settings: Settings) -> dict[str, str]:
    """Where the processes that ``settings`` configure serve their metrics: job of
    `SCRAPE_JOBS` → ``host:port`` (a port 0, no exporter, is left out; a wildcard bind address
    is scraped on 127.0.0.1).

    >>> scrape_targets(Settings(predict_metrics_port=0, serve_host="0.0.0.0"))
    {'riverstream-learner': '127.0.0.1:9108', 'riverstream-api': '127.0.0.1:8000'}
    """
    where = {
        "riverstream-learner": (settings.metrics_host, settings.learner_metrics_port),
        "riverstream-api": (settings.serve_host, settings.serve_port),
        "riverstream-predict-worker": (settings.metrics_host, settings.predict_metrics_port),
    }
    return {job: f"{_scrape_host(host)}:{port}" for job, (host, port) in where.items() if port}


@contextlib.contextmanager
def scraped(settings: Settings, job: str, bound: tuple[str, int] | None) -> Iterator[None]:
    """While the block runs, the local Prometheus scrapes this process (``riverstream learn``,
    ``serve``, ``predict-worker``: ``job`` of `SCRAPE_JOBS`) at ``bound``, where its exporter
    (the API's socket) is bound, if `up` configured one in the state directory. ``bound`` None
    (the port was taken, by another process: none is bound) registers nothing.

    The targets' file is named by the address, so that a process restarted there replaces it,
    and holds this process's pid (`PID_LABEL`): the file is deleted at the end of the block
    only if it still does. It is deleted when the block ends by a stop (its end, an exit,
    Ctrl-C, another `BaseException`) or by a `ConfigError` (a process that stops at its start,
    its settings refused: nothing ran to be down); a process that crashes (any other
    exception), or dies, stays registered: down, its alert fires (until one runs there again).
    A demo's process is left to the demo, which registers its processes from its start and
    unregisters them whatever became of them."""
    home = settings.state_dir.resolve() / "prometheus"
    if bound is None or DEMO_OPTION in sys._xoptions or not (home / "prometheus.yml").exists():
        yield
        return
    target = f"{_scrape_host(bound[0])}:{bound[1]}"
    manager, pid = ServiceManager(settings), os.getpid()
    manager.register_targets(target, {job: target}, pid=pid)
    crashed = False
    try:
        yield
    except ConfigError:
        raise
    except Exception:
        crashed = True
        raise
    finally:
        if not crashed:
            manager.unregister_targets(target, pid=pid)


def exporter_address(
    exporter: tuple[socketserver.BaseServer, threading.Thread] | None,
) -> tuple[str, int] | None:
    """Where a metrics exporter (``prometheus_client.start_http_server``'s server and thread)
    is bound, for `scraped`; None without one (its port was taken, or 0)."""
    address = None if exporter is None else exporter[0].server_address
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def _scrape_host(bound: str) -> str:
    """The address to scrape a server bound to ``bound`` at (an IPv6 one in brackets).

    >>> _scrape_host("0.0.0.0"), _scrape_host("::1"), _scrape_host("10.0.0.5")
    ('127.0.0.1', '[::1]', '10.0.0.5')
    """
    if bound in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bound}]" if ":" in bound else bound


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Whether the Redis (or Sentinel) at ``host:port`` answers PING."""
    with socket.create_connection((host, port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)


def resolve(settings: Settings) -> Settings:
    """Fill unset addresses from the local services' state, if they run, and an unset snapshot
    key from the local key that `services up` writes. A replicated cluster (`services up
    --cluster`, `stream.dev.cluster`) that runs comes first: its brokers, its Sentinels."""
    update: dict[str, object] = {}
    if settings.snapshot_key is None or not settings.snapshot_key.get_secret_value():
        key_file = settings.state_dir / KEY_FILE
        if key_file.exists():
            update["snapshot_key"] = SecretStr(key_file.read_text().strip())
    missing = {
        "kafka_bootstrap_servers": settings.kafka_bootstrap_servers,
        "redis_url": settings.redis_url,
        "prometheus_url": settings.prometheus_url,
    }
    cluster = None if all(missing.values()) else cluster_endpoints(settings.state_dir.resolve())
    if cluster is not None and not settings.redis_sentinels:  # `services up --cluster`
        update |= {k: v for k, v in cluster.items() if not getattr(settings, k)}
        prometheus = ServiceManager(settings).endpoints().prometheus_url
        if prometheus and not settings.prometheus_url:
            update["prometheus_url"] = prometheus
    elif not all(missing.values()):
        found = asdict(ServiceManager(settings).endpoints())
        update |= {k: found[k] for k, v in missing.items() if not v and found[k]}
    return settings.model_copy(update=update) if update else settings


def iter_status(manager: ServiceManager) -> Iterator[tuple[str, ServiceRecord | None]]:
    running = manager.running()
    for name in SERVICES:
        yield name, running.get(name)
