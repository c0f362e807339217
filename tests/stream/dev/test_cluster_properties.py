"""Pure: the server.properties of a KRaft node on a host of its own, plain or secured
(`stream.dev.cluster.cluster_properties`, `stream.dev.secure.SecureKafkaCluster.listener`)."""

from __future__ import annotations

from pathlib import Path

from stream.dev.cluster import cluster_properties
from stream.dev.processes import Host
from stream.dev.secure import Certificates, SecureKafkaCluster

HOSTS = [Host("10.77.0.11"), Host("10.77.0.12"), Host("10.77.0.13")]
PORTS = {f"{kind}-{n}": 9000 + 10 * n + (kind == "controller")
         for n in (1, 2, 3) for kind in ("broker", "controller")}  # fmt: skip


def parse(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line]
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), "a property is set twice"
    return dict(pairs)


def test_each_node_binds_and_advertises_its_hosts_address(tmp_path: Path) -> None:
    props = parse(cluster_properties(2, PORTS, tmp_path, 3, HOSTS))
    assert props["listeners"] == "PLAINTEXT://10.77.0.12:9020,CONTROLLER://10.77.0.12:9021"
    assert props["advertised.listeners"] == "PLAINTEXT://10.77.0.12:9020"
    assert props["controller.quorum.voters"] == (
        "1@10.77.0.11:9011,2@10.77.0.12:9021,3@10.77.0.13:9031"
    )
    # without hosts: everything on 127.0.0.1, as `services up --cluster` runs it
    local = parse(cluster_properties(1, PORTS, tmp_path))
    assert local["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9010"
    assert local["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"


def test_a_secured_cluster_has_no_plain_listener(tmp_path: Path) -> None:
    certs = Certificates(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    cluster = SecureKafkaCluster(tmp_path / "kafka", tmp_path, "4.3.1", certs, {"app": "pw"},
                                 hosts=HOSTS)  # fmt: skip
    text = cluster_properties(3, PORTS, tmp_path, 3, HOSTS, cluster.listener())
    props = parse(text)
    assert "PLAINTEXT" not in text
    assert props["listeners"] == "SASL_SSL://10.77.0.13:9030,CONTROLLER://10.77.0.13:9031"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.truststore.location"] == str(certs.ca)
    admin = cluster.users["admin"]
    assert (
        f'username="admin" password="{admin}";'
        in (props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"])
    )
    # the users exist before the first start: created when the storage is formatted
    assert cluster.format_options() == [
        "--add-scram", f"SCRAM-SHA-512=[name=admin,password={admin}]",
        "--add-scram", "SCRAM-SHA-512=[name=app,password=pw]",
    ]  # fmt: skip
    assert cluster.security("app").librdkafka()["sasl.username"] == "app"
