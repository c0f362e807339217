"""Wiring of the learner's adapters from settings (used by the CLI, the demo and the tests)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from learners.comparisons import ComparePairs
from learners.specs import ModelSpec, parse_model_option
from schemas.errors import ConfigError, RiverstreamError
from schemas.records import SnapshotMeta
from schemas.settings import Settings
from stream.kafka.client import EventProducer, create_topics, open_source, partitions_for
from stream.kafka.deadletter import DeadLetters, check_writable
from stream.kafka.security import kafka_security
from stream.kafka.times import offsets_for_times
from stream.learner.backfill import Backfill
from stream.learner.loop import Learner
from stream.learner.observing import Observer
from stream.registry.challenger import ChallengerPolicies
from stream.registry.owners import claim
from stream.registry.registry import Registry
from stream.store.commands import CommandQueue
from stream.store.connect import redis_client
from stream.store.snapshots import SnapshotStore, open_store

log = logging.getLogger(__name__)


def model_specs(models: Sequence[str], metrics: Sequence[str]) -> list[ModelSpec]:
    """``--model NAME=SPEC`` options and ``--metric [MODEL:]Metric`` options → specs.

    >>> [s.metric_names for s in model_specs(["a=logreg", "b=hoeffding"], ["Accuracy", "b:ROCAUC"])]
    [('Accuracy',), ('Accuracy', 'ROCAUC')]
    """
    if not models:
        raise ConfigError("give at least one --model NAME=SPEC (e.g. --model logreg=logreg)")
    names = [m.partition("=")[0].strip() for m in models]
    shared = [m for m in metrics if ":" not in m]
    per_model: dict[str, list[str]] = {}
    for m in metrics:
        if ":" in m:
            model, _, metric = m.partition(":")
            if model not in names:
                raise ConfigError(f"--metric {m}: no model named {model!r}")
            per_model.setdefault(model, []).append(metric)
    return [
        parse_model_option(option, [*shared, *per_model.get(name, [])])
        for option, name in zip(models, names, strict=True)
    ]


def snapshot_store(settings: Settings) -> SnapshotStore:
    """The configured snapshot store (`stream.store.snapshots.open_store`)."""
    return open_store(settings)


def promote_after_write(keep: int) -> Callable[[SnapshotStore, int, dict[str, SnapshotMeta]], None]:
    """The step after a snapshot is written: promotion policy, then retention, per model; then
    the graphs' champion/challenger policies (`stream.registry.challenger`), on the comparisons
    written with the snapshot. A policy that cannot be evaluated is logged: it never fails the
    snapshot, and the next one evaluates it again."""

    def after_write(store: SnapshotStore, version: int, metas: dict[str, SnapshotMeta]) -> None:
        registry = Registry(store)
        for name, meta in metas.items():
            registry.auto_promote(name, version, meta.metrics)
            registry.retention(name, keep)
        try:
            ChallengerPolicies(store.client, store.keys.prefix, by="learner").evaluate()
        except Exception:
            log.exception("champion/challenger policies after v%d", version)

    return after_write


def build_learner(
    settings: Settings,
    specs: list[ModelSpec],
    *,
    observer: Observer | None = None,
    use_fork: bool = True,
    compare: ComparePairs = (),
    backfill_from: float | None = None,
) -> Learner:
    """The learner of ``specs`` on the configured Kafka and Redis; ``compare``: the
    champion/challenger pairs its core compares (`learners.comparisons`)."""
    bootstrap = settings.kafka_bootstrap_servers
    if not bootstrap:
        raise ConfigError(
            "no Kafka address: set RIVERSTREAM_KAFKA_BOOTSTRAP_SERVERS or run `riverstream services up`"
        )
    security = kafka_security(settings)
    create_topics(bootstrap, settings.topics(), security=security)
    partitions = partitions_for(bootstrap, settings.topic_features, security=security)
    if partitions_for(bootstrap, settings.topic_labels, security=security) != partitions:
        raise RiverstreamError(
            f"{settings.topic_features} and {settings.topic_labels} must have the same partitions "
            "so that a label lands beside its features"
        )
    check_writable(bootstrap, settings.topic_dlq, security)  # not at the first dead letter
    store = snapshot_store(settings)
    # The learning thread's own calls to Redis are small (a version number, a live update, its
    # commands every 0.2 s, the outage's PING): a client with short timeouts, so that a hung
    # Redis holds learning 0.5 s at most. The blobs keep the store's 10 s (the writer thread,
    # the forked child, restores, the final snapshot: large ones on a slow link need it).
    quick = redis_client(settings, socket_connect_timeout=0.5, socket_timeout=0.5)
    # Learner groups: this learner owns its models, or it does not start (stream.registry.owners);
    # and this process holds the learner's new epoch: an older process of the same name, still
    # running, can write nothing more (`stream.store.snapshots.FencedError`).
    epoch = claim(store.client, store.keys, settings.learner, [spec.name for spec in specs])
    store.epoch = epoch

    def fenced_store() -> SnapshotStore:  # the forked child's and the writer thread's
        opened = snapshot_store(settings)
        opened.epoch, opened.process = epoch, store.process  # the learner's epoch, host and pid
        return opened

    group = f"{settings.redis_prefix}-learner"
    backfill = None  # new models catch up from that time first (stream.learner.backfill)
    if backfill_from is not None:
        backfill = Backfill(
            settings,
            backfill_from,
            partitions=partitions,
            open_source=lambda: open_source(bootstrap, f"{group}-backfill", security=security),
            lookup=lambda parts, since: offsets_for_times(
                bootstrap, parts, since, security=security
            ),
        )
    learner = Learner(
        settings,
        specs,
        source=open_source(
            bootstrap,
            group if settings.learner == "default" else f"{group}-{settings.learner}",
            security=security,
        ),
        partitions=partitions,
        store=store,
        store_factory=fenced_store,
        dead_letters=DeadLetters(
            EventProducer(bootstrap, linger_ms=5, security=security), settings.topic_dlq
        ),
        observer=observer,
        commands=CommandQueue(quick, settings.redis_prefix, settings.learner, epoch=epoch),
        use_fork=use_fork,
        compare=compare,
        backfill=backfill,
        quick=quick,
    )
    learner.snapshotter.after_write = promote_after_write(settings.snapshot_retention)
    return learner
