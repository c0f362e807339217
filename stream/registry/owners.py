"""Learner groups: which learner process learns which model, and moving a model between them.

A model learns in exactly one process: its updates are sequential, which is what makes it equal
to River's ``progressive_val_score``. Several learners (`riverstream learn --learner NAME`) may
share one Redis prefix, one pair of topics and one API fleet as long as each learns its own
models. The registry records the owner of every model in ``P:model:NAME:owner``:

- **Claim.** A learner claims its models when it starts (`claim`, one Lua script, so two
  learners starting together cannot both win). A model nobody claimed yet is taken; a model
  that exists without an owner key (written before learner groups, or imported) belongs to the
  learner ``default``; a model another learner owns is refused with `OwnershipError`, which
  names the owner and the command that moves it.
- **One process per learner name.** The claim also gives the starting process the learner's
  next epoch (``P:learner:NAME:epoch``, `claim`): its fencing token. The snapshot write and the
  acknowledgement of commands check that it is still the newest
  (`stream.store.snapshots.FencedError`), so of two processes of one name only the one that
  started last writes; the other stops at its next attempt.
- **Handover** (`OwnershipOps.handover`, `riverstream snapshots handover MODEL --to LEARNER`).
  One transaction moves the owner key, records the move in the model's history and queues a
  ``release`` command for the previous owner; the model's rollbacks still pending in the
  previous owner's command list move to the new owner's (it carries them out). From then on
  the previous owner cannot write the model any more
  (`stream.store.snapshots.SnapshotStore.write` WATCHes the owners and refuses); when it reads
  the command, when a snapshot is refused for the model, or when it next starts, it drops the
  model from its state (`stream.learner.groups`, `stream.learner.checkpoints`). The new owner takes the model over from its latest version: exactly
  (from that version's checkpoint and offsets) if the new owner has no checkpoint of its own
  yet, else at its own input position (`stream.learner.groups.restore_learner`).

Version numbers stay global (one ``P:version:seq``), so versions, checkpoints and the history
of every model keep one order whoever writes them.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any, NamedTuple

import redis

from schemas.errors import RegistryError
from schemas.names import MODEL_NAME_RULE, is_model_name
from schemas.records import RollbackCommand
from stream.registry.base import RegistryBase
from stream.store.keys import DEFAULT_LEARNER, RedisKeys
from stream.store.snapshots import RedisAuthError, refused_credentials

RELEASE = "release"
"""The action of the command that tells a learner to drop a model handed over to another."""

# KEYS: the models set, the learners set, the learner's epoch hash, then one owner key per
# model. ARGV: the learner, the name of the default learner, the start's time, host and pid,
# then the model names (same order). Returns {model, owner} of the first refused model, else
# {epoch}: every model is (now) the learner's, and this process holds the learner's new epoch.
_CLAIM = """
local me, default = ARGV[1], ARGV[2]
for i = 6, #ARGV do
  local owner = redis.call('GET', KEYS[i - 2])
  if not owner and redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then owner = default end
  if owner and owner ~= me then return {ARGV[i], owner} end
end
for i = 6, #ARGV do redis.call('SET', KEYS[i - 2], me) end
redis.call('SADD', KEYS[2], me)
local now = redis.call('TIME')
local epoch = math.max((tonumber(redis.call('HGET', KEYS[3], 'epoch')) or 0) + 1,
                       tonumber(now[1]) * 1000000 + tonumber(now[2]))
redis.call('HSET', KEYS[3], 'epoch', string.format('%.0f', epoch), 'started_at', ARGV[3],
           'host', ARGV[4], 'pid', ARGV[5])
return {epoch}
"""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class Handover(NamedTuple):
    """What `OwnershipOps.handover` did."""

    previous: str
    """The learner that learned the model before."""
    release: RollbackCommand
    """The ``release`` command queued for ``previous``."""
    moved: list[RollbackCommand]
    """The model's rollbacks that ``previous`` had not carried out yet, moved to the new
    owner's command list: it carries them out (from the model's latest version, which it
    takes over), and the model's automatic promotion waits for them as before."""


class OwnershipError(RegistryError):
    """A learner claimed a model that another learner owns."""


def check_learner_name(name: str) -> str:
    """``name`` if it may name a learner (it is used inside Redis keys), else `RegistryError`.

    >>> check_learner_name("eu-1")
    'eu-1'
    """
    if not is_model_name(name):
        raise RegistryError(f"invalid learner name {name!r}: use {MODEL_NAME_RULE}")
    return name


def claim(client: redis.Redis, keys: RedisKeys, learner: str, models: list[str]) -> int:
    """Make ``learner`` the owner of ``models``, all or none (`OwnershipError` names the first
    model owned by another learner, and its owner), and give the calling process the learner's
    next epoch, returned: its fencing token. Any process of the learner that started before
    then can write no snapshot and acknowledge no command any more
    (`stream.store.snapshots.FencedError`): of two processes of one name, the newest learns
    (a learner restarted after a kill -9 takes over from its dead predecessor).

    The epoch is the one before plus one, or the server's clock in microseconds when that is
    more: a claim made after the epoch hash was lost (evicted, deleted, or gone back to an
    older epoch by a failover) still outranks every process that started before it, and the
    newest process puts its epoch back in the hash at its next write
    (`stream.store.snapshots.FENCE_LUA`)."""
    check_learner_name(learner)
    script = client.register_script(_CLAIM)
    try:
        reply = script(
            keys=[keys.models, keys.learners, keys.learner_epoch(learner),
                  *(keys.owner(m) for m in models)],
            args=[learner, DEFAULT_LEARNER, repr(time.time()), socket.gethostname(),
                  os.getpid(), *models],
        )  # fmt: skip
    except redis.RedisError as exc:
        what = f"claiming models {models} for learner {learner!r}"
        if refused_credentials(exc):  # at the learner's start: fatal, naming the settings
            raise RedisAuthError(what, exc) from exc
        raise RegistryError(f"{what}: {exc}") from exc
    if len(reply) == 2:
        model, owner = (_text(part) for part in reply)
        raise OwnershipError(
            f"model {model} is learned by learner {owner!r}, not {learner!r}: a model learns "
            f"in one process. Start learner {learner!r} without --model {model}, or move it "
            f"first: riverstream snapshots handover {model} --to {learner}"
        )
    return int(reply[0])


def owners(client: redis.Redis, keys: RedisKeys, models: list[str]) -> dict[str, str]:
    """The owner of each of ``models`` (``default`` when none claimed it)."""
    claimed = claimed_owners(client, keys, models)
    return {m: claimed.get(m, DEFAULT_LEARNER) for m in models}


def claimed_owners(client: redis.Redis, keys: RedisKeys, models: list[str]) -> dict[str, str]:
    """The owner of each of ``models`` that a learner claimed or a handover named (its owner
    key is set); the others are left out."""
    if not models:
        return {}
    raws = client.mget([keys.owner(m) for m in models])
    return {m: _text(raw) for m, raw in zip(models, raws, strict=True) if raw is not None}


class OwnershipOps(RegistryBase):
    """Owners of models and handovers (a part of `stream.registry.registry.Registry`)."""

    def owner(self, model: str) -> str:
        """The learner that learns ``model`` (``default`` when none claimed it)."""
        return str(self._read(f"owner of {model}", lambda: self._owner(self.client, model)))

    def owners(self) -> dict[str, str]:
        """Every model and learner-claimed name → its learner, sorted by model."""

        def read() -> dict[str, str]:
            names = {_text(m) for m in self.client.smembers(self.keys.models)}
            pattern = f"{self.keys.owner('*')}"
            prefix, suffix = pattern.split("*")
            for raw in self.client.scan_iter(match=pattern, count=1000):
                key = _text(raw)
                names.add(key[len(prefix) : len(key) - len(suffix)])
            return owners(self.client, self.keys, sorted(names))

        result: dict[str, str] = self._read("owners", read)
        return result

    def handover(self, model: str, to: str, reason: str = "") -> Handover:
        """Move ``model`` to learner ``to``: returns the previous owner, the ``release``
        command queued for it and the model's pending rollbacks moved to ``to``'s command list.
        The owner key, the history entry, the commands' move and the release commit together
        (see the module for what each learner does next)."""
        check_learner_name(to)

        def body(r: Any) -> Any:
            known = r.sismember(self.keys.models, model) or r.exists(self.keys.owner(model))
            if not known:
                names = sorted(
                    m.decode(errors="backslashreplace") for m in r.smembers(self.keys.models)
                )
                raise RegistryError(f"unknown model {model!r}; models are {names}")
            previous = self._owner(r, model)
            if previous == to:
                raise RegistryError(f"{model} is already learned by learner {to!r}")
            queue = self._commands_of(r, model)  # watched: what is moved is what was read
            moving = [
                (raw, command)
                for raw, command in ((raw, RollbackCommand.from_json(raw))
                                     for raw in r.lrange(queue, 0, -1))
                if command.model == model and command.action == "rollback"
            ]  # fmt: skip
            latest = r.get(self.keys.latest(model))
            version = 0 if latest is None else int(latest)
            command = RollbackCommand(
                str(uuid.uuid4()), model, RELEASE, version, "skip", [], time.time()
            )
            moved = [c for _, c in moving]
            detail: dict[str, Any] = {
                "from_learner": previous, "to_learner": to, "command": command.id
            }  # fmt: skip
            if moved:
                detail["moved_commands"] = [c.id for c in moved]
            entry = self._entry("handover", version or None, version or None, reason, detail=detail)

            marker = json.dumps({"from": previous, "to": to, "version": version, "at": time.time()})

            def write(p: Any) -> None:
                p.set(self.keys.owner(model), to)
                p.set(self.keys.handover(model), marker)
                p.sadd(self.keys.learners, to)
                for raw, _ in moving:  # the new owner carries them out; the promotion hold
                    p.lrem(queue, 1, raw)  # reads the owner's list (`_standing`)
                    p.rpush(self.keys.learner_commands(to), raw)
                p.rpush(queue, command.to_json())
                self._record(p, model, entry)

            return Handover(previous, command, moved), write

        watch = [*self._watch(model), self.keys.latest(model)]
        result: Handover = self._atomic(f"handover {model}", watch, body)
        return result
