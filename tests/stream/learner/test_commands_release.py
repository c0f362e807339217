"""A handover's ``release`` command on the real Kafka and Redis: acknowledged by a learner that
dropped the model at its final snapshot, and harmless when read after a handback.

- A model handed over after the learner's last look at its commands, right before its final
  snapshot: the snapshot meets the new owner, drops the model and is written without it
  (`stream.learner.checkpoints`); the release must not stay in the learner's command list
  (there it held back the model's automatic promotion, and dropped the model at the learner's
  next start if it had been handed back by then).
- A model handed over and back while its learner was stopped: started again with it, the
  learner reads the first release late and must keep learning the model it owns.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from learners.datasets import dataset_events
from learners.serialization import load_signed
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from stream.registry.registry import Registry
from tests.support.pipeline import fast, final_model, publish, run_to_end

pytestmark = pytest.mark.integration


def _settings(settings: Settings) -> Settings:
    return fast(settings, learner="a", snapshot_every_labels=200, snapshot_every_seconds=0.2)


def _learn(settings: Settings, specs: list[ModelSpec], before_final: Callable[[], None]) -> None:
    """A learner that reads to the end; ``before_final`` runs right before its final snapshot,
    after its last look at its commands (the first `finish_snapshots`: none came before)."""
    learner = build_learner(settings, specs)
    finish = learner.finish_snapshots
    calls: list[None] = []

    def finishing() -> None:
        if not calls:
            before_final()
        calls.append(None)
        finish()

    learner.finish_snapshots = finishing  # type: ignore[method-assign]
    run_to_end(learner)


def _checkpointed(settings: Settings) -> list[str]:
    """The models of the learner's latest checkpoint."""
    latest = snapshot_store(settings).latest_checkpoint()
    assert latest is not None
    return sorted(load_signed(latest[1], settings.require_snapshot_key())["models"])


def test_a_model_dropped_at_the_final_snapshot_has_its_release_acknowledged(
    settings: Settings,
) -> None:
    s = _settings(settings)
    publish(s, list(dataset_events("Phishing", label_delay=5, limit=400)))
    registry = Registry(snapshot_store(s), by="test")
    handed: list[str] = []

    def hand_over() -> None:
        registry.handover("other", "b", reason="test")
        handed.append("other")

    _learn(s, [ModelSpec("lr", "logreg"), ModelSpec("other", "logreg")], hand_over)
    assert handed == ["other"]
    assert registry.owners() == {"lr": "a", "other": "b"}
    assert _checkpointed(s) == ["lr"]  # written without the model handed over
    assert registry.pending_commands() == []  # its release acknowledged


def test_a_model_dropped_while_other_commands_are_applied_at_the_end_has_its_release_acknowledged(
    settings: Settings,
) -> None:
    """The last look at the commands finds one (here a release of ``c``): its snapshot, written
    before the acknowledgement, meets a handover made after the look (of ``other``) and drops
    the model; the final snapshot then drops nothing more, and the release of ``other`` must
    still be read and acknowledged."""
    s = _settings(settings)
    publish(s, list(dataset_events("Phishing", label_delay=5, limit=400)))
    registry = Registry(snapshot_store(s), by="test")
    specs = [ModelSpec("lr", "logreg"), ModelSpec("c", "logreg"), ModelSpec("other", "logreg")]
    learner = build_learner(s, specs)
    check, finish = learner._check_commands, learner.finish_snapshots
    steps: list[str] = []
    looks: list[float] = []

    def checking(now: float) -> bool:
        # the first look is forced at the start, the last at the end (no failure in between)
        if learner._last_command_check == -1e9 and looks and not steps:
            registry.handover("c", "b", reason="test")
            steps.append("c")
        looks.append(now)
        return check(now)

    def finishing() -> None:
        if steps == ["c"]:  # inside the last look, after it read the release of c
            registry.handover("other", "b", reason="test")
            steps.append("other")
        finish()

    learner._check_commands = checking  # type: ignore[method-assign]
    learner.finish_snapshots = finishing  # type: ignore[method-assign]
    run_to_end(learner)
    assert steps == ["c", "other"]
    assert registry.owners() == {"c": "b", "lr": "a", "other": "b"}
    assert _checkpointed(s) == ["lr"]
    assert registry.pending_commands() == []  # both releases acknowledged


def test_a_release_read_after_a_handback_leaves_the_model(settings: Settings) -> None:
    s = _settings(settings)
    events = list(dataset_events("Phishing", label_delay=5, limit=600))  # 600 labelled samples
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    publish(s, first)
    specs = [ModelSpec("lr", "logreg")]
    _learn(s, specs, lambda: None)
    registry = Registry(snapshot_store(s), by="test")
    registry.handover("lr", "b", reason="away")  # learner a is stopped: its release waits
    registry.handover("lr", "a", reason="back")
    publish(s, second)
    _learn(s, specs, lambda: None)  # reads the first release: lr is its own again
    assert _checkpointed(s) == ["lr"]
    assert final_model(s, "lr").samples_learned == 600  # learned on to the end
    assert registry.owners() == {"lr": "a"}
    client, keys = registry.client, registry.keys
    assert client.llen(keys.learner_commands("a")) == 0  # read and acknowledged
