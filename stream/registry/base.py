"""The registry's foundation: Redis transactions (WATCH / validate / MULTI / EXEC, retried) and
the reads every operation starts from. `stream.registry.registry.Registry` builds on it."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from schemas.errors import RegistryError
from schemas.records import HistoryEntry, Policy, RollbackCommand, SnapshotMeta
from stream.registry.policy import _int, _user, rollback_target, rollback_target_from_tail
from stream.store.batching import batch
from stream.store.keys import DEFAULT_LEARNER, Notification, owner_of
from stream.store.snapshots import (
    RedisAuthError,
    RedisUnavailableError,
    SnapshotStore,
    refusal,
    refused_credentials,
    transient,
)

HISTORY_LIMIT = 10_000
HISTORY_TAIL = 32
"""History entries read first for the default rollback target: when they decide it
(`rollback_target_from_tail`), the rest of the history is not read."""
MAX_ATTEMPTS = 200


OPERATION_TTL_SECONDS = 600
"""How long an operation's mark (``P:registry:op:ID``) says that it was applied: it is read
right after a lost reply."""


class RegistryUnavailableError(RegistryError):
    """Redis could not be reached or refused the operation for a while
    (`stream.store.snapshots.transient`): nothing was changed, and it may succeed later. (A
    reply lost after EXEC is checked against the operation's mark first: an operation that
    was applied returns as applied; one that Redis cannot tell about says so.)"""


def registry_error(message: str, exc: Exception) -> RegistryError:
    """The registry's error for ``exc``, a redis error or a store's `SnapshotError`: a
    `RegistryUnavailableError` when it passes by itself, or when Redis refused the process's
    credentials or its ACL denies the user a command, key or channel
    (`stream.store.snapshots.RedisAuthError`: a running learner rides it out as an outage, and
    the message names the settings).

    >>> error = registry_error("promote lr: redis error: x", redis.AuthenticationError("x"))
    >>> type(error).__name__, "RIVERSTREAM_REDIS_PASSWORD" in str(error)
    ('RegistryUnavailableError', True)
    """
    if refused_credentials(exc) and not isinstance(exc, RedisAuthError):  # that one says so
        said, fix = refusal(exc)
        message = f"{message}; {said}: {fix}"
    unavailable = isinstance(exc, RedisUnavailableError) or (
        isinstance(exc, redis.RedisError) and (transient(exc) or refused_credentials(exc))
    )
    return (RegistryUnavailableError if unavailable else RegistryError)(message)


_PARSED: dict[str, dict[bytes | str, HistoryEntry]] = {}
"""Per history key, its entries as last read, parsed, by their text (`parsed_history`)."""


def parsed_history(key: str, raws: list[bytes | str]) -> list[HistoryEntry]:
    """The history ``raws`` read from ``key``, each entry parsed once per process: entries
    never change once written, and a new read keeps only the entries it holds.

    With a full history (10 000 entries: one auto-promotion a version: 28 hours of versions
    every 10 s) the registry's steps after a snapshot cost 75-80 ms when every entry was parsed
    afresh, 28-35 ms with this cache, ≈ 2 ms once retention read only the history's tail
    (`bench/registry_history.py`); a tail and a whole history are cached under keys of their
    own (`_rollback_target`). The entries are shared between calls: callers read them and
    never hand them out. A forked snapshot's child starts from its parent's cache and its
    additions die with it."""
    known = _PARSED.get(key, {})
    entries = [known.get(raw) or HistoryEntry.from_json(raw) for raw in raws]
    _PARSED[key] = dict(zip(raws, entries, strict=True))
    return entries


def _newest_below(r: Any, versions_key: str) -> Callable[[int], int | None]:
    """``older`` of `rollback_target` read from Redis: the newest version in the sorted set
    ``versions_key`` below the one given (one round trip, only when asked)."""

    def older(current: int) -> int | None:
        below = r.zrevrangebyscore(versions_key, f"({current}", "-inf", 0, 1)
        return int(below[0]) if below else None

    return older


def _policy_of(raw: bytes | None) -> Policy:
    """A model's policy as stored (absent: ``always``)."""
    return Policy() if raw is None else Policy(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class Standing:
    """What a model's registry steps decide from, read in one round trip (`RegistryBase._standing`;
    one more when another learner than ``default`` owns the model, and one more when the
    history's tail does not decide the rollback target)."""

    known: bool
    """In the models set."""
    pin: int | None
    promoted: int | None
    latest: int | None
    policy: Policy
    pending: list[RollbackCommand]
    """The owner's commands not yet acknowledged, of this model."""
    previous: int | None
    """The default rollback target (`rollback_target`); read only when asked (``full``)."""
    versions: list[int]
    """The model's versions, oldest first; read only when asked (``full``), else empty."""

    def protected(self) -> set[int]:
        """Versions never pruned: pin, promoted, latest, the rollback target, pending commands'."""
        keep = {v for v in (self.pin, self.promoted, self.latest, self.previous) if v is not None}
        return keep | {c.to for c in self.pending}


class RegistryBase:
    """Pointers, history and policies of the models of one `SnapshotStore`.

    ``by`` names who acts in the history (default: the OS user); ``signing_key`` signs export
    files (default: the store's signing key).
    """

    def __init__(
        self, store: SnapshotStore, *, by: str | None = None, signing_key: bytes | None = None
    ) -> None:
        self.store = store
        self.client: redis.Redis = store.client
        self.keys = store.keys
        self.by = by or _user()
        self.signing_key = signing_key if signing_key is not None else store.signing_key

    # -- transactions --------------------------------------------------------------------
    def _atomic(self, what: str, watch: Sequence[str], body: Callable[[Any], Any]) -> Any:
        """WATCH ``watch``, run ``body(pipe)`` (reads, then ``pipe.multi()`` and writes), EXEC.

        ``body`` returns ``(result, write)``; ``write(pipe)`` queues the writes, or is None when
        there is nothing to write. Retried when a watched key changed meanwhile.

        The transaction also writes the operation's mark (``P:registry:op:ID``, one id per
        call): when EXEC's reply is lost (a timeout, a connection reset, a failover), the
        mark says whether it was applied, so that the operation is neither retried on top of
        itself (a rollback without ``--to`` would go back one more step) nor reported as not
        done when it was.
        """
        mark = self.keys.operation(uuid.uuid4().hex)  # one for every attempt of this call
        results: list[Any] = []  # the result of each attempt that sent writes (the mark's value)
        try:
            for attempt in range(MAX_ATTEMPTS):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        # The mark is watched too: an earlier attempt's EXEC that Redis runs
                        # late (its reply lost) fails this one, which then finds the mark.
                        pipe.watch(mark, *watch)
                        if results and (late := pipe.get(mark)) is not None:
                            return results[int(late)]
                        result, write = body(pipe)
                        if write is None:
                            pipe.unwatch()
                            return result
                        results.append(result)
                        pipe.multi()
                        write(pipe)
                        pipe.set(mark, len(results) - 1, ex=OPERATION_TTL_SECONDS)
                        try:
                            pipe.execute()
                        except (redis.WatchError, redis.ConnectionError, redis.TimeoutError) as exc:
                            applied = self._applied(what, mark)
                            if applied is not None:
                                return results[applied]
                            if isinstance(exc, redis.WatchError):
                                raise  # not applied: tried again (and the mark watched)
                            raise RegistryUnavailableError(
                                f"{what}: the reply was lost ({exc}); not applied when looked at "
                                "since, but Redis may still run it: look at `riverstream "
                                "snapshots history` before trying again"
                            ) from exc
                        return result
                    except redis.WatchError:
                        time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        except redis.RedisError as exc:
            raise registry_error(f"{what}: redis error: {exc}", exc) from exc
        raise RegistryError(f"{what}: gave up after {MAX_ATTEMPTS} conflicting attempts")

    def _applied(self, what: str, mark: str) -> int | None:
        """The attempt whose transaction wrote ``mark`` (an EXEC's reply lost), or None."""
        try:
            done = self.client.get(mark)
        except redis.RedisError as exc:
            raise RegistryUnavailableError(
                f"{what}: the reply was lost and Redis cannot say whether it was applied ({exc}): "
                "look at `riverstream snapshots history` before trying again"
            ) from exc
        return None if done is None else int(done)

    def _batch(self, r: Any, *commands: tuple[Any, ...]) -> list[Any]:
        """``commands`` in one round trip, on ``r``'s watching connection inside `_atomic`'s
        ``body`` (`stream.store.batching.batch`). A connection lost there is a `WatchError`,
        as redis-py makes it for a command it sends alone: `_atomic` tries again, on a new
        connection (a failover's)."""
        try:
            return batch(r, *commands)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not getattr(r, "watching", False):
                raise
            r.connection.disconnect()
            raise redis.WatchError(f"a connection error occurred while watching: {exc}") from exc

    def _standing(
        self, r: Any, model: str, *, full: bool = False, also: Sequence[tuple[Any, ...]] = ()
    ) -> tuple[Standing, list[Any]]:
        """``model``'s `Standing` (with its rollback target and versions when ``full``) and the
        replies of the commands ``also``, read together. Inside a transaction the owner's
        command list is watched: ``default``'s is read at once (`_watch` watches it), another
        owner's in a second round trip; so is the whole history when its tail does not decide
        the rollback target (`_rollback_target`)."""
        default_commands = self.keys.learner_commands(DEFAULT_LEARNER)
        commands: list[tuple[Any, ...]] = [
            ("SISMEMBER", self.keys.models, model),
            ("MGET", self.keys.pin(model), self.keys.promoted(model), self.keys.latest(model)),
            ("GET", self.keys.policy(model)),
            ("GET", self.keys.owner(model)),
            ("LRANGE", default_commands, 0, -1),
            *((("LRANGE", self.keys.history(model), -HISTORY_TAIL, -1),
               ("ZRANGE", self.keys.versions(model), 0, -1)) if full else ()),
            *also,
        ]  # fmt: skip
        replies = self._batch(r, *commands)
        known, (pin, promoted, latest), policy, owner, raw_commands = replies[:5]
        previous: int | None = None
        versions: list[int] = []
        if full:
            versions = [int(v) for v in replies[6]]
            previous = self._rollback_target(
                r, model, promoted=_int(promoted), latest=_int(latest), tail=replies[5],
                older=lambda v: max((o for o in versions if o < v), default=None),
            )  # fmt: skip
        owner_commands = self.keys.learner_commands(owner_of(owner))
        if owner_commands != default_commands:
            watch = (("WATCH", owner_commands),) if getattr(r, "watching", False) else ()
            *_, raw_commands = self._batch(r, *watch, ("LRANGE", owner_commands, 0, -1))
        standing = Standing(
            known=bool(known),
            pin=_int(pin),
            promoted=_int(promoted),
            latest=_int(latest),
            policy=_policy_of(policy),
            pending=[c for c in map(RollbackCommand.from_json, raw_commands) if c.model == model],
            previous=previous,
            versions=versions,
        )
        return standing, replies[len(commands) - len(also) :]

    def _rollback_target(
        self,
        r: Any,
        model: str,
        *,
        promoted: int | None,
        latest: int | None,
        tail: list[bytes | str],
        older: Callable[[int], int | None],
    ) -> int | None:
        """The default rollback target (`rollback_target`) from the history's last
        `HISTORY_TAIL` entries ``tail`` when they decide it, else from the whole history, read
        here. Each entry is parsed once per process (`parsed_history`)."""
        key = self.keys.history(model)
        current = promoted if promoted is not None else latest
        last = parsed_history(f"{key} (tail)", tail)  # cached apart: it would evict the whole
        decided, target = rollback_target_from_tail(last, current)
        if decided:
            return target
        if len(tail) < HISTORY_TAIL:  # the tail is the whole history
            return rollback_target(last, current, older)
        (raws,) = self._batch(r, ("LRANGE", key, 0, -1))
        return rollback_target(parsed_history(key, raws), current, older)

    def _read(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as exc:
            raise registry_error(f"{what}: redis error: {exc}", exc) from exc

    def _require_model(self, r: Any, model: str) -> None:
        if not r.sismember(self.keys.models, model):
            known = sorted(
                m.decode(errors="backslashreplace") for m in r.smembers(self.keys.models)
            )
            raise RegistryError(f"unknown model {model!r}; models are {known}")

    def _require_version(self, r: Any, model: str, version: int) -> SnapshotMeta:
        self._require_model(r, model)
        raw = r.get(self.keys.meta(model, version))
        if raw is None:
            versions = [int(v) for v in r.zrange(self.keys.versions(model), 0, -1)]
            raise RegistryError(f"{model} has no version {version}; versions are {versions}")
        return SnapshotMeta.from_json(raw)

    def _entry(self, action: str, frm: int | None, to: int | None, reason: str, **kw: Any) -> str:
        entry = HistoryEntry(time.time(), action, frm, to, reason, self.by, **kw)
        return json.dumps(entry.to_dict(), sort_keys=True)

    def _record(self, pipe: Any, model: str, entry: str) -> None:
        pipe.rpush(self.keys.history(model), entry)
        pipe.ltrim(self.keys.history(model), -HISTORY_LIMIT, -1)

    def _publish(self, pipe: Any, model: str, version: int | None) -> None:
        # Every pointer move ends here, in its transaction: the live update between versions
        # (`stream.store.live`) is dropped, so a rollback or pin is served exactly at once.
        pipe.delete(self.keys.live(model))
        if version is not None:
            pipe.publish(self.keys.channel, Notification(model, version).to_json())

    def _watch(self, model: str) -> list[str]:
        """The keys a change of ``model``'s pointers watches (retention and pointer changes)."""
        return [
            self.keys.owner(model),
            self.keys.promoted(model),
            self.keys.pin(model),
            self.keys.history(model),
            self.keys.versions(model),
            self.keys.models,
            self.keys.learner_commands(DEFAULT_LEARNER),  # read with the rest (`_standing`)
        ]

    def _pointers(self, r: Any, model: str) -> tuple[int | None, int | None, int | None]:
        pin, promoted, latest = r.mget(
            self.keys.pin(model), self.keys.promoted(model), self.keys.latest(model)
        )
        return _int(pin), _int(promoted), _int(latest)

    def _history(self, r: Any, model: str, last: int | None = None) -> list[HistoryEntry]:
        start = 0 if last is None else -max(1, last)
        raws = r.lrange(self.keys.history(model), start, -1)
        return [HistoryEntry.from_json(raw) for raw in raws]

    def _owner(self, r: Any, model: str) -> str:
        """The learner that owns ``model`` (``default`` when none claimed it)."""
        return owner_of(r.get(self.keys.owner(model)))

    def _commands_of(self, r: Any, model: str) -> str:
        """The command list of ``model``'s owner, added to the transaction's WATCH (``r`` is
        a pipeline in its WATCH phase, or a plain client for reads)."""
        key = self.keys.learner_commands(self._owner(r, model))
        if getattr(r, "watching", False):
            r.watch(key)
        return key

    def _previous(self, r: Any, model: str) -> int | None:
        """The rollback target by default: the version promoted before the current one
        (`_rollback_target`)."""
        pointers, tail = self._batch(
            r,
            ("MGET", self.keys.pin(model), self.keys.promoted(model), self.keys.latest(model)),
            ("LRANGE", self.keys.history(model), -HISTORY_TAIL, -1),
        )

        _pin, promoted, latest = (_int(v) for v in pointers)
        older = _newest_below(r, self.keys.versions(model))
        return self._rollback_target(
            r, model, promoted=promoted, latest=latest, tail=tail, older=older
        )

    def _policy(self, r: Any, model: str) -> Policy:
        return _policy_of(r.get(self.keys.policy(model)))
