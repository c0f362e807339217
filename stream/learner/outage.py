"""Riding out a Redis outage: the learner keeps learning while its store is away.

Redis holds the snapshots and the operator's commands, not the input: Kafka keeps the events
and the checkpoint holds the offsets, so nothing is lost while Redis is unreachable, or refuses
writes for a while (out of memory, a read-only replica during a failover, failing to persist:
`stream.store.snapshots.transient`), only delayed. The learner therefore goes on reading and
learning; the snapshots and command checks that fail are retried with a capped exponential
backoff, and the first one that succeeds after the outage writes the next version (versions
continue: nothing skipped or doubled). The outage is reported: a log line at its start and at
its end (with its length), the ``riverstream_redis_up`` gauge, and the learner's summary. Only
an outage longer than ``RIVERSTREAM_REDIS_OUTAGE_SECONDS`` stops the learner, with a message
saying so; a restart resumes from the last snapshot, exactly once.

A hung Redis (stopped, or behind a network black hole) answers nothing and refuses nothing: each
call waits out its client's timeout. During an outage the learner therefore calls Redis only at
each retry, and first with a PING of the ``probe`` (a client with short timeouts: the learning
thread's, `stream.learner.runtime`); only if that answers is the operation tried, and a PING
that fails extends the outage (`due`). Its live updates wait for the end of the outage
(`stream.learner.live`).

>>> now = [0.0]
>>> outage = Outage(limit_seconds=60, clock=lambda: now[0])
>>> outage.up, outage.due()
(True, True)
>>> outage.failed("snapshot", OSError("refused"))
>>> outage.up, outage.due()
(False, False)
>>> now[0] = 0.25; outage.due()
True
>>> outage.recovered()
0.25
>>> now[0] = 100.0; outage.failed("snapshot", OSError("refused")); now[0] = 161.0
>>> outage.failed("snapshot", OSError("refused"))
Traceback (most recent call last):
...
stream.learner.outage.RedisOutageError: Redis unreachable for 61 s (snapshot: refused); giving up after RIVERSTREAM_REDIS_OUTAGE_SECONDS=60

A Redis that refuses writes (out of memory, a read-only replica) still answers reads: a read
that succeeds does not end an outage in which a write failed, a write does.

>>> now[0] = 0.0; refusing = Outage(limit_seconds=60, clock=lambda: now[0])
>>> refusing.failed("snapshot", OSError("OOM command not allowed"))
>>> now[0] = 0.5; refusing.recovered(read=True), refusing.up
(None, False)
>>> refusing.recovered(), refusing.up
(0.5, True)

Redis refusing this process's credentials (its password changed under a running learner: a
``WRONGPASS`` or ``NOAUTH`` reply, `stream.store.snapshots.refused_credentials`) is no outage
but a configuration error: ridden out the same way (nothing is lost; a learner that *starts*
with wrong credentials stops at once, `stream.registry.owners.claim`) but reported as what it
is: ``reason`` ``auth``, an error in the log naming the settings, and the same words when it
outlasts the limit. So is Redis's ACL denying this process's user a command, key or channel
(``NOPERM``, `stream.store.snapshots.denied_permission`: its ACL changed, or a command only a
snapshot sends), in words of its own (`stream.store.snapshots.refusal`).

>>> import redis
>>> now[0] = 0.0; rotated = Outage(limit_seconds=60, clock=lambda: now[0])
>>> rotated.failed("ping", redis.AuthenticationError("invalid username-password pair"))
>>> rotated.up, rotated.reason
(False, 'auth')
>>> now[0] = 61.0; rotated.failed("ping", redis.AuthenticationError("invalid username-password pair"))
Traceback (most recent call last):
...
stream.learner.outage.RedisOutageError: Redis refused this process's credentials for 61 s (ping: invalid username-password pair); giving up after RIVERSTREAM_REDIS_OUTAGE_SECONDS=60: RIVERSTREAM_REDIS_PASSWORD (or the password in RIVERSTREAM_REDIS_URL, redis://:PASSWORD@host:port/db) and RIVERSTREAM_REDIS_USERNAME (an ACL user) must be those Redis expects

A hung Redis: the retry's PING times out, and the outage goes on (twice the backoff).

>>> class Hung:
...     def ping(self) -> object:
...         raise TimeoutError("Timeout reading from socket")
>>> now[0] = 0.0; hung = Outage(limit_seconds=60, clock=lambda: now[0], probe=Hung())
>>> hung.failed("snapshot", TimeoutError("Timeout reading from socket")); now[0] = 0.25
>>> hung.due(), hung.retry_at
(False, 0.65)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from schemas.errors import RiverstreamError
from stream.store.snapshots import PERMISSIONS, RedisAuthError, refusal, refused_credentials

log = logging.getLogger("riverstream.learner")

AUTH, UNREACHABLE = "auth", "outage"
"""`Outage.reason`: Redis refuses this process's credentials; Redis is away or refusing writes."""

FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 5.0


class RedisOutageError(RiverstreamError):
    """Redis stayed unreachable (or refused this process's credentials) longer than the
    configured limit."""


class Probe(Protocol):
    """What answers whether Redis does: a `redis.Redis` with short timeouts is one."""

    def ping(self) -> object:
        """Returns if Redis answers; raises if not (refused, timed out, an error reply)."""
        ...


class Outage:
    """Whether Redis is reachable, since when not, and when to try again."""

    def __init__(
        self,
        limit_seconds: float,
        clock: Callable[[], float],
        on_change: Callable[[bool], None] | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.limit_seconds = limit_seconds
        self.clock = clock
        self.on_change = on_change
        self.probe = probe
        """PINGed before each retry (`due`) and by `answers`; None: Redis is assumed to answer."""
        self.since: float | None = None  # start of the current outage
        self.reason: str | None = None
        """Why Redis is not used now: `AUTH` or `UNREACHABLE` (that of the last failure); None
        while it is up."""
        self.writes_failed = False  # in this outage: then only a write ends it
        self.longest = 0.0  # seconds, over the learner's life
        self.count = 0
        self._retry_at = 0.0
        self._backoff = FIRST_RETRY_SECONDS
        self._refused = ("", "")  # `refusal` of the last failure that was `AUTH`

    @property
    def retry_at(self) -> float:
        """When the next operation on Redis may be tried (clock time)."""
        return self._retry_at

    @property
    def up(self) -> bool:
        return self.since is None

    def due(self) -> bool:
        """Whether an operation that needs Redis should be tried now: always while Redis is up;
        during an outage once the retry is due, and only if the probe answers its PING (else
        the outage goes on, `failed`, and so may raise `RedisOutageError`)."""
        if self.since is None:
            return True
        if self.clock() < self._retry_at:
            return False
        refused = self._ping()
        if refused is not None:
            self.failed("ping", refused)
            return False
        return True

    def answers(self) -> bool:
        """Whether Redis answers the probe's PING now (whatever the outage's state)."""
        return self._ping() is None

    def _ping(self) -> Exception | None:
        if self.probe is None:
            return None
        try:
            self.probe.ping()
        except Exception as exc:  # refused, timed out, an error reply
            return exc
        return None

    def failed(self, what: str, exc: BaseException, *, write: bool = True) -> None:
        """An operation on Redis failed: start (or extend) the outage, schedule a retry, and
        raise `RedisOutageError` once it has lasted longer than the limit. ``write``: the
        operation wrote (a snapshot); a read that fails says less, see `recovered`."""
        now = self.clock()
        self.writes_failed = write or (self.since is not None and self.writes_failed)
        reason = AUTH if refused_credentials(exc) else UNREACHABLE
        if reason != self.reason:  # at its start, and when Redis goes from one to the other
            self._report(reason, what, exc)
        self.reason = reason
        if reason == AUTH:
            self._refused = refusal(exc)
        if self.since is None:
            self.since = now
            self.count += 1
            self._backoff = FIRST_RETRY_SECONDS
            if self.on_change is not None:
                self.on_change(False)
        else:
            self._backoff = min(self._backoff * 2, MAX_RETRY_SECONDS)
        self._retry_at = now + self._backoff
        lasted = now - self.since
        if lasted > self.limit_seconds:
            limit = f"RIVERSTREAM_REDIS_OUTAGE_SECONDS={self.limit_seconds:g}"
            if reason == AUTH:
                said, fix = self._refused
                raise RedisOutageError(
                    f"{said} for {lasted:.0f} s ({what}: {exc}); giving up after {limit}: {fix}"
                )
            raise RedisOutageError(
                f"Redis unreachable for {lasted:.0f} s ({what}: {exc}); giving up after {limit}"
            )

    @staticmethod
    def _report(reason: str, what: str, exc: BaseException) -> None:
        if reason == UNREACHABLE:
            log.warning(
                "Redis unreachable or refusing writes (%s: %s): learning goes on, snapshots wait",
                what, exc,
            )  # fmt: skip
            return
        said = exc if isinstance(exc, RedisAuthError) else RedisAuthError(what, exc)
        log.error("%s. Learning goes on, snapshots wait until it accepts them", said)

    def recovered(self, *, read: bool = False) -> float | None:
        """An operation on Redis succeeded: end the outage; returns its length, if any. A
        ``read`` does not end an outage in which a write failed: a Redis refusing writes (out
        of memory, a read-only replica) still answers reads, and the outage goes on (its
        budget too) until a write succeeds."""
        if self.since is None or (read and self.writes_failed):
            return None
        lasted = self.clock() - self.since
        self.since = None
        self.longest = max(self.longest, lasted)
        if self.reason == AUTH:
            again = (
                "Redis's ACL allows this process's user what riverstream needs"
                if self._refused[1] == PERMISSIONS
                else "Redis accepts this process's credentials"
            )
            log.warning("%s again, after %.1f s", again, lasted)
        else:
            log.warning("Redis is back after an outage of %.1f s", lasted)
        self.reason = None
        if self.on_change is not None:
            self.on_change(True)
        return lasted
