"""Champion/challenger on ground truth, end to end, on the real Kafka, Redis and a running API.

The story of one stream (`tests.support.drift`: Sine whose concept is inverted at sample 1000,
labels 5 samples late):

1. A learner learns the champion alone (a Hoeffding tree) on the first 1000 samples. A graph
   serves it, and a policy is set: promote ``hat`` over ``tree`` once it wins by 0.02 after at
   least 500 labels both scored.
2. The learner is restarted with a challenger added (``--model hat=... --compare tree:hat``),
   same Redis prefix: the challenger starts fresh at the checkpoint's position. The rest of the
   stream is published; the learner is killed -9 once it has written a comparison, and started
   again: it ends idle.
3. Then: the champion's model and metric equal River's uninterrupted progressive validation
   (the challenger did not disturb it); the comparison in Redis equals, float for float, the one
   an in-process core computes on the same events (exactly once across the kill, and only the
   labels both scored: not those of the features pending at the restart); ``riverstream models compare``
   reports the challenger better; the policy promoted it into the graph with its evidence in the
   graph's history; the running API serves the new graph version, answered by ``hat``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from river import evaluate, metrics
from river.base.typing import Dataset, FeatureName

from learners.core import LearningCore
from learners.specs import ModelSpec
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import Settings
from serving.app import create_app
from stream.registry.challenger import ChallengerPolicies
from stream.registry.graphs import GraphRegistry
from stream.store.comparisons import ComparisonStore
from tests.conftest import settings_env
from tests.support import drift
from tests.support.cluster import stop_all
from tests.support.pipeline import fast, final_model, publish, spawn_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLES, DRIFT_AT, DELAY = 3_000, 1_000, 5
LEARN = ["learn", "--model", f"tree={drift.CHAMPION}", "--exit-when-idle", "1"]
WITH_CHALLENGER = [*LEARN, "--model", f"hat={drift.CHALLENGER}", "--compare", "tree:hat"]


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=settings_env(settings), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def learn_until_idle(settings: Settings, args: list[str], log: Path) -> None:
    proc = spawn_cli(settings, args, log)
    try:
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        stop_all([proc])  # still running when the wait timed out


def in_process(events: list[FeatureEvent | LabelEvent], restart: int) -> LearningCore:
    """The same story in one process: the champion alone up to ``restart``, then the
    challenger added and compared."""
    core = LearningCore([ModelSpec("tree", drift.CHAMPION)])
    for offset, event in enumerate(events):
        if offset == restart:
            core.flush()  # what the idle learner did before it stopped
            core.add_models([ModelSpec("hat", drift.CHALLENGER)])
            core.set_comparisons([("tree", "hat")])
        if isinstance(event, FeatureEvent):
            core.push_feature(event, (0, 0), offset)
        else:
            core.push_label(event, (1, 0), offset)
        core.advance(event.time)
    core.flush()
    return core


def test_an_added_challenger_overtakes_is_promoted_and_served(
    kit: Any, settings: Settings, tmp_path: Path
) -> None:
    settings = fast(settings, snapshot_every_labels=200, consumer_batch=50, serve_poll_seconds=0.2)
    data = drift.samples(SAMPLES, position=DRIFT_AT)
    events = list(drift.events(data, DELAY))
    restart = next(
        i for i, e in enumerate(events) if isinstance(e, FeatureEvent) and e.time == DRIFT_AT
    )
    log = tmp_path / "learner.log"
    client = redis.Redis.from_url(str(settings.redis_url))
    prefix = settings.redis_prefix

    # 1. the champion alone, served by a graph; the policy set by the operator's command
    assert publish(settings, events[:restart]).failed == 0
    learn_until_idle(settings, LEARN, log)
    graphs = GraphRegistry(client, prefix, by="test")
    first = graphs.apply({"name": "clf", "root": "tree"}, reason="the champion").version
    policy = cli(settings, "models", "policy", "clf", "--champion", "tree", "--challenger", "hat",
                 "--margin", "0.02", "--min-labels", "500", "--by", "test", "--json")  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    assert json.loads(policy.stdout)["promoted"] is None

    app = create_app(settings)
    x = data[-1][0]
    with kit.serve_in_thread(app) as api:

        def served() -> dict[str, Any] | None:
            response = api.post("/v1/graphs/clf/predict", json={"features": x})
            return response.json() if response.status_code == 200 else None

        assert kit.wait_until(served)["graph_version"] == first

        # 2. the challenger added on restart; a kill -9 once it has compared; the rest learned
        assert publish(settings, events[restart:]).failed == 0
        proc = spawn_cli(settings, WITH_CHALLENGER, log)
        try:
            comparisons = ComparisonStore(client, prefix)
            kit.wait_until(lambda: comparisons.get("tree", "hat") is not None, timeout=120)
            assert proc.poll() is None, log.read_text()[-3000:]
            proc.kill()
            proc.wait(timeout=30)
        finally:
            stop_all([proc])  # still running when the wait or the assertion failed
        learn_until_idle(settings, WITH_CHALLENGER, log)
        assert log.read_text().count("new models hat start fresh") == 1

        # 3a. the champion is what River learns without any challenger
        reference = drift.champion()
        accuracy = evaluate.progressive_val_score(
            cast(Dataset, data), reference, metrics.Accuracy(), delay=DELAY
        )
        tree = final_model(settings, "tree")
        assert tree.samples_learned == SAMPLES
        assert tree.metric_values() == {"Accuracy": accuracy.get()}
        for features, _ in data[::50]:
            assert tree.model.predict_proba_one(features) == reference.predict_proba_one(
                cast("dict[FeatureName, Any]", features)
            )

        # 3b. the comparison, exactly once and over the labels both scored only
        stored = comparisons.get("tree", "hat")
        assert stored is not None
        expected = in_process(events, restart).comparisons[("tree", "hat")]
        assert stored.comparison.stats.to_dict() == expected.stats.to_dict()
        # hat learned the labels of the features pending at the restart, never compared (a label
        # is compared only when both models predicted: not the first one or two after it either)
        pending = sum(1 if isinstance(e, FeatureEvent) else -1 for e in events[:restart])
        assert pending == DELAY - 1  # the label at time 1000 comes before feature 1000
        assert final_model(settings, "hat").samples_learned == SAMPLES - DRIFT_AT + pending
        n = stored.comparison.stats.n
        assert SAMPLES - DRIFT_AT - DELAY < n <= SAMPLES - DRIFT_AT

        # 3c. the operator's view
        shown = cli(settings, "models", "compare", "tree", "hat", "--margin", "0.02", "--json")
        assert shown.returncode == 0, shown.stderr
        row = json.loads(shown.stdout)
        assert row["decision"] == "b_better" and row["n"] == n
        assert row["challenger_accuracy"] > row["champion_accuracy"] + 0.05
        assert row["lower"] > 0.02
        table = cli(settings, "models", "compare", "tree", "hat")
        assert "hat better" in table.stdout and str(n) in table.stdout
        mirror = json.loads(cli(settings, "models", "compare", "hat", "tree", "--json").stdout)
        assert (mirror["decision"], mirror["difference"]) == ("a_better", -row["difference"])

        # 3d. promoted once, with its evidence in the graph's history
        entries = graphs.history("clf")
        assert [e.action for e in entries] == ["apply", "challenger"]
        promotion = entries[-1]
        assert (promotion.from_, promotion.by) == (first, "policy:test")
        evidence = promotion.detail["evidence"]
        assert evidence["decision"] == "b_better" and evidence["n"] >= 500
        low, high = evidence["interval"]
        # (the interval is centred on a bet-weighted mean, where the early labels after the
        # drift weigh more: the plain mean difference need not lie inside, see learners.compare)
        assert 0.02 < low < high and evidence["difference"] > 0.02
        assert graphs.show("clf").document["root"] == "hat"
        fired = ChallengerPolicies(client, prefix).get("clf")
        assert fired is not None and fired.promoted is not None
        assert fired.promoted["graph_version"] == promotion.to

        # 3e. serving follows the new graph version, answered by the challenger
        body = kit.wait_until(
            lambda: (b := served()) is not None and b["graph_version"] == promotion.to and b
        )
        assert list(body["versions"]) == ["hat"]
    client.close()
