"""Following snapshot versions in the background of an API process.

`SnapshotFollower` runs one daemon thread per process. At start it loads the serving version
(`SnapshotStore.serving_version`: promoted, else latest) of every model, then waits on the
snapshot channel; each notification makes it re-read that model's pointer, and every
``poll_seconds`` it re-reads all pointers anyway, so a lost message costs one poll interval
(the loop shared with the graphs' follower: `stream.store.following.Follower`).

Loading (fetch, checksum, HMAC, unpickle) happens on this thread, never on a request. The swap
is one reference assignment of a new dict, so a request sees either the old or the new
`ServedModel`, never a half-loaded one. A snapshot that fails verification or loading is
refused: logged, counted, remembered (versions are immutable, so it is not retried) and the
previous version keeps serving. A pointer that does not parse is that model's problem alone
(``errors`` in `SnapshotFollower.status`): the other models are followed as usual. So is a name
in the models' index that is not UTF-8 (`stream.store.snapshots.UnreadableModelName`, written by
something else): skipped, in ``errors``, logged and counted (``snapshot_refused``, reason
``unreadable_name``) once while it stays there, never a model that readiness waits for; it
failed every sync before, so that a process started with one served nothing. If Redis is
unreachable the last good models keep serving and `status` says so; the thread reconnects with
the poll interval as back-off.

With ``live`` (the API), the follower also serves the *live updates* the learner publishes
between versions (`stream.store.live`): it subscribes to their channel too, and each refresh
reads the pointers, the policy and the live update's metadata in one transaction. The live
update is served when the rule allows it (no pin, policy ``always``, it continues the version
served); otherwise the exact version is, so a rollback or a pin replaces a live state at once.
A live update is not served over a base version that was refused, and when the exact version
that should replace a live state is refused, the last good exact version of that model serves
instead (none: the model is no longer served, and ``status`` reports it missing and refused).
A served model says which state it is: ``version`` (the version continued) and
``samples_learned``, with ``live`` set for a live update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from schemas.errors import SnapshotError, SnapshotIntegrityError
from stream.store.following import Follower
from stream.store.live import LiveMeta, LiveStore
from stream.store.snapshots import (
    RedisUnavailableError,
    SnapshotStore,
    Subscription,
    UnreadableModelName,
)

if TYPE_CHECKING:  # imported where a model is loaded: stream.store imports no River at start
    from learners.predictor import ServedModel

log = logging.getLogger(__name__)


class FollowerMetrics(Protocol):
    def snapshot_swapped(
        self, model: str, version: int, snapshot_timestamp: float, load_seconds: float
    ) -> None: ...

    def snapshot_refused(self, model: str, reason: str) -> None: ...


class SnapshotFollower(Follower):
    """Serving the models of one process (see the module)."""

    thread_name = "snapshot-follower"
    serving_what = "models"

    def __init__(
        self,
        store: SnapshotStore,
        metrics: FollowerMetrics,
        *,
        models: Sequence[str] = (),
        poll_seconds: float = 1.0,
        live: bool = False,
    ) -> None:
        super().__init__(poll_seconds)
        self.store = store
        self._live = LiveStore(store) if live else None
        self._refused_live: dict[tuple[str, str], str] = {}  # (model, sha256) → reason
        self.metrics = metrics
        self.configured = tuple(models)
        self._served: Mapping[str, ServedModel] = {}
        self._known: tuple[str, ...] = self.configured
        self._refused: dict[tuple[str, int], str] = {}
        self._exact: dict[str, ServedModel] = {}  # the last exact version loaded, per model

    # -- what requests read ----------------------------------------------------------------
    def get(self, name: str) -> ServedModel | None:
        return self._served.get(name)

    @property
    def served(self) -> Mapping[str, ServedModel]:
        return self._served

    def is_known(self, name: str) -> bool:
        return name in self._served or name in self._known

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Readiness: every expected model loaded; Redis reachability and staleness; the
        versions refused and the models whose pointer cannot be parsed (``errors``)."""
        now = time.time() if now is None else now
        served = self._served
        expected = self.configured or tuple(sorted(set(self._known) | set(served)))
        missing = [m for m in expected if m not in served]
        redis = self.redis_status(now)
        sync_age = redis["last_sync_age_seconds"]
        stale = not redis["reachable"] or sync_age is None or sync_age > 3 * self.poll_seconds
        return {
            "ready": bool(expected) and not missing,
            "stale": stale,
            "missing": missing,
            "redis": redis,
            "models": {
                name: {
                    "version": m.version,
                    "samples_learned": m.samples_learned,
                    "live": m.live,
                    "age_seconds": m.info(now)["age_seconds"],
                    "loaded_at": m.loaded_at,
                }
                for name, m in served.items()
            },
            "refused": [
                {"model": m, "version": v, "reason": r}
                for (m, v), r in list(self._refused.items())  # copied: the thread may add
            ],
            "errors": [{"model": m, "error": e} for m, e in sorted(self.problems().items())],
        }

    # -- lifecycle -------------------------------------------------------------------------

    # -- syncing ---------------------------------------------------------------------------
    def _subscribe(self) -> Subscription:
        return self.store.subscribe(live=self._live is not None)

    def _sync(self) -> None:
        unreadable: list[str] = []
        if not self.configured:
            names = self.store.models()
            unreadable = [n for n in names if isinstance(n, UnreadableModelName)]
            self._known = tuple(n for n in names if not isinstance(n, UnreadableModelName))
        listed = {*self._known, *unreadable}
        self._forget_problems(listed.__contains__)
        for name in (*self._known, *unreadable):
            self._refresh_one(name)

    def refresh(self, name: str) -> None:
        """Load ``name``'s serving version if it is not the one served (nor refused); a name
        of the index that is not UTF-8 raises ``ValueError``, that name's problem (see the
        module), counted the first time."""
        if isinstance(name, UnreadableModelName):
            if name not in self.problems():  # logged then too (`Follower._refresh_one`)
                self.metrics.snapshot_refused(name, "unreadable_name")
            raise name.problem(self.store.keys.models)
        if self.configured and name not in self.configured:
            return
        if name not in self._known:
            self._known = (*self._known, name)
        if self._live is not None:
            self._refresh_live(self._live, name)
            return
        version = self.store.serving_version(name)
        current = self._served.get(name)
        if version is None or (current is not None and current.version == version):
            return
        if (name, version) in self._refused:
            return
        self._load(name, version)

    def _refresh_live(self, live_store: LiveStore, name: str) -> None:
        """`refresh` when following live updates: the live update if the rule allows it (and
        it is not the one served already), else the exact version."""
        pointers = live_store.pointers(name)
        version = pointers.version
        if version is None:
            return
        current = self._served.get(name)
        live = pointers.live_served()
        if (
            live is not None
            and (name, live.sha256) not in self._refused_live
            and (name, live.version) not in self._refused  # never over a refused base
        ):
            if current is not None and current.live and _sha256(current) == live.sha256:
                return
            if self._load_live(live_store, name, live):
                return
        if current is not None and current.version == version and not current.live:
            return
        if (name, version) not in self._refused:
            self._load(name, version)
        if (name, version) in self._refused and current is not None and current.live:
            self._fall_back(name)

    def _fall_back(self, name: str) -> None:
        """Stop serving ``name``'s live state, which the rule no longer allows while its exact
        version is refused: serve the last good exact version, or nothing."""
        good = self._exact.get(name)
        if good is None:
            self._served = {n: m for n, m in self._served.items() if n != name}
            log.error("%s: its version is refused; no longer serving its live update", name)
            return
        self._served = {**self._served, name: good}  # the swap
        if good.meta is not None:
            self.metrics.snapshot_swapped(name, good.version, good.meta.created_at, 0.0)
        log.error(
            "%s: its version is refused; serving v%d again instead of its live update",
            name, good.version,
        )  # fmt: skip

    def _load_live(self, live_store: LiveStore, name: str, expected: LiveMeta) -> bool:
        """Load and swap in the live update of ``name``; False if it was refused (then the
        exact version is served). One replaced or dropped since ``expected`` was read counts
        as handled: its writer (the learner, or the registry moving a pointer) published a
        notification that refreshes again."""
        from learners.predictor import ServedModel

        started = time.perf_counter()
        try:
            loaded = live_store.load(name)
            if loaded is None:
                return True
            obj, meta = loaded
            if meta.version != expected.version:  # a newer one, on a version not checked
                return True
            served = ServedModel.build(
                name, obj, version=meta.version, kind=meta.kind, meta=meta.snapshot_meta(),
                live=True,
            )  # fmt: skip
        except RedisUnavailableError:
            raise
        except SnapshotIntegrityError as exc:
            self._refuse_live(name, expected.sha256, "bad_signature", exc)
            return False
        except SnapshotError as exc:
            self._refuse_live(name, expected.sha256, "unreadable", exc)
            return False
        except Exception as exc:  # unpickling or an unservable object
            self._refuse_live(name, expected.sha256, "load_failed", exc)
            return False
        seconds = time.perf_counter() - started
        self._served = {**self._served, name: served}  # the swap
        self.metrics.snapshot_swapped(name, meta.version, meta.created_at, seconds)
        log.debug(
            "serving %s v%d + live (%d samples, loaded in %.1f ms)",
            name, meta.version, meta.samples_learned, seconds * 1000,
        )  # fmt: skip
        return True

    def _refuse_live(self, name: str, sha256: str, reason: str, exc: Exception) -> None:
        if len(self._refused_live) > 1000:  # live updates are many: forget old refusals
            self._refused_live.clear()
        self._refused_live[(name, sha256)] = reason
        self.metrics.snapshot_refused(name, reason)
        log.error("refused a live update of %s (%s): %s", name, reason, exc)

    def _load(self, name: str, version: int) -> None:
        from learners.predictor import ServedModel

        started = time.perf_counter()
        try:
            obj, meta = self.store.load_model(name, version)
            served = ServedModel.build(name, obj, version=version, kind=meta.kind, meta=meta)
        except RedisUnavailableError:
            raise
        except SnapshotIntegrityError as exc:
            self._refuse(name, version, "bad_signature", exc)
            return
        except SnapshotError as exc:
            self._refuse(name, version, "unreadable", exc)
            return
        except Exception as exc:  # unpickling or an unservable object
            self._refuse(name, version, "load_failed", exc)
            return
        seconds = time.perf_counter() - started
        self._served = {**self._served, name: served}  # the swap
        self._exact[name] = served
        self.metrics.snapshot_swapped(name, version, meta.created_at, seconds)
        log.info("serving %s v%d (loaded in %.1f ms)", name, version, seconds * 1000)

    def _refuse(self, name: str, version: int, reason: str, exc: Exception) -> None:
        self._refused[(name, version)] = reason
        self.metrics.snapshot_refused(name, reason)
        log.error("refused snapshot %s v%d (%s): %s", name, version, reason, exc)


def _sha256(served: ServedModel) -> str | None:
    return None if served.meta is None else served.meta.sha256
