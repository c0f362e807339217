"""The local Kafka: one combined broker + controller (KRaft) in ``<state_dir>/kafka``.

`KafkaNode.prepare` gets everything ready for `ServiceManager` to spawn ``kafka.Kafka``: the
jars (Apache Kafka's, resolved with Maven into the cache directory once, and again when
``resources/kafka-pom.xml`` changed: `KafkaNode.classpath`), the node's two ports
(chosen at its first start, then the same for life, see `stream.dev.ports`), its
``server.properties`` and log configuration, and its data directory, formatted only when it
does not exist yet. So a broker that crashed, even with clients connected, restarts on the same
ports with every topic and event it had; only ``services down --purge`` starts afresh.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from schemas.errors import ServiceError
from stream.dev.ports import PORTS_FILE, free_ports, preferred_port, recorded_ports

MARKER = "kafka.Kafka"  # in the command line of a running node


@dataclass(frozen=True)
class KafkaCommand:
    """How to start a prepared node, and where it will answer."""

    argv: list[str]
    address: str


class KafkaNode:
    """A single-node KRaft Kafka whose files live in ``home``."""

    def __init__(
        self, home: Path, cache_dir: Path, version: str, log: Callable[[str], None]
    ) -> None:
        self.home = home
        self.cache_dir = cache_dir
        self.version = version
        self.log = log

    def classpath(self) -> Path:
        """The directory of Kafka's jars, resolved with Maven into the cache on first use. Its
        ``.complete`` marker holds the SHA-256 of the ``kafka-pom.xml`` they were resolved
        from: a cache resolved from another pom (an empty marker: before the pom listed
        ``kafka-tools``) is resolved again into the same directory."""
        lib = self.cache_dir / f"kafka-{self.version}" / "lib"
        pom = resources.files("stream.dev") / "resources" / "kafka-pom.xml"
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        marker = lib / ".complete"
        if marker.is_file() and marker.read_text().strip() == digest:
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError("Maven (mvn) is needed to fetch Kafka's jars; install maven")
        lib.mkdir(parents=True, exist_ok=True)
        self.log(f"fetching Apache Kafka {self.version} jars with Maven ...")
        with resources.as_file(pom) as pom_path:
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
                 f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
                 f"-Dkafka.version={self.version}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"Maven could not fetch Kafka's jars:\n{result.stdout[-2000:]}")
        marker.write_text(digest)
        return lib

    def prepare(self, port_timeout: float) -> KafkaCommand:
        """Jars, ports, configuration and a formatted data directory; the command to run.

        The recorded ports are awaited for up to ``port_timeout`` seconds (see
        `stream.dev.ports.await_port`); a data directory without recorded ports is an error, not
        a reason to format it again.
        """
        java = shutil.which("java")
        if java is None:
            raise ServiceError("Java 17+ is needed to run Kafka; install openjdk-17-jre-headless")
        lib = self.classpath()
        data = self.home / "data"
        formatted = (data / "meta.properties").exists()
        if formatted and not (self.home / PORTS_FILE).exists():
            raise ServiceError(
                f"{data} holds Kafka data but {self.home / PORTS_FILE} is missing; restore it, "
                "or start afresh with `riverstream services down --purge kafka`"
            )
        ports = recorded_ports(
            self.home,
            _broker_and_controller,
            "kafka",
            port_timeout,
        )
        config = self.home / "server.properties"
        config.write_text(kafka_properties(ports["broker"], ports["controller"], data))
        log4j = resources.files("stream.dev") / "resources" / "kafka-log4j2.yaml"
        (self.home / "log4j2.yaml").write_bytes(log4j.read_bytes())
        base = [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
                f"-Dkafka.logs.dir={self.home / 'logs'}", "-cp", f"{lib}/*"]  # fmt: skip
        if not formatted:
            shutil.rmtree(data, ignore_errors=True)  # a format interrupted before meta.properties
            format_kafka_storage(base, config, _kafka_cluster_id())
        return KafkaCommand([*base, MARKER, str(config)], f"127.0.0.1:{ports['broker']}")


def format_kafka_storage(
    java_command: list[str],
    config: Path,
    cluster_id: str,
    *,
    standalone: bool = True,
    options: Sequence[str] = (),
) -> None:
    """Format a KRaft data directory: a single node as a standalone controller, or (not
    ``standalone``) a node of a static quorum its config lists (`stream.dev.cluster`);
    ``options``: more of the tool's (``--add-scram ...``: users of a SASL/SCRAM listener)."""
    # ``--cluster-id=ID`` in one argument: a base64 id may begin with "-", which argparse
    # would take for an option after ``-t`` (1 start in 64 failed that way).
    fmt = subprocess.run(
        [*java_command, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         "-c", str(config), *(["--standalone"] if standalone else []), *options],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if fmt.returncode != 0:
        raise ServiceError(f"formatting Kafka's data directory failed: {fmt.stdout}{fmt.stderr}")


def _kafka_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _broker_and_controller() -> dict[str, int]:
    """9092 for the broker when it is free, and a controller port that is not the broker's: a
    free port asked for after another was closed can be that one again (a CI run's demo got
    both listeners on one port, and Kafka refused to format its storage)."""
    broker = preferred_port(9092)
    return {"broker": broker, "controller": next(p for p in free_ports(2) if p != broker)}


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


def kafka_ready(address: str) -> bool:
    """Whether the broker at ``address`` accepts connections and answers metadata requests."""
    from stream.kafka.client import broker_ready

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
        pass
    return broker_ready(address)
