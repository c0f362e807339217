"""Live updates: the learner's current model between two versions, for serving only.

Versions are the unit of rollback, so they keep a slow cadence (every
``RIVERSTREAM_SNAPSHOT_EVERY_LABELS`` labels or ``..._EVERY_SECONDS`` seconds), each with its
checkpoint. Between two versions the learner publishes, every few hundred milliseconds, a *live
update* of each small model: the model's signed blob alone (no checkpoint, no offsets, no entry in
the versions), written over the previous one under ``P:model:NAME:live``. An API process that
follows live updates serves it as "version V plus what was learned since": every answer names
the version ``V`` it continues and the exact ``samples_learned``, which identify the state (the
learner is deterministic and learns every event once, so no two states share both).

A live update is written and served only when it cannot contradict the registry:

- **Written** (`LIVE_WRITE`, one Lua script, so the checks and the write are atomic) only if the
  model has no pin, its policy is ``always`` (no policy key means ``always``), no operator command
  waits for the learner (a rollback in flight), the version it continues is the one served
  (the promoted version, else the latest) and no newer process of the learner's name started
  (its epoch, `stream.registry.owners.claim`: an older process still running publishes
  nothing more, as it writes no version). Then it PUBLISHes on the live channel
  (``P:snapshots:live``), which only live-following readers subscribe to.
- **Served** (`LiveStore.pointers`, read in one MULTI with the pointers) under the same rule: no
  pin, policy ``always``, base version = served version. Otherwise the exact version is served.
- **Dropped** by every move of a pointer by the registry (promote, rollback, pin, unpin, policy,
  auto-promote delete the key in their transaction): a rollback or pin wins at once, even when it
  names the version the live update continued.

Nothing here is needed for exactly-once or for rollback: a lost or refused live update only makes
serving wait for the next one (or the next version). A learner that crashes leaves its last live
update in place; it is still a state the restarted learner passes through again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from learners.serialization import load_signed, sha256_hex
from schemas.errors import SnapshotError, SnapshotIntegrityError
from schemas.records import JsonRecord, SnapshotMeta, river_version
from stream.store.keys import Notification, served_version
from stream.store.snapshots import FENCE_LUA, fence_owner, wrapped

if TYPE_CHECKING:
    from stream.store.snapshots import SnapshotStore

# KEYS: pin, promoted, latest, policy, commands, live, the learner's epoch hash.
# ARGV: base version, meta JSON, signed blob, channel, notification JSON, then the writing
# process's epoch, started_at, host and pid (`fence_owner`; '' four times: not checked; a hash
# that lost the epoch gets it back: `FENCE_LUA`).
LIVE_WRITE = (
    FENCE_LUA
    + """
if ARGV[6] ~= '' and fence(KEYS[7], ARGV[6], ARGV[7], ARGV[8], ARGV[9]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local policy = redis.call('GET', KEYS[4])
if policy then
  local ok, decoded = pcall(cjson.decode, policy)
  if not ok or type(decoded) ~= 'table' or decoded['policy'] ~= 'always' then return 0 end
end
if redis.call('LLEN', KEYS[5]) > 0 then return 0 end
local served = redis.call('GET', KEYS[2]) or redis.call('GET', KEYS[3])
if served ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[6], 'meta', ARGV[2], 'blob', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""
)


@dataclass(frozen=True)
class LiveMeta(JsonRecord):
    """What a live update holds besides the blob: the version it continues (``version``) and
    the state's own figures."""

    _what: ClassVar[str] = "live update metadata"

    model: str
    version: int
    created_at: float
    samples_learned: int
    metrics: dict[str, float]
    size: int
    sha256: str
    kind: str
    spec: str
    river_version: str

    @classmethod
    def describe(
        cls,
        model: str,
        version: int,
        blob: bytes,
        *,
        kind: str,
        spec: str,
        samples_learned: int,
        metrics: dict[str, float],
    ) -> LiveMeta:
        return cls(
            model=model, version=version, created_at=time.time(),
            samples_learned=samples_learned, metrics=dict(metrics), size=len(blob),
            sha256=sha256_hex(blob), kind=kind, spec=spec, river_version=river_version(),
        )  # fmt: skip

    def snapshot_meta(self) -> SnapshotMeta:
        """The metadata a served model carries (`learners.predictor.ServedModel.meta`): the
        version continued, the live state's samples, metrics, time, size and checksum."""
        return SnapshotMeta(
            model=self.model, version=self.version, created_at=self.created_at,
            samples_learned=self.samples_learned, metrics=dict(self.metrics), offsets={},
            river_version=self.river_version, python_version="", size=self.size,
            sha256=self.sha256, chunks=0, kind=self.kind, spec=self.spec,
        )  # fmt: skip


@dataclass(frozen=True)
class ServingPointers:
    """One consistent read of what a model's readers decide on."""

    pin: int | None
    promoted: int | None
    latest: int | None
    always: bool
    """The model's policy is ``always`` (or it has none)."""
    live: LiveMeta | None

    @property
    def version(self) -> int | None:
        """The version served (`stream.store.keys.served_version`)."""
        return served_version(self.pin, self.promoted, self.latest)

    def live_served(self) -> LiveMeta | None:
        """The live update to serve instead of ``version``, if the rule allows one."""
        live = self.live
        if live is None or self.pin is not None or not self.always:
            return None
        return live if live.version == self.version else None


def _is_always(raw: bytes | None) -> bool:
    if raw is None:
        return True
    try:
        return bool(json.loads(raw).get("policy") == "always")
    except (ValueError, AttributeError):
        return False


def _int(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)


class LiveStore:
    """Live updates of a `SnapshotStore`'s models (same client, prefix and signing key)."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.keys = store.keys
        self._write = store.client.register_script(LIVE_WRITE)

    def write(self, model: str, version: int, blob: bytes, meta: LiveMeta) -> bool:
        """Publish ``blob`` (signed by the caller) as the live update of ``model`` continuing
        ``version``; False when the rule refuses it (pin, policy, pending command,
        ``version`` is not the one served, or a newer process of the learner started)."""
        k = self.keys
        note = Notification(model, version, "live").to_json()
        store = self.store
        owner = [""] * 4 if store.epoch is None else fence_owner(store.epoch, store.process)
        with wrapped(f"live update of {model}"):
            done = self._write(
                keys=[k.pin(model), k.promoted(model), k.latest(model), k.policy(model),
                      k.commands, k.live(model), k.epoch],
                args=[version, meta.to_json(), blob, k.live_channel, note, *owner],
            )  # fmt: skip
        return bool(done)

    def pointers(self, model: str) -> ServingPointers:
        """Pin, promoted, latest, policy and the live update's metadata, read atomically."""
        k = self.keys
        with wrapped(f"serving pointers of {model}"):
            tx = self.store.client.pipeline(transaction=True)
            tx.mget(k.pin(model), k.promoted(model), k.latest(model), k.policy(model))
            tx.hget(k.live(model), "meta")
            (pin, promoted, latest, policy), raw_meta = tx.execute()
        live = None
        if raw_meta is not None:
            try:
                live = LiveMeta.from_json(raw_meta)
            except SnapshotError:
                live = None  # unreadable: as if absent (the learner writes the next one)
        return ServingPointers(_int(pin), _int(promoted), _int(latest), _is_always(policy), live)

    def load(self, model: str) -> tuple[Any, LiveMeta] | None:
        """The live update now in Redis, verified (sha256, then HMAC) and only then unpickled;
        None when there is none. Meta and blob are read together, so they always match."""
        with wrapped(f"live update of {model}"):
            raw_meta, blob = self.store.client.hmget(self.keys.live(model), ["meta", "blob"])
        if raw_meta is None or blob is None:
            return None
        meta = LiveMeta.from_json(raw_meta)
        blob = cast("bytes", blob)
        if len(blob) != meta.size or sha256_hex(blob) != meta.sha256:
            raise SnapshotIntegrityError(f"live update of {model}: checksum mismatch, refusing it")
        return load_signed(blob, self.store.signing_key, cooperative=True), meta

    def drop(self, model: str) -> None:
        with wrapped(f"live update of {model}"):
            self.store.client.delete(self.keys.live(model))
