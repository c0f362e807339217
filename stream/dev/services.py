"""Local services for development, the demo and the test suite: Kafka, Redis and Prometheus.

No Docker is needed. `ServiceManager.up` obtains each server (Kafka's jars from Maven Central into
a cache directory, redis-server and prometheus from Debian's packages), starts it on 127.0.0.1
on a free port, waits for it to answer within a deadline and records its pid and address in
``<state_dir>/services.json``. Calling `up` twice is harmless; a record whose process died is
cleaned up and the service started again. `down` stops by pid (checking the pid is still ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from pydantic import SecretStr

from schemas.errors import ServiceError
from schemas.settings import Settings

SERVICES = ("kafka", "redis", "prometheus")
STATE_FILE = "services.json"
KEY_FILE = "snapshot.key"  # the local signing key, read by `resolve`


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
class Endpoints:
    """The addresses other commands use when no address is configured."""

    kafka_bootstrap_servers: str | None
    redis_url: str | None
    prometheus_url: str | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true or raise `ServiceError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} was not ready within {timeout:.0f} s")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    # A zombie is dead for our purposes.
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_pid(pid: int, marker: str, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; only if the process still runs ``marker``."""
    if not pid_alive(pid) or marker not in _cmdline(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, f"process {pid} to die")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def _tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


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
                continue
            start = {"kafka": self._start_kafka, "redis": self._start_redis}.get(
                name, self._start_prometheus
            )
            records[name] = start()
            self._save(records)
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

    def _spawn(self, name: str, argv: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = cwd / f"{name}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, log_path

    def _await(self, proc: subprocess.Popen[bytes], check: Callable[[], bool], what: str) -> None:
        def ready() -> bool:
            if proc.poll() is not None:
                raise ServiceError(f"{what} exited with status {proc.returncode} (see its log)")
            return check()

        try:
            wait_until(ready, self.settings.service_start_timeout, what)
        except ServiceError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise

    # -- redis -----------------------------------------------------------------------------
    def _start_redis(self) -> ServiceRecord:
        binary = ensure_debian_binary("redis-server", "redis-server")
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = _preferred_port(6379)
        argv = [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1",
            "--daemonize", "no", "--protected-mode", "yes", "--io-threads", "1",
        ]  # fmt: skip
        proc, log = self._spawn("redis", argv, data)
        self._await(proc, lambda: _redis_ping(port), "redis")
        url = f"redis://127.0.0.1:{port}/0"
        return ServiceRecord("redis", proc.pid, f"127.0.0.1:{port}", url, time.time(), str(log))

    # -- prometheus ------------------------------------------------------------------------
    def _start_prometheus(self) -> ServiceRecord:
        binary = ensure_debian_binary("prometheus", "prometheus")
        home = self.state_dir / "prometheus"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "prometheus.yml"
        if not config.exists():
            config.write_text(prometheus_config([]))
        port = _preferred_port(9090)
        argv = [
            binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
        ]  # fmt: skip
        proc, log = self._spawn("prometheus", argv, home)
        url = f"http://127.0.0.1:{port}"
        self._await(proc, lambda: _http_ok(f"{url}/-/ready"), "prometheus")
        return ServiceRecord(
            "prometheus", proc.pid, f"127.0.0.1:{port}", url, time.time(), str(log)
        )

    # -- kafka -----------------------------------------------------------------------------
    def kafka_classpath(self) -> Path:
        """The directory of Kafka's jars, resolved with Maven into the cache on first use."""
        lib = self.cache_dir / f"kafka-{self.settings.kafka_version}" / "lib"
        if (lib / ".complete").exists():
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError("Maven (mvn) is needed to fetch Kafka's jars; install maven")
        lib.mkdir(parents=True, exist_ok=True)
        pom = resources.files("stream.dev") / "resources" / "kafka-pom.xml"
        self.log(f"fetching Apache Kafka {self.settings.kafka_version} jars with Maven ...")
        with resources.as_file(pom) as pom_path:
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
                 f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
                 f"-Dkafka.version={self.settings.kafka_version}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"Maven could not fetch Kafka's jars:\n{result.stdout[-2000:]}")
        (lib / ".complete").touch()
        return lib

    def _start_kafka(self) -> ServiceRecord:
        java = shutil.which("java")
        if java is None:
            raise ServiceError("Java 17+ is needed to run Kafka; install openjdk-17-jre-headless")
        lib = self.kafka_classpath()
        home = self.state_dir / "kafka"
        ports_file = home / "ports.json"
        ports = json.loads(ports_file.read_text()) if ports_file.exists() else None
        if ports is None or not all(port_is_free(p) for p in ports.values()):
            # A fresh node: new ports, freshly formatted data directory.
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
            broker = _preferred_port(9092)
            ports = {"broker": broker, "controller": free_port()}
            ports_file.write_text(json.dumps(ports))
        config = home / "server.properties"
        config.write_text(kafka_properties(ports["broker"], ports["controller"], home / "data"))
        log4j = resources.files("stream.dev") / "resources" / "kafka-log4j2.yaml"
        (home / "log4j2.yaml").write_bytes(log4j.read_bytes())
        base = [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
                f"-Dkafka.logs.dir={home / 'logs'}", "-cp", f"{lib}/*"]  # fmt: skip
        if not (home / "data" / "meta.properties").exists():
            format_kafka_storage(base, config, _kafka_cluster_id())
        proc, log = self._spawn("kafka", [*base, "kafka.Kafka", str(config)], home)
        address = f"127.0.0.1:{ports['broker']}"
        self._await(proc, lambda: _kafka_ready(address), "kafka")
        return ServiceRecord("kafka", proc.pid, address, address, time.time(), str(log))


_MARKERS = {"kafka": "kafka.Kafka", "redis": "redis-server", "prometheus": "prometheus"}


def _preferred_port(port: int) -> int:
    return port if port_is_free(port) else free_port()


def format_kafka_storage(java_command: list[str], config: Path, cluster_id: str) -> None:
    """Format a KRaft data directory (single node, standalone controller)."""
    # ``--cluster-id=ID`` in one argument: a base64 id may begin with "-", which argparse
    # would take for an option after ``-t`` (1 start in 64 failed that way).
    fmt = subprocess.run(
        [*java_command, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         "-c", str(config), "--standalone"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if fmt.returncode != 0:
        raise ServiceError(f"formatting Kafka's data directory failed: {fmt.stdout}{fmt.stderr}")


def _kafka_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def kafka_properties(broker_port: int, controller_port: int, data_dir: Path) -> str:
    """server.properties of a single combined broker + controller fit for one node."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data_dir}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=168",
            "",
        ]
    )


def prometheus_config(targets: list[tuple[str, str]], interval: str = "1s") -> str:
    """A Prometheus config scraping ``targets`` given as (job, host:port)."""
    lines = ["global:", f"  scrape_interval: {interval}", f"  evaluation_interval: {interval}"]
    lines.append("scrape_configs:")
    if not targets:
        lines += ["  - job_name: prometheus", "    static_configs:", "      - targets: []"]
    for job, target in targets:
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    return "\n".join(lines) + "\n"


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)


def _kafka_ready(address: str) -> bool:
    from stream.kafka.client import broker_ready

    _host, port = address.rsplit(":", 1)
    return _tcp_open(int(port)) and broker_ready(address)


def ensure_debian_binary(command: str, package: str) -> str:
    """Path of ``command``; installs Debian's ``package`` with apt-get when missing (as root)."""
    found = shutil.which(command) or (
        f"/usr/bin/{command}" if Path(f"/usr/bin/{command}").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(f"{command} not found: install Debian's {package} package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(argv)} failed: {result.stderr[-1000:]}")
    found = shutil.which(command)
    if found is None:
        raise ServiceError(f"{package} installed but {command} is still missing")
    return found


def resolve(settings: Settings) -> Settings:
    """Fill unset addresses from the local services' state, if they run, and an unset snapshot
    key from the local key that `services up` writes."""
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
    if not all(missing.values()):
        found = asdict(ServiceManager(settings).endpoints())
        update |= {k: found[k] for k, v in missing.items() if not v and found[k]}
    return settings.model_copy(update=update) if update else settings


def iter_status(manager: ServiceManager) -> Iterator[tuple[str, ServiceRecord | None]]:
    running = manager.running()
    for name in SERVICES:
        yield name, running.get(name)
