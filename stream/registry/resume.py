"""What the registry checks before it queues a rollback: that the learner can carry it out.

A rollback moves the serving pointer and queues a command for the learner that owns the model
(`stream.registry.registry.Registry.rollback`). A command the learner cannot carry out is
refused there (`stream.learner.commands`), later, once the pointer has moved; what Redis tells
is refused here instead, before anything changes, naming the problem:

- **Another spec.** A version whose blob is of another spec than the model's latest version
  (an import from a store where the model was another estimator): skipped to, the learner would
  go on learning another model than the one it was started with, and refuse to start again
  (`stream.checkpoint.protocol.restore`); replayed to, it refuses the command.
- **A replay to a checkpoint that misses one of the learner's models.** A replay rewinds the
  whole learner to checkpoint V, so every model the owner learns must be in it. The owner's
  models are those it owns (`stream.registry.owners`) that are in its latest checkpoint (they
  have a version there) or were handed over to it. Each must have a version V: a model that
  has none joined the learner after V (a handover, or a model added), or its copy of V was
  pruned by retention (models are pruned one by one; the checkpoint stays while one keeps it).
  The models of the checkpoint that the owner does not learn (another learner's now) are left
  out by the learner, and do not matter.

What Redis does not tell is left to the learner: a model added to the owner since its latest
snapshot (claimed, not written yet), a change between these reads and the transaction (they are
not watched: the learner still checks). Nor can Redis tell whether an imported checkpoint's
offsets are positions in this stream: an export records neither its store nor its cluster, and
exporting a version and importing it back (a restore from a backup) is meant to be replayable.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.errors import RegistryError
from schemas.records import SnapshotMeta
from stream.registry.base import RegistryBase
from stream.registry.policy import _int
from stream.store.keys import owner_of


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _handed_to(raw: bytes | None) -> str | None:
    """The learner a model's handover marker names (None: none, or unreadable)."""
    try:
        to = json.loads(raw)["to"] if raw is not None else None
    except (ValueError, TypeError, KeyError):
        return None
    return to if isinstance(to, str) else None


class ResumeChecks(RegistryBase):
    """The checks of a rollback's resume (a part of `stream.registry.registry.Registry`)."""

    def _require_resumable(
        self, r: Any, model: str, target: int, meta: SnapshotMeta, resume: str
    ) -> None:
        """Refuse (`RegistryError`) a rollback of ``model`` to ``target`` (whose meta is
        ``meta``) that its learner could not carry out (see the module); ``r`` is the
        transaction's pipeline in its WATCH phase. Two round trips for a skip, at most six for a
        replay (an operator's action, not a step after every snapshot)."""
        if resume != "replay":
            (last,) = self._batch(r, ("GET", self.keys.latest(model)))
            self._require_specs(r, {model: meta}, {model: _int(last)}, target)
            return
        learner = self._owner(r, model)
        members, cp = self._batch(
            r, ("SMEMBERS", self.keys.models), ("GET", self.keys.learner_checkpoint_latest(learner))
        )
        names = sorted(_text(m) for m in members)
        checkpoint = _int(cp)
        per = 3 + (checkpoint is not None)
        replies = self._batch(r, *(
            command
            for name in names
            for command in (
                ("GET", self.keys.owner(name)),
                ("GET", self.keys.handover(name)),
                ("GET", self.keys.latest(name)),
                *((("EXISTS", self.keys.meta(name, checkpoint)),) if checkpoint is not None else ()),
            )
        ))  # fmt: skip
        latest: dict[str, int | None] = {}
        for i, name in enumerate(names):
            owner, marker, last, *in_checkpoint = replies[i * per : (i + 1) * per]
            if owner_of(owner) != learner:
                continue  # another learner's: left out of the checkpoint by the learner
            if any(in_checkpoint) or _handed_to(marker) == learner:
                latest[name] = _int(last)
        learned = sorted(latest)
        metas = self._batch(r, *(("GET", self.keys.meta(name, target)) for name in learned))
        missing = [name for name, raw in zip(learned, metas, strict=True) if raw is None]
        if missing:
            raise RegistryError(
                f"{model}: checkpoint v{target} cannot be replayed: learner {learner!r} learns "
                f"{missing} too, with no version v{target} (they joined it after v{target}, or "
                f"their v{target} was pruned since): use --resume skip or a later version"
            )
        found = {
            name: SnapshotMeta.from_json(raw) for name, raw in zip(learned, metas, strict=True)
        }
        self._require_specs(r, {model: meta, **found}, {model: None, **latest}, target)

    def _require_specs(
        self,
        r: Any,
        metas: dict[str, SnapshotMeta],
        latest: dict[str, int | None],
        target: int,
    ) -> None:
        """Refuse when a model's version ``target`` (its meta in ``metas``) is of another spec
        than its latest version (``latest``: model → its latest version, None: read it here)."""
        unknown = [name for name in metas if latest.get(name) is None]
        if unknown:
            read = self._batch(r, *(("GET", self.keys.latest(name)) for name in unknown))
            latest |= {name: _int(raw) for name, raw in zip(unknown, read, strict=True)}
        names = [name for name in metas if latest[name] not in (None, target)]
        raws = self._batch(r, *(("GET", self.keys.meta(n, int(latest[n] or 0))) for n in names))
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                continue  # (the latest version is never pruned)
            current = SnapshotMeta.from_json(raw).spec
            if metas[name].spec != current:
                raise RegistryError(
                    f"{name} v{target} is a {metas[name].spec!r} model, but {name} learns as "
                    f"{current!r} (v{latest[name]}): the learner cannot continue from it. To "
                    f"serve it while learning goes on: riverstream snapshots pin {name} {target}"
                )
