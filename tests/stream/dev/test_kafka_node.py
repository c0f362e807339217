"""Pure: the cache of Kafka's jars is current only for the ``kafka-pom.xml`` it was resolved
from (`stream.dev.kafka_node.KafkaNode.classpath`), Maven replaced by a recorder."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from stream.dev.kafka_node import KafkaNode


def test_a_cache_resolved_from_another_pom_is_fetched_again_into_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache whose ``.complete`` is empty (made before it held the pom's hash: without
    kafka-tools) or holds another pom's hash is fetched again into its ``lib``; one whose
    marker holds this pom's SHA-256 is used as it is."""
    fetches: list[list[str]] = []

    def maven(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        fetches.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", maven)
    pom = resources.files("stream.dev") / "resources" / "kafka-pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    node = KafkaNode(tmp_path / "home", tmp_path / "cache", "4.3.1", lambda _m: None)
    lib = tmp_path / "cache" / "kafka-4.3.1" / "lib"
    lib.mkdir(parents=True)
    (lib / "kafka-clients-4.3.1.jar").write_text("a jar")
    for stale in ("", "0" * 64):
        (lib / ".complete").write_text(stale)
        fetches.clear()
        assert node.classpath() == lib
        assert len(fetches) == 1 and f"-DoutputDirectory={lib}" in fetches[0], fetches
        assert (lib / ".complete").read_text() == digest
        assert (lib / "kafka-clients-4.3.1.jar").read_text() == "a jar"  # the same directory
    fetches.clear()
    assert node.classpath() == lib
    assert fetches == []  # current: Maven not asked


def test_a_new_node_never_gets_one_port_for_both_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    """9092 taken, the broker gets a free port; the controller's is another, even when the
    kernel hands that same port out again (a CI run's demo got both listeners on one port,
    and Kafka refused to format its storage)."""
    from stream.dev import kafka_node

    monkeypatch.setattr(kafka_node, "preferred_port", lambda port: 41234)
    monkeypatch.setattr(kafka_node, "free_ports", lambda n: [41234, 41235][:n])
    assert kafka_node._broker_and_controller() == {"broker": 41234, "controller": 41235}
