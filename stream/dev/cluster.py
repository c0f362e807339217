"""Replicated local infrastructure on one machine: a 3-broker Kafka and Redis with Sentinels.

For people who want to see riverstream survive the loss of a node (`riverstream services up
--cluster`) and for the tests that kill one. The engines are the real ones, started the way
production runs them, only all on 127.0.0.1:

- `KafkaCluster`: three combined broker + controller KRaft nodes (a static quorum of three
  voters), ``default.replication.factor=3`` and ``min.insync.replicas=2``: a topic created with
  the broker's default replication (riverstream's topics are) has every partition on all three,
  and a write acknowledged with acks=all is on at least two. One broker may die without losing an
  acknowledged event or stopping producers and consumers. A node's death is noticed within
  ``broker.session.timeout.ms`` (3 s here, 9 s by default).
- `RedisHA`: a primary, one replica and three Sentinels (quorum 2, a primary unreachable for
  1 s is down): Debian's ``redis-server`` and ``redis-sentinel``. On the primary's death the
  Sentinels promote the replica within a few seconds, and clients that ask them
  (`stream.store.connect`) follow.

Each process has its own directory under ``home`` with its configuration, data and log; ports
are chosen at the first start and recorded (``ports.json``), so a node that died comes back in
place with its data (Kafka formats a node's directory only once; a returning Redis primary is
turned into a replica by the Sentinels). Everything is stopped by pid (`stop`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from schemas.errors import ServiceError
from stream.dev.kafka_node import MARKER as KAFKA_MARKER
from stream.dev.kafka_node import KafkaNode, format_kafka_storage, kafka_ready
from stream.dev.ports import free_port, recorded_ports

Log = Callable[[str], None]
SENTINEL_MASTER = "riverstream"
RECORDS = "processes.json"


@dataclass(frozen=True)
class Node:
    """One process of a cluster: its name, pid, port and log."""

    name: str
    pid: int
    port: int
    log: str
    marker: str


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} was not ready within {timeout:.0f} s")
        time.sleep(0.1)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _dead(pid: int) -> bool:
    return not _alive(pid)


def _alive(pid: int) -> bool:
    from stream.dev.services import pid_alive

    return pid_alive(pid)


class _Processes:
    """Spawning and stopping the processes of one cluster, recorded in ``home``."""

    def __init__(self, home: Path, log: Log) -> None:
        self.home, self.log = home, log

    def records(self) -> dict[str, Node]:
        path = self.home / RECORDS
        if not path.exists():
            return {}
        nodes = {name: Node(**raw) for name, raw in json.loads(path.read_text()).items()}
        return {name: node for name, node in nodes.items() if _alive(node.pid)}

    def _save(self, nodes: dict[str, Node]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.home / (RECORDS + ".tmp")
        tmp.write_text(json.dumps({n: asdict(node) for n, node in nodes.items()}, indent=2))
        tmp.replace(self.home / RECORDS)

    def spawn(self, name: str, argv: list[str], cwd: Path, port: int, marker: str) -> Node:
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = cwd / f"{name}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        node = Node(name, proc.pid, port, str(log_path), marker)
        records = self.records()
        records[name] = node
        self._save(records)
        return node

    def stop(self, names: list[str] | None = None, *, graceful: bool = True) -> list[str]:
        """Stop by pid (if it still runs its program): SIGTERM and a wait, or with
        ``graceful=False`` SIGKILL at once (for data about to be deleted)."""
        from stream.dev.services import stop_pid, wait_until

        records = self.records()
        stopped = []
        for name in list(records) if names is None else names:
            node = records.pop(name, None)
            if node is None:
                continue
            if graceful:
                if stop_pid(node.pid, node.marker):
                    stopped.append(name)
            elif node.marker in _cmdline(node.pid):
                os.kill(node.pid, signal.SIGKILL)
                wait_until(functools.partial(_dead, node.pid), 10, f"{name} to die")
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(node.pid, os.WNOHANG)
                stopped.append(name)
        self._save(records)
        return stopped


# -- Redis: a primary, a replica, three Sentinels ------------------------------------------
def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


class RedisHA:
    """Redis primary + replica + three Sentinels in ``home`` (see the module)."""

    ROLES = ("primary", "replica", "sentinel-1", "sentinel-2", "sentinel-3")

    def __init__(self, home: Path, log: Log = lambda _m: None, *, start_timeout: float = 60.0):
        self.home = home
        self.processes = _Processes(home, log)
        self.start_timeout = start_timeout
        self.ports = recorded_ports(
            home, lambda: {role: free_port() for role in self.ROLES}, "redis cluster", 15.0
        )

    @property
    def sentinels(self) -> str:
        """``RIVERSTREAM_REDIS_SENTINELS`` for this cluster."""
        return ",".join(f"127.0.0.1:{self.ports[f'sentinel-{i}']}" for i in (1, 2, 3))

    def url(self, role: str) -> str:
        return f"redis://127.0.0.1:{self.ports[role]}/0"

    def up(self) -> dict[str, Node]:
        """Start what is not running (idempotent); wait until the Sentinels watch a primary
        with a replica in sync."""
        from stream.dev.services import ensure_debian_binary

        server = ensure_debian_binary("redis-server", "redis-server")
        sentinel = ensure_debian_binary("redis-sentinel", "redis-sentinel")
        running = self.processes.records()
        for role in ("primary", "replica"):
            if role in running:
                continue
            data = self.home / role
            data.mkdir(parents=True, exist_ok=True)
            argv = [server, "--bind", "127.0.0.1", "--port", str(self.ports[role]),
                    "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                    "--save", "", "--daemonize", "no", "--io-threads", "1"]  # fmt: skip
            if role == "replica" and not (data / "appendonlydir").exists():
                argv += ["--replicaof", "127.0.0.1", str(self.ports["primary"])]
            node = self.processes.spawn(role, argv, data, self.ports[role], "redis-server")
            _wait(functools.partial(_redis_ping, node.port), self.start_timeout, f"redis {role}")
        for i in (1, 2, 3):
            role = f"sentinel-{i}"
            if role in running:
                continue
            home = self.home / role
            config = home / "sentinel.conf"
            if not config.exists():  # a Sentinel rewrites its file: the state it learnt
                home.mkdir(parents=True, exist_ok=True)
                config.write_text(self._sentinel_config(self.ports[role], home))
            node = self.processes.spawn(role, [sentinel, str(config)], home, self.ports[role],
                                        "redis-sentinel")  # fmt: skip
            _wait(functools.partial(_redis_ping, node.port), self.start_timeout, f"redis {role}")
        _wait(self._healthy, self.start_timeout, "the Sentinels to watch a replicated primary")
        return self.processes.records()

    def _sentinel_config(self, port: int, home: Path) -> str:
        return "\n".join([
            f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {home}",
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.ports['primary']} 2",
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000",
            f"sentinel failover-timeout {SENTINEL_MASTER} 10000",
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
            "",
        ])  # fmt: skip

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels say (None if none answers)."""
        import redis

        for i in (1, 2, 3):
            client = redis.Redis(port=self.ports[f"sentinel-{i}"], socket_timeout=0.5)
            with contextlib.suppress(redis.RedisError), client:
                found: Any = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
                if found:
                    return int(found[1])
        return None

    def _healthy(self) -> bool:
        """Every Sentinel knows the primary, its replica (in sync) and the two other Sentinels."""
        import redis

        primary = self.primary_port()
        if primary is None:
            return False
        with redis.Redis(port=primary, socket_timeout=0.5) as client:
            info = client.info("replication")
            if info.get("role") != "master" or int(info.get("connected_slaves", 0)) < 1:
                return False
            if info["slave0"].get("state") != "online":
                return False
        for i in (1, 2, 3):
            with redis.Redis(port=self.ports[f"sentinel-{i}"], socket_timeout=0.5) as sentinel:
                master = sentinel.sentinel_master(SENTINEL_MASTER)
                if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                    return False
                if master["flags"] != "master":
                    return False
        return True

    def stop(self) -> list[str]:
        return self.processes.stop()


# -- Kafka: three KRaft nodes --------------------------------------------------------------
def cluster_properties(node_id: int, ports: dict[str, int], data_dir: Path, nodes: int = 3) -> str:
    """server.properties of node ``node_id`` of a ``nodes``-node KRaft cluster whose broker
    and controller ports are ``ports["broker-N"]`` and ``ports["controller-N"]``."""
    voters = ",".join(f"{n}@127.0.0.1:{ports[f'controller-{n}']}" for n in range(1, nodes + 1))
    broker, controller = ports[f"broker-{node_id}"], ports[f"controller-{node_id}"]
    replication, isr = min(3, nodes), min(2, nodes)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        f"listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        f"default.replication.factor={replication}",
        f"min.insync.replicas={isr}",
        "unclean.leader.election.enable=false",
        f"offsets.topic.replication.factor={replication}",
        "offsets.topic.num.partitions=4",
        f"transaction.state.log.replication.factor={replication}",
        f"transaction.state.log.min.isr={isr}",
        f"share.coordinator.state.topic.replication.factor={replication}",
        f"share.coordinator.state.topic.min.isr={isr}",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        # a node killed -9 is declared dead after 3 s (9 s by default): leaders move sooner
        "broker.session.timeout.ms=3000",
        "broker.heartbeat.interval.ms=500",
        "",
    ])  # fmt: skip


class KafkaCluster:
    """Three KRaft nodes (broker + controller each) in ``home`` (see the module)."""

    def __init__(
        self,
        home: Path,
        cache_dir: Path,
        version: str,
        log: Log = lambda _m: None,
        *,
        nodes: int = 3,
        start_timeout: float = 120.0,
        heap: str = "512m",
    ) -> None:
        self.home, self.cache_dir, self.version, self.log = home, cache_dir, version, log
        self.nodes, self.start_timeout, self.heap = nodes, start_timeout, heap
        self.processes = _Processes(home, log)
        names = [f"{kind}-{n}" for n in range(1, nodes + 1) for kind in ("broker", "controller")]
        self.ports = recorded_ports(
            home, lambda: {name: free_port() for name in names}, "kafka cluster", 15.0
        )

    @property
    def bootstrap(self) -> str:
        """``RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS`` for this cluster (every broker)."""
        return ",".join(self.address(n) for n in range(1, self.nodes + 1))

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.ports[f'broker-{node}']}"

    def up(self) -> dict[str, Node]:
        """Start the nodes that are not running (formatting a node's directory only once)
        and wait until every broker answers."""
        java = shutil.which("java")
        if java is None:
            raise ServiceError("Java 17+ is needed to run Kafka; install openjdk-17-jre-headless")
        lib = KafkaNode(self.home, self.cache_dir, self.version, self.log).classpath()
        id_file = self.home / "cluster-id"
        if not id_file.exists():
            id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        cluster_id = id_file.read_text().strip()
        running = self.processes.records()
        started = []
        for n in range(1, self.nodes + 1):
            name = f"kafka-{n}"
            if name in running:
                continue
            home = self.home / name
            home.mkdir(parents=True, exist_ok=True)
            data = home / "data"
            config = home / "server.properties"
            config.write_text(cluster_properties(n, self.ports, data, self.nodes))
            source = resources.files("stream.dev") / "resources" / "kafka-log4j2.yaml"
            (home / "log4j2.yaml").write_bytes(source.read_bytes())
            base = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
                    f"-Dkafka.logs.dir={home / 'logs'}", "-cp", f"{lib}/*"]  # fmt: skip
            if not (data / "meta.properties").exists():
                shutil.rmtree(data, ignore_errors=True)
                format_kafka_storage(base, config, cluster_id, standalone=False)
            self.processes.spawn(name, [*base, KAFKA_MARKER, str(config)], home,
                                 self.ports[f"broker-{n}"], KAFKA_MARKER)  # fmt: skip
            started.append(n)
        for n in started:
            address = self.address(n)
            _wait(functools.partial(kafka_ready, address), self.start_timeout, f"kafka node {n}")
        return self.processes.records()

    def node(self, n: int) -> Node | None:
        return self.processes.records().get(f"kafka-{n}")

    def stop(self, *, graceful: bool = True) -> list[str]:
        return self.processes.stop(graceful=graceful)


# -- `riverstream services up --cluster` ---------------------------------------------------
KAFKA_HOME, REDIS_HOME, ENDPOINTS_FILE = "kafka-cluster", "redis-ha", "cluster.json"


def _kafka_cluster(state_dir: Path, cache_dir: Path, version: str, log: Log) -> KafkaCluster:
    return KafkaCluster(state_dir / KAFKA_HOME, cache_dir, version, log)


def cluster_up(state_dir: Path, cache_dir: Path, version: str, log: Log) -> dict[str, str]:
    """Start (or complete) the replicated Kafka and Redis of ``state_dir``; their endpoints,
    also written to ``cluster.json`` where `cluster_endpoints` reads them."""
    kafka = _kafka_cluster(state_dir, cache_dir, version, log)
    kafka.up()
    log(f"kafka cluster ready at {kafka.bootstrap}")
    redis_ha = RedisHA(state_dir / REDIS_HOME, log)
    redis_ha.up()
    log(f"redis primary + replica ready; sentinels at {redis_ha.sentinels}")
    endpoints = {
        "kafka_bootstrap_servers": kafka.bootstrap,
        "redis_url": redis_ha.url("primary"),
        "redis_sentinels": redis_ha.sentinels,
        "redis_sentinel_master": SENTINEL_MASTER,
    }
    (state_dir / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2))
    return endpoints


def cluster_nodes(state_dir: Path) -> list[Node]:
    """The running processes of the cluster of ``state_dir`` (none when it never ran)."""
    nodes: list[Node] = []
    for home in (KAFKA_HOME, REDIS_HOME):
        if (state_dir / home / RECORDS).exists():
            nodes += _Processes(state_dir / home, lambda _m: None).records().values()
    return nodes


def cluster_endpoints(state_dir: Path) -> dict[str, str] | None:
    """The endpoints of the cluster of ``state_dir`` while any of its nodes runs."""
    path = state_dir / ENDPOINTS_FILE
    if not path.exists() or not cluster_nodes(state_dir):
        return None
    endpoints: dict[str, str] = json.loads(path.read_text())
    return endpoints


def cluster_down(state_dir: Path, *, purge: bool = False) -> list[str]:
    """Stop the cluster's processes by pid; ``purge``: delete its data and ports too."""
    stopped: list[str] = []
    for home in (KAFKA_HOME, REDIS_HOME):
        if (state_dir / home / RECORDS).exists():
            stopped += _Processes(state_dir / home, lambda _m: None).stop()
        if purge:
            shutil.rmtree(state_dir / home, ignore_errors=True)
    if purge:
        (state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
    return stopped
