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
        return self._prune(model, None, default_keep, reason="retention", record=False)

    def protected(self, model: str) -> set[int]:
        """Versions never pruned: promoted, pinned, the rollback target, pending commands'."""
        standing, _ = self._read("protected", lambda: self._standing(self.client, model, full=True))
        return standing.protected()

    def prune(
        self, model: str, keep_last: int, *, reason: str = "", record: bool = True
    ) -> list[int]:
        """Delete old versions except the newest ``keep_last`` and the `protected` ones.

        A checkpoint goes too once no model keeps its version (and it is not the latest).
        Returns the removed versions.
        """
        if keep_last < 1:
            raise RegistryError(f"keep-last must be >= 1, not {keep_last}")
        return self._prune(model, keep_last, keep_last, reason=reason, record=record)

    def _prune(
        self, model: str, keep_last: int | None, default_keep: int, *, reason: str, record: bool
    ) -> list[int]:
        """`prune`, keeping ``keep_last`` versions, or (None) the model's retention setting,
        else ``default_keep``. Its reads take four round trips, and five when it deletes: it
        runs after every snapshot, in the learner's writer."""
        models, learners, setting = self._read(
            "models", lambda: self._batch(
                self.client, ("SMEMBERS", self.keys.models), ("SMEMBERS", self.keys.learners),
                ("GET", self.keys.retention(model)),
            ),
        )  # fmt: skip
        if keep_last is None:
            keep_last = int(setting) if setting is not None else default_keep
            if keep_last < 1:  # a key set by hand: `set_retention` refuses it
                raise RegistryError(f"keep-last must be >= 1, not {keep_last}")
        names = {_text(m) for m in learners} | {DEFAULT_LEARNER}
        pointers = [self.keys.learner_checkpoint_latest(n) for n in sorted(names)]
        watch = [
            *self._watch(model), self.keys.learners, *pointers,
            *(self.keys.versions(_text(m)) for m in models),
        ]  # fmt: skip
        # (and the owner's command list, watched by _standing inside the transaction)

        def body(r: Any) -> Any:
            standing, (cp_latest_raw, members) = self._standing(
                r, model, full=True, also=[("MGET", *pointers), ("SMEMBERS", self.keys.models)]
            )
            if not standing.known:
                self._require_model(r, model)  # raises, naming the models
            versions = standing.versions
            keep = set(versions[-keep_last:]) | standing.protected()
            doomed = [v for v in versions if v not in keep]
            if not doomed:
                return [], None
            # every learner's latest checkpoint stays (learner groups share the versions)
            cp_latest = {_int(raw) for raw in cp_latest_raw}
            others = sorted(_text(m) for m in members if _text(m) != model)
            per = 2 + len(others)
            replies = self._batch(r, *(
                command
                for v in doomed
                for command in (
                    ("GET", self.keys.meta(model, v)),
                    ("GET", self.keys.checkpoint_meta(v)),
                    *(("ZSCORE", self.keys.versions(m), str(v)) for m in others),
                )
            ))  # fmt: skip
            dels: list[str] = []
            for i, v in enumerate(doomed):
                raw, cp_raw, *scores = replies[i * per : (i + 1) * per]
                chunks = SnapshotMeta.from_json(raw).chunks if raw is not None else 0
                dels += [self.keys.meta(model, v)]
                dels += [self.keys.chunk(model, v, i) for i in range(chunks)]
                used = any(score is not None for score in scores)
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
