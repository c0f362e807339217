"""The loop that keeps a process's copy of something in Redis current: `Follower`.

Serving follows two things, models (`stream.store.follower.SnapshotFollower`) and graphs
(`stream.store.graph_follower.GraphFollower`), the same way; this module is that way, once:

1. One daemon thread subscribes to the snapshot channel *first*, then syncs (reads every
   pointer), so that no change falls between the two.
2. Each notification makes it ``refresh`` the one name it is about; every ``poll_seconds`` it
   syncs everything again anyway, so a lost message costs one poll interval.
3. When Redis is unreachable (`SnapshotError`), what was loaded keeps serving, ``status`` says
   so, and the thread retries with the poll interval as back-off. Redis refusing the process's
   credentials (`stream.store.snapshots.RedisAuthError`: its password changed under it) is
   ridden out the same way but reported as what it is, a configuration error: an error in the
   log, ``reason`` ``auth`` (not ``outage``) in `Follower.redis_status`, and
   `Follower.credentials_refused`, which a starting API makes fatal (`serving.app`). Any other
   error is logged, recorded (``follower_error`` in `Follower.redis_status`: not a Redis
   outage) and retried: a bug must not kill the follower.
4. A pointer that does not parse (a ``ValueError`` from one name's ``refresh``) is a problem of
   that name only: it is logged and recorded (`Follower.problems`), what that name served keeps
   serving, and the sync goes on with the other names.

Waits are short (`MAX_WAIT`), so ``stop()`` is prompt. ``first_sync`` is set once the first
look at Redis is over (done, Redis unreachable, or failed), which a starting process waits on;
`Follower.synced` says whether a look succeeded, and `Follower.unsynced_reason` why not yet.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from schemas.errors import SnapshotError
from stream.store.keys import Notification
from stream.store.snapshots import RedisAuthError

log = logging.getLogger(__name__)
MAX_WAIT = 0.25
NOT_CONNECTED = "not connected yet"


class Notifications(Protocol):
    """A subscription to the snapshot channel (`stream.store.snapshots.Subscription`)."""

    def get(self, timeout: float) -> Notification | None: ...

    def close(self) -> None: ...


class Follower(ABC):
    """One thread following Redis (see the module). Subclasses say how to subscribe, how to
    sync everything and how to refresh one name; ``refresh`` and ``sync`` run under one lock,
    so a caller (a test, a starting process) may also sync."""

    thread_name: ClassVar[str]
    serving_what: ClassVar[str]
    """Words for the log: ``"models"``, ``"graphs"``."""

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._redis_error: str | None = NOT_CONNECTED
        self._credentials_error: RedisAuthError | None = None  # the last error, when it was that
        self._failure: str | None = None  # the last unexpected error of the loop
        self._problems: Mapping[str, str] = {}  # name → why its pointer cannot be followed
        self._last_sync: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sub: Notifications | None = None
        self._lock = threading.RLock()
        self.first_sync = threading.Event()
        """Set once the first look at Redis is over (done, Redis unreachable, or failed)."""

    @property
    def credentials_refused(self) -> RedisAuthError | None:
        """The error of the last look at Redis when Redis refused this process's credentials
        (None when it did not, or once a look succeeds)."""
        return self._credentials_error

    @property
    def synced(self) -> bool:
        """Whether a look at Redis has succeeded: what is served and known then comes from
        Redis, not only from what the process was told at its start."""
        return self._last_sync is not None

    def unsynced_reason(self) -> str | None:
        """Why no look at Redis has succeeded yet, in words for an operator (None once one
        has): the loop's last unexpected error (``follower_error``), Redis's last error, or
        that the loop has not looked yet.

        >>> class Idle(Follower):
        ...     thread_name, serving_what = "idle", "graphs"
        ...     _subscribe = _sync = refresh = lambda *a: None
        >>> f = Idle(1.0)
        >>> f.unsynced_reason()
        'graphs: redis not read yet'
        >>> f._failure = "RuntimeError: boom"
        >>> f.unsynced_reason()
        'graphs: the follower fails: RuntimeError: boom'
        >>> f.sync(); f.unsynced_reason() is None
        True
        """
        if self.synced:
            return None
        reasons = []
        if self._failure is not None:
            reasons.append(f"the follower fails: {self._failure}")
        if self._credentials_error is not None:
            reasons.append(str(self._credentials_error))
        elif self._redis_error not in (None, NOT_CONNECTED):
            reasons.append(f"redis unreachable: {self._redis_error}")
        return f"{self.serving_what}: {'; '.join(reasons) or 'redis not read yet'}"

    @abstractmethod
    def _subscribe(self) -> Notifications: ...

    @abstractmethod
    def _sync(self) -> None:
        """Refresh every name (raises `SnapshotError` if Redis fails)."""

    @abstractmethod
    def refresh(self, name: str) -> None:
        """Serve ``name``'s current version if it is not served yet (nor refused)."""

    def problems(self) -> Mapping[str, str]:
        """The names whose pointer could not be parsed at their last refresh, and why."""
        return self._problems

    def _refresh_one(self, name: str) -> None:
        """``refresh`` one name; a pointer that does not parse (``ValueError``) is recorded
        as that name's problem instead of stopping the sync of the others."""
        try:
            self.refresh(name)
        except ValueError as exc:
            problem = f"unparsable pointer: {exc}"
            if self._problems.get(name) != problem:
                log.error("cannot follow %s: %s", name, problem)
                self._problems = {**self._problems, name: problem}  # copied: status reads it
            return
        if name in self._problems:
            log.info("%s's pointer parses again", name)
            self._forget_problems(lambda n: n != name)

    def _forget_problems(self, keep: Callable[[str], bool]) -> None:
        self._problems = {n: p for n, p in self._problems.items() if keep(n)}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close_subscription()

    def sync(self) -> None:
        """Check every pointer once (raises `SnapshotError` if Redis fails)."""
        with self._lock:
            self._sync()
            self._last_sync = time.time()
            if self._credentials_error is not None:
                log.warning("redis accepts this process's credentials again")
            elif self._redis_error not in (None, NOT_CONNECTED):
                log.info("redis reachable again")
            self._redis_error = None
            self._credentials_error = None
            self._failure = None

    def redis_status(self, now: float) -> dict[str, Any]:
        """Reachability and the age of the last full sync, for ``status``; ``reason`` why Redis
        is not read: ``auth`` (it refuses this process's credentials: a configuration error),
        ``outage`` (unreachable or erroring), None (read, or not looked at yet);
        ``follower_error`` is the loop's last unexpected error since the last full sync (not a
        Redis outage)."""
        sync_age = None if self._last_sync is None else round(now - self._last_sync, 3)
        return {
            "reachable": self._redis_error is None,
            "reason": self._reason(),
            "error": self._redis_error,
            "last_sync_age_seconds": sync_age,
            "follower_error": self._failure,
        }

    def _reason(self) -> str | None:
        if self._redis_error in (None, NOT_CONNECTED):
            return None
        return "auth" if self._credentials_error is not None else "outage"

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                if self._sub is None:
                    self._sub = self._subscribe()
                    next_poll = 0.0  # subscribed first, then synced: nothing falls in between
                now = time.monotonic()
                if now >= next_poll:
                    self.sync()
                    self.first_sync.set()
                    next_poll = now + self.poll_seconds
                wait = max(0.0, min(next_poll - now, MAX_WAIT))
                note = self._sub.get(timeout=wait)
                if note is not None:
                    with self._lock:
                        self._refresh_one(note.model)
            except SnapshotError as exc:  # Redis unreachable or erroring: keep serving
                refused = exc if isinstance(exc, RedisAuthError) else None
                before = self._reason()
                # what is served meanwhile: nothing yet, before a first look succeeded
                kept = (
                    f"serving the last {self.serving_what}" if self.synced
                    else f"no {self.serving_what} served yet"
                )  # fmt: skip
                if refused is not None and before != "auth":
                    log.error("%s; %s", exc, kept)
                elif refused is None and before != "outage":
                    log.warning("redis unreachable, %s: %s", kept, exc)
                self._credentials_error = refused
                self._redis_error = str(exc)
                self._close_subscription()
                self.first_sync.set()
                self._stop.wait(self.poll_seconds)
            except Exception as exc:  # a bug must not kill the follower
                log.exception("%s failed; retrying", self.thread_name)
                self._failure = f"{type(exc).__name__}: {exc}"
                self._close_subscription()
                self.first_sync.set()  # a starting process must not wait for it
                self._stop.wait(self.poll_seconds)

    def _close_subscription(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None


def stop_if_refused(*followers: Follower, stop: Callable[[], None] | None = None) -> None:
    """At a process's start, after the first look at Redis: when Redis refused the credentials
    of any of ``followers``, stop them all (with ``stop``, when given, instead) and raise that
    `RedisAuthError`, a configuration error that waiting does not mend.

    >>> class Refused(Follower):
    ...     thread_name, serving_what = "refused", "models"
    ...     _subscribe = _sync = refresh = lambda *a: None
    >>> f = Refused(1.0)
    >>> stop_if_refused(f)
    >>> f._credentials_error = RedisAuthError("reading models", RuntimeError("WRONGPASS"))
    >>> stop_if_refused(f)
    Traceback (most recent call last):
    ...
    stream.store.snapshots.RedisAuthError: ...
    """
    refused = [r for r in (f.credentials_refused for f in followers) if r is not None]
    if refused:
        if stop is not None:
            stop()
        for follower in followers:
            follower.stop()
        raise refused[0]
