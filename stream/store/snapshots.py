"""The Redis snapshot store: versioned, chunked, signed model blobs and learner checkpoints.

An adapter: every ``redis`` error is wrapped into `SnapshotError` where it enters (one that passes
by itself, `transient`, into its subclass `RedisUnavailableError`; Redis refusing the process's
credentials or its ACL user a command, key or channel, `refused_credentials`, into
`RedisAuthError`); a blob whose checksum or HMAC does not
match raises `SnapshotIntegrityError` and is never unpickled.

The key layout, the served-version rule and the notification format are in `stream.store.keys`.

A name in the models' index (``P:models``) that is not UTF-8 (written by something else: `write`
adds valid names only) is that entry's problem alone: `SnapshotStore.models` lists it as an
`UnreadableModelName` (its bytes escaped, ``\\xff``, never a valid model name, so no key of
it exists), as `stream.store.graphs` lists such a graph name; the models' follower reports it
and follows the other models. Reading the index failed with ``UnicodeDecodeError`` before.

A version is visible once its ``meta`` exists; chunks without a meta are never read. Readers
ask `serving_version` (`stream.store.keys.served_version`), so the registry only has to move a
pointer and publish on the channel to move every API process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self, cast

import redis

from learners.serialization import load_signed, sha256_hex, verify_signed
from schemas.errors import ConfigError, SnapshotError, SnapshotIntegrityError
from schemas.names import MODEL_NAME_RULE, is_model_name
from schemas.records import CheckpointMeta, SnapshotMeta
from stream.store.batching import batch
from stream.store.connect import redis_client
from stream.store.keys import (
    DEFAULT_LEARNER,
    Notification,
    RedisKeys,
    chunks,
    owner_of,
    served_version,
)
from stream.store.trace import TraceWrite, queue_trace

if TYPE_CHECKING:
    from schemas.settings import Settings

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
REDIS_VALUE_LIMIT = 512 * 1024 * 1024
WAIT_REPLICAS_MS = 1000  # longest wait for replicas after a snapshot (then announced anyway)
SUBSCRIBE_REPLY_SECONDS = 2.0  # longest wait for the reply to SUBSCRIBE (`Subscription`)

# Sets KEYS[1] to ARGV[1] unless it already holds a version >= ARGV[1] (a value that is no
# number counts as none: the command never fails at EXEC); queued inside MULTI.
_SET_MAX = """
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"""

# `SnapshotStore._check_owners` in one round trip: KEYS: the owners' keys (ARGV[1] of them),
# then, when ARGV[2] is 1, the learner's epoch hash (`RedisKeys.epoch`), then keys whose type is
# checked; returns the owners (as MGET would: nil for a key that holds no string; one GET at a
# time, as Lua's unpack stops at ≈ 8 000 values), those types, and the epoch hash's fields
# (`FENCE_FIELDS`; nil when not asked, or when the key is no hash).
_OWNERS_AND_TYPES = """
local n = tonumber(ARGV[1])
local owners = {}
for i = 1, n do
  local owner = redis.pcall('GET', KEYS[i])
  if type(owner) == 'table' then owner = false end
  owners[i] = owner
end
local first, fence = n + 1, false
if ARGV[2] == '1' then
  fence = redis.pcall('HMGET', KEYS[n + 1], 'epoch', 'started_at', 'host', 'pid')
  if fence['err'] then fence = false end
  first = n + 2
end
local types = {}
for i = first, #KEYS do types[#types + 1] = redis.call('TYPE', KEYS[i])['ok'] end
return {owners, types, fence}
"""

FENCE_FIELDS = ("epoch", "started_at", "host", "pid")
"""The fields of a learner's epoch hash (`RedisKeys.epoch`), written by
`stream.registry.owners.claim` when a learner process starts (and by `FENCE_LUA` when the
newest process finds its epoch gone)."""

FENCE_LUA = """
local function fence(key, mine, started, host, pid)
  local held = redis.call('HMGET', key, 'epoch', 'started_at', 'host', 'pid')
  local epoch = tonumber(held[1])
  if epoch and epoch > tonumber(mine) then return held end
  if not epoch or epoch < tonumber(mine) then
    redis.call('HSET', key, 'epoch', mine, 'started_at', started, 'host', host, 'pid', pid)
  end
  return false
end
"""
"""The fence as a Lua function for the scripts that write for a learner process: ``fence(the
epoch hash, this process's epoch, its started_at, host, pid)`` returns the hash's fields
(`FENCE_FIELDS`) when a newer process holds it (the write must not happen), else false.

A hash that lost this process's epoch (the key evicted or deleted, or a Redis failover that
lost the claim's write and went back to an older epoch) gets it back, so that an older process
still running finds itself fenced at its next write instead of writing beside the newest: a
lower or missing epoch never lets two processes of one learner write. The claim itself takes an
epoch above the server's clock in microseconds (`stream.registry.owners.claim`), so a process
that claims after the hash was lost still outranks every process started before it."""

_FENCE_RESTORE = FENCE_LUA + "return fence(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"


class UnreadableModelName(str):
    """A name of the models' index that is not UTF-8, as text (its bytes escaped); ``raw`` is
    the stored name. Nothing of a model can be read under it (see the module). The graphs'
    index has its own, `stream.store.graphs.UnreadableName`, which names a graph.

    >>> name = UnreadableModelName.of(b"l\\xffr")
    >>> name, name.raw, name == "l\\\\xffr"
    ('l\\\\xffr', b'l\\xffr', True)
    """

    raw: bytes
    names = "model"
    """What the index names (in `problem`'s message)."""

    @classmethod
    def of(cls, raw: bytes) -> Self:
        name = cls(raw.decode(errors="backslashreplace"))
        name.raw = raw
        return name

    def problem(self, key: str) -> ValueError:
        return ValueError(
            f"the {self.names} name {self.raw!r} in {key} is not UTF-8: it is skipped"
        )


def _model_name(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return UnreadableModelName.of(raw)


class RedisUnavailableError(SnapshotError):
    """Redis could not be reached (connection refused, timeout) or refused the call for a while
    (`transient`): the snapshot may be fine, and the same call may succeed later."""


CREDENTIALS = (
    "RIVERSTREAM_REDIS_PASSWORD (or the password in RIVERSTREAM_REDIS_URL, "
    "redis://:PASSWORD@host:port/db) and RIVERSTREAM_REDIS_USERNAME (an ACL user) must be "
    "those Redis expects"
)
"""The settings that give Redis its credentials, for the messages of `RedisAuthError`."""
PERMISSIONS = (
    "the ACL of RIVERSTREAM_REDIS_USERNAME (or of the URL's user; without one, Redis's default "
    "user) must allow riverstream's commands on the keys of its prefix RIVERSTREAM_REDIS_PREFIX "
    "(~PREFIX:*) and on its channels (&PREFIX:*): see the README for the rule"
)
"""What to fix when Redis's ACL denies this process's user a command, key or channel, for the
messages of `RedisAuthError`."""
_CREDENTIALS_REFUSED = (redis.exceptions.AuthenticationError,
                        redis.exceptions.AuthenticationWrongNumberOfArgsError)  # fmt: skip
# The same refusals by their code, as a reply redis-py has no class for would carry them (first,
# or after a pipeline's "... caused error: " or a transaction's "... because of: ").
_CREDENTIALS_CODE = re.compile(r"(?:^|caused error: |because of: )(?:NOAUTH|WRONGPASS) ")
# Redis's ACL denying a command, key or channel: its NOPERM code, the text redis-py keeps of a
# NOPERM reply (it drops the code: "this user has no permissions to ..." in Redis 7.0, "User u
# has no permissions to ..." and "No permissions to access a key" from 7.2, and Valkey) and the
# reply of a script whose command the ACL denies (an ERR: "The user executing the script can't
# ..." in 7.0, "ACL failure in script: ..." from 7.2). Anywhere in a message: a snapshot's
# failure reaches the learner as text.
_PERMISSION_DENIED = re.compile(
    r"\bNOPERM |\bno permissions to |The user executing the script can't |ACL failure in script",
    re.IGNORECASE,
)


class RedisAuthError(RedisUnavailableError, ConfigError):
    """Redis refused this process's credentials, or its ACL denies this process's user a command,
    key or channel riverstream needs (`refused_credentials`): a configuration error, not an
    outage; the message names the settings (and quotes Redis's reply, which names the command
    or key). At a process's start it is fatal (the learner's claim,
    `stream.registry.owners.claim`; the API's first look at Redis, `serving.app`). A running
    process whose password (or ACL) was changed under it rides it out as it rides out an outage
    (a `RedisUnavailableError`: nothing is lost, snapshots wait, the API serves what it holds)
    but reports it as what it is (`stream.learner.outage`, `stream.store.following`).

    >>> print(RedisAuthError("subscribe", redis.exceptions.NoPermissionError(
    ...     "this user has no permissions to run the 'subscribe' command")))  # doctest: +ELLIPSIS
    subscribe: Redis's ACL denies this process's user what riverstream needs (this user has no permissions to run the 'subscribe' command): a configuration error, not an outage; the ACL of RIVERSTREAM_REDIS_USERNAME ...
    """

    def __init__(self, what: str, exc: BaseException) -> None:
        said, fix = refusal(exc)
        super().__init__(f"{what}: {said} ({exc}): a configuration error, not an outage; {fix}")


def denied_permission(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from, as in `refused_credentials`) says that
    Redis's ACL denies this process's user a command, a key or a channel: a ``NOPERM`` reply
    (`redis.exceptions.NoPermissionError`, a `redis.ResponseError`), or a script's command
    denied. The user's password was accepted: the user may not do what riverstream does.

    >>> denied_permission(redis.exceptions.NoPermissionError(
    ...     "this user has no permissions to access one of the keys used as arguments"))
    True
    >>> denied_permission(redis.ResponseError("Command # 3 (EVAL ...) of pipeline caused error: "
    ...     "The user executing the script can't run this command or subcommand script: ..."))
    True
    >>> denied_permission(redis.ResponseError("Command # 2 (EVALSHA ...) of pipeline caused "
    ...     "error: ACL failure in script: User riverstream has no permissions to run the "
    ...     "'publish' command script: ..."))  # Redis 7.2 and later
    True
    >>> denied_permission(redis.AuthenticationError(str(RedisAuthError("snapshot v3",
    ...     redis.exceptions.NoPermissionError("No permissions to access a key")))))
    True
    >>> denied_permission(redis.AuthenticationError("invalid username-password pair"))
    False
    """
    return any(
        isinstance(error, redis.exceptions.NoPermissionError)
        or (isinstance(error, (redis.RedisError, RedisAuthError))
            and bool(_PERMISSION_DENIED.search(str(error))))
        for error in _chain(exc)
    )  # fmt: skip


def refused_credentials(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from, or for a `redis.WatchError` the one it
    was raised while handling, as in `transient`) says that Redis refused this process's
    credentials: ``WRONGPASS`` (a wrong password or user), ``NOAUTH`` (no password given to a
    Redis that wants one), a password given to a Redis that has none, a user given to a Redis
    without ACLs (before 6). redis-py raises the first three as `redis.AuthenticationError`, a
    `redis.ConnectionError`: `transient` took them for an outage. Or that its ACL denies the
    user a command, key or channel (`denied_permission`): a configuration error the same way,
    which waiting does not mend either (`refusal` tells the two apart).

    >>> refused_credentials(redis.AuthenticationError("invalid username-password pair"))
    True
    >>> refused_credentials(redis.ConnectionError("Connection refused"))
    False
    >>> refused_credentials(redis.exceptions.NoPermissionError("this user has no permissions"))
    True
    >>> try:
    ...     try:
    ...         raise redis.AuthenticationError("Authentication required.")
    ...     except redis.RedisError as exc:
    ...         raise RuntimeError("reading learner commands") from exc
    ... except RuntimeError as exc:
    ...     refused_credentials(exc)
    True
    """
    for current in _chain(exc):
        if isinstance(current, (RedisAuthError, *_CREDENTIALS_REFUSED)):
            return True
        if isinstance(current, redis.ResponseError) and _CREDENTIALS_CODE.search(str(current)):
            return True
    return denied_permission(exc)


def refusal(exc: BaseException) -> tuple[str, str]:
    """What Redis refused in ``exc`` (one that `refused_credentials`) and what to fix, in words
    for an operator: the ACL (`denied_permission`) or else the credentials.

    >>> refusal(redis.AuthenticationError("invalid username-password pair"))[0]
    "Redis refused this process's credentials"
    """
    if denied_permission(exc):
        return "Redis's ACL denies this process's user what riverstream needs", PERMISSIONS
    return "Redis refused this process's credentials", CREDENTIALS


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the error it was raised from, and so on (for a `redis.WatchError`, the one it
    was raised while handling: the connection's, `transient`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        during = current.__context__ if isinstance(current, redis.WatchError) else None
        current = current.__cause__ or during


class OwnershipLostError(SnapshotError):
    """A snapshot names a model that another learner owns now: it was not written."""


class FencedError(SnapshotError):
    """Another process of this learner's name started after this one (it took a newer epoch,
    `stream.registry.owners.claim`): this one wrote nothing and must stop. Two processes of
    one name would otherwise both learn its models, overwrite each other's checkpoint and
    acknowledge each other's commands."""


def lost_epoch(mine: int, fields: list[Any] | None) -> bool:
    """Whether the epoch hash read as ``fields`` lost the epoch ``mine`` of the newest process
    (gone, or older: see `FENCE_LUA`), so that the write puts it back. ``None``: the key holds
    no hash (something else writes into the prefix), which is left alone.

    >>> lost_epoch(3, [None, None, None, None]), lost_epoch(3, [b"2", b"1.0", b"h", b"1"])
    (True, True)
    >>> lost_epoch(3, [b"3", b"1.0", b"h", b"1"]), lost_epoch(3, [b"4"]), lost_epoch(3, None)
    (False, False, False)
    """
    if not fields:
        return False
    raw = fields[0]
    return raw is None or not raw.isdigit() or int(raw) < mine


def fence_owner(epoch: int, process: tuple[str, int]) -> list[str]:
    """The ``epoch``, ``started_at``, ``host`` and ``pid`` that the process ``(host, pid)`` puts
    back in its epoch hash (`FENCE_LUA`'s arguments after the key): the time is now."""
    return [str(epoch), repr(time.time()), process[0], str(process[1])]


def this_process() -> tuple[str, int]:
    """``(host, pid)`` of the process asking: what its epoch hash names (`fence_owner`). Read when
    a store is made, so that a snapshot's forked child names its learner, not itself."""
    return socket.gethostname(), os.getpid()


def fenced_error(learner: str, mine: int, fields: list[Any] | None) -> FencedError | None:
    """The `FencedError` of the process of ``learner`` holding epoch ``mine`` when its epoch
    hash holds ``fields`` (`FENCE_FIELDS`, as read), or None if that process is still the
    newest (or the hash lost its epoch: `lost_epoch`, then the writer puts it back).

    >>> fenced_error("a", 3, [b"3", b"1.0", b"h", b"1"]) is None, fenced_error("a", 3, None)
    (True, None)
    >>> str(fenced_error("a", 3, [b"4", b"0", b"host-2", b"77"]))[:61]
    "another process of learner 'a' started at 1970-01-01 00:00:00"
    """
    if not fields or fields[0] is None or not fields[0].isdigit() or int(fields[0]) <= mine:
        return None
    raw, started, host, pid = (b"?" if v is None else v for v in fields)
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(started)))
    except ValueError:
        when = started.decode(errors="replace")
    return FencedError(
        f"another process of learner {learner!r} started at {when} UTC (host "
        f"{host.decode(errors='replace')}, pid {pid.decode(errors='replace')}; its epoch "
        f"{int(raw)}, this process's {mine}): this process stops without writing. Two "
        "processes of one learner name must not run together; give each learner its own "
        "--learner name"
    )


_REFUSALS = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
             redis.exceptions.MasterDownError)  # fmt: skip
# Refusals that redis-py raises as a plain ResponseError: by their code, first in the message,
# after a pipeline's "Command # N (...) of pipeline caused error: ", or after the "EXECABORT
# Transaction discarded because of: " of a refusal that began between MULTI and EXEC.
_REFUSAL_CODE = re.compile(
    r"(?:^|caused error: |because of: )"
    r"(?:MISCONF|BUSY|NOREPLICAS|OOM|READONLY|MASTERDOWN|LOADING) "
)


def transient(exc: BaseException) -> bool:
    """Whether the redis error ``exc`` passes by itself, so that the same call may succeed later.

    Redis unreachable (connection refused or lost, a timeout, ``LOADING`` its data after a
    restart), or refusing writes for a while: ``OOM`` at ``maxmemory``, ``READONLY`` (a replica:
    the old primary during a failover), ``MISCONF`` (failing to persist), ``BUSY`` (a long
    script), ``NOREPLICAS``, ``MASTERDOWN``. The one rule: the store (`RedisUnavailableError`)
    and the registry (`stream.registry.base.RegistryUnavailableError`) both ask it, and the
    learner rides out either as an outage (`stream.learner.outage`).

    >>> transient(redis.exceptions.OutOfMemoryError("command not allowed when used memory ..."))
    True
    >>> transient(redis.ResponseError("Command # 2 (SET k v) of pipeline caused error: MISCONF x"))
    True
    >>> transient(redis.ResponseError("BUSYKEY Target key name already exists."))
    False
    >>> transient(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    False
    >>> transient(redis.exceptions.ExecAbortError(
    ...     "EXECABORT Transaction discarded because of: OOM command not allowed when ..."))
    True

    A connection lost while a transaction watches its keys comes as a `redis.WatchError`
    raised while handling the connection's error (redis-py's "A ConnectionError occurred while
    watching one or more keys"): transient as that error is; a watched key that changed is not.

    >>> def lost_while_watching() -> redis.WatchError:
    ...     try:
    ...         try:
    ...             raise redis.ConnectionError("Connection reset by peer")
    ...         except redis.ConnectionError:
    ...             raise redis.WatchError("A ConnectionError occurred while watching")
    ...     except redis.WatchError as exc:
    ...         return exc
    >>> transient(lost_while_watching()), transient(redis.WatchError("Watched variable changed."))
    (True, False)

    Credentials that Redis refuses do not pass by themselves, though redis-py raises them as a
    `redis.ConnectionError` (`refused_credentials`).

    >>> transient(redis.AuthenticationError("invalid username-password pair or user is disabled."))
    False
    """
    if refused_credentials(exc):
        return False
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, *_REFUSALS)):
        return True
    if isinstance(exc, redis.WatchError):  # the connection died while watching?
        during = exc.__context__
        return during is not None and transient(during)
    return isinstance(exc, redis.ResponseError) and bool(_REFUSAL_CODE.search(str(exc)))


@contextlib.contextmanager
def wrapped(what: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        if refused_credentials(exc):
            raise RedisAuthError(what, exc) from exc
        if transient(exc):
            raise RedisUnavailableError(f"{what}: redis unavailable: {exc}") from exc
        raise SnapshotError(f"{what}: {exc}") from exc


class SnapshotStore:
    """Versioned snapshots in Redis; ``client`` must return bytes (``decode_responses=False``).

    redis-py types replies as ``bytes | str`` (it cannot know ``decode_responses``); the
    ``cast``s below say ``bytes``, which ``__init__`` checks.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        signing_key: bytes,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        *,
        learner: str = DEFAULT_LEARNER,
        wait_replicas: int = 0,
        epoch: int | None = None,
    ) -> None:
        if not 0 < chunk_bytes <= REDIS_VALUE_LIMIT:
            raise SnapshotError(f"chunk_bytes must be in 1..{REDIS_VALUE_LIMIT}, not {chunk_bytes}")
        if client.get_encoder().decode_responses:
            raise SnapshotError("the redis client must be created with decode_responses=False")
        self.client = client
        self.keys = RedisKeys(prefix, learner)
        self.signing_key = signing_key
        self.chunk_bytes = chunk_bytes
        self.wait_replicas = wait_replicas
        self.epoch = epoch
        """The learner process's fencing token (`stream.registry.owners.claim`): with one,
        `write` refuses with `FencedError` once a newer process of the learner started (and
        puts it back in a hash that lost it, `FENCE_LUA`). None (the registry, the tools): not
        checked."""
        self.process = this_process()

    def using(self, client: redis.Redis) -> SnapshotStore:
        """This store (prefix, key, learner) on another ``client``: one with other timeouts."""
        return SnapshotStore(
            client, self.keys.prefix, self.signing_key, self.chunk_bytes,
            learner=self.keys.learner, wait_replicas=self.wait_replicas, epoch=self.epoch,
        )  # fmt: skip

    # -- writing ---------------------------------------------------------------------------
    def next_version(self) -> int:
        with wrapped("next_version"):
            return int(self.client.incr(self.keys.seq))

    def write(
        self,
        version: int,
        models: Mapping[str, tuple[bytes, SnapshotMeta]],
        checkpoint: bytes,
        offsets: Mapping[str, int],
        trace: TraceWrite | None = None,
    ) -> None:
        """Write ``version`` of every model in ``models`` plus the learner checkpoint, atomically.

        The blobs are already signed by the caller (`learners.serialization.dump_signed`). Each
        meta's ``version``, ``size``, ``sha256`` and ``chunks`` are set here from the blob.

        The snapshot protocol:

        1. Write every chunk (each model blob and the checkpoint blob) under keys specific to
           ``version``. Nothing refers to them yet: a crash here leaves unreferenced chunks
           that no reader ever looks at.
        2. In one MULTI/EXEC transaction: each model's meta, its entry in the versions sorted
           set and the models set, its ``latest`` pointer (moved only forward), the checkpoint
           meta and ``checkpoint:latest`` (only forward), and the learning curve's points that
           the checkpoint covers (``trace``, see `stream.store.trace`). After EXEC the whole
           version is visible at once; before it, none of it is. The models' owners are
           WATCHed and checked before step 1: a model handed over to another learner
           (`stream.registry.owners`) fails the write with `OwnershipLostError`, before any
           chunk is written or, when the handover comes during the write, at EXEC; nothing
           becomes visible. So is the learner's epoch (`RedisKeys.epoch`) when the store has
           one: once another process of the learner's name started, the write fails with
           `FencedError` the same way. In the same round trip the keys the transaction adds to are
           checked for their type (`_typed`): Redis has no rollback, and a command refused at
           EXEC by a key of the wrong type (only something else writing into this prefix
           makes one) would not undo the others. Such a key fails the write with
           `SnapshotError` naming it, before anything is written (these keys are not
           WATCHed: one changed to another type between the check and EXEC still refuses
           its command alone). A pointer that holds no number counts as none.
        3. PUBLISH ``{"model", "version"}`` per model on the channel, queued in that
           transaction (sent at EXEC, once everything is visible). A lost message is caught
           up by the readers' polling of the pointers. With ``wait_replicas``, only once that
           many replicas have the version (Redis WAIT, at most `WAIT_REPLICAS_MS`), so that a
           failover to one of them keeps every version announced.
        """
        if version <= 0:
            raise SnapshotError(f"version must be positive, not {version}")
        for name in models:
            if not is_model_name(name):
                raise SnapshotError(f"invalid model name {name!r}: use {MODEL_NAME_RULE}")
        metas: dict[str, SnapshotMeta] = {}
        # Four round trips (two more with replicas to wait for), whatever the number of
        # models: a small model's snapshot is mostly waiting on them (`bench/snapshot_writer.py`).
        with wrapped(f"write version {version}"), self.client.pipeline(transaction=True) as tx:
            # watched from here; no chunks for nothing
            lost = self._check_owners(tx, list(models), self._typed(models, trace is not None))
            # 1. chunks, in one round trip on the transaction's watching connection
            sets: list[tuple[Any, ...]] = []
            for name, (blob, meta) in models.items():
                chunks = self._queue_chunks(
                    sets, blob, functools.partial(self.keys.chunk, name, version)
                )
                metas[name] = dataclasses.replace(
                    meta, model=name, version=version, size=len(blob),
                    sha256=sha256_hex(blob), chunks=chunks,
                )  # fmt: skip
            cp_chunks = self._queue_chunks(
                sets, checkpoint, lambda i: self.keys.checkpoint_chunk(version, i)
            )
            batch(tx, *sets)
            # 2. one transaction makes everything visible (scripts by EVAL: an EVALSHA would
            # cost a SCRIPT EXISTS round trip first, as redis-py checks them before a MULTI)
            cp_meta = CheckpointMeta(
                version=version, created_at=time.time(), size=len(checkpoint),
                sha256=sha256_hex(checkpoint), chunks=cp_chunks, offsets=dict(offsets),
            )  # fmt: skip
            tx.multi()
            if lost and self.epoch is not None:  # put back (the hash is watched: still ours)
                tx.eval(_FENCE_RESTORE, 1, self.keys.epoch, *fence_owner(self.epoch, self.process))
            for name, meta in metas.items():
                tx.set(self.keys.meta(name, version), meta.to_json())
                tx.zadd(self.keys.versions(name), {str(version): version})
                tx.sadd(self.keys.models, name)
                tx.eval(_SET_MAX, 1, self.keys.latest(name), version)
            tx.set(self.keys.checkpoint_meta(version), cp_meta.to_json())
            tx.eval(_SET_MAX, 1, self.keys.checkpoint_latest, version)
            if trace is not None:
                queue_trace(tx, self.keys, trace, metas)
            if not self.wait_replicas:  # 3. notify, at EXEC: after everything is visible
                self._notify(tx, metas, version)
            try:
                tx.execute()
            except redis.WatchError:  # an owner moved while the chunks went: a handover?
                self._check_owners(self.client, list(metas))  # then named as one (or fenced)
                raise
            if self.wait_replicas:  # on enough replicas before announced (lost only by them all)
                self.client.wait(self.wait_replicas, WAIT_REPLICAS_MS)
                self._notify(self.client.pipeline(transaction=False), metas, version).execute()

    def _notify(self, pipe: Any, models: Iterable[str], version: int) -> Any:
        """Queue ``PUBLISH {"model", "version"}`` on the channel for each of ``models``."""
        for name in models:
            pipe.publish(self.keys.channel, Notification(name, version).to_json())
        return pipe

    def _typed(self, models: Iterable[str], trace: bool) -> dict[str, bytes]:
        """Key → the type it must have (or none) for `write`'s transaction to add to it: the
        keys it SETs it replaces whatever they hold, the others it reads or extends."""
        keys = self.keys
        typed = {keys.models: b"set", keys.checkpoint_latest: b"string"}
        for name in models:
            typed[keys.versions(name)] = b"zset"
            typed[keys.latest(name)] = b"string"
            if trace:
                typed[keys.trace(name)] = b"stream"
                typed[keys.trace_lineage(name)] = b"string"
        return typed

    def _check_owners(
        self, tx: Any, models: list[str], typed: Mapping[str, bytes] | None = None
    ) -> bool:
        """Check that the owners of ``models`` are this store's learner (or unset, for the
        learner ``default``) and, with an `epoch`, that no newer process of the learner started
        (`FencedError`); with a transaction ``tx``, WATCH them (and the epoch) first: its EXEC
        then fails if one changes meanwhile. ``typed``: keys whose type is checked in the same
        round trip (`_typed`); one of another type raises `SnapshotError` naming it. Returns
        whether the epoch hash lost this process's epoch (`lost_epoch`): the write puts it
        back."""
        owner_keys = [self.keys.owner(name) for name in models]
        fenced = self.epoch is not None
        watched = [*owner_keys, self.keys.epoch] if fenced else owner_keys
        if not watched and not typed:
            return False
        reader = tx
        if isinstance(tx, redis.client.Pipeline):
            if watched:  # from here the pipeline runs each command at once, watching
                tx.watch(*watched)
            else:  # nothing to watch (a checkpoint alone): the pipeline would only queue
                reader = self.client
        fence: list[Any] | None = None
        if typed:
            owners, types, fence = reader.eval(
                _OWNERS_AND_TYPES, len(watched) + len(typed), *watched, *typed,
                len(owner_keys), int(fenced),
            )  # fmt: skip
            for (key, expected), found in zip(typed.items(), types, strict=True):
                if found not in (expected, b"none"):
                    raise SnapshotError(
                        f"key {key} holds a {found.decode()}, not a {expected.decode()}: "
                        "something else writes into this prefix; nothing was written"
                    )
        else:
            owners = reader.mget(owner_keys) if owner_keys else []
            if fenced:
                fence = reader.hmget(self.keys.epoch, *FENCE_FIELDS)
        mine = self.keys.learner
        if self.epoch is not None:
            refused = fenced_error(mine, self.epoch, fence)
            if refused is not None:
                raise refused
        for name, raw in zip(models, owners, strict=True):
            owner = owner_of(raw)
            if owner != mine:
                raise OwnershipLostError(
                    f"model {name} is owned by learner {owner!r}, not {mine!r}: "
                    "it was handed over (`riverstream snapshots handover`)"
                )
        return self.epoch is not None and lost_epoch(self.epoch, fence)

    def _queue_chunks(
        self, sets: list[tuple[Any, ...]], blob: bytes, key_of: Callable[[int], str]
    ) -> int:
        n = 0
        for n, part in enumerate(chunks(blob, self.chunk_bytes), 1):
            sets.append(("SET", key_of(n - 1), part))
        return n

    # -- reading ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Every model of the index, sorted; one whose name is not UTF-8 is an
        `UnreadableModelName` (see the module)."""
        with wrapped("models"):
            members = cast("set[bytes]", self.client.smembers(self.keys.models))  # bytes client
        return sorted(map(_model_name, members))

    def versions(self, model: str) -> list[int]:
        with wrapped(f"versions of {model}"):
            members = cast("list[bytes]", self.client.zrange(self.keys.versions(model), 0, -1))
            return [int(v) for v in members]

    def latest_version(self, model: str) -> int | None:
        with wrapped(f"latest version of {model}"):
            raw = self.client.get(self.keys.latest(model))
        return None if raw is None else int(raw)

    def serving_version(self, model: str) -> int | None:
        """The version API processes serve: the pin, else ``promoted``, else latest."""
        with wrapped(f"serving version of {model}"):
            pinned, promoted, latest = self.client.mget(
                self.keys.pin(model), self.keys.promoted(model), self.keys.latest(model)
            )
        return served_version(*(None if v is None else int(v) for v in (pinned, promoted, latest)))

    def meta(self, model: str, version: int) -> SnapshotMeta:
        with wrapped(f"meta of {model} v{version}"):
            raw = self.client.get(self.keys.meta(model, version))
        if raw is None:
            raise SnapshotError(f"no snapshot {model} v{version}")
        return SnapshotMeta.from_json(raw)

    def read_model_blob(self, model: str, version: int) -> bytes:
        """The verified signed blob of ``model`` v``version`` (`SnapshotIntegrityError` if not)."""
        blob, _ = self._read_model(model, version)
        verify_signed(blob, self.signing_key)
        return blob

    def load_model(self, model: str, version: int) -> tuple[Any, SnapshotMeta]:
        """Fetch, check (sha256, then HMAC) and only then unpickle ``model`` v``version``."""
        blob, meta = self._read_model(model, version)
        return load_signed(blob, self.signing_key, cooperative=True), meta

    def _read_model(self, model: str, version: int) -> tuple[bytes, SnapshotMeta]:
        meta = self.meta(model, version)
        keys = [self.keys.chunk(model, version, i) for i in range(meta.chunks)]
        blob = self._join(keys, f"{model} v{version}", meta.size, meta.sha256)
        return blob, meta

    def _join(self, keys: list[str], what: str, size: int, sha256: str) -> bytes:
        with wrapped(f"chunks of {what}"):
            parts = self.client.mget(keys) if keys else []
        if any(p is None for p in parts):
            raise SnapshotError(f"snapshot {what} has missing chunks (pruned while reading?)")
        blob = b"".join(cast("list[bytes]", parts))  # bytes client, and no None left
        if len(blob) != size or sha256_hex(blob) != sha256:
            raise SnapshotIntegrityError(f"snapshot {what}: checksum mismatch, refusing it")
        return blob

    def latest_checkpoint(self) -> tuple[int, bytes, dict[str, int]] | None:
        """``(version, verified signed blob, offsets)`` of the newest checkpoint, or None."""
        with wrapped("latest checkpoint"):
            raw = self.client.get(self.keys.checkpoint_latest)
        return None if raw is None else self.checkpoint(int(raw))

    def checkpoint(self, version: int) -> tuple[int, bytes, dict[str, int]]:
        with wrapped(f"checkpoint v{version}"):
            raw = self.client.get(self.keys.checkpoint_meta(version))
        if raw is None:
            raise SnapshotError(f"no checkpoint v{version}")
        meta = CheckpointMeta.from_json(raw)
        keys = [self.keys.checkpoint_chunk(version, i) for i in range(meta.chunks)]
        blob = self._join(keys, f"checkpoint v{version}", meta.size, meta.sha256)
        verify_signed(blob, self.signing_key)
        return version, blob, dict(meta.offsets)

    # -- notifications ---------------------------------------------------------------------
    def subscribe(self, *, live: bool = False) -> Subscription:
        """A subscription to the snapshot channel (close it, or use it as a context manager);
        ``live``: and to the channel of live updates (`stream.store.live`)."""
        if live:
            return Subscription(self.client, self.keys.channel, self.keys.live_channel)
        return Subscription(self.client, self.keys.channel)


class Subscription:
    """The snapshot channel, as `Notification` objects; errors wrapped like the store's. With
    ``graphs``, the graphs' notifications only (the models' are dropped), else the models'."""

    def __init__(self, client: redis.Redis, channel: str, *more: str, graphs: bool = False) -> None:
        self._graphs = graphs
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        with wrapped("subscribe"):
            self._pubsub.subscribe(channel, *more)
            # Its reply, read now: an ACL that denies the channels says so here, before the
            # follower's first sync (a process's start), not at the first notification.
            self._pubsub.get_message(timeout=SUBSCRIBE_REPLY_SECONDS)

    def get(self, timeout: float) -> Notification | None:
        """The next notification, or None after ``timeout`` seconds (or a malformed message,
        or one of the other kind)."""
        with wrapped("snapshot notifications"):
            message = self._pubsub.get_message(timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        note = Notification.from_json(message["data"], graphs=self._graphs)
        if self._graphs and (note is None or note.kind != "graph"):
            return None
        return note

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(settings: Settings) -> SnapshotStore:
    """The store of the configured Redis, prefix, signing key and chunk size.

    Here rather than in `stream.learner.runtime` so that the operator's commands (`riverstream
    snapshots …`) reach Redis without importing the learner, hence River and SciPy (≈ 1 s).
    """
    # Bounded waits: a Redis that hangs (SIGSTOP, a partition) fails a call within seconds,
    # and the learner's outage handling (`stream.learner.outage`) takes over. The primary, or
    # the one the Sentinels name (`stream.store.connect`).
    client = redis_client(
        settings, socket_connect_timeout=2.0, socket_timeout=10.0, health_check_interval=10
    )
    return SnapshotStore(
        client,
        settings.redis_prefix,
        settings.require_snapshot_key(),
        chunk_bytes=settings.snapshot_chunk_bytes,
        learner=settings.learner,
        wait_replicas=settings.redis_wait_replicas,
    )
