"""A learner in a group: where it starts from when several learners share one Redis prefix.

Each learner has a name (`Settings.learner`) and learns only the models it owns
(`stream.registry.owners`). Its checkpoints are its own (``RedisKeys.checkpoint_latest`` of its
name); the version numbers are shared. At start, `restore_learner` decides what it continues:

1. **Its own latest checkpoint**, when it has one. Models of that checkpoint handed over to
   another learner since are left out (`LearningCore.remove_models`): the others continue
   exactly. Models handed over *to* it since (they are not in its checkpoint) join at its input
   position with the state of their latest version: the events between the two learners'
   positions are then skipped or learned a second time by them, so this is not exact (see
   `TakeOver`). So does a model that is not in its checkpoint but already has versions with no
   handover to it recorded (a Redis failover lost the handover, or its marker): logged as an
   error, it continues from its latest version rather than starting again from nothing (which
   the next automatic promotion would have served); only a model that has no version yet
   starts fresh. Its spec must match the ``--model`` given, as for a restored model.
2. **No checkpoint of its own yet** (a new learner) and every model it takes over comes from the
   same version V: it continues from checkpoint V itself, leaving out the models that stay with
   their owner. That is exactly where the previous owner was at V, so the models it takes over
   go on exactly as if nothing had happened (tested: splitting one learner into two).
3. No checkpoint and nothing taken over: a fresh stream, as a single learner always started.
   (No checkpoint and models taken over from different versions: refused, as no start is
   exact for all of them.)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from learners.specs import ModelSpec
from schemas.errors import SnapshotError
from stream.checkpoint.protocol import Restored, restore
from stream.registry.owners import owners
from stream.store.snapshots import SnapshotStore, wrapped

log = logging.getLogger(__name__)


@dataclass
class TakeOver:
    """What a starting learner continues from: a checkpoint (or None: a fresh core) and the
    models whose latest version it loads into that core at its position (``at_position``:
    model → version; not exact, see the module)."""

    restored: Restored | None
    at_position: dict[str, int] = field(default_factory=dict)


def handed_to(store: SnapshotStore, names: list[str]) -> dict[str, int]:
    """Models of ``names`` whose latest handover went to this store's learner and that have a
    version: model → their latest version."""
    if not names:
        return {}
    keys = store.keys
    with wrapped("handovers"):
        markers = store.client.mget([keys.handover(n) for n in names])
    out: dict[str, int] = {}
    for name, raw in zip(names, markers, strict=True):
        if raw is None or json.loads(raw).get("to") != keys.learner:
            continue
        version = store.latest_version(name)
        if version is not None:
            out[name] = version
    return out


def restore_learner(store: SnapshotStore, signing_key: bytes, specs: list[ModelSpec]) -> TakeOver:
    """Where the learner of ``store`` (its name: ``store.keys.learner``) starts (the module's
    three cases)."""
    me = store.keys.learner

    def may_drop(name: str) -> bool:  # a model of the checkpoint that another learner owns now
        with wrapped(f"owner of {name}"):
            return owners(store.client, store.keys, [name])[name] != me

    restored = restore(store, signing_key, specs, may_drop=may_drop)
    if restored is not None:
        taken = handed_to(store, restored.added)
        if taken:
            log.warning(
                "learner %s: models %s were handed over to it; they continue from their latest "
                "versions %s at this learner's position (not exact: a learner with no "
                "checkpoint of its own takes models over exactly)", me, sorted(taken), taken,
            )  # fmt: skip
        unrecorded = {
            name: version
            for name in restored.added
            if name not in taken and (version := store.latest_version(name)) is not None
        }
        for name, version in sorted(unrecorded.items()):
            log.error(
                "learner %s: model %s is not in its checkpoint v%d but already has versions "
                "(latest v%d), and no handover to this learner is recorded (a Redis failover "
                "may have lost it): it continues from v%d at this learner's position instead "
                "of starting fresh (not exact). To start it fresh, learn it under a new name",
                me, name, restored.version, version, version,
            )  # fmt: skip
        return TakeOver(restored, {**taken, **unrecorded})
    taken = handed_to(store, [spec.name for spec in specs])
    versions = set(taken.values())
    if len(versions) == 1:
        [version] = versions
        with wrapped(f"checkpoint v{version}"):
            has_checkpoint = bool(store.client.exists(store.keys.checkpoint_meta(version)))
        if has_checkpoint:
            log.warning(
                "learner %s: no checkpoint of its own; continuing %s exactly from checkpoint v%d",
                me, sorted(taken), version,
            )  # fmt: skip
            return TakeOver(restore(store, signing_key, specs, version, may_drop=may_drop))
    if taken:
        raise SnapshotError(
            f"learner {me!r} has no checkpoint of its own and takes over models of different "
            f"checkpoints ({', '.join(f'{m} v{v}' for m, v in sorted(taken.items()))}): start "
            "it with the models of one checkpoint first, then hand it the others"
        )
    return TakeOver(None)
