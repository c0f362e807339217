"""Operator commands to a running learner: rollbacks (skip or replay) and handovers.

`LearnerCommands` is the part of `stream.learner.loop.Learner` that reads its command queue in
Redis (`stream.store.commands`) every 0.2 s on the learning thread, applies each command once
(ids are remembered in the checkpoint), makes the result durable with a snapshot, and only then
acknowledges it.

A rollback the learner cannot carry out is refused, not retried: the learner's state is left as
it was, the command is acknowledged, and the model's promotion policy becomes ``manual`` with
the reason in its history, so that the version the operator rolled back to stays served instead
of being replaced by the learner's next automatic promotion. Before, the error stopped the
learner, and every start read the command again and stopped again; the refusals that did not
stop it (below) only logged, and the next automatic promotion silently undid the rollback. It
is refused when:

- its checkpoint holds a model whose copy of that version was pruned (`SnapshotError`);
- a replay's checkpoint does not hold one of the models learned here: written before they
  joined this learner (a handover, a model added since). The registry refuses what it can tell
  of these beforehand (`stream.registry.resume`); this is what it cannot, or what changed since;
- a skip's version is of another spec than the model learned here;
- the model is not learned here although this learner owns it (`stream.registry.owners`): it
  was started without it, or took it back by a handover while running, which it picks up only
  at its next start (from the model's latest version, not the one rolled back to).

A rollback of a model that **another learner owns** is not refused but ignored, deliberately,
with the policy left alone. The registry queues a rollback for the model's owner at that time,
and a handover moves the model's pending rollbacks to the new owner's list
(`stream.registry.owners`), so such a command was read here just before the handover moved it
(the new owner carries it out), or was queued before handovers existed in riverstream. The
model is the new owner's: this learner writes nothing of it any more, and the operator may have
acted on it since (a new policy, another rollback, queued for the new owner). The warning says
to look at the new owner's commands and roll back again if it is not there. A command of
another action than ``rollback`` or ``release`` (from a newer riverstream) is ignored too.
"""

from __future__ import annotations

import logging

from schemas.errors import RegistryError, SnapshotError
from schemas.records import RollbackCommand
from stream.checkpoint.protocol import restore
from stream.learner.checkpoints import LearnerCheckpoints
from stream.registry.base import RegistryUnavailableError
from stream.registry.owners import RELEASE, owners
from stream.registry.registry import Registry
from stream.store.commands import CommandQueue
from stream.store.snapshots import FencedError, RedisUnavailableError, wrapped

log = logging.getLogger(__name__)

_COMMAND_POLL_SECONDS = 0.2


class RollbackRefused(SnapshotError):
    """A rollback this learner will not carry out, though nothing failed (see the module)."""


class LearnerCommands(LearnerCheckpoints):
    """Rollbacks and releases applied between two batches."""

    commands: CommandQueue | None
    _signing_key: bytes

    def _check_commands(self, now: float) -> bool:
        """Read and apply the pending commands, if due; whether they were read."""
        if self.commands is None or now - self._last_command_check < _COMMAND_POLL_SECONDS:
            return False
        if not self.outage.due():
            return False
        self._last_command_check = now
        self._releases_unread = False
        commands: list[RollbackCommand] = []
        try:
            commands = self.commands.peek()
            if commands:
                for command in commands:
                    if command.id not in self.applied:
                        try:
                            self.apply(command)
                        except (RedisUnavailableError, FencedError):
                            raise
                        except SnapshotError as exc:  # cannot be carried out: not an outage
                            self._refuse(command, exc)
                        self.applied.append(command.id)
                self.finish_snapshots()  # durable before acknowledged
                self.commands.ack(len(commands))
        except RedisUnavailableError as exc:  # applying again is harmless: ids are remembered
            self.outage.failed("learner commands", exc, write=bool(commands))
            return False
        self.outage.recovered(read=not commands)  # with commands, a snapshot and the
        return True  # acknowledgement were written too

    def _refuse(self, command: RollbackCommand, exc: SnapshotError) -> None:
        """``command`` cannot be applied (see the module docstring): keep what it made served,
        by leaving the model's automatic promotion."""
        why = (
            f"rollback {command.id} to v{command.to} ({command.resume}) could not be applied "
            f"by the learner: {exc}; promotion set to manual so that v{command.to} stays served"
        )
        log.error("refused command %s: %s", command, why)
        try:
            Registry(self.snapshotter.store, by="learner").set_policy(
                command.model, "manual", reason=why
            )
        except RegistryUnavailableError as exc:  # an outage: the command is read again later
            raise RedisUnavailableError(f"{command.model}: setting its policy: {exc}") from exc
        except RegistryError as policy_error:
            log.error("%s: the policy could not be set: %s", command.model, policy_error)

    def _owner(self, model: str) -> str:
        """The learner that owns ``model`` now (`stream.registry.owners`)."""
        store = self.snapshotter.quick
        with wrapped(f"owner of {model}"):
            return owners(store.client, store.keys, [model])[model]

    def _handed_back(self, model: str) -> bool:
        """Whether ``model``'s owner key names this learner: a release read late (this learner
        was stopped, or in an outage) of a model handed over and then back to it."""
        return self._owner(model) == self.snapshotter.quick.keys.learner

    def _not_here(self, command: RollbackCommand) -> None:
        """``command`` rolls back a model this learner does not learn: ignored if another
        learner owns it, else refused (see the module)."""
        me, owner = self.snapshotter.quick.keys.learner, self._owner(command.model)
        if owner != me:
            log.warning(
                "ignoring command %s: %s was handed over to learner %r after it was queued; "
                "the handover moves pending rollbacks to it: if the handover in the model's "
                "history (`riverstream snapshots history`) does not name this rollback to "
                "v%d among its moved_commands, roll back again",
                command, command.model, owner, command.to,
            )  # fmt: skip
            return
        raise RollbackRefused(
            f"learner {me!r} owns {command.model} but does not learn it (started without it, "
            "or handed it back while running: it takes it over from its latest version at "
            "its next start)"
        )

    def apply(self, command: RollbackCommand) -> None:
        """Roll ``command.model`` back to version ``command.to``.

        ``skip``: the model continues from that version at the current input position; what
        it learned since is discarded. ``replay``: the whole learner goes back to that
        version's checkpoint and re-learns from its offsets, leaving out events whose time
        falls in ``command.exclude`` (models sharing this learner are rewound with it).
        """
        if command.action == RELEASE:  # handed over to another learner (stream.registry.owners)
            if self._handed_back(command.model):
                log.warning(
                    "ignoring command %s: %s was handed back to this learner since",
                    command, command.model,
                )  # fmt: skip
            else:
                self.release(command.model)
            return
        if command.action != "rollback":
            log.error("ignoring command %s: unknown action %r", command, command.action)
            return
        if command.model not in self.core.models:
            self._not_here(command)
            return
        store = self.snapshotter.store
        if command.resume == "replay":
            restored = restore(
                store, self._signing_key, self.specs, version=command.to,
                may_drop=lambda name: name not in self.core.models,
            )  # fmt: skip
            if restored is None:  # pragma: no cover - checkpoint() raises instead
                raise SnapshotError(f"no checkpoint v{command.to}")
            if restored.added:  # a checkpoint of another learner, without some of ours
                raise RollbackRefused(
                    f"checkpoint v{command.to} does not hold {restored.added}, which learn "
                    "here (it was written before they joined this learner: a handover, or "
                    "models added since): roll back with --resume skip"
                )
            running = self.snapshotter.poll(block=True)
            if running is not None:
                self._record(running)
            self._adopt(restored)
            # the curve past the target is rewound by the next snapshot (stream.store.trace)
            self.trace.branch(command.id, self.core.counters.labels_joined)
            for a, b in command.exclude:
                if (a, b) not in self.excluded:
                    self.excluded.append((a, b))
            self._seek()
        else:
            state, _meta = store.load_model(command.model, command.to)
            learned = self.core.models[command.model].spec.spec
            if state.spec.spec != learned:  # it would not restore (`restore`): not started
                raise RollbackRefused(
                    f"{command.model} v{command.to} is a {state.spec.spec!r} model, not "
                    f"{learned!r} as learned here"
                )
            self.core.models[command.model] = state
        log.warning("rolled %s back to v%d (%s)", command.model, command.to, command.resume)
        self.stats.rollbacks += 1
