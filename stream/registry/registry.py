"""The model registry: promotion, pin, rollback, history, retention, export and import.

It lives in Redis beside the snapshots (`stream.store.snapshots.SnapshotStore`), under the same prefix
``P``. Keys it owns (all named in `stream.store.keys.RedisKeys`)::

    P:model:NAME:promoted     version serving follows
    P:model:NAME:pin          optional: serving stays here while learning goes on
    P:model:NAME:history      list of JSON `HistoryEntry`, oldest first, trimmed to HISTORY_LIMIT
    P:model:NAME:policy       JSON `Policy` (absent: ``always``)
    P:model:NAME:retention    optional: versions kept by automatic retention (overrides default)
    P:learner:commands        list of JSON `RollbackCommand`; the learner (`stream.store.commands`)
                              peeks, applies, snapshots, then acknowledges with LTRIM (the
                              ``default`` learner's; a rollback goes to the list of the learner
                              that owns the model, `RedisKeys.learner_commands`)

Serving rule: `stream.store.keys.served_version` (pin, else promoted, else latest).

Every mutation runs as WATCH / read / validate / MULTI / write / EXEC, retried when a watched key
changed: a validation error raises `RegistryError` before MULTI, so nothing is changed; the
pointer, the history entry, the learner command and the PUBLISH on the snapshot channel of one
operation commit together. History: every operator action and every auto-promotion that moves
the pointer is recorded; the list is trimmed to the newest `HISTORY_LIMIT` entries. Automatic
retention (`retention`) is not recorded, manual `prune` is.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from learners.serialization import sha256_hex
from schemas.errors import RegistryError, SnapshotError, SnapshotIntegrityError
from schemas.records import (
    POLICIES,
    RESUMES,
    CheckpointMeta,
    HistoryEntry,
    Policy,
    PolicyName,
    Resume,
    RollbackCommand,
    SnapshotMeta,
    VersionInfo,
)
from stream.registry import exchange
from stream.registry.base import HISTORY_LIMIT
from stream.registry.owners import OwnershipOps
from stream.registry.policy import bigger_is_better, check_ranges, guard_allows
from stream.registry.resume import ResumeChecks
from stream.registry.retention import RetentionOps
from stream.store.keys import DEFAULT_LEARNER, chunk_count, chunks, served_version

__all__ = [
    "HISTORY_LIMIT", "POLICIES", "RESUMES", "HistoryEntry", "Policy", "PolicyName", "Registry",
    "RegistryError", "Resume", "RollbackCommand", "VersionInfo", "bigger_is_better",
]  # fmt: skip


class Registry(RetentionOps, OwnershipOps, ResumeChecks):
    """Pointers, history and policies of the models of one `SnapshotStore` (see the module)."""

    # -- reading -------------------------------------------------------------------------
    def serving_version(self, model: str) -> int | None:
        """What serving uses: the pin if set, else the promoted version, else the latest."""
        pin, promoted, latest = self._read(
            "serving version", lambda: self._pointers(self.client, model)
        )
        return served_version(pin, promoted, latest)

    def versions(self, model: str) -> list[VersionInfo]:
        def read() -> list[VersionInfo]:
            self._require_model(self.client, model)
            pin, promoted, latest = self._pointers(self.client, model)
            serving = served_version(pin, promoted, latest)
            versions = self.store.versions(model)
            pipe = self.client.pipeline(transaction=False)
            for v in versions:
                pipe.get(self.keys.meta(model, v))
                pipe.exists(self.keys.checkpoint_meta(v))
            replies = pipe.execute()
            out = []
            for v, raw, cp in zip(versions, replies[::2], replies[1::2], strict=True):
                if raw is not None:
                    meta = SnapshotMeta.from_json(raw)
                    out.append(VersionInfo(meta, v == promoted, v == pin, v == serving, bool(cp)))
            return out

        return self._read(f"versions of {model}", read)

    def info(self, model: str, version: int) -> VersionInfo:
        match = [i for i in self.versions(model) if i.meta.version == version]
        if not match:
            self._read("version", lambda: self._require_version(self.client, model, version))
            raise RegistryError(f"{model} has no version {version}")
        return match[0]

    def history(self, model: str, last: int | None = None) -> list[HistoryEntry]:
        """The model's history, oldest first; ``last``: only its newest ``last`` entries, read
        and parsed alone (a full history is 10 000 entries, ≈ 70 ms to parse)."""

        def read() -> list[HistoryEntry]:
            self._require_model(self.client, model)
            return self._history(self.client, model, last)

        return self._read(f"history of {model}", read)

    def policy(self, model: str) -> Policy:
        return self._read(f"policy of {model}", lambda: self._policy(self.client, model))

    def pending_commands(self) -> list[RollbackCommand]:
        """The commands not yet acknowledged, of every learner (``default``'s first)."""

        def read() -> list[Any]:
            members = self.client.smembers(self.keys.learners)
            learners = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            names = [DEFAULT_LEARNER, *(name for name in learners if name != DEFAULT_LEARNER)]
            return [
                raw
                for name in names
                for raw in self.client.lrange(self.keys.learner_commands(name), 0, -1)
            ]

        return [RollbackCommand.from_json(raw) for raw in self._read("commands", read)]

    def verify(self, model: str, version: int) -> tuple[bool, str]:
        """Checksum and signature of the model blob (and of its checkpoint, if kept)."""
        self._read("verify", lambda: self._require_version(self.client, model, version))
        try:
            blob = self.store.read_model_blob(model, version)
        except SnapshotIntegrityError as exc:
            return False, str(exc)
        except SnapshotError as exc:
            return False, str(exc)
        detail = f"model blob: {len(blob)} bytes, checksum and signature ok"
        has_cp = self._read(
            "verify", lambda: self.client.exists(self.keys.checkpoint_meta(version))
        )
        if has_cp:
            try:
                self.store.checkpoint(version)
            except SnapshotError as exc:
                return False, f"{detail}; checkpoint: {exc}"
            detail += "; checkpoint: checksum and signature ok"
        else:
            detail += "; no checkpoint kept (replay from this version impossible)"
        return True, detail

    # -- pointer changes -----------------------------------------------------------------
    def promote(self, model: str, version: int, reason: str) -> int | None:
        """Point ``promoted`` at ``version``; returns the previous promoted version."""

        def body(r: Any) -> Any:
            self._require_version(r, model, version)
            pin, promoted, _latest = self._pointers(r, model)
            if promoted == version:
                raise RegistryError(f"{model} v{version} is already promoted")

            def write(p: Any) -> None:
                p.set(self.keys.promoted(model), version)
                self._record(p, model, self._entry("promote", promoted, version, reason))
                self._publish(p, model, pin if pin is not None else version)

            return promoted, write

        return self._atomic(f"promote {model} v{version}", self._watch(model), body)

    def rollback(
        self,
        model: str,
        to: int | None = None,
        *,
        resume: str = "skip",
        exclude: Sequence[Sequence[float]] = (),
        reason: str,
    ) -> RollbackCommand:
        """Serve ``to`` now (clearing any pin) and tell the learner to continue from it.

        ``to`` defaults to the version promoted before the current one. The pointer, the history
        entry and the learner command commit in one transaction. A rollback that the learner
        could not carry out, as far as Redis tells (a version of another spec, a replay to a
        checkpoint without one of the learner's models: `stream.registry.resume`), is refused
        before anything changes.
        """
        if resume not in RESUMES:
            raise RegistryError(f"resume must be one of {RESUMES}, not {resume!r}")
        ranges = check_ranges(exclude)
        if ranges and resume != "replay":
            raise RegistryError("--exclude only applies with --resume replay")
        if not reason.strip():
            raise RegistryError("a rollback needs a reason")

        def body(r: Any) -> Any:
            self._require_model(r, model)
            target = to if to is not None else self._previous(r, model)
            if target is None:
                raise RegistryError(f"{model}: no earlier promoted version; give --to VERSION")
            meta = self._require_version(r, model, target)
            if resume == "replay" and not r.exists(self.keys.checkpoint_meta(target)):
                raise RegistryError(
                    f"{model} v{target} has no checkpoint (pruned or imported without one): "
                    "use --resume skip or another version"
                )
            self._require_resumable(r, model, target, meta, resume)  # else refused later
            pin, promoted, latest = self._pointers(r, model)
            before = served_version(pin, promoted, latest)
            queue = self._commands_of(r, model)  # the owning learner's
            command = RollbackCommand(
                str(uuid.uuid4()),
                model,
                "rollback",
                target,
                resume,
                ranges,
                time.time(),
            )
            detail = {"command": command.id} | ({"unpinned": pin} if pin is not None else {})
            entry = self._entry(
                "rollback", before, target, reason, resume=resume, exclude=ranges, detail=detail
            )

            def write(p: Any) -> None:
                p.set(self.keys.promoted(model), target)
                p.delete(self.keys.pin(model))
                self._record(p, model, entry)
                p.rpush(queue, command.to_json())
                self._publish(p, model, target)

            return command, write

        return self._atomic(f"rollback {model}", self._watch(model), body)

    def pin(self, model: str, version: int, reason: str = "") -> None:
        def body(r: Any) -> Any:
            self._require_version(r, model, version)
            pin, promoted, latest = self._pointers(r, model)
            if pin == version:
                raise RegistryError(f"{model} is already pinned at v{version}")
            before = served_version(pin, promoted, latest)

            def write(p: Any) -> None:
                p.set(self.keys.pin(model), version)
                self._record(p, model, self._entry("pin", before, version, reason))
                self._publish(p, model, version)

            return None, write

        self._atomic(f"pin {model} v{version}", self._watch(model), body)

    def unpin(self, model: str, reason: str = "") -> int:
        """Remove the pin; serving returns to the promoted (else latest) version, returned."""

        def body(r: Any) -> Any:
            self._require_model(r, model)
            pin, promoted, latest = self._pointers(r, model)
            if pin is None:
                raise RegistryError(f"{model} is not pinned")
            after = promoted if promoted is not None else latest

            def write(p: Any) -> None:
                p.delete(self.keys.pin(model))
                self._record(p, model, self._entry("unpin", pin, after, reason))
                self._publish(p, model, after)

            return after, write

        return self._atomic(f"unpin {model}", self._watch(model), body)

    def set_policy(
        self,
        model: str,
        policy: str,
        margin: float = 0.0,
        metric: str | None = None,
        reason: str = "",
    ) -> Policy:
        """Set the promotion policy. Leaving ``always`` freezes ``promoted`` at what is served."""
        if policy not in POLICIES:
            raise RegistryError(f"policy must be one of {POLICIES}, not {policy!r}")
        if not (math.isfinite(margin) and margin >= 0):
            raise RegistryError(f"margin must be a finite number >= 0, not {margin}")
        if metric is not None:
            bigger_is_better(metric)
        new = Policy(policy, float(margin), metric)

        def body(r: Any) -> Any:
            self._require_model(r, model)
            pin, promoted, latest = self._pointers(r, model)
            freeze = promoted is None and latest is not None and policy != "always"
            current = latest if freeze or promoted is None else promoted
            served = pin if pin is not None else current
            entry = self._entry(
                "policy", promoted, latest if freeze else promoted, reason,
                detail={"policy": policy, "margin": float(margin), "metric": metric},
            )  # fmt: skip

            def write(p: Any) -> None:
                p.set(self.keys.policy(model), new.to_json())
                if freeze:
                    p.set(self.keys.promoted(model), latest)
                self._record(p, model, entry)
                self._publish(p, model, served)  # readers drop a live update at once

            return new, write

        watch = [*self._watch(model), self.keys.policy(model)]
        return self._atomic(f"policy of {model}", watch, body)

    def auto_promote(self, model: str, version: int, metrics: Mapping[str, float]) -> bool:
        """Apply the model's policy to the new snapshot ``version``; True if it was promoted.

        Never promotes while a rollback of the model is still in the command list (until the
        learner acknowledged it, its snapshots may hold the state before the rollback), nor a
        version not newer than the promoted one.
        """

        def body(r: Any) -> Any:
            # It runs after every snapshot, in the learner's writer: its reads in one round
            # trip (`_standing`), not one each.
            standing, (raw,) = self._standing(
                r, model, also=[("GET", self.keys.meta(model, version))]
            )
            policy = standing.policy
            if policy.policy == "manual":
                return False, None
            if standing.pending:
                return False, None
            if not standing.known or raw is None:
                self._require_version(r, model, version)  # raises, naming what exists
            meta = SnapshotMeta.from_json(raw)
            pin, promoted = standing.pin, standing.promoted
            if promoted is not None and version <= promoted:
                return False, None
            detail: dict[str, Any] = {}
            if policy.policy == "guarded" and promoted is not None:
                current = SnapshotMeta.from_json(r.get(self.keys.meta(model, promoted)) or b"{}")
                ok, why = guard_allows(metrics or meta.metrics, current.metrics, policy)
                if not ok:
                    return False, None
                detail["guard"] = why
            entry = self._entry("auto-promote", promoted, version, policy.policy, detail=detail)

            def write(p: Any) -> None:
                p.set(self.keys.promoted(model), version)
                self._record(p, model, entry)
                self._publish(p, model, pin if pin is not None else version)

            return True, write

        watch = [*self._watch(model), self.keys.policy(model)]  # (+ another owner's commands)
        return self._atomic(f"auto-promote {model} v{version}", watch, body)

    # -- export / import (`stream.registry.exchange`) ---------------------------------------
    def export(self, model: str, version: int, path: str | Path) -> Path:
        """Write ``model`` v``version`` (and its checkpoint, if kept) to a signed file."""
        return exchange.export_version(self, model, version, path)

    def import_(self, path: str | Path, reason: str = "") -> tuple[str, int]:
        """Verify a file made by `export`, then register it as a new version: (model, version)."""
        return exchange.import_file(self, path, reason)

    def register(
        self,
        meta: SnapshotMeta,
        blob: bytes,
        version: int,
        checkpoint: bytes | None = None,
        offsets: Mapping[str, int] | None = None,
        *,
        history_entry: str | None = None,
    ) -> None:
        """Add ``version`` of ``meta.model`` in one MULTI: chunks, meta, versions entry, the
        checkpoint if given, a history entry if given; ``latest`` and ``checkpoint:latest``
        do not move."""
        model, size = meta.model, self.store.chunk_bytes
        new_meta = dataclasses.replace(
            meta, version=version, size=len(blob), sha256=sha256_hex(blob),
            chunks=chunk_count(len(blob), size),
        )  # fmt: skip

        def write(p: Any) -> None:
            for i, part in enumerate(chunks(blob, size)):
                p.set(self.keys.chunk(model, version, i), part)
            if checkpoint is not None:
                n = chunk_count(len(checkpoint), size)
                for i, part in enumerate(chunks(checkpoint, size)):
                    p.set(self.keys.checkpoint_chunk(version, i), part)
                cp = CheckpointMeta(
                    version, time.time(), len(checkpoint), sha256_hex(checkpoint), n,
                    dict(offsets or {}),
                )  # fmt: skip
                p.set(self.keys.checkpoint_meta(version), cp.to_json())
            p.set(self.keys.meta(model, version), new_meta.to_json())
            p.zadd(self.keys.versions(model), {str(version): version})
            p.sadd(self.keys.models, model)
            if history_entry is not None:
                self._record(p, model, history_entry)

        watch = [self.keys.versions(model), self.keys.history(model)]
        self._atomic(f"register {model} v{version}", watch, lambda r: (None, write))
