"""Replicated infrastructure: a 3-broker Kafka, and Redis with Sentinels (`stream.dev.redis_ha`).

For people who want to see riverstream survive the loss of a node (`riverstream services up
--cluster`, all on 127.0.0.1) and for the tests that kill one, on one machine or across hosts
(each node on a `Host` of its own: a network namespace, `stream.dev.netns`). The engines are
the real ones, started the way production runs them:

- `KafkaCluster`: three combined broker + controller KRaft nodes (a static quorum of three
  voters), ``default.replication.factor=3`` and ``min.insync.replicas=2``: a topic created with
  the broker's default replication (riverstream's topics are) has every partition on all three,
  and a write acknowledged with acks=all is on at least two. One broker may die without losing an
  acknowledged event or stopping producers and consumers. A node's death is noticed within
  ``broker.session.timeout.ms`` (3 s here, 9 s by default). Each node binds and advertises its
  host's address.
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
import functools
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from schemas.errors import ServiceError
from stream.dev.kafka_node import MARKER as KAFKA_MARKER
from stream.dev.kafka_node import KafkaNode, format_kafka_storage, kafka_ready
from stream.dev.ports import free_ports, recorded_ports
from stream.dev.processes import LOCAL, RECORDS, Host, Log, Node, Processes, wait_until
from stream.dev.redis_ha import SENTINEL_MASTER, RedisHA

__all__ = [  # RedisHA, Node and SENTINEL_MASTER: where they were before their own modules
    "SENTINEL_MASTER", "KafkaCluster", "Node", "RedisHA", "cluster_down", "cluster_endpoints",
    "cluster_nodes", "cluster_properties", "cluster_up",
]  # fmt: skip


# -- Kafka: three KRaft nodes --------------------------------------------------------------
def cluster_properties(
    node_id: int,
    ports: dict[str, int],
    data_dir: Path,
    nodes: int = 3,
    hosts: Sequence[Host] | None = None,
    listener: Mapping[str, str] | None = None,
) -> str:
    """server.properties of node ``node_id`` of a ``nodes``-node KRaft cluster whose broker
    and controller ports are ``ports["broker-N"]`` and ``ports["controller-N"]``, node N on
    ``hosts[N - 1]`` (127.0.0.1 by default). ``listener``: the clients' and brokers' listener
    when it is not PLAINTEXT: its protocol under ``"protocol"``, the controllers' under
    ``"controller.protocol"``, and its other properties (`stream.dev.secure`)."""
    addr = [h.address for h in hosts] if hosts else ["127.0.0.1"] * nodes
    voters = ",".join(f"{n}@{addr[n - 1]}:{ports[f'controller-{n}']}" for n in range(1, nodes + 1))
    broker, controller = ports[f"broker-{node_id}"], ports[f"controller-{node_id}"]
    host = addr[node_id - 1]
    extra = dict(listener or {})
    protocol = extra.pop("protocol", "PLAINTEXT")
    controller_protocol = extra.pop("controller.protocol", "PLAINTEXT")
    replication, isr = min(3, nodes), min(2, nodes)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        f"listeners={protocol}://{host}:{broker},CONTROLLER://{host}:{controller}",
        f"advertised.listeners={protocol}://{host}:{broker}",
        "controller.listener.names=CONTROLLER",
        f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:{controller_protocol}",
        f"inter.broker.listener.name={protocol}",
        *(f"{key}={value}" for key, value in extra.items()),
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
    """Three KRaft nodes (broker + controller each) in ``home`` (see the module); node N runs
    on ``hosts[N - 1]`` (127.0.0.1 if not given)."""

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
        hosts: Sequence[Host] | None = None,
    ) -> None:
        self.home, self.cache_dir, self.version, self.log = home, cache_dir, version, log
        self.nodes, self.start_timeout, self.heap = nodes, start_timeout, heap
        self.hosts = list(hosts) if hosts else [LOCAL] * nodes
        if len(self.hosts) != nodes:
            raise ServiceError(f"a {nodes}-node Kafka cluster needs {nodes} hosts")
        self.processes = Processes(home, log)
        names = [f"{kind}-{n}" for n in range(1, nodes + 1) for kind in ("broker", "controller")]
        self.ports = recorded_ports(
            home,
            lambda: dict(zip(names, free_ports(len(names)), strict=True)),
            "kafka cluster",
            15.0,
        )

    @property
    def bootstrap(self) -> str:
        """``RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS`` for this cluster (every broker)."""
        return ",".join(self.address(n) for n in range(1, self.nodes + 1))

    def address(self, node: int) -> str:
        return self.hosts[node - 1].endpoint(self.ports[f"broker-{node}"])

    def listener(self) -> dict[str, str]:
        """Properties of the brokers' listener beyond PLAINTEXT (none here; see
        `stream.dev.secure.SecureKafkaCluster`)."""
        return {}

    def format_options(self) -> list[str]:
        """Extra options of ``kafka-storage format`` (none here: SCRAM users elsewhere)."""
        return []

    def ready(self, node: int) -> bool:
        """Whether node ``node`` answers a metadata request."""
        return kafka_ready(self.address(node))

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
            config.write_text(
                cluster_properties(n, self.ports, data, self.nodes, self.hosts, self.listener())
            )
            source = resources.files("stream.dev") / "resources" / "kafka-log4j2.yaml"
            (home / "log4j2.yaml").write_bytes(source.read_bytes())
            base = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
                    f"-Dkafka.logs.dir={home / 'logs'}", "-cp", f"{lib}/*"]  # fmt: skip
            if not (data / "meta.properties").exists():
                shutil.rmtree(data, ignore_errors=True)
                format_kafka_storage(
                    base, config, cluster_id, standalone=False, options=self.format_options()
                )
            self.processes.spawn(name, [*base, KAFKA_MARKER, str(config)], home,
                                 self.ports[f"broker-{n}"], KAFKA_MARKER,
                                 self.hosts[n - 1])  # fmt: skip
            started.append(n)
        for n in started:
            wait_until(functools.partial(self.ready, n), self.start_timeout, f"kafka node {n}")
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
    also written to ``cluster.json`` where `cluster_endpoints` reads them. Each node is recorded
    as it is spawned (`Processes.spawn`): interrupted (Ctrl-C, or SIGTERM and SIGHUP under
    `stream.dev.processes.EndOnSignal`), it leaves every node it started for `cluster_down`."""
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
            nodes += Processes(state_dir / home, lambda _m: None).records().values()
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
            stopped += Processes(state_dir / home, lambda _m: None).stop()
        if purge:
            shutil.rmtree(state_dir / home, ignore_errors=True)
    if purge:
        (state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
    return stopped
