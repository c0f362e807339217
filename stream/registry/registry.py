"""The model registry: promotion, pin, rollback, history, retention, export and import.

It lives in Redis beside the snapshots (`stream.store.snapshots.SnapshotStore`), under the same prefix
``P``. Keys it owns (see `RegistryKeys`)::

    P:model:NAME:promoted     version serving follows (read by `SnapshotStore.serving_version`)
    P:model:NAME:pin          optional: serving stays here while learning goes on
    P:model:NAME:history      list of JSON `HistoryEntry`, oldest first, trimmed to HISTORY_LIMIT
    P:model:NAME:policy       JSON `Policy` (absent: ``always``)
    P:model:NAME:retention    optional: versions kept by automatic retention (overrides default)
    P:learner:commands        list of JSON `RollbackCommand`; the learner (`stream.store.commands`)
                              peeks, applies, snapshots, then acknowledges with LTRIM

Serving rule: ``pin`` if set, else ``promoted``, else ``latest`` (`Registry.serving_version`).

Every mutation runs as WATCH / read / validate / MULTI / write / EXEC, retried when a watched key
changed: a validation error raises `RegistryError` before MULTI, so nothing is changed; the
pointer, the history entry, the learner command and the PUBLISH on the snapshot channel of one
operation commit together. History: every operator action and every auto-promotion that moves
the pointer is recorded; the list is trimmed to the newest `HISTORY_LIMIT` entries. Automatic
retention (`retention`) is not recorded, manual `prune` is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import random
import re
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from learners.serialization import sha256_hex, verify_signed
from schemas.errors import SnapshotError, SnapshotIntegrityError
from stream.registry.policy import (  # noqa: F401  (re-exported: the registry's public types)
    POLICIES,
    RESUMES,
    HistoryEntry,
    Policy,
    PolicyName,
    RegistryError,
    RegistryKeys,
    Resume,
    RollbackCommand,
    VersionInfo,
    _int,
    _user,
    bigger_is_better,
    check_ranges,
    guard_allows,
    promotion_stack,
)
from stream.store.snapshots import CheckpointMeta, SnapshotMeta, SnapshotStore

HISTORY_LIMIT = 10_000
MAX_ATTEMPTS = 200
EXPORT_MAGIC = b"RSEXPORT1\n"
_MAC_SIZE = hashlib.sha256().digest_size
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # the store's rule


# -- the registry --------------------------------------------------------------------------
class Registry:
    """Pointers, history and policies of the models of one `SnapshotStore`.

    ``by`` names who acts in the history (default: the OS user); ``key`` signs export files
    (default: the store's ``key`` attribute if it has one).
    """

    def __init__(
        self, store: SnapshotStore, *, by: str | None = None, key: bytes | None = None
    ) -> None:
        self.store = store
        self.client: redis.Redis = store.client
        self.skeys = store.keys
        self.keys = RegistryKeys(store.keys.prefix)
        self.by = by or _user()
        self._key = key if key is not None else getattr(store, "key", None)

    # -- transactions --------------------------------------------------------------------
    def _atomic(self, what: str, watch: Sequence[str], body: Callable[[Any], Any]) -> Any:
        """WATCH ``watch``, run ``body(pipe)`` (reads, then ``pipe.multi()`` and writes), EXEC.

        ``body`` returns ``(result, write)``; ``write(pipe)`` queues the writes, or is None when
        there is nothing to write. Retried when a watched key changed meanwhile.
        """
        try:
            for attempt in range(MAX_ATTEMPTS):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(*watch)
                        result, write = body(pipe)
                        if write is None:
                            pipe.unwatch()
                            return result
                        pipe.multi()
                        write(pipe)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        except redis.RedisError as exc:
            raise RegistryError(f"{what}: redis error: {exc}") from exc
        raise RegistryError(f"{what}: gave up after {MAX_ATTEMPTS} conflicting attempts")

    def _read(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as exc:
            raise RegistryError(f"{what}: redis error: {exc}") from exc

    def _require_model(self, r: Any, model: str) -> None:
        if not r.sismember(self.skeys.models, model):
            known = sorted(m.decode() for m in r.smembers(self.skeys.models))
            raise RegistryError(f"unknown model {model!r}; models are {known}")

    def _require_version(self, r: Any, model: str, version: int) -> SnapshotMeta:
        self._require_model(r, model)
        raw = r.get(self.skeys.meta(model, version))
        if raw is None:
            versions = [int(v) for v in r.zrange(self.skeys.versions(model), 0, -1)]
            raise RegistryError(f"{model} has no version {version}; versions are {versions}")
        return SnapshotMeta.from_json(raw)

    def _entry(self, action: str, frm: int | None, to: int | None, reason: str, **kw: Any) -> str:
        entry = HistoryEntry(time.time(), action, frm, to, reason, self.by, **kw)
        return json.dumps(entry.to_dict(), sort_keys=True)

    def _record(self, pipe: Any, model: str, entry: str) -> None:
        pipe.rpush(self.keys.history(model), entry)
        pipe.ltrim(self.keys.history(model), -HISTORY_LIMIT, -1)

    def _publish(self, pipe: Any, model: str, version: int | None) -> None:
        if version is not None:
            pipe.publish(self.skeys.channel, json.dumps({"model": model, "version": version}))

    def _pointers(self, r: Any, model: str) -> tuple[int | None, int | None, int | None]:
        pin, promoted, latest = r.mget(
            self.keys.pin(model), self.skeys.promoted(model), self.skeys.latest(model)
        )
        return _int(pin), _int(promoted), _int(latest)

    def _history(self, r: Any, model: str) -> list[HistoryEntry]:
        return [HistoryEntry.from_json(raw) for raw in r.lrange(self.keys.history(model), 0, -1)]

    def _pending(self, r: Any, model: str) -> list[RollbackCommand]:
        cmds = [RollbackCommand.from_json(raw) for raw in r.lrange(self.keys.commands, 0, -1)]
        return [c for c in cmds if c.model == model]

    def _previous(self, r: Any, model: str) -> int | None:
        """The rollback target by default: the version promoted before the current one."""
        _pin, promoted, latest = self._pointers(r, model)
        current = promoted if promoted is not None else latest
        stack = promotion_stack(self._history(r, model))
        if current is None:
            return None
        if not stack or stack[-1] != current:
            stack.append(current)
        if len(stack) >= 2:
            return stack[-2]
        older = r.zrevrangebyscore(self.skeys.versions(model), f"({current}", "-inf", 0, 1)
        return int(older[0]) if older else None

    def _policy(self, r: Any, model: str) -> Policy:
        raw = r.get(self.keys.policy(model))
        return Policy() if raw is None else Policy(**json.loads(raw))

    # -- reading -------------------------------------------------------------------------
    def serving_version(self, model: str) -> int | None:
        """What serving uses: the pin if set, else the promoted version, else the latest."""
        pin, promoted, latest = self._read(
            "serving version", lambda: self._pointers(self.client, model)
        )
        return next((v for v in (pin, promoted, latest) if v is not None), None)

    def versions(self, model: str) -> list[VersionInfo]:
        def read() -> list[VersionInfo]:
            self._require_model(self.client, model)
            pin, promoted, latest = self._pointers(self.client, model)
            serving = next((v for v in (pin, promoted, latest) if v is not None), None)
            versions = self.store.versions(model)
            pipe = self.client.pipeline(transaction=False)
            for v in versions:
                pipe.get(self.skeys.meta(model, v))
                pipe.exists(self.skeys.checkpoint_meta(v))
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

    def history(self, model: str) -> list[HistoryEntry]:
        def read() -> list[HistoryEntry]:
            self._require_model(self.client, model)
            return self._history(self.client, model)

        return self._read(f"history of {model}", read)

    def policy(self, model: str) -> Policy:
        return self._read(f"policy of {model}", lambda: self._policy(self.client, model))

    def pending_commands(self) -> list[RollbackCommand]:
        raws = self._read("commands", lambda: self.client.lrange(self.keys.commands, 0, -1))
        return [RollbackCommand.from_json(raw) for raw in raws]

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
            "verify", lambda: self.client.exists(self.skeys.checkpoint_meta(version))
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
    def _watch(self, model: str) -> list[str]:
        return [
            self.skeys.promoted(model),
            self.keys.pin(model),
            self.keys.history(model),
            self.skeys.versions(model),
            self.skeys.models,
        ]

    def promote(self, model: str, version: int, reason: str) -> int | None:
        """Point ``promoted`` at ``version``; returns the previous promoted version."""

        def body(r: Any) -> Any:
            self._require_version(r, model, version)
            pin, promoted, _latest = self._pointers(r, model)
            if promoted == version:
                raise RegistryError(f"{model} v{version} is already promoted")

            def write(p: Any) -> None:
                p.set(self.skeys.promoted(model), version)
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
        entry and the learner command commit in one transaction.
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
            self._require_version(r, model, target)
            if resume == "replay" and not r.exists(self.skeys.checkpoint_meta(target)):
                raise RegistryError(
                    f"{model} v{target} has no checkpoint (pruned or imported without one): "
                    "use --resume skip or another version"
                )
            pin, promoted, latest = self._pointers(r, model)
            before = next((v for v in (pin, promoted, latest) if v is not None), None)
            command = RollbackCommand(
                str(uuid.uuid4()),
                model,
                "rollback",
                target,
                resume,
                ranges,
                time.time(),  # type: ignore[arg-type]
            )
            detail = {"command": command.id} | ({"unpinned": pin} if pin is not None else {})
            entry = self._entry(
                "rollback", before, target, reason, resume=resume, exclude=ranges, detail=detail
            )

            def write(p: Any) -> None:
                p.set(self.skeys.promoted(model), target)
                p.delete(self.keys.pin(model))
                self._record(p, model, entry)
                p.rpush(self.keys.commands, command.to_json())
                self._publish(p, model, target)

            return command, write

        watch = [*self._watch(model), self.keys.commands]
        return self._atomic(f"rollback {model}", watch, body)

    def pin(self, model: str, version: int, reason: str = "") -> None:
        def body(r: Any) -> Any:
            self._require_version(r, model, version)
            pin, promoted, latest = self._pointers(r, model)
            if pin == version:
                raise RegistryError(f"{model} is already pinned at v{version}")
            before = next((v for v in (pin, promoted, latest) if v is not None), None)

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
        new = Policy(policy, float(margin), metric)  # type: ignore[arg-type]

        def body(r: Any) -> Any:
            self._require_model(r, model)
            _pin, promoted, latest = self._pointers(r, model)
            freeze = promoted is None and latest is not None and policy != "always"
            entry = self._entry(
                "policy", promoted, latest if freeze else promoted, reason,
                detail={"policy": policy, "margin": float(margin), "metric": metric},
            )  # fmt: skip

            def write(p: Any) -> None:
                p.set(self.keys.policy(model), new.to_json())
                if freeze:
                    p.set(self.skeys.promoted(model), latest)
                self._record(p, model, entry)

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
            policy = self._policy(r, model)
            if policy.policy == "manual":
                return False, None
            if self._pending(r, model):
                return False, None
            meta = self._require_version(r, model, version)
            pin, promoted, _latest = self._pointers(r, model)
            if promoted is not None and version <= promoted:
                return False, None
            detail: dict[str, Any] = {}
            if policy.policy == "guarded" and promoted is not None:
                current = SnapshotMeta.from_json(r.get(self.skeys.meta(model, promoted)) or b"{}")
                ok, why = guard_allows(metrics or meta.metrics, current.metrics, policy)
                if not ok:
                    return False, None
                detail["guard"] = why
            entry = self._entry("auto-promote", promoted, version, policy.policy, detail=detail)

            def write(p: Any) -> None:
                p.set(self.skeys.promoted(model), version)
                self._record(p, model, entry)
                self._publish(p, model, pin if pin is not None else version)

            return True, write

        watch = [*self._watch(model), self.keys.policy(model), self.keys.commands]
        return self._atomic(f"auto-promote {model} v{version}", watch, body)

    # -- retention -----------------------------------------------------------------------
    def set_retention(self, model: str, keep_last: int | None) -> None:
        """Per-model number of versions automatic retention keeps (None: the default)."""
        if keep_last is not None and keep_last < 1:
            raise RegistryError(f"keep-last must be >= 1, not {keep_last}")
        key = self.keys.retention(model)
        self._read(
            "retention",
            lambda: (
                self.client.delete(key) if keep_last is None else self.client.set(key, keep_last)
            ),
        )

    def retention(self, model: str, default_keep: int) -> list[int]:
        """Automatic retention (the learner calls it after a snapshot); not recorded in history."""
        raw = self._read("retention", lambda: self.client.get(self.keys.retention(model)))
        keep = int(raw) if raw is not None else default_keep
        return self.prune(model, keep, reason="retention", record=False)

    def protected(self, model: str) -> set[int]:
        """Versions never pruned: promoted, pinned, the rollback target, pending commands'."""
        return self._read("protected", lambda: self._protected(self.client, model))

    def _protected(self, r: Any, model: str) -> set[int]:
        pin, promoted, latest = self._pointers(r, model)
        keep = {v for v in (pin, promoted, latest, self._previous(r, model)) if v is not None}
        return keep | {c.to for c in self._pending(r, model)}

    def prune(
        self, model: str, keep_last: int, *, reason: str = "", record: bool = True
    ) -> list[int]:
        """Delete old versions except the newest ``keep_last`` and the `protected` ones.

        A checkpoint goes too once no model keeps its version (and it is not the latest).
        Returns the removed versions.
        """
        if keep_last < 1:
            raise RegistryError(f"keep-last must be >= 1, not {keep_last}")
        models = self._read("models", self.store.models)
        watch = [
            *self._watch(model), self.keys.commands, self.skeys.checkpoint_latest,
            *(self.skeys.versions(m) for m in models),
        ]  # fmt: skip

        def body(r: Any) -> Any:
            self._require_model(r, model)
            versions = [int(v) for v in r.zrange(self.skeys.versions(model), 0, -1)]
            keep = set(versions[-keep_last:]) | self._protected(r, model)
            doomed = [v for v in versions if v not in keep]
            if not doomed:
                return [], None
            cp_latest = _int(r.get(self.skeys.checkpoint_latest))
            others = [m.decode() for m in r.smembers(self.skeys.models) if m.decode() != model]
            dels: list[str] = []
            for v in doomed:
                raw = r.get(self.skeys.meta(model, v))
                chunks = SnapshotMeta.from_json(raw).chunks if raw is not None else 0
                dels += [self.skeys.meta(model, v)]
                dels += [self.skeys.chunk(model, v, i) for i in range(chunks)]
                used = any(r.zscore(self.skeys.versions(m), str(v)) is not None for m in others)
                cp_raw = r.get(self.skeys.checkpoint_meta(v))
                if not used and v != cp_latest and cp_raw is not None:
                    cp = CheckpointMeta.from_json(cp_raw)
                    dels += [self.skeys.checkpoint_meta(v)]
                    dels += [self.skeys.checkpoint_chunk(v, i) for i in range(cp.chunks)]

            def write(p: Any) -> None:
                p.zrem(self.skeys.versions(model), *map(str, doomed))
                p.delete(*dels)
                if record:
                    entry = self._entry("prune", None, None, reason, detail={"removed": doomed})
                    self._record(p, model, entry)

            return doomed, write

        return self._atomic(f"prune {model}", watch, body)

    # -- export / import -----------------------------------------------------------------
    def _signing_key(self) -> bytes:
        if not self._key:
            raise RegistryError("no signing key: create the Registry with key=...")
        return self._key

    def export(self, model: str, version: int, path: str | Path) -> Path:
        """Write ``model`` v``version`` (and its checkpoint, if kept) to a signed file.

        Layout: magic, 4-byte header length, JSON header, model blob, checkpoint blob,
        HMAC-SHA256 (store key) over everything before it.
        """
        key = self._signing_key()
        self._read("export", lambda: self._require_version(self.client, model, version))
        blob = self.store.read_model_blob(model, version)
        meta = self.store.meta(model, version)
        checkpoint: tuple[bytes, dict[str, int]] | None = None
        if self._read("export", lambda: self.client.exists(self.skeys.checkpoint_meta(version))):
            _v, cp_blob, offsets = self.store.checkpoint(version)
            checkpoint = (cp_blob, offsets)
        header = {
            "format": 1,
            "meta": dataclasses.asdict(meta),
            "model_size": len(blob),
            "checkpoint": None
            if checkpoint is None
            else {"size": len(checkpoint[0]), "offsets": checkpoint[1]},
            "exported_at": time.time(),
            "exported_by": self.by,
        }
        head = json.dumps(header, sort_keys=True).encode()
        body = EXPORT_MAGIC + struct.pack(">I", len(head)) + head + blob
        body += checkpoint[0] if checkpoint else b""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(body + hmac.new(key, body, hashlib.sha256).digest())
        tmp.replace(target)
        return target

    def import_(self, path: str | Path, reason: str = "") -> tuple[str, int]:
        """Verify a file made by `export`, then register it as a new version: (model, version).

        The signature is checked before anything is parsed; the new version does not move
        ``latest``, ``checkpoint:latest`` or any serving pointer: promote it to serve it.
        """
        key = self._signing_key()
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc}") from None
        header, blob, cp_blob = _parse_export(data, key)
        meta = SnapshotMeta(**header["meta"])
        if not _NAME.fullmatch(meta.model):
            raise RegistryError(f"invalid model name {meta.model!r} in {path}")
        if sha256_hex(blob) != meta.sha256:
            raise RegistryError(f"{path}: model checksum mismatch")
        try:
            verify_signed(blob, key)
            if cp_blob is not None:
                verify_signed(cp_blob, key)
        except SnapshotIntegrityError as exc:
            raise RegistryError(f"{path}: {exc}") from None
        version = self._read("import", self.store.next_version)
        entry = self._entry(
            "import", meta.version, version, reason or f"imported from {Path(path).name}",
            detail={"source_model": meta.model, "source_version": meta.version},
        )  # fmt: skip
        offsets = (header["checkpoint"] or {}).get("offsets")
        self.register(meta, blob, version, cp_blob, offsets, history_entry=entry)
        return meta.model, version

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
            chunks=max(1, -(-len(blob) // size)),
        )  # fmt: skip

        def write(p: Any) -> None:
            for i in range(new_meta.chunks):
                p.set(self.skeys.chunk(model, version, i), blob[i * size : (i + 1) * size])
            if checkpoint is not None:
                n = max(1, -(-len(checkpoint) // size))
                for i in range(n):
                    chunk = checkpoint[i * size : (i + 1) * size]
                    p.set(self.skeys.checkpoint_chunk(version, i), chunk)
                cp = CheckpointMeta(
                    version, time.time(), len(checkpoint), sha256_hex(checkpoint), n,
                    dict(offsets or {}),
                )  # fmt: skip
                p.set(self.skeys.checkpoint_meta(version), cp.to_json())
            p.set(self.skeys.meta(model, version), new_meta.to_json())
            p.zadd(self.skeys.versions(model), {str(version): version})
            p.sadd(self.skeys.models, model)
            if history_entry is not None:
                self._record(p, model, history_entry)

        watch = [self.skeys.versions(model), self.keys.history(model)]
        self._atomic(f"register {model} v{version}", watch, lambda r: (None, write))


def _parse_export(data: bytes, key: bytes) -> tuple[dict[str, Any], bytes, bytes | None]:
    """Check the magic and the HMAC first, then split header, model and checkpoint blobs."""
    if not data.startswith(EXPORT_MAGIC) or len(data) < len(EXPORT_MAGIC) + 4 + _MAC_SIZE:
        raise RegistryError("not a riverstream export file (bad header)")
    body, mac = data[:-_MAC_SIZE], data[-_MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise RegistryError(
            "signature mismatch: the export file was tampered with or signed with another key"
        )
    start = len(EXPORT_MAGIC) + 4
    (n,) = struct.unpack(">I", body[len(EXPORT_MAGIC) : start])
    try:
        header = json.loads(body[start : start + n])
        model_size = int(header["model_size"])
        cp = header["checkpoint"]
        cp_size = 0 if cp is None else int(cp["size"])
        header["meta"] = {f.name: header["meta"][f.name] for f in dataclasses.fields(SnapshotMeta)}
    except (ValueError, TypeError, KeyError) as exc:
        raise RegistryError(f"unreadable export header: {exc!r}") from None
    rest = body[start + n :]
    if len(rest) != model_size + cp_size:
        raise RegistryError("export file is truncated or has extra bytes")
    return header, rest[:model_size], (rest[model_size:] if cp is not None else None)
