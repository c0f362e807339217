"""Retention: how many versions of a model are kept, which are protected, and pruning."""

from __future__ import annotations

from typing import Any

from schemas.errors import RegistryError
from schemas.records import CheckpointMeta, SnapshotMeta
from stream.registry.base import RegistryBase
from stream.registry.policy import _int
from stream.store.keys import DEFAULT_LEARNER


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RetentionOps(RegistryBase):
    """Retention and pruning of a model's versions (a part of `Registry`)."""

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

    def _checkpoint_pointers(self) -> list[str]:
        """The checkpoint pointers of every learner (``default``'s, and each named one's)."""
        names = {_text(m) for m in self.client.smembers(self.keys.learners)}
        return [self.keys.learner_checkpoint_latest(n) for n in sorted(names | {DEFAULT_LEARNER})]

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
        pointers = self._read("learners", self._checkpoint_pointers)
        watch = [
            *self._watch(model), self.keys.learners, *pointers,
            *(self.keys.versions(m) for m in models),
        ]  # fmt: skip
        # (and the owner's command list, watched by _protected inside the transaction)

        def body(r: Any) -> Any:
            self._require_model(r, model)
            versions = [int(v) for v in r.zrange(self.keys.versions(model), 0, -1)]
            keep = set(versions[-keep_last:]) | self._protected(r, model)
            doomed = [v for v in versions if v not in keep]
            if not doomed:
                return [], None
            # every learner's latest checkpoint stays (learner groups share the versions)
            cp_latest = {_int(raw) for raw in r.mget(pointers)}
            others = [m.decode() for m in r.smembers(self.keys.models) if m.decode() != model]
            dels: list[str] = []
            for v in doomed:
                raw = r.get(self.keys.meta(model, v))
                chunks = SnapshotMeta.from_json(raw).chunks if raw is not None else 0
                dels += [self.keys.meta(model, v)]
                dels += [self.keys.chunk(model, v, i) for i in range(chunks)]
                used = any(r.zscore(self.keys.versions(m), str(v)) is not None for m in others)
                cp_raw = r.get(self.keys.checkpoint_meta(v))
                if not used and v not in cp_latest and cp_raw is not None:
                    cp = CheckpointMeta.from_json(cp_raw)
                    dels += [self.keys.checkpoint_meta(v)]
                    dels += [self.keys.checkpoint_chunk(v, i) for i in range(cp.chunks)]

            def write(p: Any) -> None:
                p.zrem(self.keys.versions(model), *map(str, doomed))
                p.delete(*dels)
                if record:
                    entry = self._entry("prune", None, None, reason, detail={"removed": doomed})
                    self._record(p, model, entry)

            return doomed, write

        return self._atomic(f"prune {model}", watch, body)
