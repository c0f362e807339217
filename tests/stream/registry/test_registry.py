"""The registry against the real Redis: pointers, history, policies, retention, concurrency."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import threading
from typing import cast

import pytest

from schemas.records import HistoryEntry
from stream.registry import base
from stream.registry.policy import rollback_target
from stream.registry.registry import HISTORY_LIMIT, Registry, RegistryError, RollbackCommand
from stream.store.snapshots import SnapshotStore
from tests.support.registry import dump_all, write_version

pytestmark = pytest.mark.integration


def test_versions_flags_and_verify(store: SnapshotStore, registry: Registry, key: bytes) -> None:
    v1 = write_version(store, key, samples=10)
    v2 = write_version(store, key, {"m": {"Accuracy": 0.7}}, samples=20)
    infos = registry.versions("m")
    assert [i.meta.version for i in infos] == [v1, v2]
    assert [i.serving for i in infos] == [False, True]  # no promoted pointer yet: latest
    assert infos[1].meta.metrics == {"Accuracy": 0.7} and infos[1].meta.samples_learned == 20
    assert all(i.has_checkpoint and not i.promoted and not i.pinned for i in infos)
    assert registry.verify("m", v1)[0] is True
    chunk = store.keys.chunk("m", v1, 0)
    blob = cast(bytes, store.client.get(chunk))
    store.client.set(chunk, blob[:-1] + bytes([blob[-1] ^ 1]))
    ok, detail = registry.verify("m", v1)
    assert not ok and "checksum" in detail
    assert registry.verify("m", v2)[0] is True


def test_promote_moves_serving_records_history_and_publishes(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, v2 = write_version(store, key), write_version(store, key)
    with store.subscribe() as sub:
        sub.get(timeout=0.2)  # consumes the subscription confirmation
        assert registry.promote("m", v1, "known good") is None
        notes = [sub.get(timeout=1) for _ in range(3)]
    assert ("m", v1) in [(n.model, n.version) for n in notes if n is not None]
    assert registry.serving_version("m") == store.serving_version("m") == v1
    assert registry.promote("m", v2, "newer") == v1
    with pytest.raises(RegistryError, match="already promoted"):
        registry.promote("m", v2, "again")
    entries = registry.history("m")
    assert [(e.action, e.from_, e.to, e.reason, e.by) for e in entries] == [
        ("promote", None, v1, "known good", "tester"),
        ("promote", v1, v2, "newer", "tester"),
    ]


def test_rollback_default_target_follows_the_promotion_history(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, v2, v3, v4 = (write_version(store, key) for _ in range(4))
    for v in (v1, v2, v3):
        registry.promote("m", v, f"release {v}")
    cmd = registry.rollback("m", reason="v3 is bad")
    assert cmd.to == v2 and registry.serving_version("m") == v2
    cmd2 = registry.rollback("m", reason="v2 too", resume="replay", exclude=[(10.0, 20.0)])
    assert cmd2.to == v1
    last = registry.history("m")[-1]
    assert (last.action, last.from_, last.to, last.resume, last.exclude) == (
        "rollback", v2, v1, "replay", [[10.0, 20.0]],
    )  # fmt: skip
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        registry.rollback("m", reason="nothing before v1")
    # The learner (stream.store.commands) peeks, applies, snapshots, then acknowledges with LTRIM;
    # until then, its snapshots may hold the state before the rollback: none is auto-promoted.
    assert registry.pending_commands() == [cmd, cmd2]
    assert cmd2.exclude == [[10.0, 20.0]] and cmd2.resume == "replay"
    assert registry.auto_promote("m", v4, {"Accuracy": 0.9}) is False
    store.client.ltrim(registry.keys.commands, 2, -1)  # the learner's ack
    v5 = write_version(store, key)
    assert registry.auto_promote("m", v5, {"Accuracy": 0.9}) is True
    assert registry.serving_version("m") == v5


def test_rollback_without_history_falls_back_to_the_previous_version(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, v2 = write_version(store, key), write_version(store, key)
    cmd = registry.rollback("m", reason="latest is bad")
    assert cmd.to == v1 and registry.serving_version("m") == v1
    raw = store.client.lrange(registry.keys.commands, 0, -1)
    assert [RollbackCommand.from_json(r) for r in raw] == [cmd]
    data = json.loads(raw[0])
    assert data["action"] == "rollback" and data["model"] == "m" and data["to"] == v1
    assert data["resume"] == "skip" and data["exclude"] == [] and data["at"] > 0 and data["id"]
    assert registry.history("m")[-1].from_ == v2


def test_pin_unpin_and_rollback_clears_the_pin(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, v2, v3 = (write_version(store, key) for _ in range(3))
    registry.promote("m", v2, "")
    registry.pin("m", v1, "freeze for the demo")
    assert registry.serving_version("m") == v1
    assert registry.auto_promote("m", v3, {"Accuracy": 0.5}) is True  # learning goes on
    assert registry.serving_version("m") == v1  # ... serving stays pinned
    assert [i.pinned for i in registry.versions("m")] == [True, False, False]
    assert registry.unpin("m", "demo over") == v3
    assert registry.serving_version("m") == v3
    with pytest.raises(RegistryError, match="not pinned"):
        registry.unpin("m")
    registry.pin("m", v3)
    registry.rollback("m", to=v1, reason="bad")
    assert registry.serving_version("m") == v1
    assert registry.history("m")[-1].detail["unpinned"] == v3
    actions = [e.action for e in registry.history("m")]
    assert actions == ["promote", "pin", "auto-promote", "unpin", "pin", "rollback"]


@pytest.mark.parametrize(
    ("metric", "current", "candidate", "margin", "promoted"),
    [
        ("Accuracy", 0.80, 0.85, 0.0, True),  # better
        ("Accuracy", 0.80, 0.78, 0.0, False),  # worse
        ("Accuracy", 0.80, 0.78, 0.05, True),  # worse, within the margin
        ("MAE", 1.0, 0.9, 0.0, True),  # lower is better
        ("MAE", 1.0, 1.2, 0.1, False),  # worse beyond the margin
        ("MAE", 1.0, 1.05, 0.1, True),
    ],
)
def test_guarded_promotion(
    store: SnapshotStore,
    registry: Registry,
    key: bytes,
    metric: str,
    current: float,
    candidate: float,
    margin: float,
    promoted: bool,
) -> None:
    v1 = write_version(store, key, {"m": {metric: current}})
    registry.set_policy("m", "guarded", margin=margin)
    assert registry.serving_version("m") == v1  # leaving `always` froze the pointer
    v2 = write_version(store, key, {"m": {metric: candidate}})
    assert registry.serving_version("m") == v1  # a new version alone changes nothing
    assert registry.auto_promote("m", v2, {metric: candidate}) is promoted
    assert registry.serving_version("m") == (v2 if promoted else v1)
    assert (registry.history("m")[-1].action == "auto-promote") is promoted


def test_policies_always_and_manual(store: SnapshotStore, registry: Registry, key: bytes) -> None:
    v1 = write_version(store, key)
    assert registry.policy("m").policy == "always"
    assert registry.auto_promote("m", v1, {}) is True
    assert registry.auto_promote("m", v1, {}) is False  # not newer than promoted
    registry.set_policy("m", "manual")
    v2 = write_version(store, key)
    assert registry.auto_promote("m", v2, {}) is False and registry.serving_version("m") == v1
    with pytest.raises(RegistryError, match="policy must be"):
        registry.set_policy("m", "sometimes")
    with pytest.raises(RegistryError, match="unknown metric"):
        registry.set_policy("m", "guarded", metric="Accurcy")
    with pytest.raises(RegistryError, match="margin"):
        registry.set_policy("m", "guarded", margin=-1)
    assert registry.policy("m").policy == "manual"


def test_no_auto_promotion_while_a_rollback_waits(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    v1, _v2 = write_version(store, key), write_version(store, key)
    registry.rollback("m", to=v1, reason="bad")
    v3 = write_version(store, key)  # the learner has not picked the rollback up yet
    assert registry.auto_promote("m", v3, {"Accuracy": 1.0}) is False
    assert registry.serving_version("m") == v1


def test_prune_keeps_promoted_pinned_target_and_recent(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    vs = [write_version(store, key, {"m": {"Accuracy": 0.5}}) for _ in range(10)]
    shared = write_version(store, key, {"m": {"Accuracy": 0.5}, "other": {"Accuracy": 0.5}})
    vs.append(shared)
    vs += [write_version(store, key) for _ in range(3)]
    registry.promote("m", vs[2], "")
    registry.promote("m", vs[4], "")
    registry.pin("m", vs[1])
    before = store.versions("m")
    removed = registry.prune("m", keep_last=3, reason="tidy")
    kept = store.versions("m")
    assert sorted(removed + kept) == before
    assert {vs[1], vs[2], vs[4], *vs[-3:]} == set(kept)  # pinned, target, promoted, newest 3
    assert shared in removed
    for v in removed:
        assert store.client.get(store.keys.meta("m", v)) is None
        assert store.client.get(store.keys.chunk("m", v, 0)) is None
    # A checkpoint goes with its last model version; `other` still uses the shared one.
    assert store.client.get(store.keys.checkpoint_meta(vs[0])) is None
    assert store.checkpoint(shared)[0] == shared
    for v in kept:
        store.load_model("m", v)
    assert registry.history("m")[-1].detail["removed"] == removed
    # Automatic retention with the per-model override; nothing protected goes.
    registry.set_retention("m", 1)
    registry.retention("m", default_keep=50)
    assert {vs[1], vs[2], vs[4], vs[-1]} == set(store.versions("m"))
    assert registry.history("m")[-1].action == "prune"  # retention itself is not recorded
    with pytest.raises(RegistryError, match="keep-last"):
        registry.prune("m", 0)


def test_concurrent_rollbacks_leave_a_consistent_pointer_and_both_entries(
    store: SnapshotStore, settings, key: bytes
) -> None:
    from stream.learner.runtime import snapshot_store

    vs = [write_version(store, key) for _ in range(4)]
    for v in vs:
        Registry(store, by="setup").promote("m", v, "")
    rounds = 10
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def operator(name: str, target: int) -> None:
        own = snapshot_store(settings)  # its own connection, like another operator's CLI
        try:
            reg = Registry(own, by=name)
            for _ in range(rounds):
                barrier.wait()
                reg.rollback("m", to=target, reason=f"{name} says so")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            own.client.close()

    threads = [threading.Thread(target=operator, args=(n, t)) for n, t in (("a", vs[0]), ("b", vs[1]))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    entries = [e for e in Registry(store).history("m") if e.action == "rollback"]
    assert len(entries) == 2 * rounds
    assert sorted(e.by for e in entries) == ["a"] * rounds + ["b"] * rounds
    for prev, cur in itertools.pairwise(entries):
        assert cur.from_ == prev.to  # serialised: each saw the pointer the other left
    assert store.serving_version("m") == entries[-1].to
    assert len(Registry(store).pending_commands()) == 2 * rounds


def test_errors_change_nothing(store: SnapshotStore, registry: Registry, key: bytes) -> None:
    v1, v2 = write_version(store, key), write_version(store, key)
    registry.promote("m", v2, "")
    store.client.delete(store.keys.checkpoint_meta(v1))  # as if pruned
    before = dump_all(store)
    cases = [
        (lambda: registry.promote("nope", v1, ""), "unknown model"),
        (lambda: registry.promote("m", 999, ""), "no version 999"),
        (lambda: registry.rollback("m", to=999, reason="x"), "no version 999"),
        (lambda: registry.rollback("m", to=v1, reason="x", resume="replay"), "no checkpoint"),
        (
            lambda: registry.rollback("m", to=v2, resume="replay", exclude=[(5, 1)], reason="x"),
            "from must be before",
        ),
        (lambda: registry.rollback("m", to=v2, exclude=[(1, 5)], reason="x"), "only applies"),
        (lambda: registry.rollback("m", to=v1, resume="rewind", reason="x"), "resume must be"),
        (lambda: registry.rollback("m", to=v1, reason=" "), "needs a reason"),
        (lambda: registry.pin("m", 999), "no version"),
        (lambda: registry.unpin("m"), "not pinned"),
        (lambda: registry.history("nope"), "unknown model"),
        (lambda: registry.versions("nope"), "unknown model"),
        (lambda: registry.verify("m", 999), "no version"),
        (lambda: registry.prune("nope", 3), "unknown model"),
    ]
    for call, message in cases:
        with pytest.raises(RegistryError, match=message):
            call()
    assert dump_all(store) == before


def test_history_is_bounded(store: SnapshotStore, registry: Registry, key: bytes) -> None:
    v1 = write_version(store, key)
    pipe = store.client.pipeline()
    for _ in range(HISTORY_LIMIT + 5):
        pipe.rpush(registry.keys.history("m"), json.dumps({"time": 0, "action": "pin"}))
    pipe.execute()
    registry.promote("m", v1, "")
    entries = registry.history("m")
    assert len(entries) == HISTORY_LIMIT and entries[-1].action == "promote"


def test_retention_parses_each_history_entry_once(
    store: SnapshotStore,
    registry: Registry,
    key: bytes,
    monkeypatch: pytest.MonkeyPatch,
    history_parses: list[bytes | str],
) -> None:
    """Retention runs after every snapshot and folds the history (its tail, or all of it, up
    to HISTORY_LIMIT entries) for the version promoted before the current one: an entry is
    parsed once per process, not at every snapshot, also when several models take turns (one
    learner), and what leaves the history leaves the cache."""
    monkeypatch.setattr(base, "_PARSED", {})
    both = {"m": {"Accuracy": 0.5}, "n": {"Accuracy": 0.5}}
    versions = [write_version(store, key, both) for _ in range(4)]
    for v in versions[:3]:
        registry.promote("m", v, f"release {v}")
        registry.promote("n", v, f"release {v}")
    assert registry.retention("m", 1) == [versions[0]]  # v2 is the rollback target: kept
    assert registry.retention("n", 1) == [versions[0]]
    assert len(history_parses) == 6  # three promotions of each
    for _ in range(2):  # the models take turns, as after each snapshot of one learner
        assert registry.retention("m", 1) == registry.retention("n", 1) == []
    assert len(history_parses) == 6
    registry.promote("m", versions[3], "release 4")
    assert registry.retention("m", 1) == [versions[1]]  # v3 is the rollback target now
    assert len(history_parses) == 7  # only the new entry was parsed
    assert registry.rollback("m", reason="v4 is bad").to == versions[2]
    store.client.ltrim(registry.keys.history("m"), -2, -1)  # the oldest entries leave
    assert registry.retention("m", 1) == []  # v3 kept: promoted, and the pending rollback's
    history_key = registry.keys.history("m")  # (its tail and the whole, cached apart)
    assert sum(len(v) for k, v in base._PARSED.items() if k.startswith(history_key)) == 2
    assert len(history_parses) == 8  # the rollback's own entry, new since


def test_a_long_history_is_read_by_its_tail(
    store: SnapshotStore, registry: Registry, key: bytes, history_parses: list[bytes | str]
) -> None:
    """Under the ``always`` policy every version is auto-promoted: retention, after every
    snapshot, decides the rollback target from the history's last `HISTORY_TAIL` entries, not
    its thousands (before: the whole history read, each entry parsed once per process)."""
    versions = [write_version(store, key) for _ in range(3)]
    for v in versions:
        registry.auto_promote("m", v, {"Accuracy": 0.5})
    older = [json.dumps({"time": t, "action": "auto-promote", "to": 1}) for t in range(2_000)]
    store.client.lpush(registry.keys.history("m"), *older)  # older promotions, all distinct
    history_parses.clear()
    assert registry.retention("m", 1) == [versions[0]]  # v2 is the rollback target: kept
    assert 0 < len(history_parses) <= base.HISTORY_TAIL
    # A rollback among the last entries: the whole history decides. Back on v2, the version
    # promoted before it is v1.
    assert registry.rollback("m", reason="v3 is bad").to == versions[1]
    history_parses.clear()
    assert registry._previous(store.client, "m") == versions[0]
    assert len(history_parses) > 2_000 - base.HISTORY_TAIL  # the whole history, parsed
    history_parses.clear()  # ... once: the tail's read does not evict it from the cache
    assert registry.retention("m", 1) == [] and registry._previous(store.client, "m") == versions[0]
    assert history_parses == []


@pytest.mark.parametrize("tail", [1, 2, 32])
def test_the_parsed_history_folds_as_a_fresh_parse_through_trims(
    store: SnapshotStore,
    registry: Registry,
    key: bytes,
    monkeypatch: pytest.MonkeyPatch,
    tail: int,
) -> None:
    """Promotions, rollbacks and pins with a history of 4 entries, so that every write trims
    it: after each step, the version a rollback goes back to (and retention protects) is the
    one a fresh parse of the whole history gives, whether its last ``tail`` entries decided
    it or not."""
    monkeypatch.setattr(base, "_PARSED", {})
    monkeypatch.setattr(base, "HISTORY_LIMIT", 4)
    monkeypatch.setattr(base, "HISTORY_TAIL", tail)
    rng = random.Random(13)
    versions: list[int] = []
    seen = set()
    for step in range(40):
        versions.append(write_version(store, key))
        move = rng.random()
        if move < 0.5 or len(versions) < 3:
            registry.promote("m", versions[-1], f"step {step}")
        elif move < 0.8:
            target = rng.choice(versions[-4:-1])
            with contextlib.suppress(RegistryError):  # e.g. already served
                registry.rollback("m", target, reason=f"step {step}")
        else:
            registry.pin("m", versions[-1], f"step {step}")
            registry.unpin("m", f"step {step}")
        assert len(registry.history("m")) <= 4
        cached = registry._previous(store.client, "m")
        fresh: dict[str, dict[bytes | str, HistoryEntry]] = {}
        monkeypatch.setattr(base, "_PARSED", fresh)
        assert registry._previous(store.client, "m") == cached, step
        monkeypatch.setattr(base, "_PARSED", {**fresh, **base._PARSED})
        _pin, promoted, latest = registry._pointers(store.client, "m")
        whole = rollback_target(
            registry.history("m"), promoted if promoted is not None else latest,
            lambda v: max((o for o in store.versions("m") if o < v), default=None),
        )  # fmt: skip
        assert cached == whole, step
        standing, _ = registry._standing(store.client, "m", full=True)
        assert standing.previous == whole, step
        seen.add(cached)
    assert len(seen) > 3  # the sequence moved the target around


def test_an_unknown_model_is_named_with_a_name_of_the_index_that_is_not_utf8(
    store: SnapshotStore, registry: Registry, key: bytes
) -> None:
    """A name of the models' index that is not UTF-8 (written by something else) is escaped in
    the refusal's list of models: the refusal raised ``UnicodeDecodeError`` before."""
    write_version(store, key)
    store.client.sadd(store.keys.models, b"\xff")
    with pytest.raises(RegistryError, match=r"unknown model 'nope'; models are \['\\\\xff', 'm'\]"):
        registry.promote("nope", 1, "")
    with pytest.raises(RegistryError, match=r"unknown model 'nope'; models are \['\\\\xff', 'm'\]"):
        registry.handover("nope", to="other")
