"""The Redis snapshot store against a real redis-server."""

from __future__ import annotations

import os
import pickle
import threading
import time
import zlib
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from learners.serialization import MAGIC, dump_signed, load_signed
from schemas.errors import SnapshotError, SnapshotIntegrityError
from stream.store import snapshots
from stream.store.snapshots import (
    OwnershipLostError,
    RedisUnavailableError,
    SnapshotMeta,
    SnapshotStore,
)

pytestmark = pytest.mark.integration

KEY = b"test-key"


def meta_for(name: str, blob: bytes, samples: int = 10) -> SnapshotMeta:
    return SnapshotMeta.describe(
        name, blob, kind="classifier", spec="logreg", samples_learned=samples,
        metrics={"Accuracy": 0.5}, offsets={"features:0": samples},
    )  # fmt: skip


def write(store: SnapshotStore, objs: dict[str, object], version: int | None = None) -> int:
    version = store.next_version() if version is None else version
    models = {}
    for name, obj in objs.items():
        blob = dump_signed(obj, KEY)
        models[name] = (blob, meta_for(name, blob, samples=version))
    store.write(version, models, dump_signed({"join": version}, KEY), {"features:0": version})
    return version


def latest_checkpoint(store: SnapshotStore) -> tuple[int, bytes, dict[str, int]]:
    """``store.latest_checkpoint()``, which these tests have just written."""
    latest = store.latest_checkpoint()
    assert latest is not None
    return latest


class _SideEffect:
    """Unpickling this creates a directory: proof that a blob was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_round_trip_metadata_and_pointers(client: redis.Redis, prefix: str) -> None:
    store = SnapshotStore(client, prefix, KEY)
    assert store.models() == [] and store.latest_version("a") is None
    assert store.latest_checkpoint() is None
    v1 = write(store, {"a": {"w": 1}, "b": [1, 2]})
    v2 = write(store, {"a": {"w": 2}})
    assert store.models() == ["a", "b"]
    assert store.versions("a") == [v1, v2] and store.versions("b") == [v1]
    assert store.latest_version("a") == v2 and store.latest_version("b") == v1
    obj, meta = store.load_model("a", v2)
    assert obj == {"w": 2}
    assert (meta.model, meta.version, meta.samples_learned, meta.kind) == (
        "a",
        v2,
        v2,
        "classifier",
    )
    assert meta.metrics == {"Accuracy": 0.5} and meta.offsets == {"features:0": v2}
    assert meta.size == len(store.read_model_blob("a", v2)) and meta.chunks == 1
    assert len(meta.sha256) == 64 and meta.river_version and meta.python_version
    assert meta.created_at <= time.time()
    assert SnapshotMeta.from_json(meta.to_json()) == meta
    version, blob, offsets = latest_checkpoint(store)
    assert (version, load_signed(blob, KEY), offsets) == (v2, {"join": v2}, {"features:0": v2})
    assert store.checkpoint(v1)[2] == {"features:0": v1}


def test_pointers_only_move_forward_and_promoted_wins(client: redis.Redis, prefix: str) -> None:
    store = SnapshotStore(client, prefix, KEY)
    write(store, {"a": 5}, version=5)
    write(store, {"a": 3}, version=3)
    assert store.latest_version("a") == 5 and latest_checkpoint(store)[0] == 5
    assert store.versions("a") == [3, 5]
    assert store.serving_version("a") == 5
    client.set(store.keys.promoted("a"), 3)
    assert store.serving_version("a") == 3


def test_chunking_with_tiny_chunks(client: redis.Redis, prefix: str) -> None:
    store = SnapshotStore(client, prefix, KEY, chunk_bytes=7)
    payload = os.urandom(1000)  # incompressible, so the blob is > 1000 bytes
    version = write(store, {"big": payload})
    meta = store.meta("big", version)
    assert meta.chunks == -(-meta.size // 7) > 100
    assert client.strlen(store.keys.chunk("big", version, 0)) == 7
    assert store.load_model("big", version)[0] == payload
    assert load_signed(latest_checkpoint(store)[1], KEY) == {"join": version}


def test_tampered_blobs_are_refused_and_never_unpickled(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    store = SnapshotStore(client, prefix, KEY, chunk_bytes=16)
    marker = tmp_path / "unpickled"
    version = write(store, {"m": "good"})
    # 1. a flipped byte in a chunk: the checksum refuses it
    key = store.keys.chunk("m", version, 1)
    chunk = cast(bytes, client.get(key))
    client.set(key, bytes([chunk[0] ^ 1]) + chunk[1:])
    with pytest.raises(SnapshotIntegrityError):
        store.load_model("m", version)
    # 2. a malicious blob, signed with another key, with a matching checksum in its meta
    evil = dump_signed(_SideEffect(marker), b"attacker key")
    evil_body = zlib.compress(pickle.dumps(_SideEffect(marker), protocol=pickle.HIGHEST_PROTOCOL))
    v2 = store.next_version()
    store.write(v2, {"m": (evil, meta_for("m", evil))}, dump_signed({}, KEY), {})
    with pytest.raises(SnapshotIntegrityError):
        store.load_model("m", v2)
    with pytest.raises(SnapshotIntegrityError):
        store.read_model_blob("m", v2)
    # 3. unsigned bytes
    v3 = store.next_version()
    raw = MAGIC + b"\0" * 32 + evil_body
    store.write(v3, {"m": (raw, meta_for("m", raw))}, dump_signed({}, KEY), {})
    with pytest.raises(SnapshotIntegrityError):
        store.load_model("m", v3)
    assert not marker.exists()
    # sanity: the same object signed with the right key would have had its side effect
    load_signed(dump_signed(_SideEffect(marker), KEY), KEY)
    assert marker.exists()


def test_tampered_checkpoint_refused(client: redis.Redis, prefix: str) -> None:
    store = SnapshotStore(client, prefix, KEY)
    version = write(store, {"m": 1})
    key = store.keys.checkpoint_chunk(version, 0)
    chunk = cast(bytes, client.get(key))
    client.set(key, chunk[:-1] + bytes([chunk[-1] ^ 1]))
    with pytest.raises(SnapshotIntegrityError):
        store.latest_checkpoint()


def test_missing_chunk_and_unknown_version_are_snapshot_errors(
    client: redis.Redis, prefix: str
) -> None:
    store = SnapshotStore(client, prefix, KEY)
    version = write(store, {"m": 1})
    client.delete(store.keys.chunk("m", version, 0))
    with pytest.raises(SnapshotError) as info:
        store.load_model("m", version)
    assert not isinstance(info.value, SnapshotIntegrityError)
    with pytest.raises(SnapshotError, match="no snapshot"):
        store.meta("m", 999)
    with pytest.raises(SnapshotError, match="invalid model name"):
        write(store, {"a:b": 1})


def test_crash_before_the_transaction_leaves_nothing_visible(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(client, prefix, KEY)
    v1 = write(store, {"m": 1})
    real_pipeline = client.pipeline

    def failing_pipeline(transaction: bool = True, **kwargs):
        pipe = real_pipeline(transaction=transaction, **kwargs)
        if transaction:
            cast(Any, pipe).execute = _raise  # the crash, between step 1 and step 2
        return pipe

    def _raise(*args, **kwargs):
        raise redis.ConnectionError("killed")

    monkeypatch.setattr(client, "pipeline", failing_pipeline)
    with pytest.raises(RedisUnavailableError):
        write(store, {"m": 2})
    monkeypatch.undo()
    assert client.exists(store.keys.chunk("m", v1 + 1, 0))  # step 1 happened...
    assert store.versions("m") == [v1] and store.latest_version("m") == v1  # ...invisibly
    assert latest_checkpoint(store)[0] == v1


def test_the_notification_goes_with_the_transaction(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUBLISH is queued in the MULTI that makes the version visible: no window where the
    version is visible and unannounced, and one round trip less (before: a pipeline of its own,
    a crash between the two left the version to the pollers)."""
    store = SnapshotStore(client, prefix, KEY)
    real_pipeline = client.pipeline
    queued: list[list[str]] = []

    def pipeline(transaction: bool = True, **kwargs):
        pipe = real_pipeline(transaction=transaction, **kwargs)
        execute = pipe.execute

        def recording(*a, **k):
            queued.append([str(args[0]) for args, _ in pipe.command_stack])
            return execute(*a, **k)

        cast(Any, pipe).execute = recording
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    with store.subscribe() as sub:
        version = write(store, {"m": 1})
        monkeypatch.undo()
        note, deadline = None, time.monotonic() + 5
        while note is None and time.monotonic() < deadline:
            note = sub.get(timeout=0.5)
    assert note is not None and (note.model, note.version) == ("m", version)
    (transaction,) = queued  # one pipeline: the transaction (the chunks go before its MULTI)
    assert transaction.count("PUBLISH") == 1


def test_with_replicas_to_wait_for_a_lost_notification_is_caught_up_by_pollers(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(client, prefix, KEY, wait_replicas=1)  # none: WAIT times out (1 s)
    real_pipeline = client.pipeline
    calls = []

    def pipeline(transaction: bool = True, **kwargs):
        calls.append(transaction)
        pipe = real_pipeline(transaction=transaction, **kwargs)
        if len(calls) == 2:  # step 3, after WAIT
            cast(Any, pipe).execute = lambda *a, **k: (_ for _ in ()).throw(
                redis.ConnectionError("killed")
            )
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    with pytest.raises(RedisUnavailableError):
        write(store, {"m": 1})
    monkeypatch.undo()
    assert calls == [True, False]
    assert store.latest_version("m") == 1 and store.load_model("m", 1)[0] == 1


def test_a_write_takes_four_round_trips_after_its_number(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(client, prefix, KEY)
    write(store, {"a": 1, "b": 2})
    version = store.next_version()
    sent: list[bytes] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(
            b"".join(bytes(part) for part in (command if isinstance(command, list) else [command]))
        )
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    write(store, {"a": 3, "b": 4}, version)
    monkeypatch.undo()
    # WATCH the owners, read them and the types of the keys the transaction adds to (one
    # EVAL), the chunks, MULTI..EXEC, all on one connection (before: 7: the owners read twice,
    # SCRIPT EXISTS, the PUBLISH apart)
    assert [packet.split(b"\r\n")[2] for packet in sent] == [b"WATCH", b"EVAL", b"SET", b"MULTI"]
    assert store.latest_version("a") == store.latest_version("b") == version
    assert store.load_model("b", version)[0] == 4


def test_a_model_owned_by_another_learner_is_refused_before_its_chunks(
    client: redis.Redis, prefix: str
) -> None:
    store = SnapshotStore(client, prefix, KEY)
    v1 = write(store, {"m": 1})
    client.set(store.keys.owner("m"), "b")  # handed over to learner b
    with pytest.raises(OwnershipLostError, match="owned by learner 'b'"):
        write(store, {"m": 2})
    assert not client.exists(store.keys.chunk("m", v1 + 1, 0))
    assert store.versions("m") == [v1]


def test_a_handover_while_the_chunks_are_written_is_named_and_changes_nothing(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(client, prefix, KEY)
    v1 = write(store, {"m": 1})
    batch = snapshots.batch

    def handed_over(r, *commands):  # the chunks go, then the model is handed over
        replies = batch(r, *commands)
        client.set(store.keys.owner("m"), "b")
        return replies

    monkeypatch.setattr(snapshots, "batch", handed_over)
    with pytest.raises(OwnershipLostError, match="owned by learner 'b'"):
        write(store, {"m": 2})
    assert client.exists(store.keys.chunk("m", v1 + 1, 0))  # written, and never referenced
    assert store.versions("m") == [v1] and store.latest_version("m") == v1
    assert latest_checkpoint(store)[0] == v1


def test_notification_received(client: redis.Redis, prefix: str) -> None:
    store = SnapshotStore(client, prefix, KEY)
    with store.subscribe() as sub:
        version = write(store, {"a": 1, "b": 2})
        seen: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            note = sub.get(timeout=0.5)
            if note is not None:
                seen.add((note.model, note.version))
    assert seen == {("a", version), ("b", version)}


def test_readers_never_see_a_partial_version(client: redis.Redis, prefix: str) -> None:
    store = SnapshotStore(client, prefix, KEY, chunk_bytes=256)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        while not stop.is_set() and len(written) < 150:
            written.append(write(store, {"m": os.urandom(4000)}))

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            version = store.latest_version("m")
            if version is not None:
                obj, meta = store.load_model("m", version)
                assert len(obj) == 4000 and meta.version == version and meta.chunks > 10
                reads += 1
            for v in store.versions("m")[-3:]:
                store.meta("m", v)
    finally:
        stop.set()
        thread.join()
    assert reads > 10 and len(written) >= 10


def test_redis_down_is_wrapped() -> None:
    with socket_closed_port() as port:
        dead = redis.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        store = SnapshotStore(dead, "x", KEY)
        with pytest.raises(RedisUnavailableError):
            store.latest_version("m")
        with pytest.raises(RedisUnavailableError):
            store.subscribe()
        dead.close()


def test_decoding_client_rejected(redis_url: str) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(SnapshotError, match="decode_responses"):
        SnapshotStore(decoding, "x", KEY)
    decoding.close()


class socket_closed_port:
    """A port on 127.0.0.1 where nothing listens."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_checkpoint_without_models_is_written(client: redis.Redis, prefix: str) -> None:
    """A learner whose every model was handed over writes its final checkpoint with no model:
    nothing to watch, and the keys' types are still checked (on the client, at once)."""
    store = SnapshotStore(client, prefix, KEY)
    write(store, {"m": 1})
    version = write(store, {})
    latest = store.latest_checkpoint()
    assert latest is not None and latest[0] == version
    assert load_signed(latest[1], KEY) == {"join": version}
    assert store.versions("m") == [version - 1]


def test_a_write_of_thousands_of_models_checks_their_owners(
    client: redis.Redis, prefix: str
) -> None:
    """The owners are read one GET at a time inside the script: Lua's ``unpack`` of Redis
    stops at ≈ 8 000 values, where an MGET of them all would fail every write."""
    store = SnapshotStore(client, prefix, KEY)
    blob = dump_signed(0, KEY)
    names = [f"m{i}" for i in range(9000)]
    version = store.next_version()
    models = {name: (blob, meta_for(name, blob)) for name in names}
    store.write(version, models, dump_signed({}, KEY), {})
    assert store.latest_version("m8999") == version
    client.set(store.keys.owner("m4500"), "b")  # handed over to learner b
    with pytest.raises(OwnershipLostError, match="model m4500 is owned by learner 'b'"):
        store.write(store.next_version(), models, dump_signed({}, KEY), {})
